"""The CLIP-initialised MCQ against open_clip (the reference implementation of CLIP): attention layout, weight import
from OpenAI's key layout (state dict, TorchScript archive, MCQ_CLIP.pth), features, bridge, model folders."""
import argparse
import os
import pickle
import zipfile

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from mcq_ds.config import CLIPTextConfig
from mcq_ds.loss import MCQLoss
from mcq_ds.model import CLIPMCQ, CLIPMCQConfig, Tokens, create_tokenizer, from_clip, load_pretrained, save_pretrained
from mcq_ds.model import clip_loading
from mcq_ds.model.clip import ResidualAttentionBlock
from mcq_ds.model.presets import preset

HEAD_DIM = 32  # two heads per tower in the tiny models, so head splitting is tested too
CAPTIONS = ["a man is riding a red bicycle down the street", "Tom &amp; Jerry’s fight!!", "two dogs"]


def reference_clip(quick_gelu: bool = True) -> CLIP:
    """A tiny open_clip CLIP with OpenAI's key layout; LayerNorms made non-trivial so that they are tested too."""
    model = CLIP(16, CLIPVisionCfg(layers=2, width=64, head_width=HEAD_DIM, patch_size=8, image_size=32),
                 CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=64 // HEAD_DIM, layers=3),
                 quick_gelu=quick_gelu).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name or name.startswith(("ln_", "visual.ln_")):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return reference_clip()


@pytest.fixture(scope="module")
def weights(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "ViT-tiny.pth"
    torch.save(reference.state_dict(), path)
    return path


def tokens(tokenizer, texts) -> Tokens:
    out = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    return Tokens(out["input_ids"], out["attention_mask"])


def reference_video(visual, video: torch.Tensor) -> torch.Tensor:
    """What the released model computes for F frames, written with open_clip's own modules: tiled spatial positions,
    and plain multi-head attention restricted by a mask ([CLS] sees everything, a patch sees [CLS] + its frame)."""
    b, f = video.shape[:2]
    x = visual.conv1(video.flatten(0, 1)).flatten(2).transpose(1, 2)
    p = x.shape[1]
    x = x.reshape(b, f * p, -1)
    pos = visual.positional_embedding
    cls = (visual.class_embedding + pos[0]).expand(b, 1, -1)
    x = visual.ln_pre(torch.cat([cls, x + pos[1:].repeat(f, 1)], dim=1))
    frame = torch.cat([torch.tensor([-1]), torch.arange(f).repeat_interleave(p)])
    allowed = (frame[:, None] == frame[None, :]) | (frame[None, :] == -1) | (frame[:, None] == -1)
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
    x = visual.transformer(x, attn_mask=mask)
    return visual.ln_post(x[:, 0]) @ visual.proj


def test_factorised_attention_is_clips_attention_for_one_frame(reference):
    """One CLIP block, our attention with CLIP's weights: exactly open_clip's block for one frame, and open_clip's
    block under the frame mask for several."""
    ref_block = reference.visual.transformer.resblocks[0]
    block = ResidualAttentionBlock(64, 64 // HEAD_DIM, 4.0, quick_gelu=True)
    state = {clip_loading._BLOCK_PARAMS[k]: v for k, v in ref_block.state_dict().items()}
    block.load_state_dict(state, strict=True)
    one = torch.randn(3, 1 + 16, 64)
    assert torch.allclose(block(one, groups=1), ref_block(one), atol=1e-5)
    frames = 3
    many = torch.randn(2, 1 + 16 * frames, 64)
    frame = torch.cat([torch.tensor([-1]), torch.arange(frames).repeat_interleave(16)])
    allowed = (frame[:, None] == frame[None, :]) | (frame[None, :] == -1) | (frame[:, None] == -1)
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))  # open_clip adds float masks
    assert torch.allclose(block(many, groups=frames), ref_block(many, attn_mask=mask), atol=1e-5)


def test_openai_layout_imports_strictly_and_gives_identical_outputs(reference, weights):
    model = from_clip(weights, num_frames=4, head_dim=HEAD_DIM).eval()
    assert model.cfg.video.patches_per_frame == 16 and model.cfg.text.depth == 3 and model.cfg.embed_dim == 16
    assert not hasattr(model, "bridge_model") and model.cfg.text.vocab_size == 49408
    image = torch.randn(2, 3, 32, 32)
    tokenizer = create_tokenizer(model.cfg)
    with torch.no_grad():
        assert torch.allclose(model.encode_video(image[:, None]), reference.encode_image(image), atol=1e-5)
        video = torch.randn(2, 4, 3, 32, 32)
        assert torch.allclose(model.encode_video(video), reference_video(reference.visual, video), atol=1e-5)
        ours = model.encode_text(tokens(tokenizer, CAPTIONS))  # padded to the longest caption, pad = end-of-text
        assert torch.allclose(ours, reference.encode_text(open_clip.tokenize(CAPTIONS)), atol=1e-5)


