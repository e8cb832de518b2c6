"""The three-former model: shapes, masks, the exact attention layout of SPEC §1.2/§1.5, checkpointing, timm init."""
import math

import pytest
import timm
import torch

from mcq_ds.config import MCQConfig, TextConfig, VideoConfig
from mcq_ds.model import MCQ, Tokens, load_timm_vit, load_tokenizer
from mcq_ds.model.presets import preset


def tiny_config(frames: int = 4, **video) -> MCQConfig:
    cfg = preset("tiny")
    cfg.video = VideoConfig(img_size=32, patch_size=16, width=64, depth=4, heads=4, num_frames=frames, **video)
    cfg.text = TextConfig(arch=dict(dim=64, n_layers=2, n_heads=4, hidden_dim=128, vocab_size=30522,
                                    max_position_embeddings=64, dropout=0.0, attention_dropout=0.0), max_length=32)
    cfg.embed_dim = 16
    return cfg


def batch(cfg: MCQConfig, frames: int, b: int = 3):
    tok = load_tokenizer(cfg.text)

    def enc(texts):
        t = tok(texts, padding=True, return_tensors="pt")
        return Tokens(t["input_ids"], t["attention_mask"])

    captions = ["a red circle moves to the left", "a dog runs", "two people are cooking pasta in a kitchen"][:b]
    questions = ["a [MASK] [MASK] moves to the left", "a [MASK] runs", "two [MASK] are cooking pasta in a kitchen"][:b]
    answers = ["[MASK] [MASK] [MASK] red circle", "[MASK] [MASK] [MASK] dog", "[MASK] [MASK] [MASK] people"][:b]
    video = torch.randn(b, frames, 3, cfg.video.img_size, cfg.video.img_size)
    return video, enc(captions), enc(questions), enc(answers)


@pytest.mark.parametrize("frames", [1, 4])
def test_shapes_for_one_and_four_frames(frames):
    cfg = tiny_config()
    model = MCQ(cfg).eval()
    video, text, question, answer = batch(cfg, frames)
    out = model(video, text, question, answer)
    assert all(e.shape == (3, cfg.embed_dim) for e in out)
    assert all(torch.isfinite(e).all() for e in out)
    assert model(video, text).answer is None


def test_frames_are_limited_only_by_a_temporal_table():
    cfg = tiny_config(frames=2)
    video, text, _, _ = batch(cfg, 3)
    assert MCQ(cfg).eval().encode_video(video).shape == (video.shape[0], cfg.embed_dim)  # no frame parameter
    cfg.video.temporal_attention = True
    with pytest.raises(ValueError, match="temporal position table has 2 rows: it takes at most 2 frames"):
        MCQ(cfg)(video, text)


def test_question_padding_is_masked_and_real_tokens_are_not():
    cfg = tiny_config()
    model = MCQ(cfg).eval()
    video, text, question, answer = batch(cfg, 4)
    ref = model(video, text, question, answer).bridge
    ids = question.ids.clone()
    pad = question.mask == 0
    assert pad.any()
    ids[pad] = 1037  # any word: padding positions must not matter
    assert torch.allclose(model(video, text, Tokens(ids, question.mask), answer).bridge, ref, atol=1e-6)
    ids = question.ids.clone()
    ids[0, 2] = 2158  # a real token of sample 0: only sample 0's bridge embedding changes
    changed = model(video, text, Tokens(ids, question.mask), answer).bridge
    assert not torch.allclose(changed[0], ref[0], atol=1e-4)
    assert torch.allclose(changed[1:], ref[1:], atol=1e-6)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_one_batched_text_pass_equals_separate_passes(pooling):
    cfg = tiny_config()
    cfg.text.pooling = pooling
    model = MCQ(cfg).eval()
    video, text, question, answer = batch(cfg, 4)
    out = model(video, text, question, answer)
    assert torch.allclose(out.text, model.encode_text(text), atol=1e-5)
    assert torch.allclose(out.answer, model.encode_text(answer), atol=1e-5)
    assert torch.allclose(out.video, model.encode_video(video), atol=1e-5)


