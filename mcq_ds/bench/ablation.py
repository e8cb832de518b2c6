"""The paper's ablation in miniature: the demo curriculum with and without the Multiple Choice Questions.

    python -m mcq_ds.bench.ablation DEMO_OUT/shards --seeds 0 1 2       (also: mcq-ds ablation ...)

For every seed, both arms train the whole demo curriculum (`demo-1f-noun` → `demo-4f-noun` → `demo-4f-verb`) on the
same shards with the same seed, so the same initial weights, the same batches in the same order and the same number
of optimizer steps: MCQ (`--mcq-weight 1`, the paper's objective) and the dual encoder alone (`--mcq-weight 0`, the
paper's baseline, the BridgeFormer never run). Each final model is evaluated zero-shot on the held-out test split:
text→video R@1/5/10, the motion probe (`mcq_ds.eval.probe`) and which parts of the captions its ranking tells apart
(`told_apart`: whether it tells the shapes apart, and whether its wrong first videos get colour and background right,
beside the R@1 that colour and background alone give). The table gives the mean ± standard deviation over
seeds of each arm and of the per-seed difference (MCQ − baseline), and the verb stage's MCQ answer accuracy over the
last third of its steps beside its chance level. Every training and evaluation run goes to one MLflow experiment
(run names say the arm and the seed), so the curves sit side by side; everything lands in OUT (default: beside the
shards, `ablation/`), and a rerun skips what is already there. Training takes the demo's recipe (the stage presets
with launch/demo.sh's flags, DEMO_FLAGS); `--train-flags` adds `mcq-ds train` flags to every training run of both
arms (later flags win).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import statistics
import sys
from pathlib import Path

import numpy as np

ARMS = {"mcq": 1.0, "baseline": 0.0}  # arm name -> --mcq-weight
# launch/demo.sh's flags beside the stage presets
DEMO_FLAGS = ("--no-hflip", "--frozen-text-layers", "4", "--frozen-video-blocks", "4")
STAGES = ("demo-1f-noun", "demo-4f-noun", "demo-4f-verb")
REPORTED = (("t2v R@1", ("metrics", "t2v", "R@1")), ("t2v R@5", ("metrics", "t2v", "R@5")),
            ("t2v R@10", ("metrics", "t2v", "R@10")), ("motion probe", ("motion_probe", "accuracy")),
            ("shape pairs told apart", ("parts", "shape_pairs")),
            ("wrong first videos with the query's colour and background", ("parts",
                                                                           "wrong_top1_same_colour_background")))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", type=Path, help="the demo's shard folder (OUT/shards of launch/demo.sh): cc3m/, "
                        "webvid/ and msrvtt-test/ converted by mcq-shards")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (default: 0 1 2)")
    parser.add_argument("--out", type=Path, help="output folder (default: SHARDS/../ablation)")
    parser.add_argument("--workers", type=int, default=1, help="data-loading workers per training run (default 1)")
    parser.add_argument("--mlflow-uri", help="MLflow tracking URI (default: a local store, OUT/mlflow.db)")
    parser.add_argument("--experiment", default="mcq-ds-ablation", help="MLflow experiment (default %(default)s)")
    parser.add_argument("--train-flags", default="", metavar="FLAGS", help="more `mcq-ds train` flags for every "
                        "training run, e.g. '--max-steps 20' for a quick look (default: none, the demo recipe)")


def _train(args: argparse.Namespace, out: Path, arm: str, seed: int) -> Path:
    """The demo curriculum for one arm and seed; each stage starts from the previous stage's export."""
    from ..engine.config import add_arguments as train_arguments, resolve
    from ..engine.train import train

    parser = argparse.ArgumentParser()
    train_arguments(parser)
    init = None
    for stage in STAGES:
        run = out / f"{arm}-seed{seed}" / stage.removeprefix("demo-")
        if not (run / "model" / "config.json").is_file():
            sources = ["webvid"] + (["cc3m"] if "1f" in stage else [])
            argv = ["--stage", stage, "--out", str(run), "--seed", str(seed), "--mcq-weight", str(ARMS[arm]),
                    "--workers", str(args.workers), "--mlflow-uri", args.mlflow_uri, "--experiment", args.experiment,
                    "--run-name", f"{arm} seed{seed} {stage}"]
            argv += [a for s in sources for a in ("--data", f"{s}={args.shards / s}")]
            argv += (["--init", str(init)] if init else []) + list(DEMO_FLAGS) + shlex.split(args.train_flags)
            train(resolve(parser.parse_args(argv)))
        init = run / "model"
    return init


