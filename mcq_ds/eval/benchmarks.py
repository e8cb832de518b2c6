"""The four text→video benchmarks of the MCQ paper: each one's evaluation protocol, the published numbers of the three
model families, and the table that puts ours beside them.

Protocols (what `mcq-ds eval MODEL msrvtt=… msvd=… lsmdc=… didemo=…` does per set; the shards come from the
`mcq-shards` converter of the same name):

* MSR-VTT 1k-A: 1,000 videos, one caption each (the JSFusion caption index), as MCQ's and Frozen-in-Time's
  released evaluation code does.
* MSVD: 670 test videos, every caption its own query ("sentence-to-video"), a video ranked in video→text by its best
  caption; MCQ's authors name this protocol in TencentARC/MCQ#2 (the code was never released).
* LSMDC: the 1,000 clips of the LSMDC 2016 public test, one sentence each (CLIP4Clip's and Frozen's loaders).
* DiDeMo: paragraph-to-video, a video's moment descriptions joined into one query, the video's first 30 s
  (CLIP4Clip's loader; Frozen's paper evaluates it the same way).

Every set: the model's frame count at segment midpoints (4 for MCQ and MILES, 8 for MCQ-CLIP; `--frames`,
`--window-stride` for all sets), the original test transform, cosine of dual-encoder embeddings, no re-ranking.

Published numbers (R@1, R@5, R@10, MedR, MeanR where given) are text→video, as read from the tables the MCQ
repository shows (TencentARC/MCQ `demo/msrvtt.jpg`, `demo/msvd.png`, `demo/clip.png`, `demo/MILES/msrvtt.png`,
`demo/MILES/msvd.png`). ZS: the pre-trained model; FT: fine-tuned on that benchmark's training split.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple


@dataclass(frozen=True)
class Protocol:
    name: str  # the set's name on the command line and in file names
    title: str
    all_captions: bool  # every stored caption its own query (MSVD), else the sample's one caption or paragraph
    queries: str  # what a query is, for reports
    test_size: int  # videos of the published test set; DiDeMo: the about 1,000 papers evaluate, a lower bound
    exact_size: bool = True  # False: no single published size (DiDeMo, see mcq_shards.sources.didemo)


PROTOCOLS = {
    "msrvtt": Protocol("msrvtt", "MSR-VTT 1k-A", False, "one caption per video (1k-A index)", 1000),
    "msvd": Protocol("msvd", "MSVD", True, "every caption (sentence-to-video)", 670),
    "lsmdc": Protocol("lsmdc", "LSMDC", False, "one sentence per clip", 1000),
    "didemo": Protocol("didemo", "DiDeMo", False, "one paragraph per video", 1000, exact_size=False),
}
FAMILIES = {"mcq": "MCQ (IN-21k ViT)", "mcq-clip": "MCQ (CLIP ViT-B/32)", "miles": "MILES"}


class Published(NamedTuple):
    r1: float
    r5: float
    r10: float
    medr: float
    meanr: float | None = None


# (family, set, setting) -> the paper's text→video numbers
PAPER: dict[tuple[str, str, str], Published] = {
    ("mcq", "msrvtt", "zs"): Published(26.0, 46.4, 56.4, 7.0),
    ("mcq", "msrvtt", "ft"): Published(37.6, 64.8, 75.1, 3.0),
    ("mcq", "msvd", "zs"): Published(43.6, 74.9, 84.9, 2.0),
    ("mcq", "msvd", "ft"): Published(52.0, 82.8, 90.0, 1.0),
    ("mcq", "lsmdc", "zs"): Published(12.2, 25.9, 32.2, 42.0),
    ("mcq", "lsmdc", "ft"): Published(17.9, 35.4, 44.5, 15.0),
    ("mcq", "didemo", "zs"): Published(25.6, 50.6, 61.1, 5.0),
    ("mcq", "didemo", "ft"): Published(37.0, 62.2, 73.9, 3.0),
    ("mcq-clip", "msrvtt", "zs"): Published(33.2, 58.0, 68.6, 4.0, 25.7),
    ("mcq-clip", "msrvtt", "ft"): Published(44.9, 71.9, 80.3, 2.0, 15.3),
    ("mcq-clip", "msvd", "zs"): Published(48.4, 76.4, 85.8, 2.0, 7.4),
    ("mcq-clip", "msvd", "ft"): Published(54.4, 82.8, 89.4, 1.0, 6.1),
    ("mcq-clip", "lsmdc", "zs"): Published(15.5, 30.7, 38.7, 22.0, 97.9),
    ("mcq-clip", "lsmdc", "ft"): Published(21.8, 41.1, 50.6, 10.0, 60.5),
    ("miles", "msrvtt", "zs"): Published(26.1, 47.2, 56.9, 7.0),
    ("miles", "msrvtt", "ft"): Published(37.7, 63.6, 73.8, 3.0),
    ("miles", "msvd", "zs"): Published(44.4, 76.2, 87.0, 2.0),
    ("miles", "msvd", "ft"): Published(53.9, 83.5, 90.2, 1.0),
    ("miles", "lsmdc", "zs"): Published(11.1, 24.7, 30.6, 50.7),
    ("miles", "lsmdc", "ft"): Published(17.8, 35.6, 44.1, 15.5),
    ("miles", "didemo", "zs"): Published(27.2, 50.3, 63.6, 5.0),
    ("miles", "didemo", "ft"): Published(36.6, 63.9, 74.0, 3.0),
}

FINETUNED = "finetuned.json"  # written into a model folder exported by a fine-tuning stage: what it was tuned on


def family_of(model) -> str:
    """Which published model a model is comparable with: the CLIP family, the Frozen-style divided space-time video
    encoder (MILES), or MCQ's."""
    if getattr(model.cfg, "family", None) == "clip":
        return "mcq-clip"
    return "miles" if getattr(model.cfg.video, "temporal_attention", False) else "mcq"


