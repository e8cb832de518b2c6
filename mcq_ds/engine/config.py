"""The resolved configuration of one training stage: stage preset ← config file ← command line.

The resolved config is written to `<out>/config.json` and into every checkpoint, so a run can always be explained
and repeated from its own folder. It also binds the folder to its run: a later command whose config differs from
the one the folder (or the checkpoint it resumes) was made with is refused, see `config_changes`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stages import STAGES

COMMAND_DOC = ("Runs one curriculum stage (1f-noun, 4f-noun, 4f-verb, their clip-* versions, or the demo-* stages) or "
               "one benchmark fine-tuning stage (ft-*, clip-ft-*: the BridgeFormer dropped, the test set of --eval-data "
               "evaluated after every epoch, the best epoch exported) on a DeepSpeed ZeRO engine, on one machine or "
               "under `deepspeed --hostfile` (see launch/). Checkpoints go to OUT/checkpoints and the final fp32 model "
               "to OUT/model; rerunning the same command resumes from the newest complete checkpoint. Options left "
               "out take the stage's value (shown as 'the stage's'), then the config file's, then the default shown.")

DS_CONFIGS = Path(__file__).resolve().parents[1] / "ds_configs"  # package data: found in any install


def default_ds_config() -> str:
    """The DeepSpeed JSON a run gets without --ds-config: ZeRO-2 in bf16 (fp32 master weights, gradients accumulated
    and reduced in fp32) on a GPU and on a CPU with bf16 units, where bf16 matrix products run at about twice the
    fp32 rate; fp32 on a CPU without them, where bf16 is emulated and slower."""
    import torch

    from ..runtime import cpu_has_native_bf16

    return "zero2_bf16.json" if torch.cuda.is_available() or cpu_has_native_bf16() else "cpu_fp32.json"


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    metadata = {"help": help, "choices": choices}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainConfig:
    stage: str = _opt("demo-1f-noun", "curriculum stage preset", tuple(STAGES))
    data: dict[str, str] = _opt({}, "SOURCE=SHARDS for every source of the stage (cc3m, webvid; a fine-tuning stage's "
                                "benchmark training split), e.g. --data webvid=shards/webvid; SHARDS is a converted "
                                "folder or a brace-expanded tar list")
    eval_data: str | None = _opt(None, "test shards of a fine-tuning stage's benchmark, evaluated with its protocol "
                                 "before training and after every epoch; the epoch with the best R@1+R@5+R@10 is kept "
                                 "and exported to OUT/model (without it: the last epoch)")
    out: str = _opt("runs/train", "output folder: checkpoints/, model/, config.json, the local tracking record")
    max_skip_share: float = _opt(0.5, "stop with an error naming the shard when more than this share of the samples "
                                 "a data reader has read were unusable")
    init: str | None = _opt(None, "model to start from: the previous stage's OUT/model, `mcq-ds init`'s folder, or a "
                            "released weight file (MCQ.pth, MILES.pth, MCQ_CLIP.pth); fine-tuning stages need one")
    preset: str | None = _opt(None, "model preset for a fresh start without --init (default: the stage's)",
                              ("base", "tiny", "demo", "clip-b32", "clip-b16", "clip-tiny"))
    frames: int | None = _opt(None, "frames per clip (default: the stage's)")
    question_type: str | None = _opt(None, "the phrase a question masks (verb falls back to noun when a caption has no "
                                     "verb phrase; default: the stage's)", ("noun", "verb"))
    question_mode: str = _opt("span", "span: mask the chosen phrase's characters; parity: the original's masking "
                              "(every occurrence of the phrase's words, whole words only)", ("span", "parity"))
    global_batch: int | None = _opt(None, "samples per optimizer step over all ranks (default: the stage's)")
    micro_batch: int | None = _opt(None, "samples per rank per forward (default: global batch / ranks)")
    negatives: str = _opt("global", "global: with gradient accumulation too, every sample of the global batch is a "
                          "negative for every other (embeddings cached, each micro-batch's forward run twice) | micro: "
                          "negatives from one micro-batch of every rank (one forward)", ("global", "micro"))
    lr: float | None = _opt(None, "base learning rate (default: the stage's)")
    text_lr: float | None = _opt(None, "learning rate of the text tower (default: the stage's; the paper's stages "
                                 "train every part at --lr)")
    frozen_text_layers: int | None = _opt(None, "keep the text tower's embeddings and first N layers fixed (default: "
                                          "the stage's; 0, everything trains, in the paper's stages)")
    frozen_video_blocks: int | None = _opt(None, "keep the video tower's patch projection, [CLS] and position tables "
                                           "and first N blocks fixed (default: the stage's; 0 in the paper's stages)")
    epochs: int | None = _opt(None, "epochs, each one pass over the smallest source (default: the stage's)")
    milestones: list[int] | None = _opt(None, "epochs after which lr ×= 0.1 (default: the stage's)")
    schedule: str | None = _opt(None, "step: the original's ×0.1 at each milestone; cosine: linear warm-up, then "
                                "cosine (default: the stage's; step for the paper's stages)", ("step", "cosine"))
    warmup_steps: int | None = _opt(None, "linear warm-up steps for --schedule cosine (default: the stage's)")
    epoch_samples: int | None = _opt(None, "at most this many samples make an epoch (for the schedule, evaluation and "
                                     "checkpoints; default: the stage's, a fine-tuning stage's 9,000 as Frozen's)")
    patience: int | None = _opt(None, "stop after this many evaluations without a better R@1+R@5+R@10 (default: the "
                                "stage's; Frozen's 10 for ft-*)")
    max_steps: int | None = _opt(None, "stop after this many optimizer steps (default: epochs × steps per epoch)")
    temperature: float | None = _opt(None, "contrastive temperature τ (default: the stage's, 0.05; CLIP stages 0.01)")
    mcq_weight: float = _opt(1.0, "weight w of the MCQ term in L(text, video) + w·L(answer, bridge); 0 trains the "
                             "dual encoder alone, the paper's baseline (the BridgeFormer not run)")
    adam_eps: float | None = _opt(None, "AdamW ε for the exact global-batch gradient (default: 1e-6 × the GPUs of the "
                                  "original stage, 32 or 40, so updates are the paper's at any world size; demo stages "
                                  "1e-6). The original's update on W GPUs is --adam-eps 1e-6×W")
    adam_eps_style: str = _opt("transformers", "transformers: ε added before Adam's bias correction, as the "
                               "original's transformers.AdamW | torch: ε added after it (torch/DeepSpeed AdamW as is)",
                               ("transformers", "torch"))
    ds_config: str | None = _opt(None, "DeepSpeed JSON (a path, or a name in mcq_ds/ds_configs/; default: "
                                 "zero2_bf16.json on a GPU or a CPU with AVX512-BF16/AMX, else "
                                 "cpu_fp32.json)")
    optimizer: str = _opt("torch", "AdamW implementation when the DeepSpeed JSON has no optimizer section: torch "
                          "(PyTorch's fused AdamW, nothing to compile) | deepspeed (DeepSpeed's FusedAdam, or CPU Adam "
                          "with offload: compiled at start-up unless prebuilt, see README)",
                          choices=("torch", "deepspeed"))
    grad_checkpointing: bool | None = _opt(None, "per-block activation checkpointing (default: on only when the "
                                           "step's estimated memory does not fit the GPU's free memory; off on CPU)")
    compile: bool = _opt(False, "torch.compile every transformer block (under ZeRO-3: DeepSpeed's engine.compile())")
    hflip: bool = _opt(True, "random horizontal flip in training (off for captions that say left/right)")
    frame_sampling: str = _opt("time", "time: training frames at the instants the original sampled (uniform in each "
                               "segment of the clip's own frames), each from the nearest stored frame | stored: the "
                               "original's index rule applied to the stored frames", ("time", "stored"))
    train_resize: str = _opt("original", "original: bilinear without antialiasing, as the original's torchvision 0.8.2 "
                             "tensor transforms | antialias: antialiased bilinear", ("original", "antialias"))
    loader: str = _opt("torch", "torch: the reference loader's worker processes; dali: NVIDIA DALI (GPU decoding "
                       "when there is a GPU)", ("torch", "dali"))
    workers: int = _opt(4, "data-loading workers per rank")
    seed: int = _opt(0, "seed of every random draw (data, initialisation, dropout)")
    save_every: int = _opt(1000, "checkpoint every N optimizer steps (and at the end)")
    keep_last: int = _opt(3, "complete checkpoints to keep")
    log_every: int = _opt(10, "log metrics every N optimizer steps")
    resume: str | None = _opt("latest", "latest (the newest complete checkpoint, if any), a checkpoint folder (also "
                              "another run's), or none for a fresh start. A rerun with other settings than the "
                              "checkpoint's is refused; given on the command line, --resume continues with new "
                              "data, lr, schedule, length, temperature, flip or question settings")
    mlflow_uri: str | None = _opt(None, "MLflow tracking server (default: a local sqlite store in OUT; none: off)")
    experiment: str = _opt("mcq-ds", "MLflow experiment name")
    run_name: str | None = _opt(None, "MLflow run name (default: the stage)")

    def stage_defaults(self) -> None:
        """Checks the enumerated options (a config file bypasses argparse's choices) and fills every unset recipe
        value from the stage preset."""
        for f in dataclasses.fields(self):
            value, choices = getattr(self, f.name), f.metadata["choices"]
            if choices and value is not None and value not in choices:
                raise ValueError(f"{f.name} must be one of {', '.join(choices)}; got {value!r}")
        stage = STAGES[self.stage]
        for name, value in (("frames", stage.frames), ("question_type", stage.question_type),
                            ("global_batch", stage.global_batch), ("lr", stage.lr), ("epochs", stage.epochs),
                            ("milestones", list(stage.milestones)), ("preset", stage.preset),
                            ("temperature", stage.temperature), ("adam_eps", 1e-6 * stage.paper_ranks),
                            ("schedule", stage.schedule), ("warmup_steps", stage.warmup_steps),
                            ("epoch_samples", stage.epoch_samples), ("patience", stage.patience),
                            ("text_lr", stage.text_lr), ("frozen_text_layers", stage.frozen_text_layers),
                            ("frozen_video_blocks", stage.frozen_video_blocks)):
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.mcq_weight < 0:
            raise ValueError(f"--mcq-weight must be 0 (no MCQ) or positive, got {self.mcq_weight}")
        if not stage.bridge and not self.init:
            raise ValueError(f"stage {self.stage} fine-tunes a pre-trained model: give --init MODEL (a model folder, "
                             "MCQ.pth, MILES.pth or MCQ_CLIP.pth)")
        if self.eval_data and not stage.benchmark:
            raise ValueError(f"--eval-data is a fine-tuning stage's test set; stage {self.stage} has no benchmark")
        missing = [s for s in stage.sources if s not in self.data]
        if missing:
            raise ValueError(f"stage {self.stage} trains on {list(stage.sources)}; give "
                             + " ".join(f"--data {s}=SHARD_DIR" for s in missing))

    @property
    def sources(self) -> tuple[str, ...]:
        return STAGES[self.stage].sources

    @property
    def bridge(self) -> bool:
        """False for fine-tuning: the retrieval model, trained on L(text, video) alone."""
        return STAGES[self.stage].bridge

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Settings that change how a run is executed, stored or watched, never what it computes: they may differ on any
# rerun (a new --workers count restarts the current epoch on the new data split, as a new world size does).
RUNTIME_KEYS = frozenset({"out", "resume", "workers", "log_every", "save_every", "keep_last", "mlflow_uri",
                          "experiment", "run_name", "compile", "grad_checkpointing", "max_skip_share"})
# Settings a deliberate resume (`--resume` given) may change: the new values take effect from the resumed step.
ADJUSTABLE_KEYS = frozenset({"data", "lr", "text_lr", "epochs", "milestones", "max_steps", "schedule", "warmup_steps",
                             "temperature", "hflip", "question_type", "question_mode", "eval_data", "patience"})
# Every other setting (stage, init, preset, frames, batch sizes, ds_config, loader, seed) made the weights, the
# optimizer state and the data position a checkpoint holds, and is fixed for the life of a run.


def config_changes(saved: dict[str, Any], cfg: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """`{key: (saved value, new value)}` for the settings, other than runtime ones, in which `cfg` differs from the
    config a run was made with (keys an older version did not record are not compared)."""
    new = cfg.to_dict()
    return {k: (saved[k], new[k]) for k in new if k in saved and k not in RUNTIME_KEYS and saved[k] != new[k]}


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    return "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field (underscores become dashes). Every flag's parsed default is None, so that an
    unset flag leaves the config file's value alone; the help shows the value it gets."""
    parser.add_argument("--config", help="JSON file with any of the options below (command-line flags win)")
    for f in dataclasses.fields(TrainConfig):
        flags = (["-o"] if f.name == "out" else []) + ["--" + f.name.replace("_", "-")]
        help_ = f.metadata["help"]
        if f.default is not None and f.default is not dataclasses.MISSING and "default" not in help_:
            shown = {True: "on", False: "off"}.get(f.default, f.default) if isinstance(f.default, bool) else f.default
            help_ += f" (default: {shown})"
        if f.name == "data":
            parser.add_argument(*flags, action="append", metavar="SOURCE=SHARDS", help=help_)
        elif f.type in ("bool | None", "bool"):
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, default=None, help=help_)
        elif f.name == "milestones":
            parser.add_argument(*flags, type=int, nargs="*", default=None, help=help_)
        else:
            kind = {"int | None": int, "int": int, "float | None": float, "float": float}.get(f.type, str)
            parser.add_argument(*flags, type=kind, default=None, choices=f.metadata["choices"], help=help_)


def run(args: argparse.Namespace) -> int:
    from .train import run as train_run

    return train_run(args)


def resolve(args: argparse.Namespace) -> TrainConfig:
    values: dict[str, Any] = {}
    if args.config:
        values.update(json.loads(Path(args.config).read_text()))
    for f in dataclasses.fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is None:
            continue
        if f.name == "data":
            given = dict(_source_pair(item) for item in given)
        values[f.name] = given
    unknown = set(values) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"{args.config}: unknown training options {sorted(unknown)}")
    if values.get("resume") in ("none", "None", ""):
        values["resume"] = None
    cfg = TrainConfig(**values)
    cfg.stage_defaults()
    return cfg


def resume_on_purpose(args: argparse.Namespace) -> bool:
    """Whether `--resume` was given on the command line, rather than taken from its default or a config file (a
    run's own config.json, reused as --config, holds one)."""
    return getattr(args, "resume", None) is not None


def _source_pair(item: str) -> tuple[str, str]:
    name, sep, shards = item.partition("=")
    if not sep or not name or not shards:
        raise ValueError(f"--data takes SOURCE=SHARDS (e.g. webvid=shards/webvid), got '{item}'")
    return name, shards
