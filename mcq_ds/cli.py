"""The `mcq-ds` command: the one entry point of the library (training, evaluation, conversion of weights,
benchmarks, tracking replay). Each subcommand lives in the module that does its job; this file only wires them up.

Building the parser imports nothing heavy: a subcommand's module (and so torch, DeepSpeed, the model) is imported
only when that subcommand runs or shows its own `--help`, so `mcq-ds --help` answers at once.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# Nothing in mcq-ds downloads anything; make the Hugging Face libraries fail fast instead of hanging on a network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# name → (module with `add_arguments(parser)` and `run(args) -> int`, one-line help)
COMMANDS = {
    "init": ("mcq_ds.model.init", "write the stage-1 starting model: timm ViT + local text encoder + fresh bridge"),
    "convert-original": ("mcq_ds.model.loading", "turn a released MCQ checkpoint (MCQ.pth, ...) into a model folder"),
    "convert-clip": ("mcq_ds.model.clip_loading", "turn OpenAI/open_clip CLIP weights or MCQ_CLIP.pth into a model "
                     "folder"),
    "train": ("mcq_ds.engine.config", "run one stage of the MCQ curriculum on a DeepSpeed engine"),
    "eval": ("mcq_ds.eval.retrieval", "zero-shot text-video retrieval on converted shards (the MSR-VTT 1k-A "
             "protocol)"),
    "extract": ("mcq_ds.eval.extract", "videos and text queries to L2-normalised embeddings (.npy + ids), resumable"),
    "search": ("mcq_ds.eval.search", "top-k video ids and scores for text queries over saved embeddings"),
    "visualize": ("mcq_ds.eval.visualize", "PNG of the BridgeFormer's cross-attention for noun/verb questions"),
    "serve": ("mcq_ds.serve.app", "a local search server and web page over extracted video embeddings"),
    "export-onnx": ("mcq_ds.serve.onnx_export", "the text and video encoders as two ONNX files + the tokenizer"),
    "tracking-replay": ("mcq_ds.tracking", "push a run's local tracking record (tracking.jsonl) into MLflow"),
    "ablation": ("mcq_ds.bench.ablation", "the demo curriculum with and without MCQ over seeds: held-out retrieval "
                 "and the motion probe"),
    "separability": ("mcq_ds.bench.separability", "which embeddings (answer, bridge, video, text) tell the answers of "
                     "a question kind apart: why an MCQ loss sits at chance"),
}
# benchmarks: `mcq-ds bench NAME ...`, each module's own `main(argv)`
BENCHMARKS = {
    "model": ("mcq_ds.bench.model", "forward+backward speed, MFU and peak memory of one training step"),
    "batch": ("mcq_ds.bench.batch", "host-side cost of a batch's video on its way to the GPU, float32 vs uint8"),
    "optimizer": ("mcq_ds.bench.optimizer", "an offloaded AdamW step on the CPU: PyTorch's fused vs DeepSpeed's"),
    "train": ("mcq_ds.bench.train", "training throughput of a stage on real shards (loader + engine)"),
    "loader": ("mcq_ds.bench.loader", "throughput of the reference loader"),
    "dali": ("mcq_ds.bench.dali", "throughput of the DALI pipeline against the reference loader"),
    "extract": ("mcq_ds.bench.extract", "extraction and search speed"),
    "serve": ("mcq_ds.bench.serve", "search server queries/s, latency and memory at 10 k and 1 M videos"),
}


def _run_benchmark(args: argparse.Namespace) -> int:
    importlib.import_module(BENCHMARKS[args.benchmark][0]).main(args.rest)
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every subcommand, with the options of `command` only (the others are filled in when they are chosen)."""
    parser = argparse.ArgumentParser(
        prog="mcq-ds", description="Train, evaluate and export MCQ / BridgeFormer video-text retrieval models.")
    # the DeepSpeed launcher passes --local_rank=N before the command; the engine reads LOCAL_RANK from the environment
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == command:
            module = importlib.import_module(module_name)
            p.description = getattr(module, "COMMAND_DOC", module.__doc__)
            module.add_arguments(p)
            p.set_defaults(func=module.run)
    p = sub.add_parser("bench", help="benchmarks: " + ", ".join(BENCHMARKS),
                       description="Benchmarks, each with its own --help: "
                       + "; ".join(f"{k}: {h}" for k, (_, h) in BENCHMARKS.items()))
    p.add_argument("benchmark", choices=list(BENCHMARKS))
    p.add_argument("rest", nargs=argparse.REMAINDER, help="the benchmark's own options (see its --help)")
    p.set_defaults(func=_run_benchmark)
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in `argv` (the first word that is one), without parsing the rest."""
    return next((a for a in argv if a in COMMANDS or a == "bench"), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command_of(argv)).parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"mcq-ds {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a full disk, a read-only or foreign output folder
        from mcq_shards.errors import describe_os_error

        print(f"mcq-ds {args.command}: error: {describe_os_error(err, getattr(args, 'out', None))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
