"""`mcq-ds extract`: video files (and text queries) → L2-normalised embeddings, `.npy` + ids in the same order.

Frames are chosen and transformed exactly as `mcq-ds eval` does on shards (see `mcq_ds.eval.data`): a video
extracted here gets the embedding `eval` computes on its shard made with mcq-shards' default frame options.

Output folder:

    video_embeddings.npy   (N, D) float32, unit rows        video_ids.txt   N lines, the file paths
    text_embeddings.npy    (Q, D) float32, unit rows        text_ids.txt    Q lines, the queries (--texts)
    failed.jsonl           one {"id", "reason"} per file that could not be read (also printed)
    extract.json           model (and its weights' digest, checked by `search` and `serve`), frame protocol, counts,
                           the working directory that relative video paths start from

Large folders: inputs are processed in chunks (`--chunk` files) and each finished chunk is kept in `OUT/.parts`,
so a killed run, rerun with the same command, goes on from the first unfinished chunk; the final files are
assembled on disk (memory-mapped) when every chunk is done, and `.parts` is removed.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from mcq_shards.media import VIDEO_EXTENSIONS, MediaError, media_kind

from ..loss import l2_normalise
from ..runtime import atomic_write, pick_device, write_text_atomic
from .checkpoint import LoadedModel, load_model
from .data import ClipSpec, video_file_clip
from .embed import DEFAULT_PRECISION, PRECISIONS, batched, embed_texts, embed_windows
from .identity import DIGEST_KEY, weights_digest

PARTS = ".parts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an exported model folder, a training run or DeepSpeed checkpoint, or an "
                        "original MCQ.pth (see `mcq-ds eval --help`)")
    parser.add_argument("inputs", nargs="*", help="video files, folders (searched recursively for "
                        f"{'/'.join(sorted(VIDEO_EXTENSIONS))}) or quoted glob patterns like 'clips/**/*.mp4'")
    parser.add_argument("-o", "--out", type=Path, required=True,
                        help="output folder; rerun the same command into it to resume")
    parser.add_argument("--list", type=Path, metavar="FILE", help="a text file of video paths, one per line")
    parser.add_argument("--texts", type=Path, metavar="FILE", help="text queries, one per line, embedded too")
    parser.add_argument("--frames", type=int, help="frames per video, segment midpoints (default: the model's, 4 "
                        "for MCQ and MCQ.pth, 8 for a CLIP-MCQ folder from `mcq-ds convert-clip`)")
    parser.add_argument("--window-stride", type=int, metavar="S",
                        help="average sliding windows of stride S stored frames (as `mcq-ds eval`; default off)")
    parser.add_argument("--batch-size", type=int, default=16, help="videos per forward pass (default 16)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="decoding processes (default: up to 8 CPUs, here %(default)s)")
    parser.add_argument("--chunk", type=int, default=4096,
                        help="files per resumable chunk (default %(default)s)")
    parser.add_argument("--precision", choices=list(PRECISIONS), default=DEFAULT_PRECISION,
                        help="tf32 (fp32 weights, TF32 tensor cores on a GPU; fp32 on a CPU) | fp32 (IEEE) | bf16 | "
                        "fp16 (autocast); default %(default)s")
    parser.add_argument("--tokenizer", help="tokenizer for an original .pth checkpoint")
    parser.add_argument("--device", help="torch device (default: this rank's GPU, LOCAL_RANK, when there is one, "
                        "else the CPU)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def find_videos(inputs: list[str], listing: Path | None = None) -> tuple[list[str], int]:
    """The video paths, in a stable order (each input in turn; a folder's files sorted), without duplicates, and
    how many files found in folders were ignored for not having a video extension."""
    found, ignored = [], 0
    if listing is not None:
        found += [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            videos = [str(p) for p in files if media_kind(p.name) == "video"]
            ignored += len(files) - len(videos)
            found += videos
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"no file matches {item!r}")
            found += [m for m in matches if Path(m).is_file()]
        else:
            found.append(item)  # a missing or unreadable file is reported as failed, with its reason
    return list(dict.fromkeys(found)), ignored


def write_embeddings(folder: Path, name: str, embeddings: np.ndarray, ids: list[str]) -> None:
    """`<name>_embeddings.npy` + `<name>_ids.txt`, one id per line in row order, each written atomically."""
    bad = [i for i in ids if "\n" in i or "\r" in i]
    if bad:
        raise ValueError(f"id {bad[0]!r} contains a line break and cannot be written one per line")
    if len(ids) != len(embeddings):
        raise ValueError(f"{len(ids)} ids for {len(embeddings)} embeddings")
    folder.mkdir(parents=True, exist_ok=True)

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: given a path, np.save would append ".npy" to the temporary name
            np.save(f, np.ascontiguousarray(embeddings, dtype=np.float32))

    atomic_write(folder / f"{name}_embeddings.npy", save)
    write_text_atomic(folder / f"{name}_ids.txt", "".join(i + "\n" for i in ids))


def read_ids(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").split("\n")[:-1]


class VideoFiles(Dataset):
    """Item i: (i, clips (W, F, 3, S, S), None) or (i, None, reason) for a file that cannot be read."""

    def __init__(self, paths: list[str], spec: ClipSpec):
        self.paths, self.spec = paths, spec

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            clips, _ = video_file_clip(self.paths[i], self.spec)
        except MediaError as err:
            return i, None, str(err)
        except OSError as err:  # e.g. permission denied: PyAV raises it before any decoding
            return i, None, f"unreadable file: {err}"
        return i, clips, None


def as_list(items: list) -> list:
    """A collate function that keeps a batch's items as they are (good and failed ones side by side)."""
    return items


def _embed_chunk(loaded: LoadedModel, paths: list[str], spec: ClipSpec, args, device: torch.device,
                 bar: tqdm) -> tuple[np.ndarray, list[str], list[dict]]:
    loader = DataLoader(VideoFiles(paths, spec), batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=as_list, multiprocessing_context="spawn" if args.workers else None)
    embeddings, ids, failed = [], [], []
    for items in loader:
        good = [(i, clips) for i, clips, _ in items if clips is not None]
        for i, _, reason in items:
            if reason is not None:
                failed.append({"id": paths[i], "reason": reason})
                bar.write(f"skipped {paths[i]}: {reason}")
        if good:
            video = torch.cat([clips for _, clips in good])
            owner = torch.cat([torch.full((len(clips),), n) for n, (_, clips) in enumerate(good)])
            mean = embed_windows(loaded.model, video, owner, len(good), device, args.precision)
            embeddings.append(l2_normalise(mean).numpy())
            ids += [paths[i] for i, _ in good]
        bar.update(len(items))
    dim = loaded.model.cfg.embed_dim
    return (np.concatenate(embeddings) if embeddings else np.zeros((0, dim), np.float32)), ids, failed


def extract_videos(loaded: LoadedModel, paths: list[str], spec: ClipSpec, args, device: torch.device) -> dict:
    """Embeds `paths` chunk by chunk into `args.out`, skipping chunks a previous run finished."""
    out: Path = args.out
    parts = out / PARTS
    plan = {"model": str(loaded.path), "spec": spec.__dict__, "chunk": args.chunk, "precision": args.precision,
            "inputs": hashlib.sha256("\n".join(paths).encode()).hexdigest(), "count": len(paths)}
    parts.mkdir(parents=True, exist_ok=True)
    plan_file = parts / "plan.json"
    if plan_file.exists() and json.loads(plan_file.read_text()) != plan:
        raise ValueError(f"{out} holds an unfinished extraction of other inputs or options; rerun that command to "
                         f"finish it, or use another --out, or delete {parts} to start over")
    write_text_atomic(plan_file, json.dumps(plan, indent=1))
    chunks = list(batched(paths, args.chunk))
    done = [k for k in range(len(chunks)) if (parts / f"{k:06d}.json").exists()]
    if done and not args.quiet:
        print(f"{len(done)} of {len(chunks)} chunks already done in {out}; resuming")
    bar = tqdm(total=len(paths), initial=sum(len(chunks[k]) for k in done), desc="videos", unit="video",
               disable=args.quiet, smoothing=0.05)
    with bar:
        for k, chunk in enumerate(chunks):
            if k in done:
                continue
            embeddings, ids, failed = _embed_chunk(loaded, list(chunk), spec, args, device, bar)
            np.save(parts / f"{k:06d}.npy", embeddings)
            write_text_atomic(parts / f"{k:06d}.json", json.dumps({"ids": ids, "failed": failed}))  # marks it done
    return _assemble(out, parts, len(chunks), loaded.model.cfg.embed_dim)


def _assemble(out: Path, parts: Path, count: int, dim: int) -> dict:
    """The chunks' rows concatenated into the final files without holding them all in memory."""
    records = [json.loads((parts / f"{k:06d}.json").read_text()) for k in range(count)]
    ids = [i for r in records for i in r["ids"]]
    failed = [f for r in records for f in r["failed"]]

    def merge(tmp: Path) -> None:
        merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(ids), dim))
        row = 0
        for k in range(count):
            block = np.load(parts / f"{k:06d}.npy", mmap_mode="r")
            merged[row:row + len(block)] = block
            row += len(block)
        merged.flush()

    atomic_write(out / "video_embeddings.npy", merge)
    write_text_atomic(out / "video_ids.txt", "".join(i + "\n" for i in ids))
    write_text_atomic(out / "failed.jsonl", "".join(json.dumps(f) + "\n" for f in failed))
    shutil.rmtree(parts)
    return {"videos": len(ids), "failed": len(failed)}