def finetuned_on(path: str | Path) -> str | None:
    """The benchmark a model folder (or a fine-tuning run's folder or checkpoint) was fine-tuned on, else None."""
    path = Path(path)
    for candidate in (path / FINETUNED, path / "model" / FINETUNED, path.parent.parent / "model" / FINETUNED):
        if candidate.is_file():
            return json.loads(candidate.read_text())["benchmark"]
    return None


def setting(set_name: str, tuned_on: str | None) -> str | None:
    """"zs" for a pre-trained model, "ft" on the set it was fine-tuned on, None (no published counterpart) for a
    model fine-tuned on another set."""
    if tuned_on is None:
        return "zs"
    return "ft" if tuned_on == set_name else None


def comparison_table(results: dict[str, dict], family: str, tuned_on: str | None) -> str:
    """Markdown: per set, our text→video R@1/5/10, MedR, MeanR beside the paper's for this family and setting, and
    ours minus the paper's. Sets that are not the complete published test set are marked, as their numbers are
    not comparable."""
    lines = [f"Text→video retrieval, ours beside {FAMILIES[family]} in the paper (ZS: zero-shot; FT: fine-tuned on "
             "the set's training split). Δ = ours − paper.", "",
             "| set | setting | videos | queries | R@1 | R@5 | R@10 | MedR | MeanR | paper R@1 / R@5 / R@10 / MedR "
             "(/ MeanR where published) | Δ R@1 / R@5 / R@10 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, res in results.items():
        ours = res["metrics"]["t2v"]
        how = setting(name, tuned_on)
        paper = PAPER.get((family, name, how)) if how else None
        p = res["protocol"]
        size, exact = PROTOCOLS[name].test_size, PROTOCOLS[name].exact_size
        videos = f"{p['videos']:,}"
        short = p["videos"] != size if exact else p["videos"] < size
        if short or res["data"].get("rejects") or res["skipped"]["count"]:
            videos += " †"
            notes.append(f"† {PROTOCOLS[name].title}: {p['videos']:,} videos"
                         + (f" of the published {size:,}" if exact else f", where the papers evaluate about {size:,}")
                         + (f", {res['data']['rejects']} rejected at conversion" if res["data"].get("rejects") else "")
                         + (f", {res['skipped']['count']} unreadable" if res["skipped"]["count"] else "")
                         + ": not the published test set, so not comparable.")
        elif not exact:
            notes.append(f"{PROTOCOLS[name].title}: {p['videos']:,} videos; there is no single published test size "
                         f"(papers evaluate the about {size:,} that can still be downloaded).")
        cells = [PROTOCOLS[name].title, how.upper() if how else f"fine-tuned on {tuned_on}",
                 videos, f"{p['queries']:,}", *(f"{ours[k]:.1f}" for k in ("R@1", "R@5", "R@10")),
                 f"{ours['MedR']:g}", f"{ours['MeanR']:.1f}"]
        if paper is None:
            cells += ["— (not in the paper)", "—"]
        else:
            cells += [f"{paper.r1:.1f} / {paper.r5:.1f} / {paper.r10:.1f} / {paper.medr:g}"
                      + (f" / {paper.meanr:.1f}" if paper.meanr is not None else ""),
                      " / ".join(f"{ours[k] - v:+.1f}" for k, v in (("R@1", paper.r1), ("R@5", paper.r5),
                                                                      ("R@10", paper.r10)))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