def test_quick_gelu_comes_from_open_clip_config_beside_the_file(tmp_path):
    torch.manual_seed(1)
    gelu = reference_clip(quick_gelu=False)
    torch.save({"epoch": 32, "state_dict": {"module." + k: v for k, v in gelu.state_dict().items()}},
               tmp_path / "open_clip_pytorch_model.bin")  # an open_clip training checkpoint
    (tmp_path / "open_clip_config.json").write_text('{"model_cfg": {"embed_dim": 16}}')  # no quick_gelu: GELU
    model = from_clip(tmp_path / "open_clip_pytorch_model.bin", head_dim=HEAD_DIM).eval()
    assert not model.cfg.quick_gelu
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.encode_video(image[:, None]), gelu.encode_image(image), atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_torchscript_archive_is_read_without_running_it(reference, tmp_path):
    archive = tmp_path / "ViT-tiny.pt"
    torch.jit.save(torch.jit.script(reference), archive)
    tensors = clip_loading.read_torchscript_tensors(archive)
    assert "attn_mask" in tensors  # a scripted module's buffer, dropped on import as not a weight
    model = from_clip(archive, head_dim=HEAD_DIM).eval()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.encode_video(image[:, None]), reference.encode_image(image), atol=1e-5)

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'ran'}",)

    evil = tmp_path / "evil.pt"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(evil, "w") as dst:
        for item in src.infolist():
            data = pickle.dumps(Payload(), protocol=2) if item.filename.endswith("/data.pkl") else src.read(item)
            dst.writestr(item, data)
    with pytest.raises(ValueError, match="system"):
        from_clip(evil)
    assert not (tmp_path / "ran").exists()


class ConfigParser:
    """Stands in for the original's pickled config object inside its checkpoints."""

    def __init__(self):
        self.config = {"arch": "CLIP"}


