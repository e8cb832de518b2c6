"""What a fine-tuning stage adds to the training loop: the benchmark's test set evaluated before training and after
every epoch, the best epoch by R@1 + R@5 + R@10 (text→video, the papers' usual sum) kept, and an early stop after
`patience` evaluations without a better one (Frozen-in-Time's `early_stop`).

Selecting the epoch on the test set is what the benchmarks' published fine-tuning numbers do (MSR-VTT 1k-A, MSVD,
LSMDC and DiDeMo have no separate validation split in Frozen-in-Time's and CLIP4Clip's code). Every rank takes part
in each evaluation (each embeds its share of the set); rank 0 scores and tells the others the score. The history
and the best epoch travel in every checkpoint, so a resumed run keeps choosing as an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist

from ..eval.benchmarks import FINETUNED, PROTOCOLS
from ..eval.data import ClipSpec
from ..eval.embed import DEFAULT_PRECISION
from ..eval.scoring import score_shards
from ..runtime import write_text_atomic

log = logging.getLogger("mcq_ds.train")

EVAL_BATCH = 16  # videos per evaluation forward pass per rank
# Decoding in the training process: a test set's few frames per video decode in seconds, while worker processes would
# be started anew (torch imported again) for every evaluation.
EVAL_WORKERS = 0


def rsum(metrics: dict[str, dict[str, float]]) -> float:
    t2v = metrics["t2v"]
    return t2v["R@1"] + t2v["R@5"] + t2v["R@10"]


class EpochEvaluation:
    """The test-set evaluations of one fine-tuning run."""

    def __init__(self, shards: str, benchmark: str, frames: int, patience: int | None):
        self.shards, self.benchmark, self.frames, self.patience = shards, benchmark, frames, patience
        self.history: list[dict] = []  # {"epoch", "step", "rsum", "metrics"} per evaluation, epoch 0 = the start

    @property
    def best(self) -> dict | None:
        """The best trained epoch (the start, epoch 0, is a reference, not a candidate: it has no checkpoint)."""
        trained = [h for h in self.history if h["epoch"] > 0]
        return max(trained, key=lambda h: (h["rsum"], -h["step"])) if trained else None

    @property
    def best_tag_step(self) -> int | None:
        return self.best["step"] if self.best else None

    def should_stop(self) -> bool:
        best = self.best
        if self.patience is None or best is None:
            return False
        since = [h for h in self.history if h["epoch"] > best["epoch"]]
        return len(since) >= self.patience

    def evaluate(self, engine, tokenizer, epoch: int, step: int, tracker) -> dict:
        """Collective: every rank calls it. Evaluates the engine's model in eval mode (autocast in the engine's
        precision), appends to the history and logs `test/...` metrics at `step`."""
        model = engine.module
        spec = ClipSpec.of(model, self.frames)
        precision = "bf16" if engine.bfloat16_enabled() else DEFAULT_PRECISION
        model.eval()
        try:
            scores = score_shards(model, tokenizer, self.shards, engine.device, spec,
                                  all_captions=PROTOCOLS[self.benchmark].all_captions, batch_size=EVAL_BATCH,
                                  workers=EVAL_WORKERS, precision=precision, progress=False)
        finally:
            model.train()
        shared = [None if scores is None else scores.metrics]
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list(shared, src=0)
        metrics = shared[0]
        entry = {"epoch": epoch, "step": step, "rsum": rsum(metrics), "metrics": metrics}
        self.history.append(entry)
        tracker.log_metrics({f"test/{d}/{k.replace('@', '')}": v for d, m in metrics.items() for k, v in m.items()
                             if not k.startswith("geometric")} | {"test/rsum": entry["rsum"], "epoch": epoch}, step)
        if not dist.is_initialized() or dist.get_rank() == 0:
            t2v = metrics["t2v"]
            best = self.best
            log.info("epoch %d (step %d): %s test text->video R@1 %.1f R@5 %.1f R@10 %.1f (sum %.1f)%s", epoch, step,
                     self.benchmark, t2v["R@1"], t2v["R@5"], t2v["R@10"], entry["rsum"],
                     "  best so far" if best is entry else f"  (best: epoch {best['epoch']})" if best else "")
        return entry

    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.history = list(state["history"])



def write_finetuned(folder: Path, benchmark: str, step: int, evaluation: EpochEvaluation | None) -> None:
    """`finetuned.json` in the exported model folder: what it was fine-tuned on, which step (and epoch) it is, every
    test score; `mcq-ds eval` reads it to compare that set with the paper's fine-tuned numbers."""
    best = evaluation.best if evaluation is not None else None
    summary = {"benchmark": benchmark, "step": step,
               "selected_by": "t2v R@1+R@5+R@10 on the test set" if best else "the last step (no --eval-data)"}
    if evaluation is not None:
        summary.update(test_shards=evaluation.shards, epoch=best["epoch"] if best else None,
                       history=evaluation.history)
    write_text_atomic(folder / FINETUNED, json.dumps(summary, indent=2) + "\n")


def consolidated_state(engine, ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """The fp32 weights of checkpoint `tag`: from the ZeRO master copy (ZeRO 1-3), or the module states (ZeRO 0)."""
    if engine.zero_optimization_stage() > 0:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    from ..model.weights_io import load_pickled

    states = sorted((ckpt_dir / tag).glob("*model_states.pt"))
    return {k: v.float() for k, v in load_pickled(states[0])["module"].items()}
