"""Attention maps: recomputed probabilities are the ones the model used, and `mcq-ds visualize` draws a figure of
the right size whose heat is not uniform, on a tiny model trained here for a few dozen MCQ steps on demo clips."""
import argparse
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

from mcq_ds.data.questions import QuestionBuilder
from mcq_ds.eval import visualize
from mcq_ds.eval.attention import apply_probs, cross_attention_probs, record_cross_attention
from mcq_ds.eval.data import ClipSpec
from mcq_ds.eval.reader import ShardClips, eval_samples
from mcq_ds.loss import MCQLoss
from mcq_ds.model import MCQ, Tokens, load_tokenizer, save_pretrained
from mcq_ds.model.presets import preset
from mcq_shards.convert import Options, convert
from mcq_shards.sources import webvid
from mcq_shards.synth import synthesize
from test_eval_extract import one_thread  # noqa: F401 - one intra-op thread for tiny models on a shared CPU

STEPS, BATCH, CLIPS = 150, 8, 12


def tokens(tok, texts):
    t = tok(texts, padding=True, return_tensors="pt")
    return Tokens(t["input_ids"], t["attention_mask"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small MCQ trained here with the MCQ loss on demo clips (converted by mcq-shards, read as eval reads them):
    a few seconds of CPU at one thread, enough for its bridge to learn where the shape is."""
    root = tmp_path_factory.mktemp("visualize")
    synthesize(root / "raw", train_videos=CLIPS, images=0, test_videos=0, msrvtt_train_videos=0, size=64, fps=8,
               workers=1)
    csv = root / "raw" / "webvid" / "results_train.csv"
    convert(webvid.read(csv, csv.parent / "videos"), root / "shards", "webvid", Options(), workers=1, progress=False)
    cfg = preset("tiny")  # 64-pixel frames in a 4×4 grid of patches, narrowed to train fast
    cfg.video.width, cfg.video.depth, cfg.video.heads, cfg.embed_dim = 64, 3, 2, 32
    cfg.text.arch.update(dim=64, n_heads=2, hidden_dim=256, dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    model = MCQ(cfg)
    tok = load_tokenizer(cfg.text)
    samples = eval_samples(str(root / "shards"))[0]
    dataset = ShardClips(samples, range(len(samples)), ClipSpec(4, cfg.video.img_size))
    items = [dataset[i] for i in range(len(dataset))]
    video = torch.cat([clips for _, _, clips, _ in items])
    metas = [meta for _, meta, _, _ in items]
    builder, rng = QuestionBuilder(tok), random.Random(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 20))
    loss_fn, losses = MCQLoss(), []
    model.train()
    for step in range(STEPS):
        pick = rng.sample(range(len(metas)), BATCH)
        qa = [builder(metas[i]["caption"], metas[i]["nouns"], metas[i]["verbs"], "noun" if step % 2 else "verb", rng)
              for i in pick]
        out = model(video[pick], tokens(tok, [metas[i]["caption"] for i in pick]),
                    tokens(tok, [q.question for q in qa]), tokens(tok, [q.answer for q in qa]))
        loss = loss_fn(*out).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        warmup.step()
        losses.append(loss.item())
    save_pretrained(model, tok, root / "model")
    meta = metas[0]
    path = next((csv.parent / "videos").rglob(f"{meta['id']}.mp4"))
    return root, losses, path, meta


def test_training_lowered_the_loss(trained):
    _, losses, _, _ = trained
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 2.0


def test_recomputed_probabilities_give_the_models_own_cross_attention(trained):
    root, _, _, _ = trained
    model, tok = visualize.load_model(root / "model", bridge=True).model, None
    tok = load_tokenizer(model.cfg.text)
    video = torch.randn(2, 4, 3, 64, 64)
    text = tokens(tok, ["a red square is moving up", "a blue star is spinning on dots"])
    question = tokens(tok, ["a [MASK] [MASK] is moving up", "a blue star [MASK] [MASK] on dots"])
    answer = tokens(tok, ["[MASK] [MASK] [MASK] red square", "[MASK] [MASK] [MASK] is spinning"])
    with record_cross_attention(model) as recorded, torch.no_grad():
        model(video, text, question, answer)
    assert len(recorded) == len(model.bridge_model.blocks)
    for block, seen in zip(model.bridge_model.blocks, recorded):
        cls, per_token = cross_attention_probs(block.cross_attn, seen)
        assert torch.allclose(cls.sum((-1, -2)), torch.ones(()), atol=1e-5)
        assert torch.allclose(per_token.sum(-1), torch.ones(()), atol=1e-5)
        assert torch.allclose(apply_probs(block.cross_attn, seen, cls, per_token), seen.output, atol=1e-5)
    assert all(not h._forward_hooks for h in (b.cross_attn for b in model.bridge_model.blocks))  # hooks removed


def test_visualize_writes_a_figure_of_the_right_size_with_non_uniform_heat(trained, tmp_path, capsys):
    root, _, video, meta = trained
    noun, verb = meta["nouns"][0]["text"], meta["verbs"][0]["text"]
    parser = argparse.ArgumentParser()
    visualize.add_arguments(parser)
    out = tmp_path / "maps.png"
    args = parser.parse_args([str(root / "model"), str(video), meta["caption"], "--noun", noun, "--verb", verb,
                              "-o", str(out), "--cell", "64"])
    assert visualize.run(args) == 0
    printed = capsys.readouterr().out
    image = Image.open(out)
    frames, rows, cell = 4, 3, 64  # the frames row + one row per question
    assert image.size == (frames * cell + (frames + 1) * visualize.PAD, rows * (visualize.LABEL + cell) + visualize.PAD)

    figure = visualize.attention_figure(root / "model", video, meta["caption"], [noun], [verb], cell=64)
    assert figure.heat.shape == (2, 4, 4, 4)
    assert "[MASK]" in figure.questions[0] and noun not in figure.questions[0]
    for maps in figure.heat:
        assert torch.allclose(maps.sum((-1, -2)), torch.ones(4), atol=1e-4)  # a distribution over each frame
        assert maps.max() > 1.2 * maps.mean()  # some patches draw clearly more attention than uniform
    assert [round(p, 1) for p in figure.peaks] == [round(float(m.max() / m.mean()), 1) for m in figure.heat]
    assert printed.count("x uniform") == 2 and f"peak {figure.peaks[0]:.1f}x uniform" in printed
    pixels = np.asarray(image).astype(int)
    first = pixels[visualize.PAD + visualize.LABEL:visualize.PAD + visualize.LABEL + cell]
    second_top = visualize.PAD + 2 * visualize.LABEL + cell
    assert np.abs(first - pixels[second_top:second_top + cell]).mean() > 10  # the heat is drawn over the frames


def test_the_question_looks_at_the_shape(trained):
    """The demo backgrounds are dark and muted, the shapes bright: the trained bridge's question [CLS] puts several
    times the uniform attention on the patches the shape covers."""
    root, _, video, meta = trained
    figure = visualize.attention_figure(root / "model", video, meta["caption"], [meta["nouns"][0]["text"]], [],
                                        tokens="cls")
    shape = torch.from_numpy(figure.frames.max(-1) > 170).float()  # (F, S, S)
    grid = figure.heat.shape[-1]
    cover = torch.nn.functional.avg_pool2d(shape.unsqueeze(1), shape.shape[-1] // grid).squeeze(1)
    heat = figure.heat[0]
    assert (heat * cover).sum() / cover.sum() > 2 * heat.mean()


def test_a_phrase_outside_the_caption_is_an_error(trained):
    root, _, video, meta = trained
    with pytest.raises(ValueError, match="does not occur in the caption"):
        visualize.attention_figure(root / "model", video, meta["caption"], ["purple elephant"], [])
    with pytest.raises(ValueError, match="at least one"):
        visualize.attention_figure(root / "model", video, meta["caption"], [], [])
    json.dumps(meta)  # the shard metadata the test used is plain JSON