def run(args: argparse.Namespace) -> int:
    if args.chunk < 1 or args.batch_size < 1:
        raise ValueError("--chunk and --batch-size must be at least 1")
    paths, ignored = find_videos(args.inputs, args.list)
    if not paths and not args.texts:
        raise ValueError("nothing to extract: give video files, folders, globs, --list or --texts")
    device = pick_device(args.device)
    loaded = load_model(args.model, bridge=False, frames=args.frames, tokenizer=args.tokenizer)
    loaded.model.to(device)
    spec = ClipSpec.of(loaded.model, args.frames, args.window_stride)
    summary = {"model": loaded.describe(), "frames": spec.num_frames, "window_stride": args.window_stride,
               "normalisation": spec.normalisation, "precision": args.precision, "device": str(device),
               "ignored_non_video_files": ignored, DIGEST_KEY: weights_digest(loaded.model),
               "working_directory": os.getcwd()}
    args.out.mkdir(parents=True, exist_ok=True)
    if paths:
        summary.update(extract_videos(loaded, paths, spec, args, device))
        print(f"{summary['videos']} videos embedded, {summary['failed']} failed (listed in "
              f"{args.out / 'failed.jsonl'})" + (f", {ignored} non-video files ignored" if ignored else ""))
    if args.texts:
        texts = [t for t in args.texts.read_text(encoding="utf-8").splitlines() if t.strip()]
        write_embeddings(args.out, "text", embed_texts(loaded.model, loaded.tokenizer, texts, device,
                                                       precision=args.precision, progress=not args.quiet), texts)
        summary["texts"] = len(texts)
        print(f"{len(texts)} text queries embedded")
    write_text_atomic(args.out / "extract.json", json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0
