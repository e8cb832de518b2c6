"""Retrieval metrics with the conventions of the original code (its `model/metric.py`), vectorised.

A similarity matrix has one row per text query and one column per video; `query_video[i]` is the column of query
i's video. Ranks are 0-based internally and reported 1-based (MedR, MeanR), R@K in percent:

* text→video: the rank of the query's video is the number of videos scored strictly higher, i.e. ties are broken
  optimistically (the original finds the first sorted position equal to the ground-truth score).
* video→text: a caption's rank among all captions is averaged over its ties (first tied position + (ties − 1)/2),
  and a video's rank is the best (minimum) over its own captions, VSE style.
* R@1 counts only rank 0 and R@K (K ≥ 5) counts rank < K, as the original's `cols2metrics` does (`cols == 0`,
  `cols < K`). The two differ only for tie-averaged video→text ranks: a video whose caption ties one other caption
  at the top has rank 0.5, which is no R@1 hit, while a rank of 4.5 is an R@5 hit.

The original assumes every video has the same number of captions, laid out in consecutive blocks; `query_video`
gives the same numbers for that layout and also handles any other (videos with 19 captions, shuffled queries)
without the original's mask matrix. Memory stays bounded: rows are compared in chunks.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..loss import l2_normalise

RECALL_AT = (1, 5, 10, 50)
_CHUNK = 1 << 24  # matrix entries compared at once (16 M booleans)


def _check(sims: np.ndarray, query_video: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sims = np.asarray(sims)
    query_video = np.asarray(query_video, dtype=np.int64)
    if sims.ndim != 2:
        raise ValueError(f"expected a (texts, videos) similarity matrix, got shape {sims.shape}")
    if query_video.shape != (sims.shape[0],):
        raise ValueError(f"query_video must give one video per text row ({sims.shape[0]}), got {query_video.shape}")
    if len(query_video) and (query_video.min() < 0 or query_video.max() >= sims.shape[1]):
        raise ValueError("query_video holds a video index outside the similarity matrix")
    if np.isnan(sims).any():
        raise ValueError("the similarity matrix holds NaN: the model produced non-finite embeddings")
    return sims, query_video


def t2v_ranks(sims: np.ndarray, query_video: np.ndarray) -> np.ndarray:
    """0-based rank of each query's video among all videos, ties broken optimistically."""
    sims, query_video = _check(sims, query_video)
    gt = sims[np.arange(len(sims)), query_video]
    step = max(1, _CHUNK // max(1, sims.shape[1]))
    ranks = np.zeros(len(sims))
    for i in range(0, len(sims), step):
        ranks[i:i + step] = (sims[i:i + step] > gt[i:i + step, None]).sum(1)
    return ranks


def v2t_ranks(sims: np.ndarray, query_video: np.ndarray) -> np.ndarray:
    """0-based rank of each video: the best over its captions of the caption's tie-averaged rank among all
    captions. A video without any caption has no rank and is an error."""
    sims, query_video = _check(sims, query_video)
    num_videos = sims.shape[1]
    missing = np.setdiff1d(np.arange(num_videos), query_video)
    if len(missing):
        raise ValueError(f"{len(missing)} videos have no caption (e.g. column {missing[0]}): video→text is undefined")
    gt = sims[np.arange(len(sims)), query_video]
    caption_rank = np.empty(len(sims))
    step = max(1, _CHUNK // max(1, len(sims)))
    for i in range(0, len(sims), step):
        columns = sims[:, query_video[i:i + step]].T  # (chunk, texts): each caption's video against every caption
        score = gt[i:i + step, None]
        caption_rank[i:i + step] = (columns > score).sum(1) + ((columns == score).sum(1) - 1) / 2
    best = np.full(num_videos, np.inf)
    np.minimum.at(best, query_video, caption_rank)
    return best


def ranks_to_metrics(ranks: np.ndarray) -> dict[str, float]:
    """R@1/5/10/50 in percent (R@1: rank 0 only, see the module docstring), MedR and MeanR 1-based, and the
    geometric mean of R@1, R@5, R@10."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no queries to score")
    out = {f"R@{k}": 100.0 * float(np.mean(ranks == 0 if k == 1 else ranks < k)) for k in RECALL_AT}
    out["MedR"] = float(np.median(ranks)) + 1
    out["MeanR"] = float(np.mean(ranks)) + 1
    head = [out["R@1"], out["R@5"], out["R@10"]]
    out["geometric_mean_R1-R5-R10"] = 0.0 if min(head) == 0 else math.exp(sum(map(math.log, head)) / 3)
    return out


def retrieval_metrics(sims: np.ndarray, query_video: np.ndarray) -> dict[str, dict[str, float]]:
    """Both directions, as the original prints them: `{"t2v": {...}, "v2t": {...}}`."""
    return {"t2v": ranks_to_metrics(t2v_ranks(sims, query_video)),
            "v2t": ranks_to_metrics(v2t_ranks(sims, query_video))}


def cosine_similarity(text: np.ndarray, video: np.ndarray) -> np.ndarray:
    """The original's `sim_matrix`: rows L2-normalised (`loss.l2_normalise`, the norm clamped at 1e-8), then a
    matrix product, in float32 like the original (so exact ties are the original's ties)."""
    def unit(x: np.ndarray) -> torch.Tensor:
        return l2_normalise(torch.as_tensor(np.asarray(x, dtype=np.float32)))

    return (unit(text) @ unit(video).T).numpy()


def format_metrics(metrics: dict[str, dict[str, float]]) -> str:
    """One line per direction, in the order papers report them (text→video first)."""
    names = {"t2v": "text->video", "v2t": "video->text"}
    return "\n".join(
        f"{names[d]}: " + "  ".join(f"R@{k} {m[f'R@{k}']:.1f}" for k in RECALL_AT)
        + f"  MedR {m['MedR']:g}  MeanR {m['MeanR']:.1f}" for d, m in metrics.items())
