"""CLIP-initialised MCQ pre-training on the demo shards with the real DeepSpeed engine (CPU, gloo, one rank).

The whole path a user takes, at toy size: CLIP weights in OpenAI's layout (a tiny open_clip model stands in for
ViT-B-32.pt) imported with a fresh BridgeFormer and [MASK] row; the procedural demo set in WebVid's raw layout,
converted by the real shard converter (spaCy phrases); the reference loader with the CLIP tokenizer and CLIP
statistics in its worker process; steps of the curriculum's 1-frame noun and 4-frame verb questions.
"""
import json
import socket
from itertools import islice

import numpy as np
import pytest
import torch
import torch.distributed as dist
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from mcq_ds.data.loader import LoaderConfig, ShardLoader
from mcq_ds.engine.config import DS_CONFIGS
from mcq_ds.loss import MCQLoss
from mcq_ds.model import create_tokenizer, from_clip
from mcq_shards.convert import Options, convert
from mcq_shards.sources import webvid
from mcq_shards.synth import synthesize

SIZE = 32


@pytest.fixture
def one_rank():
    import deepspeed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as mp:
        for key, value in dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                               MASTER_PORT=str(port)).items():
            mp.setenv(key, value)
        deepspeed.init_distributed(dist_backend="gloo")
        yield
        dist.destroy_process_group()


def test_clip_initialised_pretraining_steps_on_the_demo_shards(tmp_path, one_rank):
    import deepspeed

    clip = CLIP(16, CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=SIZE),
                CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2), quick_gelu=True)
    torch.save(clip.state_dict(), tmp_path / "ViT-tiny.pt")
    model = from_clip(tmp_path / "ViT-tiny.pt", num_frames=4, bridge=True, head_dim=32)
    model.set_grad_checkpointing(True)
    tokenizer = create_tokenizer(model.cfg)

    raw = tmp_path / "raw"
    synthesize(raw, train_videos=8, images=0, test_videos=0, msrvtt_train_videos=0, size=SIZE, fps=4, workers=1)
    shards = tmp_path / "shards" / "webvid"
    convert(webvid.read(raw / "webvid" / "results_train.csv", raw / "webvid" / "videos"), shards, "webvid",
            Options(shard_size=4, image_size=SIZE, min_frames=4, fps=4.0), workers=1, progress=False)

    def batches(frames: int, question_type: str):
        loader = ShardLoader(LoaderConfig(
            shards=shards, source="webvid", tokenizer=tokenizer, num_frames=frames, img_size=SIZE, batch_size=4,
            workers=1, seed=frames, rank=0, world_size=1, question_type=question_type, hflip=False,
            max_text_length=model.cfg.text.max_length, normalisation=model.cfg.normalisation, shuffle_block=0))
        return list(islice(iter(loader), 1))[0]

    steps = [batches(1, "noun"), batches(4, "verb")]
    assert steps[0].video.shape == (4, 1, 3, SIZE, SIZE) and steps[1].video.shape == (4, 4, 3, SIZE, SIZE)
    assert all((b.question.ids == tokenizer.mask_token_id).any() for b in steps)  # [MASK] is one CLIP token
    assert "verb" in steps[1].kinds

    ds = json.loads((DS_CONFIGS / "cpu_fp32.json").read_text())
    ds.update(train_micro_batch_size_per_gpu=4, gradient_accumulation_steps=1, train_batch_size=4)
    # lr 1e-4, not 1e-3: at temperature 0.01 the logits are sharp and a from-scratch tiny model overshoots
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
    before = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    loss_fn, losses = MCQLoss(temperature=0.01), []
    for step in range(6):
        batch = steps[step % 2].to(engine.device)
        loss = loss_fn(*engine(batch.video, batch.text, batch.question, batch.answer))
        engine.backward(loss.loss)
        engine.step()
        losses.append(loss.loss.item())
    assert np.isfinite(losses).all()
    assert losses[4] < losses[0] and losses[5] < losses[1]  # each batch seen three times: it fits
    after = engine.module.state_dict()
    assert not [k for k in before if torch.equal(before[k], after[k])]  # both towers and the whole bridge trained
    mask_row = tokenizer.mask_token_id
    assert not torch.equal(before["text_model.token_embedding.weight"][mask_row],
                           after["text_model.token_embedding.weight"][mask_row])