def test_mean_pooling_averages_the_real_tokens_only():
    cfg = tiny_config()
    cfg.text.pooling = "mean"
    model = MCQ(cfg).eval()
    _, text, _, _ = batch(cfg, 1)
    states, _ = model.text_model(text.ids, text.mask)
    for i in range(len(text.ids)):
        real = states[i, text.mask[i].bool()]
        expected = model.text_proj(real.mean(0, keepdim=True))
        assert torch.allclose(model.encode_text(Tokens(text.ids[i:i + 1], text.mask[i:i + 1])), expected, atol=1e-5)
    assert not torch.allclose(model.encode_text(text), MCQ(tiny_config()).eval().encode_text(text), atol=1e-3)
    with pytest.raises(ValueError, match="text pooling must be one of \\('cls', 'mean'\\), got 'max'"):
        TextConfig(pooling="max")


def test_video_embedding_ignores_frame_order_unless_temporal_attention_is_on():
    cfg = tiny_config()
    model = MCQ(cfg).eval()
    video = torch.randn(2, 4, 3, 32, 32)
    shuffled = video[:, [2, 0, 3, 1]]
    assert torch.allclose(model.encode_video(video), model.encode_video(shuffled), atol=1e-5)

    temporal = MCQ(tiny_config(temporal_attention=True)).eval()
    plain = MCQ(tiny_config()).eval()
    state = {k: v for k, v in temporal.state_dict().items() if ".norm3." not in k and ".timeattn." not in k
             and k != "video_model.temporal_embed"}
    plain.load_state_dict(state, strict=True)
    # zero-initialised temporal attention starts as an exact no-op ...
    assert torch.allclose(temporal.encode_video(video), plain.encode_video(video), atol=1e-5)
    # ... and once trained it sees order
    with torch.no_grad():
        temporal.video_model.temporal_embed.normal_(std=0.5)
        for block in temporal.video_model.blocks:
            block.timeattn.qkv.weight.normal_(std=0.2)
    assert not torch.allclose(temporal.encode_video(video), temporal.encode_video(shuffled), atol=1e-4)


