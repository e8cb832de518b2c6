"""Which of a model's embeddings tell the answers of its questions apart: for an MCQ loss that stays at chance.

    python -m mcq_ds.bench.separability MODEL SHARDS [--question-type verb] [--samples 384]

An MCQ loss at chance (2·ln of the global batch) can have three causes: the answers all look alike (the text tower
does not tell the phrases apart), the bridge gives one output whatever it is asked (collapsed onto the mean answer),
or the video holds nothing of what is asked (the bridge cannot read what the video tower does not keep). For SAMPLES
training samples of SHARDS with the stage's questions, this embeds the answer, the bridge output, the video and the
caption with MODEL (eval mode) and prints for each embedding:

- a linear probe's accuracy at naming the sample's answer phrase on a held-out third of the samples (multinomial
  logistic regression on standardised embeddings, fit on the other two thirds), beside the majority class's share of
  that third (what a probe that learned nothing gets);
- how alike the classes are (mean cosine between class centroids; 1 means that on average they cannot be told
  apart) and how alike all outputs are (mean cosine of each embedding to the mean embedding; 1 means one output
  for every input).

`--fit-video STEPS` then asks whether the video tower could learn the answers at all in that many steps if it were
told them directly: a copy of the video tower and a linear head on its embedding are trained with cross-entropy on
the answer phrases of fresh training batches (AdamW at `--fit-lr`), and the accuracy on each quarter's batches is
printed before they are trained on. A video tower that stays at chance here gets nothing from any loss in as many
steps; the MCQ term's signal reaches it only through the bridge. With `--fit-temporal` the copy gains Frozen-in-Time's
divided space-time attention (the VideoFormer's `temporal_attention`, zero-initialised, so it starts as the same
function): whether a video tower that can compare frames position by position would learn them.

Only samples whose question is of the asked kind count (a verb question falls back to a noun where a caption has no
verb phrase), and only the `--classes` most frequent answers, each with at least 3 samples.
"""
from __future__ import annotations

import argparse
import copy
import itertools
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

EMBEDDINGS = ("answer", "bridge", "video", "text")


@dataclass(frozen=True)
class Separability:
    probe_accuracy: float  # % of the held-out samples whose answer the linear probe names
    majority: float  # % of the held-out samples in the most common class: the probe's chance
    centroid_cosine: float  # mean cosine between the class centroids of the unit embeddings
    spread_cosine: float  # mean cosine of each unit embedding to their mean direction


def linear_probe(x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, steps: int = 300,
                 weight_decay: float = 1e-3) -> float:
    """Held-out accuracy (%) of multinomial logistic regression fit on the rows `train` (a boolean mask) of x."""
    mean, std = x[train].mean(0), x[train].std(0).clamp_min(1e-6)  # scale-free: a collapsed but informative
    x = (x - mean) / std                                           # embedding is found informative
    classes = int(y.max()) + 1
    weight = torch.zeros(x.shape[1], classes, requires_grad=True)
    bias = torch.zeros(classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x[train] @ weight + bias, y[train]) + weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return 100 * ((x[~train] @ weight + bias).argmax(1) == y[~train]).float().mean().item()


def separability(x: torch.Tensor, y: torch.Tensor) -> Separability:
    """x: (N, D) embeddings; y: (N,) class indices 0..C-1. The first two thirds fit the probe, the rest score it."""
    train = torch.arange(len(y)) < 2 * len(y) // 3
    unit = F.normalize(x.double(), dim=-1)
    centroids = F.normalize(torch.stack([unit[y == c].mean(0) for c in range(int(y.max()) + 1)]), dim=-1)
    off_diagonal = ~torch.eye(len(centroids), dtype=torch.bool)
    held_out = Counter(y[~train].tolist())
    return Separability(
        probe_accuracy=linear_probe(x.float(), y, train),
        majority=100 * max(held_out.values()) / sum(held_out.values()),
        centroid_cosine=(centroids @ centroids.T)[off_diagonal].mean().item(),
        spread_cosine=(unit @ F.normalize(unit.mean(0), dim=0)).mean().item())


