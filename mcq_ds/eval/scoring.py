"""One retrieval evaluation of a model on one shard set, across every rank: what `mcq-ds eval` runs per set and what a
fine-tuning stage runs after every epoch.

Each rank embeds a contiguous share of the samples (shares differ by at most one, nothing is dropped or repeated),
rank 0 gathers the embeddings in data-set order and computes the metrics, so every world size gives the same
numbers. A sample that cannot be read stops the evaluation on every rank with an error naming its shard, key and
reason, unless `skip_corrupt` leaves such samples out (they are returned, to be listed and counted).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from mcq_shards.reader import Skip

from .data import ClipSpec
from .embed import DEFAULT_PRECISION, embed_batch
from .metrics import cosine_similarity, retrieval_metrics
from .reader import CollateEval, ShardClips, eval_samples, rank_share


@dataclass
class SetScores:
    """Rank 0's result: metrics, the embeddings in data-set order (videos; queries, a video's captions as stored)
    and what the set held."""

    metrics: dict[str, dict[str, float]]
    video: np.ndarray
    text: np.ndarray
    ids: list[str]
    captions: list[str]
    spec: ClipSpec
    about: dict  # the shards' manifest: source, samples, rejects at conversion, ...
    padded: int  # zero frames added to short clips
    splits: list[str]  # the converter's split names the samples carry ("test", ...)
    skipped: list[Skip] = field(default_factory=list)
    phrases: list = field(default_factory=list)  # per video, (caption, stored verb spans): the motion probe's input


def score_shards(model, tokenizer, shards: str, device: torch.device, spec: ClipSpec, *, all_captions: bool = False,
                 batch_size: int = 16, workers: int = 4, precision: str = DEFAULT_PRECISION, skip_corrupt: bool = False,
                 progress: bool = True) -> SetScores | None:
    """Evaluate `model` (eval mode, on `device`) on `shards`. Every rank calls it; rank 0 gets the scores, the other
    ranks None."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    samples, about = eval_samples(shards)
    if not samples:
        raise ValueError(f"{shards}: no samples")
    share = rank_share(len(samples), rank, world)
    collate = CollateEval(tokenizer, model.cfg.text.max_length, all_captions, about.get("source", "eval"))
    loader = DataLoader(ShardClips(samples, share, spec), batch_size=batch_size, num_workers=workers,
                        collate_fn=collate, multiprocessing_context="spawn" if workers else None)
    mine = {"positions": [], "ids": [], "video": [], "captions": [], "caption_position": [], "text": [], "padded": 0,
            "splits": set(), "phrases": []}
    skipped: list[Skip] = []
    bar = tqdm(total=len(share), desc="embedding" + (f" (rank 0's share, {world} ranks)" if world > 1 else ""),
               unit="video", disable=not progress or rank != 0)
    for batch, skips in loader:
        skipped += skips
        bar.update(len(skips))
        if skipped and not skip_corrupt:
            break  # this rank's error is raised below, on every rank at once
        if batch is None:
            continue
        video, text = embed_batch(model, batch, device, precision)
        positions = batch.extra["positions"]
        mine["positions"] += positions
        mine["ids"] += batch.extra["ids"]
        mine["video"].append(video.numpy())
        mine["captions"] += batch.extra["captions"]
        mine["caption_position"] += [positions[o] for o in batch.extra["caption_owner"].tolist()]
        mine["text"].append(text.numpy())
        mine["padded"] += batch.extra["padded"]
        mine["splits"] |= set(batch.extra["splits"])
        mine["phrases"] += batch.extra["phrases"]
        bar.update(len(positions))
    bar.close()
    skipped = _agree_on_skips(skipped, world)
    if skipped and not skip_corrupt:
        raise ValueError(f"{skipped[0]}. An evaluation set must be complete: repair or re-convert that shard (check it "
                         f"with `mcq-shards verify`), or pass --skip-corrupt to evaluate without the samples that "
                         f"cannot be read")
    gathered = [mine]
    if world > 1:
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(mine, gathered, dst=0)
    if rank != 0:
        return None
    return _score(gathered, skipped, len(samples), spec, about)


def _agree_on_skips(skipped: list[Skip], world: int) -> list[Skip]:
    """Every rank's skips, on every rank: so that a damaged sample on one rank stops all of them with the same error
    instead of leaving the others waiting for it in a collective."""
    if world == 1:
        return skipped
    everyone: list = [None] * world
    dist.all_gather_object(everyone, skipped)
    return [s for rank_skips in everyone for s in rank_skips]


def _score(gathered: list[dict], skipped: list[Skip], count: int, spec: ClipSpec, about: dict) -> SetScores:
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
    metrics = retrieval_metrics(cosine_similarity(text, video), query_video)
    return SetScores(metrics, video, text, ids, captions, spec, about, int(sum(g["padded"] for g in gathered)),
                     sorted(set().union(*(g["splits"] for g in gathered))), skipped, phrases)
