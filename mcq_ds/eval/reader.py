"""Evaluation data on shards: every sample of a set exactly once, split across ranks, read through
`mcq_shards.reader` (the same index checks and sample checks as the training loaders).

An evaluation set must be complete: a sample that cannot be read (a damaged tar, a broken json, offsets or frame)
is an error naming its shard, key and reason, unless the user asks to leave such samples out (`--skip-corrupt`),
in which case they are listed and counted in the results. Items never raise in the loader workers: a failure is
returned as a `Skip`, so the main process decides, and every rank can learn about every other rank's skips.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

from mcq_shards.reader import (Reason, SampleEntry, SampleError, Skip, members_sample, read_members, resolve_shards,
                               sample_entries)

from ..data.batch import Batch, Tokens
from .data import ClipSpec, clip_tensor


@dataclass(frozen=True)
class EvalSample:
    """One listed sample of the set: where it lies (None when the tar breaks off before it)."""

    shard: str
    key: str
    entry: SampleEntry | None
    damage: str | None = None


def eval_samples(shards: str) -> tuple[list[EvalSample], dict]:
    """Every sample the shards list, in order, and what their manifest says about the set (empty for tar lists).
    The samples of a tar that breaks off are listed too, as unreadable, so a damaged set is never silently short."""
    found = resolve_shards(shards)
    samples = []
    for shard in found.shards:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            entries = sample_entries(shard.path, shard.index, shard.samples)
        for w in caught:  # an index that does not check out: the positions came from the tar headers
            warnings.warn(str(w.message), RuntimeWarning, stacklevel=2)
        samples += [EvalSample(shard.path, e.key, e) for e in entries.entries]
        damage = entries.damage or f"the shard holds {len(entries.entries)} of the {shard.samples} samples listed"
        samples += [EvalSample(shard.path, f"#{k}", None, damage)
                    for k in range(len(entries.entries), entries.listed)]
    return samples, found.about


def rank_share(count: int, rank: int, world: int) -> range:
    """Rank `rank`'s contiguous share of `count` items: every item on exactly one rank, shares differing by at
    most one, in rank order (so concatenating the shares restores the order)."""
    return range(rank * count // world, (rank + 1) * count // world)


class ShardClips(Dataset):
    """Map-style dataset over shard samples: item i is (position, meta, clips (W, F, 3, S, S), padded frames), or
    (position, Skip) for a sample that cannot be used."""

    def __init__(self, samples: list[EvalSample], positions: range, spec: ClipSpec):
        self.samples, self.positions, self.spec = samples, positions, spec

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[int, dict, torch.Tensor, int] | tuple[int, Skip]:
        position = self.positions[i]
        sample = self.samples[position]
        if sample.entry is None:
            return position, Skip(sample.shard, sample.key, Reason.UNREADABLE_TAR, sample.damage or "")
        try:
            with open(sample.shard, "rb") as f:
                stored = members_sample(sample.key, read_members(f, sample.entry))
            clips, padded = clip_tensor(stored.media, stored.bounds, self.spec)
        except SampleError as err:
            return position, Skip(sample.shard, sample.key, err.reason, err.detail)
        except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for a frame libjpeg cannot decode
            return position, Skip(sample.shard, sample.key, Reason.BAD_FRAME, f"undecodable: {type(err).__name__}: "
                                  f"{err}")
        return position, stored.meta, clips, padded


class CollateEval:
    """Builds the evaluation `Batch` in the loader workers: the videos' windows flattened into `video`
    (sum of W, F, 3, S, S) and every query caption tokenised into `text`. `extra` says what belongs to what:
    `positions` (each sample's place in the whole set), `ids`, `captions`, `window_owner` and `caption_owner`
    (the batch sample of each window and caption), `padded` (zero frames added), `phrases` (each sample's caption
    and stored verb spans), `splits` (the converter's split of each sample, "" when it has none) and `skipped` (the
    batch's samples that could not be used, as `Skip`s; the batch is None when none could)."""

    def __init__(self, tokenizer, max_length: int, all_captions: bool = False, source: str = "eval"):
        self.tokenizer, self.max_length, self.all_captions, self.source = tokenizer, max_length, all_captions, source

    def captions(self, meta: dict) -> list[str]:
        if self.all_captions and meta.get("captions"):
            return list(meta["captions"])
        return [meta["caption"]]

    def __call__(self, items: list) -> tuple[Batch | None, list[Skip]]:
        skipped = [item[1] for item in items if len(item) == 2]
        items = [item for item in items if len(item) == 4]
        if not items:
            return None, skipped
        captions = [self.captions(meta) for _, meta, _, _ in items]
        flat = [c for group in captions for c in group]
        tokens = self.tokenizer(flat, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        extra = {
            "positions": [p for p, _, _, _ in items],
            "ids": [str(meta.get("id", meta.get("key"))) for _, meta, _, _ in items],
            "captions": flat,
            "window_owner": torch.cat([torch.full((len(c),), n) for n, (_, _, c, _) in enumerate(items)]),
            "caption_owner": torch.cat([torch.full((len(g),), n) for n, g in enumerate(captions)]),
            "padded": sum(p for *_, p in items),
            "phrases": [(meta["caption"], meta.get("verbs") or []) for _, meta, _, _ in items],  # the motion probe's
            "splits": [str(meta.get("split", "")) for _, meta, _, _ in items],
        }
        batch = Batch(video=torch.cat([c for _, _, c, _ in items]),
                      text=Tokens(tokens["input_ids"], tokens["attention_mask"]), question=None, answer=None,
                      keys=[meta.get("key", "") for _, meta, _, _ in items], kinds=["none"] * len(items),
                      source=self.source, skipped=len(skipped), extra=extra)
        return batch, skipped