def test_bridge_block_l_reads_text_state_l_times_t_over_v():
    cfg = tiny_config()  # 4 video blocks, 2 text layers: blocks read hidden states 0, 0, 1, 1
    model = MCQ(cfg).eval()
    seen = []
    for block in model.bridge_model.blocks:
        block.register_forward_pre_hook(lambda m, args: seen.append(args[2]))
    video, text, question, answer = batch(cfg, 4)
    _, hidden = model.text_model(question.ids, question.mask, hidden_states=True)
    model.bridge_model([torch.zeros(3, 1 + 4 * 4, 64)] * 4, hidden, question.mask, frames=4)
    assert [next(i for i, h in enumerate(hidden) if h is s) for s in seen] == [0, 0, 1, 1]
    assert [l * 6 // 12 for l in range(12)] == [l // 2 for l in range(12)]  # the paper's ⌊l/2⌋ for 6 and 12


def naive_factorised_attention(attn, x, frames, key_mask=None):
    """SPEC §1.2/§1.5 written out token group by token group, with the original's additive -10000 mask."""
    b, n, dim = x.shape
    h = attn.heads
    q, k, v = attn.qkv(x).chunk(3, dim=-1)
    split = lambda t: t.reshape(b, -1, h, dim // h).transpose(1, 2)  # noqa: E731
    q, k, v = split(q) / math.sqrt(dim // h), split(k), split(v)
    per = (n - 1) // frames
    mask = torch.ones(b, 1 + per) if key_mask is None else key_mask.float()
    outs = [None] * n
    full_mask = torch.cat([mask[:, :1], mask[:, 1:].repeat(1, frames)], 1)
    s = q[:, :, :1] @ k.transpose(-1, -2) + (1 - full_mask)[:, None, None] * -10000.0
    outs[0] = s.softmax(-1) @ v
    for f in range(frames):
        idx = [0] + list(range(1 + f * per, 1 + (f + 1) * per))
        s = q[:, :, idx[1:]] @ k[:, :, idx].transpose(-1, -2) + (1 - mask)[:, None, None] * -10000.0
        o = s.softmax(-1) @ v[:, :, idx]
        for j, t in enumerate(idx[1:]):
            outs[t] = o[:, :, j:j + 1]
    out = torch.cat(outs, dim=2).transpose(1, 2).reshape(b, n, dim)
    return attn.proj(out)


def naive_cross_attention(cross, question, patches, frames):
    b, length, _ = question.shape
    dim = cross.proj.in_features
    h = cross.heads
    split = lambda t: t.reshape(b, -1, h, dim // h).transpose(1, 2)  # noqa: E731
    q = split(cross.q(question)) / math.sqrt(dim // h)
    k, v = (split(t) for t in cross.kv(patches).chunk(2, dim=-1))
    per = patches.shape[1] // frames
    outs = [(q[:, :, :1] @ k.transpose(-1, -2)).softmax(-1) @ v]
    for f in range(frames):
        kf, vf = k[:, :, f * per:(f + 1) * per], v[:, :, f * per:(f + 1) * per]
        outs.append((q[:, :, 1:] @ kf.transpose(-1, -2)).softmax(-1) @ vf)
    out = torch.cat(outs, dim=2).transpose(1, 2).reshape(b, 1 + frames * (length - 1), dim)
    return cross.proj(out)


@pytest.mark.parametrize("frames", [1, 3])
def test_attention_layouts_match_the_written_out_spec(frames):
    cfg = tiny_config()
    model = MCQ(cfg).eval()
    x = torch.randn(2, 1 + frames * 4, 64)
    attn = model.video_model.blocks[0].attn
    assert torch.allclose(attn(x, groups=frames), naive_factorised_attention(attn, x, frames), atol=1e-5)

    question = torch.randn(2, 5, 64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    block = model.bridge_model.blocks[1]
    patches = x[:, 1:]
    cross = naive_cross_attention(block.cross_attn, question, patches, frames)
    assert torch.allclose(block.cross_attn(question, patches, frames), cross, atol=1e-5)

    # a whole bridge block: cross-attention of the normalised inputs, the stream residual, masked self-attention
    stream = torch.randn_like(cross)
    bridge_in = naive_cross_attention(block.cross_attn, block.norm_question(question), block.norm_video(patches),
                                      frames) + stream
    h = bridge_in + naive_factorised_attention(block.attn, block.norm1(bridge_in), frames, mask)
    expected = h + block.mlp(block.norm2(h))
    assert torch.allclose(block(stream, patches, question, mask.bool(), frames), expected, atol=1e-5)


def saved_timm_vit(path) -> torch.nn.Module:
    """A 4-block timm ViT of the tiny VideoFormer's width, its weights saved to `path`."""
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, patch_size=16, embed_dim=64,
                            depth=4, num_heads=4, num_classes=0).eval()
    torch.save(vit.state_dict(), path)
    return vit


def test_one_frame_videoformer_is_the_timm_vit_it_was_initialised_from(tmp_path):
    cfg = tiny_config(frames=4)
    vit = saved_timm_vit(tmp_path / "vit.pth")
    model = MCQ(cfg).eval()
    load_timm_vit(model.video_model, tmp_path / "vit.pth")
    image = torch.randn(2, 3, 32, 32)
    ours, _ = model.video_model(image.unsqueeze(1))
    theirs = vit.forward_features(image)[:, 0]  # timm's final norm is freshly initialised in both
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert torch.equal(model.video_model.blocks[2].mlp.fc1.weight, vit.blocks[2].mlp.fc1.weight)


def test_timm_file_with_foreign_keys_is_refused(tmp_path):
    model = MCQ(tiny_config())
    state = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, embed_dim=64, depth=4,
                              num_heads=4).state_dict()
    state["blocks.0.extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "vit.pth")
    with pytest.raises(ValueError, match="blocks.0.extra.weight"):
        load_timm_vit(model.video_model, tmp_path / "vit.pth")


def test_activation_checkpointing_gives_the_same_gradients():
    cfg = tiny_config()
    model = MCQ(cfg).train()
    video, text, question, answer = batch(cfg, 4)

    def grads():
        model.zero_grad()
        out = model(video, text, question, answer)
        sum((e ** 2).sum() for e in out).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.set_grad_checkpointing(True)
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    assert all(torch.allclose(plain[k], checkpointed[k], atol=1e-6) for k in plain)
    assert any(k.startswith("bridge_model.blocks.0.cross_attn") for k in plain)


def test_bf16_forward_is_finite():
    cfg = tiny_config()
    model = MCQ(cfg).to(torch.bfloat16).eval()
    video, text, question, answer = batch(cfg, 4)
    out = model(video.bfloat16(), text, question, answer)
    assert all(e.dtype == torch.bfloat16 and torch.isfinite(e).all() for e in out)