def training_batches(model, tokenizer, shards: Path, question_type: str, frames: int, batch_size: int, seed: int):
    """Endless training batches of SHARDS as a training stage would draw them (without flips)."""
    from ..data.loader import LoaderConfig, ShardLoader

    return iter(ShardLoader(LoaderConfig(
        shards=shards, source=Path(shards).name, tokenizer=tokenizer, num_frames=frames, img_size=model.cfg.video.img_size,
        batch_size=batch_size, workers=0, seed=seed, question_type=question_type, hflip=False,
        normalisation=model.cfg.normalisation, frame_sampling="time", antialias=False)))


def answer_phrases(tokenizer, batch) -> list[str]:
    return [a.strip() for a in tokenizer.batch_decode(batch.answer.ids, skip_special_tokens=True)]


def collect(model, tokenizer, shards: Path, question_type: str, frames: int, samples: int, batch_size: int,
            seed: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The four embeddings and the answer phrase of `samples` training samples whose question is of that type."""
    loader = training_batches(model, tokenizer, shards, question_type, frames, batch_size, seed)
    found: dict[str, list[torch.Tensor]] = {name: [] for name in EMBEDDINGS}
    phrases: list[str] = []
    batches = itertools.islice(loader, 4 * (samples // batch_size + 1))  # ends even if few are of the kind
    with torch.no_grad():
        for batch in batches:
            batch = batch.to("cpu")
            emb = model(batch.video, batch.text, batch.question, batch.answer)
            keep = torch.tensor([kind == question_type for kind in batch.kinds])
            for name in EMBEDDINGS:
                found[name].append(getattr(emb, name).float()[keep])
            phrases += [a for a, k in zip(answer_phrases(tokenizer, batch), keep) if k]
            if len(phrases) >= samples:
                break
    return {name: torch.cat(parts)[:samples] for name, parts in found.items()}, phrases[:samples]


def with_temporal_attention(model):
    """A copy of an MCQ-family model whose VideoFormer gains divided space-time attention, zero-initialised (its
    output is exactly that of the model until it trains); every other weight is the model's."""
    from ..model import create_model

    if not hasattr(model.cfg.video, "temporal_attention"):
        raise SystemExit("--fit-temporal needs an MCQ-family model (a VideoFormer); this one has a CLIP vision tower")
    cfg = copy.deepcopy(model.cfg)
    cfg.video.temporal_attention = True
    grown = create_model(cfg)
    state = model.state_dict()
    added = {k: v for k, v in grown.state_dict().items() if k not in state}  # its zero-initialised temporal weights
    foreign = [k for k in added if not k.startswith("video_model.")
               or not any(part in k for part in (".timeattn.", ".norm3.", "temporal_embed"))]
    if foreign:
        raise RuntimeError(f"growing temporal attention added keys that are not temporal attention: {foreign}")
    grown.load_state_dict({**state, **added}, strict=True)
    return grown


def fit_video(model, batches, tokenizer, classes: list[str], question_type: str, steps: int, lr: float,
              temporal: bool = False) -> list[tuple[int, float, float]]:
    """Trains a copy of the video tower with a linear head to name each sample's answer among `classes`; returns
    (steps done, accuracy %, chance %) over each quarter of the steps, each batch scored before it is trained on.
    Samples of other answers or question kinds are left out."""
    from ..runtime import cpu_has_native_bf16

    # only what encode_video uses gets gradients, so only that moves
    student = (with_temporal_attention(model) if temporal else copy.deepcopy(model)).train()
    head = torch.nn.Linear(model.cfg.embed_dim, len(classes))
    optimizer = torch.optim.AdamW([*student.parameters(), *head.parameters()], lr=lr, weight_decay=0.0)
    autocast = torch.autocast("cpu", torch.bfloat16, enabled=cpu_has_native_bf16())
    index = {c: i for i, c in enumerate(classes)}
    report, right, seen, common = [], 0, 0, Counter()
    for step in range(1, steps + 1):
        keep: list[int] = []
        for _ in range(100):  # a batch without a sample of these answers is passed over
            batch = next(batches).to("cpu")
            answers = answer_phrases(tokenizer, batch)
            keep = [i for i, (a, k) in enumerate(zip(answers, batch.kinds)) if k == question_type and a in index]
            if keep:
                break
        else:
            raise ValueError(f"100 batches in a row without a {question_type} question answered by one of {classes}")
        y = torch.tensor([index[answers[i]] for i in keep], dtype=torch.long)
        with autocast:
            logits = head(10 * F.normalize(student.encode_video(batch.video[keep]), dim=-1))  # τ = 0.1
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        right, seen = right + int((logits.argmax(1) == y).sum()), seen + len(y)
        common.update(y.tolist())
        if step % max(1, steps // 4) == 0 or step == steps:
            report.append((step, 100 * right / seen, 100 * max(common.values()) / seen))
            right, seen, common = 0, 0, Counter()
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="an mcq-ds model folder with its BridgeFormer (a stage's OUT/model)")
    parser.add_argument("shards", type=Path, help="training shards with stored phrases (mcq-shards output)")
    parser.add_argument("--question-type", choices=("noun", "verb"), default="verb",
                        help="the questions to ask (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=384, help="samples to embed (default: %(default)s)")
    parser.add_argument("--classes", type=int, default=32,
                        help="keep the samples of the N most frequent answers (default: %(default)s)")
    parser.add_argument("--frames", type=int, help="frames per video (default: the model's)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per forward pass (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="the loader's shuffle seed (default: %(default)s)")
    parser.add_argument("--fit-video", type=int, default=0, metavar="STEPS",
                        help="then train a copy of the video tower to name the answers directly for STEPS batches "
                        "(default: 0, not done)")
    parser.add_argument("--fit-temporal", action="store_true", help="with --fit-video: give the copy divided "
                        "space-time attention first (zero-initialised)")
    parser.add_argument("--fit-lr", type=float, default=1e-3, help="AdamW learning rate of --fit-video "
                        "(default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    from ..model.loading import load_pretrained

    for name, least in (("samples", 6), ("classes", 2), ("batch_size", 1), ("fit_video", 0)):
        if getattr(args, name) < least:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least {least}, got {getattr(args, name)}")
    if args.fit_temporal and not args.fit_video:
        raise SystemExit("--fit-temporal changes what --fit-video trains; give --fit-video STEPS with it")
    model, tokenizer = load_pretrained(args.model)
    if not getattr(model.cfg, "bridge", False):
        raise SystemExit(f"{args.model}: this model has no BridgeFormer, so it asks no questions; give a "
                         "pre-training stage's model")
    model.eval()
    frames = args.frames or model.cfg.video.num_frames
    embeddings, phrases = collect(model, tokenizer, args.shards, args.question_type, frames, args.samples,
                                  args.batch_size, args.seed)
    counts = Counter(phrases)
    classes = [p for p, n in counts.most_common(args.classes) if n >= 3]
    if len(classes) < 2:
        raise SystemExit(f"{args.shards}: {len(phrases)} {args.question_type} questions with "
                         f"{len(classes)} answer(s) asked at least 3 times; a probe needs two (try more --samples)")
    index = {p: i for i, p in enumerate(classes)}
    rows = torch.tensor([p in index for p in phrases])
    y = torch.tensor([index[p] for p in phrases if p in index])
    print(f"{args.model}: {int(rows.sum())} {args.question_type} questions of {len(classes)} answers "
          f"({', '.join(classes[:6])}{', ...' if len(classes) > 6 else ''}), {frames} frames")
    print(f"{'embedding':10s} {'probe names the answer':>24s} {'(majority)':>11s} {'centroid cos':>13s} "
          f"{'cos to mean':>12s}")
    for name in EMBEDDINGS:
        s = separability(embeddings[name][rows], y)
        print(f"{name:10s} {s.probe_accuracy:23.1f}% {s.majority:10.1f}% {s.centroid_cosine:13.3f} "
              f"{s.spread_cosine:12.3f}")
    if args.fit_video:
        batches = training_batches(model, tokenizer, args.shards, args.question_type, frames, args.batch_size,
                                   args.seed + 1)
        print(f"video tower{' with temporal attention' if args.fit_temporal else ''} told the answers directly "
              f"(cross-entropy, lr {args.fit_lr:g}): accuracy on batches not yet trained on")
        for step, accuracy, chance in fit_video(model, batches, tokenizer, classes, args.question_type,
                                                args.fit_video, args.fit_lr, args.fit_temporal):
            print(f"  up to step {step:5d}: {accuracy:5.1f}% (most common answer {chance:.1f}%)", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mcq_ds.bench.separability", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