def _evaluate(args: argparse.Namespace, model: Path, arm: str, seed: int) -> dict:
    from ..eval import retrieval

    out, embeddings = model / "eval" / "ablation.json", model / "eval" / "ablation-embeddings"
    if not (out.is_file() and (embeddings / "text_ids.txt").is_file()):
        parser = argparse.ArgumentParser()
        retrieval.add_arguments(parser)
        retrieval.evaluate(parser.parse_args([str(model), str(args.shards / "msrvtt-test"), "--workers", "0",
                                              "--quiet", "--out", str(out), "--save-embeddings", str(embeddings),
                                              "--mlflow-uri", args.mlflow_uri, "--experiment", args.experiment,
                                              "--run-name", f"{arm} seed{seed} eval"]))
    return {**json.loads(out.read_text()), "parts": told_apart(embeddings)}


def told_apart(embeddings: Path) -> dict[str, float]:
    """Which parts of the held-out captions a model's text→video ranking tells apart, from the test set's saved
    embeddings (one caption per video, query i for video i; captions in the demo's wording, `synth.describe`).

    The demo's test videos differ in colour, shape, motion and background. `colour_background_r1` is the R@1 that a
    ranking which tells only colour and background apart gets in expectation (ties ordered at random): the mean over
    queries of 1 / the number of test videos sharing the query's colour and background. `wrong_top1_same_colour_
    background` is the share of wrongly retrieved first videos that have the query's colour and background, and
    `shape_pairs` the share of (query, video of the same colour and background but another shape) pairs in which the
    query's own video scores higher (ties count half; 50 tells shapes apart no better than chance)."""
    from mcq_shards.synth import describe

    text, video = np.load(embeddings / "text_embeddings.npy"), np.load(embeddings / "video_embeddings.npy")
    if len(text) != len(video):
        raise ValueError(f"{embeddings}: {len(text)} queries for {len(video)} videos; expected one caption per video")
    captions = (embeddings / "text_ids.txt").read_text().splitlines()
    parts = [describe(c) for c in captions]
    unnamed = next((c for c, p in zip(captions, parts) if not (p.colour and p.shape and p.background)), None)
    if unnamed is not None:
        raise ValueError(f"{embeddings / 'text_ids.txt'}: {unnamed!r} does not name a colour, shape and background "
                         "in the demo's words; give the shards of launch/demo.sh (mcq-shards synth)")
    colour, shape, background = (np.array([getattr(p, name) for p in parts]) for name in ("colour", "shape",
                                                                                           "background"))
    same = (colour[:, None] == colour[None]) & (background[:, None] == background[None])
    scores = text @ video.T
    own = np.diag(scores)[:, None]
    first = scores.argmax(1)
    wrong = np.flatnonzero((scores > own).any(1))
    pairs = same & (shape[:, None] != shape[None])
    return {"colour_background_r1": float(100 * np.mean(1 / same.sum(1))),
            "wrong_top1_same_colour_background": float(100 * same[wrong, first[wrong]].mean()) if len(wrong) else 0.0,
            "shape_pairs": float(100 * ((own > scores) + 0.5 * (own == scores))[pairs].mean()) if pairs.any()
            else float("nan")}


