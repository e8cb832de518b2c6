"""How mixed the training batches are: ``python -m mcq_shards.bench_mixing`` prints, for input sorted by a group column
(as WebVid's CSV is sorted by ``page_dir``, 50 related clips a page), the share of in-batch sample pairs that share
a group, for shards converted in input order and in the converter's global shuffle, next to a real global shuffle
(a DistributedSampler-style permutation of the whole set every epoch) and its expected value.

A pair of the same group is a near-duplicate negative: the global-shuffle rate is what the original trained with.
The batches are the real reference loader's (`mcq_ds.data.loader.ShardLoader`, every rank of a simulated world, one
epoch), over shards the real converter wrote from tiny images. It also prints how many of epoch 1's in-batch pairs
were already together in a batch in epoch 0 (a fresh global shuffle: about (batch − 1)/(samples − 1)).
"""

from __future__ import annotations

import argparse
import itertools
import random
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from mcq_shards.convert import Options, convert
from mcq_shards.sources import usercsv


def build_csv(root: Path, rows: int, group: int) -> Path:
    (root / "img").mkdir(parents=True)
    lines = ["id,group,path,caption"]
    for i in range(rows):
        Image.fromarray(np.full((16, 16, 3), i % 251, np.uint8)).save(root / "img" / f"{i}.png")
        lines.append(f"{i},{i // group},img/{i}.png,a photo of a red box number {i}")
    (root / "rows.csv").write_text("\n".join(lines) + "\n")
    return root / "rows.csv"


def loader_batches(shards: Path, ranks: int, micro: int, epochs: int) -> list[list[list[str]]]:
    """Per epoch, the global batches: the ids of micro-batch k of every rank together."""
    from mcq_ds.data.loader import LoaderConfig, ShardLoader
    from mcq_ds.model.text_former import load_tokenizer
    from mcq_ds.config import TextConfig

    tokenizer = load_tokenizer(TextConfig())
    per_rank = []
    for rank in range(ranks):
        loader = ShardLoader(LoaderConfig(shards=shards, source="csv", tokenizer=tokenizer, num_frames=1, img_size=16,
                                          batch_size=micro, workers=0, rank=rank, world_size=ranks, questions=False))
        batches = list(itertools.islice(iter(loader), loader.batches_per_epoch * epochs))
        per_rank.append([[key.split("-", 1)[1] for key in batch.keys] for batch in batches])
    steps = len(per_rank[0]) // epochs
    merged = [sum(parts, []) for parts in zip(*per_rank)]
    return [merged[e * steps:(e + 1) * steps] for e in range(epochs)]


def global_shuffle_batches(ids: list[str], batch: int, epochs: int, seed: int = 0) -> list[list[list[str]]]:
    out = []
    for epoch in range(epochs):
        order = list(ids)
        random.Random(seed * 1000 + epoch).shuffle(order)
        out.append([order[i:i + batch] for i in range(0, len(order) - batch + 1, batch)])
    return out


def same_group_share(batches: list[list[str]], group: int) -> tuple[float, float]:
    """Mean and standard error over batches of the share of in-batch pairs from one group."""
    shares = []
    for batch in batches:
        groups = [int(i) // group for i in batch]
        pairs = list(itertools.combinations(groups, 2))
        shares.append(sum(a == b for a, b in pairs) / len(pairs))
    return float(np.mean(shares)), float(np.std(shares) / np.sqrt(len(shares)))


def repeated_pairs(first: list[list[str]], second: list[list[str]]) -> float:
    together = defaultdict(set)
    for batch in first:
        for a in batch:
            together[a].update(batch)
    pairs = [(a, b) for batch in second for a, b in itertools.combinations(batch, 2)]
    return sum(b in together[a] for a, b in pairs) / len(pairs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4000, help="input rows (default %(default)s)")
    parser.add_argument("--group", type=int, default=50, help="rows per group, consecutive (default %(default)s)")
    parser.add_argument("--ranks", type=int, default=4, help="simulated ranks (default %(default)s)")
    parser.add_argument("--micro", type=int, default=16, help="micro-batch per rank (default %(default)s)")
    parser.add_argument("--shard-size", type=int, default=500, help="rows per shard (default %(default)s)")
    args = parser.parse_args(argv)
    batch = args.ranks * args.micro
    groups = [min(args.group, args.rows - g) for g in range(0, args.rows, args.group)]
    expected = sum(g * (g - 1) for g in groups) / (args.rows * (args.rows - 1))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        table = build_csv(root, args.rows, args.group)
        print(f"{args.rows} rows in groups of {args.group}, sorted by group; {args.ranks} ranks x {args.micro} = "
              f"global batch {batch}; shards of {args.shard_size}; the reference loader's 256-sample shuffle blocks")
        print(f"{'batches from':42s} {'same-group pairs':>18s} {'epoch-1 pairs seen in epoch 0':>31s}")
        for name, seed in (("shards in input order (--no-shuffle)", None), ("shards in the converter's shuffle", 0)):
            out = root / f"shards-{seed}"
            convert(usercsv.read(table, root, id_column="id"), out, "csv",
                    Options(shard_size=args.shard_size, shuffle_seed=seed), workers=1, progress=False)
            epochs = loader_batches(out, args.ranks, args.micro, epochs=2)
            mean, err = same_group_share(epochs[0], args.group)
            print(f"{name:42s} {mean:10.4f} ± {err:.4f} {repeated_pairs(epochs[0], epochs[1]):31.4f}")
        ids = [str(i) for i in range(args.rows)]
        epochs = global_shuffle_batches(ids, batch, 2)
        mean, err = same_group_share(epochs[0], args.group)
        print(f"{'a global shuffle every epoch':42s} {mean:10.4f} ± {err:.4f} {repeated_pairs(*epochs):31.4f}")
        print(f"{'expected for a global shuffle':42s} {expected:10.4f} {(batch - 1) / (args.rows - 1):40.4f}")


if __name__ == "__main__":
    main()