def test_released_checkpoint_layout_loads_strictly(reference, tmp_path):
    """MCQ_CLIP.pth: fp16 CLIP weights under `state_dict`, with DataParallel's prefix and a pickled config object."""
    state = {"module." + k: v.half() for k, v in reference.state_dict().items()}
    path = tmp_path / "MCQ_CLIP.pth"
    torch.save({"epoch": 10, "state_dict": state, "config": ConfigParser()}, path)
    model = from_clip(path, head_dim=HEAD_DIM).eval()
    rounded = reference_clip()
    rounded.load_state_dict({k: v.half().float() for k, v in reference.state_dict().items()})
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.encode_video(image[:, None]), rounded.encode_image(image), atol=1e-5)

    torch.save({"state_dict": {**state, "module.visual.extra.weight": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="visual.extra.weight"):
        from_clip(path)
    del state["module.visual.ln_post.bias"]
    torch.save({"state_dict": state}, path)
    with pytest.raises(ValueError, match="video_model.ln_post.bias"):
        from_clip(path, head_dim=HEAD_DIM)


def test_tokenizer_matches_openai_and_speaks_hugging_face():
    tokenizer = create_tokenizer(preset("clip-b32"))
    texts = [*CAPTIONS, "ＦＵＬＬ width café déjà-vu 123,456 isn't", "wow!!! ... ??  \t new\nline",
             "word " * 100]
    ours = tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
    ref = open_clip.tokenize(texts)  # 77 wide, zero-padded; over-long texts truncated with end-of-text forced
    for row, mask, expected in zip(ours["input_ids"], ours["attention_mask"], ref):
        assert row[mask.bool()].tolist() == expected[expected != 0].tolist()
    assert ours["input_ids"].shape[1] == 77
    assert tokenizer("riding", add_special_tokens=False)["input_ids"] == [6765]
    masked = tokenizer(["[MASK] [MASK] [MASK] red circle"])["input_ids"][0]
    assert masked[1:4] == [49408] * 3 and masked[-1] == 49407
    no_mask = create_tokenizer(CLIPMCQConfig(text=CLIPTextConfig(vocab_size=49408)))
    assert len(no_mask) == 49408 and 49408 not in no_mask("[MASK] dog")["input_ids"]
    again = pickle.loads(pickle.dumps(tokenizer))  # data-loader workers receive it pickled
    assert again(texts)["input_ids"] == tokenizer(texts)["input_ids"]


def test_bridge_embeddings_padding_and_gradients(weights):
    model = from_clip(weights, num_frames=4, bridge=True, head_dim=HEAD_DIM)
    assert model.cfg.text.vocab_size == 49409  # the [MASK] row
    table = model.text_model.token_embedding.weight
    assert torch.allclose(table[-1], table[:-1].mean(0), atol=1e-6)
    tokenizer = create_tokenizer(model.cfg)
    text = tokens(tokenizer, ["a red circle moves to the left", "a dog runs", "two people cook pasta"])
    question = tokens(tokenizer, ["a [MASK] [MASK] moves to the left", "a [MASK] runs", "two [MASK] cook pasta"])
    answer = tokens(tokenizer, ["[MASK] [MASK] [MASK] red circle", "[MASK] [MASK] [MASK] dog",
                                "[MASK] [MASK] [MASK] people"])
    video = torch.randn(3, 4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        out = model(video, text, question, answer)
        assert all(e.shape == (3, 16) for e in out)
        assert torch.allclose(out.text, model.encode_text(text), atol=1e-5)
        assert torch.allclose(out.answer, model.encode_text(answer), atol=1e-5)
        ids = question.ids.clone()
        ids[question.mask == 0] = 320  # padding positions must not matter
        assert torch.allclose(model(video, text, Tokens(ids, question.mask), answer).bridge, out.bridge, atol=1e-5)
        ids = question.ids.clone()
        ids[1, 2] = 1929  # a real token of sample 1 ("runs" -> "dog"): only its bridge embedding moves
        changed = model(video, text, Tokens(ids, question.mask), answer).bridge
        assert not torch.allclose(changed[1], out.bridge[1], atol=1e-4)
        assert torch.allclose(changed[[0, 2]], out.bridge[[0, 2]], atol=1e-5)
        one_frame = model(video[:, :1], text, question, answer)
        assert all(torch.isfinite(e).all() for e in one_frame)
    model.train()
    model.set_grad_checkpointing(True)
    MCQLoss()(*model(video, text, question, answer)).loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert table.grad[49408].abs().sum() > 0  # the [MASK] row learns


def test_video_features_are_the_same_alone_and_in_a_batch(weights):
    """What `extract` gives (one video, L2-normalised) is what `eval` gives for it inside a batch, at 8 frames."""
    model = from_clip(weights, head_dim=HEAD_DIM).eval()
    assert model.cfg.video.num_frames == 8
    tokenizer = create_tokenizer(model.cfg)
    videos = torch.randn(3, 8, 3, 32, 32)
    with torch.no_grad():
        alone = F.normalize(model.encode_video(videos[1:2]), dim=-1)
        batch = model(videos, tokens(tokenizer, CAPTIONS))
        assert batch.answer is None and batch.video.shape == (3, 16)
        assert torch.allclose(alone, F.normalize(batch.video, dim=-1)[1:2], atol=1e-5)
        half = model.to(torch.bfloat16).encode_video(videos[1:2].bfloat16()).float()
        assert F.cosine_similarity(half, alone).item() > 0.99  # low precision stays close (LayerNorm in fp32)


def test_model_folder_round_trip_and_convert_command(weights, tmp_path):
    parser = argparse.ArgumentParser()
    clip_loading.add_arguments(parser)
    out = tmp_path / "clip-init"
    assert clip_loading.run(parser.parse_args([str(weights), "-o", str(out), "--bridge", "--frames", "4"])) == 0
    assert '"family": "clip"' in (out / "config.json").read_text()
    model, tokenizer = load_pretrained(out)
    assert isinstance(model, CLIPMCQ) and hasattr(model, "bridge_model") and model.cfg.video.num_frames == 4
    assert tokenizer.mask_token_id == 49408
    retrieval, _ = load_pretrained(out, bridge=False)
    assert not hasattr(retrieval, "bridge_model")
    save_pretrained(model, tokenizer, tmp_path / "again")
    again, _ = load_pretrained(tmp_path / "again")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_full_size_presets_have_clips_shapes():
    with torch.device("meta"):
        b32 = CLIPMCQ(CLIPMCQConfig(text=CLIPTextConfig(vocab_size=49408), bridge=False))
        b16 = CLIPMCQ(preset("clip-b16"))
    assert sum(p.numel() for p in b32.parameters()) == 151_277_313 - 1  # OpenAI ViT-B/32 without logit_scale
    assert b16.video_model.positional_embedding.shape == (1 + 14 * 14, 768)
    assert len(b16.bridge_model.blocks) == 12 and b16.bridge_model.blocks[0].cross_attn.q.in_features == 512