def _late_answer_accuracy(run: Path) -> dict[str, float]:
    """The verb stage's MCQ answer accuracy and chance level for verb questions (MCQ arm only), each averaged over the
    last third of the stage's logged steps: one logged value is one batch's, a few dozen answers."""
    logged = []
    for line in (run / "tracking.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event["event"] == "metrics" and "mcq_accuracy_verb" in event["metrics"]:
            logged.append(event["metrics"])
    late = logged[-math.ceil(len(logged) / 3):] if logged else []
    return {k: statistics.mean(m[k] for m in late) for k in ("mcq_accuracy_verb", "mcq_chance_verb")} if late else {}


def _spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(results: dict[str, dict[int, dict]]) -> str:
    """Markdown: one row per arm and one for the per-seed difference, mean ± standard deviation over seeds."""
    seeds = sorted(results["mcq"])
    value = {arm: {name: [_get(results[arm][s], path) for s in seeds] for name, path in REPORTED} for arm in ARMS}
    rows = [f"| arm ({len(seeds)} seeds) | " + " | ".join(name for name, _ in REPORTED)
            + " | verb answers, last third of the verb stage (chance) |",
            "|---" * (len(REPORTED) + 2) + "|"]
    for arm, label in (("mcq", "MCQ (`--mcq-weight 1`)"), ("baseline", "dual encoder alone (`--mcq-weight 0`)")):
        answers = [results[arm][s].get("answers", {}) for s in seeds]
        verb = (f"{_spread([a['mcq_accuracy_verb'] for a in answers])} "
                f"({_spread([a['mcq_chance_verb'] for a in answers])})" if all(answers) else "—")
        rows.append(f"| {label} | " + " | ".join(_spread(value[arm][name]) for name, _ in REPORTED) + f" | {verb} |")
    differences = [[m - b for m, b in zip(value["mcq"][name], value["baseline"][name])] for name, _ in REPORTED]
    rows.append("| MCQ − baseline, per seed | " + " | ".join(_spread(d) for d in differences) + " | |")
    chance = results["mcq"][seeds[0]]["motion_probe"].get("chance")
    if chance is not None:
        rows.append(f"\nMotion probe chance: {chance:.1f}%; text→video R@1/5/10 chance: "
                    f"{100 / results['mcq'][seeds[0]]['protocol']['videos']:.0f}/"
                    f"{500 / results['mcq'][seeds[0]]['protocol']['videos']:.0f}/"
                    f"{1000 / results['mcq'][seeds[0]]['protocol']['videos']:.0f}%; shape pairs chance: 50%; "
                    f"R@1 of a ranking that tells only colour and background apart: "
                    f"{results['mcq'][seeds[0]]['parts']['colour_background_r1']:.1f}%.")
    return "\n".join(rows)


def _get(result: dict, path: tuple[str, ...]) -> float:
    for key in path:
        result = result[key]
    return float(result)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    missing = [s for s in ("cc3m", "webvid", "msrvtt-test") if not (args.shards / s / "manifest.json").is_file()]
    if missing:
        raise FileNotFoundError(f"{args.shards} lacks {', '.join(missing)}: give the demo's shard folder "
                                "(bash launch/demo.sh OUT writes OUT/shards)")
    out = args.out or args.shards.parent / "ablation"
    args.mlflow_uri = args.mlflow_uri or f"sqlite:///{out.resolve()}/mlflow.db"
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[int, dict]] = {arm: {} for arm in ARMS}
    for seed in args.seeds:
        for arm in ARMS:
            model = _train(args, out, arm, seed)
            results[arm][seed] = _evaluate(args, model, arm, seed)
            if ARMS[arm]:
                results[arm][seed]["answers"] = _late_answer_accuracy(model.parent)
    text = table(results)
    (out / "results.json").write_text(json.dumps({"seeds": args.seeds, "results": results}, indent=2) + "\n")
    (out / "table.md").write_text(text + "\n")
    print(text)
    print(f"wrote {out / 'table.md'} and {out / 'results.json'}; MLflow: mlflow ui --backend-store-uri "
          f"{args.mlflow_uri} (experiment {args.experiment})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mcq_ds.bench.ablation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except (FileNotFoundError, ValueError) as err:
        print(f"ablation: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
