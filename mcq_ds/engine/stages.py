"""The MCQ curriculum as named stage presets: the original configs' frames, questions, sources, batch and lr.

Each preset reproduces one original config: frames, question type, data sources, the global contrastive batch, the
learning rate and its ×0.1 milestones, and the number of GPUs it ran on (which set the size of its updates, see
`Stage.paper_ranks`). Epochs and milestones are in epochs of the original's definition (one pass
over the smallest source); the engine turns them into optimizer steps from the shards' sample counts. Every stage
after the first starts from the previous stage's exported weights only (a fresh optimizer), as the original did.
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
    # GPUs of the original run. Its data-parallel averaging fed AdamW (1/paper_ranks)·∇L, and Adam with (g/W, ε) takes
    # exactly the step of (g, W·ε), so the engine's default ε for the exact ∇L is 1e-6 × paper_ranks.
    paper_ranks: int = 1


STAGES: dict[str, Stage] = {
    # the paper's recipe: 32 GPUs × 64 one-frame samples, then 40 GPUs × 20 four-frame samples
    "1f-noun": Stage(1, "noun", ("cc3m", "webvid"), 2048, 1e-4, 20, (12, 16), "base", paper_ranks=32),
    "4f-noun": Stage(4, "noun", ("webvid",), 800, 3e-5, 10, (6, 8), "base", paper_ranks=40),
    "4f-verb": Stage(4, "verb", ("webvid",), 800, 1e-5, 10, (6, 8), "base", paper_ranks=40),
    # the same curriculum for the tiny model on the embedded demo data (a few minutes on a laptop CPU); its learning
    # rates were tuned with ε = 1e-6 on the exact gradient, so paper_ranks stays 1. The video tower and the bridge
    # start from scratch and take large steps; the pre-trained text encoder tunes slowly (and in launch/demo.sh keeps
    # its embeddings and first 4 of 6 layers fixed, --frozen-text-layers 4: they are most of a step's compute, and the
    # sentences need no new words). Most steps go to the verb stage, the one that has to learn motion.
    "demo-1f-noun": Stage(1, "noun", ("cc3m", "webvid"), 32, 3e-4, 6, (), "demo", schedule="cosine",
                          warmup_steps=6, text_lr=5e-5),
    "demo-4f-noun": Stage(4, "noun", ("webvid",), 32, 2e-4, 1, (), "demo", schedule="cosine", warmup_steps=6,
                          text_lr=3e-5),
    "demo-4f-verb": Stage(4, "verb", ("webvid",), 32, 2e-4, 2, (), "demo", schedule="cosine", warmup_steps=6,
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
}
CURRICULUM = ("1f-noun", "4f-noun", "4f-verb")
