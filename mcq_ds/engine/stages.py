"""The MCQ curriculum and the benchmark fine-tuning recipes as named stage presets.

Each curriculum preset reproduces one original config: frames, question type, data sources, the global contrastive
batch, the learning rate and its ×0.1 milestones, and the number of GPUs it ran on (which set the size of its
updates, see `Stage.paper_ranks`). Epochs and milestones are in epochs of the original's definition (one pass over
the smallest source); the engine turns them into optimizer steps from the shards' sample counts. Every stage after
the first starts from the previous stage's exported weights only (a fresh optimizer), as the original did.

A fine-tuning preset (`ft-*`, `clip-ft-*`) trains the retrieval model, the BridgeFormer dropped, on one benchmark's
training split and evaluates its test set (`--eval-data`) after every epoch. The paper gives no fine-tuning recipe
and its code was never released, so these are ours: the MCQ family takes Frozen-in-Time's released MSR-VTT config
(`configs/msrvtt_4f_i21k.json`: 4 frames, batch 16, AdamW at 3e-5 constant, up to 100 epochs of 9,000 samples,
early stop after 10 epochs without improvement) for every benchmark; the CLIP family takes CLIP4Clip's (batch 128,
lr 1e-7 for the CLIP towers, i.e. 1e-4 × coef_lr 1e-3, 5 epochs, cosine after a warm-up of 10% of the steps, given
here in steps for each benchmark's published training size), with MCQ-CLIP's 8 evaluation frames.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    frames: int
    question_type: str  # "noun" | "verb" (verb falls back to noun)
    sources: tuple[str, ...]  # one optimizer step per source in turn (stage 1 alternates CC3M and WebVid)
    global_batch: int  # samples per optimizer step, over all ranks
    lr: float
    epochs: int
    milestones: tuple[int, ...]  # epochs after which lr ×= 0.1
    preset: str  # model preset when a stage starts without --init weights
    temperature: float = 0.05  # contrastive τ of both losses
    schedule: str = "step"  # the original's ×0.1 milestones; "cosine": linear warm-up, then cosine to 0
    warmup_steps: int = 0
    text_lr: float | None = None  # the text tower's own learning rate (None: `lr`, as in the paper)
    frozen_text_layers: int = 0  # the text tower's embeddings and first N layers stay fixed (0: all train)
    frozen_video_blocks: int = 0  # the video tower's patch projection, tables and first N blocks stay fixed
    # GPUs of the original run. Its data-parallel averaging fed AdamW (1/paper_ranks)·∇L, and Adam with (g/W, ε) takes
    # exactly the step of (g, W·ε), so the engine's default ε for the exact ∇L is 1e-6 × paper_ranks.
    paper_ranks: int = 1
    bridge: bool = True  # False: fine-tuning, the retrieval model alone (no BridgeFormer, no questions)
    benchmark: str | None = None  # the benchmark a fine-tuning stage trains on and evaluates
    epoch_samples: int | None = None  # at most this many samples make an epoch (Frozen's max_samples_per_epoch)
    patience: int | None = None  # stop after this many evaluations without a better R@1+R@5+R@10


def _fine_tune(benchmark: str) -> Stage:
    """Frozen-in-Time's released fine-tuning config, for the MCQ family. It trained under DataParallel, whose one loss
    over the gathered batch gives the exact gradient: paper_ranks stays 1."""
    return Stage(4, "noun", (benchmark,), 16, 3e-5, 100, (), "base", bridge=False, benchmark=benchmark,
                 epoch_samples=9000, patience=10)


def _clip_fine_tune(benchmark: str, warmup_steps: int, ranks: int = 4) -> Stage:
    """CLIP4Clip's fine-tuning recipe, for the CLIP family: DistributedDataParallel on 4 GPUs (8 for DiDeMo), each
    rank's loss over the gathered batch, so its updates were those of (1/ranks)·∇L."""
    return Stage(8, "noun", (benchmark,), 128, 1e-7, 5, (), "clip-b32", 0.01, paper_ranks=ranks, schedule="cosine",
                 warmup_steps=warmup_steps, bridge=False, benchmark=benchmark)


