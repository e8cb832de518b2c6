"""Feature-extraction speed: videos/s of decoding (steady state), of the model, and of `mcq-ds extract` end to end
(including its workers' start-up); and the latency of `mcq-ds search` over many saved embeddings.

    python -m mcq_ds.bench.extract --model base --videos 32 --seconds 10 --workers 2

The videos are written here with PyAV (H.264, 320×240 at 30 fps, MSR-VTT's usual format) and show a moving
pattern; the model is the `base` preset (ViT-B/16 + DistilBERT size) with random weights, which costs exactly what
trained weights cost. Search times the exact chunked top-k over `--search-rows` random unit vectors read from a
memory-mapped .npy (the file is written first and not timed). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..model.presets import preset
from ..eval.checkpoint import load_model
from ..eval.data import ClipSpec
from ..runtime import pick_device
from ..eval.extract import VideoFiles, as_list, extract_videos
from ..eval.search import chunked_topk, open_embeddings
from ..model import MCQ, load_tokenizer, save_pretrained
from .serve import random_unit_rows


def write_videos(folder: Path, count: int, seconds: float, width: int, height: int, fps: int) -> list[str]:
    import av

    y, x = np.mgrid[0:height, 0:width]
    paths = []
    for n in range(count):
        path = folder / f"clip{n:04d}.mp4"
        with av.open(str(path), "w") as out:
            stream = out.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for i in range(round(seconds * fps)):
                shift = (i * 4 + n * 17) % width
                frame = np.stack([(x + shift) % 256, (y * 2 + n * 9) % 256, (x + y + i) % 256], -1).astype(np.uint8)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        paths.append(str(path))
    return paths


def _decode_rate(paths: list[str], spec: ClipSpec, workers: int) -> float:
    """Steady-state videos/s: timed from the first decoded video on, so worker start-up is not counted."""
    loader = DataLoader(VideoFiles(paths, spec), batch_size=1, num_workers=workers, collate_fn=as_list,
                        multiprocessing_context="spawn" if workers else None)
    start = None
    for items in loader:
        assert items[0][1] is not None, items[0][2]
        start = start or time.perf_counter()
    return (len(paths) - 1) / (time.perf_counter() - start)


@torch.no_grad()
def _model_rate(model: MCQ, spec: ClipSpec, batch: int, device: torch.device, repeats: int) -> float:
    video = torch.randn(batch, spec.num_frames, 3, spec.img_size, spec.img_size, device=device)
    model.encode_video(video)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        model.encode_video(video)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = tmp / "model"
        if Path(args.model).exists():
            folder = Path(args.model)
        else:
            model = MCQ(preset(args.model))
            save_pretrained(model, load_tokenizer(model.cfg.text), folder)
        loaded = load_model(folder, frames=args.frames)
        loaded.model.to(device)
        spec = ClipSpec.of(loaded.model, args.frames)
        paths = write_videos(tmp, args.videos, args.seconds, args.width, args.height, args.fps)
        result = {
            "device": str(device), "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "model": args.model, "frames": args.frames, "batch_size": args.batch_size, "workers": args.workers,
            "videos": args.videos, "video": f"H.264 {args.width}x{args.height} {args.fps} fps {args.seconds} s",
            "decode_videos_per_s": round(_decode_rate(paths, spec, args.workers), 2),
            "model_videos_per_s": round(_model_rate(loaded.model, spec, args.batch_size, device, args.repeats), 2),
        }
        ns = argparse.Namespace(out=tmp / "out", chunk=4096, batch_size=args.batch_size, workers=args.workers,
                                precision="fp32", quiet=True)
        start = time.perf_counter()
        extract_videos(loaded, paths, spec, ns, device)
        result["extract_videos_per_s_with_startup"] = round(args.videos / (time.perf_counter() - start), 2)

        if args.search_rows:
            random_unit_rows(tmp / "rows.npy", args.search_rows, loaded.model.cfg.embed_dim)
            mapped = open_embeddings(tmp / "rows.npy")
            rng = np.random.default_rng(0)
            for queries in (1, 100):
                q = rng.standard_normal((queries, mapped.shape[1]), dtype=np.float32)
                start = time.perf_counter()
                chunked_topk(q, mapped, 10, device=device)
                result[f"search_{queries}_queries_s"] = round(time.perf_counter() - start, 3)
            result["search_rows"] = args.search_rows
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mcq_ds.bench.extract", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="base", help="a model preset (base, tiny) or a model folder")
    parser.add_argument("--videos", type=int, default=32, help="videos to write and extract (default 32)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each video (default 10)")
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--frames", type=int, default=4, help="frames per video (default 4)")
    parser.add_argument("--batch-size", type=int, default=8, help="videos per forward pass (default 8)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding processes")
    parser.add_argument("--repeats", type=int, default=3, help="timed model-only batches (default 3)")
    parser.add_argument("--search-rows", type=int, default=0, help="also time search over this many embeddings")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    print(json.dumps(run(parser.parse_args(argv)), indent=1))


if __name__ == "__main__":
    main()
