"""CLIP-initialised MCQ pre-training on the demo data with the real DeepSpeed engine (CPU, gloo, one rank).

The start is what a user does: CLIP weights in OpenAI's layout (a tiny open_clip model stands in for ViT-B-32.pt)
imported with a fresh BridgeFormer and [MASK] row. The data is the procedural demo set in WebVid's raw layout,
decoded with PyAV; questions and answers come from the real question builder with the CLIP tokenizer. Steps
alternate the curriculum's 1-frame noun and 4-frame verb questions.
"""
import csv
import json
import re
import socket
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.distributed as dist
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

from mcq_ds.data.batch import CLIP_MEAN, CLIP_STD
from mcq_ds.data.questions import Phrase, QuestionBuilder, tokenize_texts
from mcq_ds.engine.config import DS_CONFIGS
from mcq_ds.loss import MCQLoss
from mcq_ds.model import Tokens, create_tokenizer, from_clip
from shards.synth import COLOURS, MOTIONS, SHAPES, synthesize

SIZE = 32


@pytest.fixture
def one_rank():
    import deepspeed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        deepspeed.init_distributed(dist_backend="gloo")
        yield
        dist.destroy_process_group()


def _span(caption: str, pattern: str) -> list[Phrase]:
    match = re.search(pattern, caption)
    return [Phrase(text=match.group(), start=match.start(), end=match.end())] if match else []


def demo_clips(root: Path, frames: int) -> list[tuple[np.ndarray, str, list[Phrase], list[Phrase]]]:
    """(frames × H × W × 3 uint8 at segment midpoints, caption, noun phrases, verb phrases) per demo WebVid clip."""
    nouns = rf"\b(?:{'|'.join(COLOURS)}) (?:{'|'.join(SHAPES)})\b"
    verbs = "|".join(re.escape(v) for wordings in MOTIONS.values() for v in wordings)
    clips = []
    with open(root / "webvid" / "results_train.csv", newline="") as f:
        for row in csv.DictReader(f):
            with av.open(str(root / "webvid" / "videos" / row["page_dir"] / f"{row['videoid']}.mp4")) as container:
                video = np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])
            bounds = np.linspace(0, len(video), frames + 1).astype(int)
            clips.append((video[(bounds[:-1] + bounds[1:] - 1) // 2], row["name"], _span(row["name"], nouns),
                          _span(row["name"], verbs)))
    return clips


def make_batch(clips, tokenizer, question_type: str, seed: int):
    import random

    builder, rng = QuestionBuilder(tokenizer, "span"), random.Random(seed)
    qa = [builder(caption, nouns, verbs, question_type, rng) for _, caption, nouns, verbs in clips]
    texts = tokenize_texts(tokenizer, [c[1] for c in clips], [q.question for q in qa], [q.answer for q in qa],
                           max_length=77)
    pixels = torch.from_numpy(np.stack([c[0] for c in clips])).permute(0, 1, 4, 2, 3).float() / 255
    video = (pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    return (video, *(Tokens(texts[k]["input_ids"], texts[k]["attention_mask"]) for k in ("text", "question", "answer")))


def test_clip_initialised_pretraining_steps_on_the_demo_data(tmp_path, one_rank):
    import deepspeed

    clip = CLIP(16, CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=8, image_size=SIZE),
                CLIPTextCfg(context_length=77, vocab_size=49408, width=64, heads=2, layers=2), quick_gelu=True)
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    model = from_clip(tmp_path / "clip.pt", num_frames=4, bridge=True, head_dim=32)
    model.set_grad_checkpointing(True)
    tokenizer = create_tokenizer(model.cfg)

    synthesize(tmp_path / "raw", train_videos=6, images=0, test_videos=0, msrvtt_train_videos=0, size=SIZE, fps=4,
               workers=1)
    batches = [make_batch(demo_clips(tmp_path / "raw", 1), tokenizer, "noun", 0),
               make_batch(demo_clips(tmp_path / "raw", 4), tokenizer, "verb", 1)]
    assert (batches[0][2].ids == 49408).any() and (batches[1][3].ids == 49408).any()  # [MASK] is one token

    ds = json.loads((DS_CONFIGS / "cpu_fp32.json").read_text())
    ds.update(train_micro_batch_size_per_gpu=6, gradient_accumulation_steps=1, train_batch_size=6)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds)
    before = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    loss_fn, losses = MCQLoss(temperature=0.01), []
    for step in range(6):
        loss = loss_fn(*engine(*batches[step % 2]))
        engine.backward(loss.loss)
        engine.step()
        losses.append((loss.loss.item(), loss.loss_vt.item(), loss.loss_mcq.item()))
    assert np.isfinite(losses).all()
    assert losses[4][0] < losses[0][0] and losses[5][0] < losses[1][0]  # each batch seen three times: it fits
    after = engine.module.state_dict()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged  # every tower weight and the whole bridge trained
    assert not torch.equal(before["text_model.token_embedding.weight"][49408],
                           after["text_model.token_embedding.weight"][49408])