STAGES: dict[str, Stage] = {
    # the paper's recipe: 32 GPUs × 64 one-frame samples, then 40 GPUs × 20 four-frame samples
    "1f-noun": Stage(1, "noun", ("cc3m", "webvid"), 2048, 1e-4, 20, (12, 16), "base", paper_ranks=32),
    "4f-noun": Stage(4, "noun", ("webvid",), 800, 3e-5, 10, (6, 8), "base", paper_ranks=40),
    "4f-verb": Stage(4, "verb", ("webvid",), 800, 1e-5, 10, (6, 8), "base", paper_ranks=40),
    # the same curriculum for the demo model on the embedded demo data (minutes on a laptop CPU); its learning rates
    # were tuned with ε = 1e-6 on the exact gradient, so paper_ranks stays 1. The bridge starts from scratch and takes
    # large steps; the pre-trained towers' upper layers follow (launch/demo.sh keeps their lower ones fixed,
    # --frozen-text-layers 4 --frozen-video-blocks 4), the text tower at its own, slower rate. Most steps go to the
    # verb stage, the one that has to learn motion: its bridge sits at chance for its first 40-80 steps, then learns
    # (verb answers about 50 % against 19 % after 180 steps; about 40 % after 144, 27 % after 108).
    "demo-1f-noun": Stage(1, "noun", ("cc3m", "webvid"), 32, 3e-4, 6, (), "demo", schedule="cosine",
                          warmup_steps=6, text_lr=5e-5),
    "demo-4f-noun": Stage(4, "noun", ("webvid",), 32, 2e-4, 1, (), "demo", schedule="cosine", warmup_steps=6,
                          text_lr=3e-5),
    "demo-4f-verb": Stage(4, "verb", ("webvid",), 32, 2e-4, 10, (), "demo", schedule="cosine", warmup_steps=6,
                          text_lr=3e-5),
    # MCQ from CLIP (README, "MCQ from CLIP"): the same curriculum, started from `mcq-ds convert-clip ViT-B-32.pt
    # --bridge`, at a tenth of the learning rates (the towers start aligned) and with CLIP's own τ = 1/100
    "clip-1f-noun": Stage(1, "noun", ("cc3m", "webvid"), 2048, 1e-5, 20, (12, 16), "clip-b32", 0.01, paper_ranks=32),
    "clip-4f-noun": Stage(4, "noun", ("webvid",), 800, 3e-6, 10, (6, 8), "clip-b32", 0.01, paper_ranks=40),
    "clip-4f-verb": Stage(4, "verb", ("webvid",), 800, 1e-6, 10, (6, 8), "clip-b32", 0.01, paper_ranks=40),
    # its demo: a tiny CLIP-shaped model from scratch (no CLIP weights ship offline), the demo recipe
    "demo-clip-1f-noun": Stage(1, "noun", ("cc3m", "webvid"), 32, 5e-4, 6, (4,), "clip-tiny"),
    "demo-clip-4f-noun": Stage(4, "noun", ("webvid",), 32, 3e-4, 4, (3,), "clip-tiny"),
    "demo-clip-4f-verb": Stage(4, "verb", ("webvid",), 32, 1e-4, 3, (2,), "clip-tiny"),
    # fine-tuning on the benchmarks' training splits (`--data BENCHMARK=TRAIN_SHARDS --eval-data TEST_SHARDS`)
    **{f"ft-{b}": _fine_tune(b) for b in ("msrvtt", "msvd", "lsmdc", "didemo")},
    # warm-up: 10% of 5 epochs over MSR-VTT's 9,000, MSVD's 1,200, LSMDC's ~101,000 and DiDeMo's ~8,400 training
    # videos in batches of 128
    "clip-ft-msrvtt": _clip_fine_tune("msrvtt", 35),
    "clip-ft-msvd": _clip_fine_tune("msvd", 5),
    "clip-ft-lsmdc": _clip_fine_tune("lsmdc", 395),
    "clip-ft-didemo": _clip_fine_tune("didemo", 33, ranks=8),
    # its demo: the demo model on the demo data's MSR-VTT-layout training split
    "demo-ft-msrvtt": Stage(4, "noun", ("msrvtt",), 16, 5e-5, 4, (), "demo", schedule="cosine", warmup_steps=4,
                            bridge=False, benchmark="msrvtt"),
}
CURRICULUM = ("1f-noun", "4f-noun", "4f-verb")
