"""`mcq-ds search`: text queries against saved video embeddings → the top-k video ids and cosine scores.

Exact search by default: the embedding matrix is memory-mapped and scanned in chunks (`--chunk-size` rows at a
time, on the GPU when there is one), keeping a running top-k per query, so memory stays at one chunk whatever the
number of videos and the file is never loaded whole. With `--faiss FACTORY` (FAISS installed) a FAISS index is built
once, saved next to the embeddings and reused: "Flat" is exact, "IVF4096,Flat" or "HNSW32" trade exactness for
speed at hundreds of millions of rows.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from ..runtime import pick_device
from .embed import DEFAULT_PRECISION, PRECISIONS
from .extract import read_ids


class Hits(NamedTuple):
    """Per query, the top-k rows (best first) and their scores: both (Q, k)."""

    rows: np.ndarray
    scores: np.ndarray


def embedding_files(path: str | Path, name: str = "video") -> tuple[Path, Path]:
    """(`.npy`, ids) from an extract/eval output folder or from the `.npy` itself."""
    path = Path(path)
    npy = path / f"{name}_embeddings.npy" if path.is_dir() else path
    ids = npy.with_name(npy.name.replace("_embeddings.npy", "_ids.txt"))
    for required in (npy, ids):
        if not required.is_file():
            raise FileNotFoundError(f"{required} not found; give a folder written by `mcq-ds extract` (or `mcq-ds "
                                    "eval --save-embeddings`), or its <name>_embeddings.npy")
    return npy, ids


@torch.no_grad()
def chunked_topk(queries: np.ndarray, embeddings: np.ndarray, k: int, chunk_size: int = 1 << 16,
                 device: torch.device | str = "cpu", query_block: int = 1024) -> Hits:
    """Exact top-k of `queries @ embeddings.T`, reading `embeddings` (may be a memory map) one chunk of rows at a
    time and the queries `query_block` at a time, so at most `query_block × chunk_size` scores exist at once.
    Equal scores come in no particular order."""
    device = torch.device(device)
    k = min(k, len(embeddings))
    rows, scores = [], []
    for q_start in range(0, len(queries), query_block):
        q = torch.from_numpy(np.ascontiguousarray(queries[q_start:q_start + query_block], dtype=np.float32))
        q = q.to(device)
        best_scores = torch.empty((len(q), 0), device=device)
        best_rows = torch.empty((len(q), 0), dtype=torch.long, device=device)
        for start in range(0, len(embeddings), chunk_size):
            block = _as_tensor(embeddings[start:start + chunk_size])
            chunk = (q @ block.to(device, non_blocking=True).T).topk(min(k, len(block)), dim=1)
            merged_scores = torch.cat([best_scores, chunk.values], dim=1)
            merged_rows = torch.cat([best_rows, chunk.indices + start], dim=1)
            top = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
            best_scores, best_rows = top.values, merged_rows.gather(1, top.indices)
        rows.append(best_rows.cpu().numpy())
        scores.append(best_scores.cpu().numpy())
    if not rows:
        return Hits(np.zeros((0, k), np.int64), np.zeros((0, k), np.float32))
    return Hits(np.concatenate(rows), np.concatenate(scores))


def open_embeddings(npy: Path) -> np.ndarray:
    """The embedding matrix memory-mapped copy-on-write: nothing is read until it is used, rows are read from the
    page cache without a copy, and the file is never written."""
    return np.load(npy, mmap_mode="c")


def _as_tensor(block: np.ndarray) -> torch.Tensor:
    """Rows as a float32 tensor, sharing memory where they already are float32 and writable (a copy-on-write map):
    copying each chunk took most of the time of a 1 M-row scan on the CPU."""
    if block.dtype == np.float32 and block.flags.writeable and block.flags.c_contiguous:
        return torch.from_numpy(block)
    return torch.from_numpy(np.array(block, dtype=np.float32))


def faiss_topk(queries: np.ndarray, npy: Path, k: int, factory: str, index=None) -> Hits:
    """Top-k through a FAISS inner-product index built once from `npy` and cached beside it (or `index`, one
    `faiss_index` already opened)."""
    index = faiss_index(npy, factory) if index is None else index
    scores, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return Hits(rows, scores)


def faiss_index(npy: Path, factory: str):
    """The FAISS inner-product index of `npy` for this factory string: read from its cache beside `npy` when that is
    newer than `npy`, else built (in blocks of rows) and cached."""
    try:
        import faiss
    except ImportError:
        raise ValueError("--faiss needs FAISS: `pip install faiss-cpu` (or faiss-gpu); without it, leave out --faiss "
                         "for the exact chunked search") from None
    cached = npy.with_name(f"{npy.stem}.{factory.replace(',', '_')}.faiss")
    if cached.is_file() and cached.stat().st_mtime >= npy.stat().st_mtime:
        index = faiss.read_index(str(cached))
    else:
        vectors = np.load(npy, mmap_mode="r")
        index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        if not index.is_trained:
            index.train(np.ascontiguousarray(vectors, dtype=np.float32))
        for start in range(0, len(vectors), 1 << 18):
            index.add(np.ascontiguousarray(vectors[start:start + (1 << 18)], dtype=np.float32))
        faiss.write_index(index, str(cached))
    return index


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("embeddings", help="a folder written by `mcq-ds extract` (video_embeddings.npy + "
                        "video_ids.txt) or the .npy itself")
    parser.add_argument("queries", nargs="*", help="text queries (need --model)")
    parser.add_argument("--model", help="the model that made the embeddings, to embed the text queries")
    parser.add_argument("--query-embeddings", metavar="PATH", help="already embedded queries instead: a folder "
                        "with text_embeddings.npy + text_ids.txt, or that .npy")
    parser.add_argument("-k", "--top-k", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("--chunk-size", type=int, default=1 << 16, help="embedding rows scored at once "
                        "(default %(default)s: 64 MiB of 256-d rows, at most 256 MiB of scores per 1,024 queries)")
    parser.add_argument("--faiss", metavar="FACTORY", help="use a FAISS index of this factory string "
                        "('Flat', 'IVF4096,Flat', 'HNSW32', ...), built once and cached beside the embeddings")
    parser.add_argument("--precision", choices=list(PRECISIONS), default=DEFAULT_PRECISION,
                        help="for the query encoder (default %(default)s; see `mcq-ds eval --help`)")
    parser.add_argument("--tokenizer", help="tokenizer for an original .pth checkpoint")
    parser.add_argument("--device", help="torch device (default: this rank's GPU, LOCAL_RANK, when there is one, "
                        "else the CPU)")
    parser.add_argument("--json", action="store_true", help="one JSON object per query instead of a table")


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1 or args.chunk_size < 1:
        raise ValueError("--top-k and --chunk-size must be at least 1")
    npy, ids_file = embedding_files(args.embeddings)
    device = pick_device(args.device)
    if args.query_embeddings:
        q_npy, q_ids = embedding_files(args.query_embeddings, "text")
        queries, names = np.load(q_npy), read_ids(q_ids)
    elif args.queries:
        if not args.model:
            raise ValueError("text queries need --model (the model that made the embeddings)")
        from .checkpoint import load_model
        from .embed import embed_texts
        from .identity import check_same_model

        loaded = load_model(args.model, bridge=False, tokenizer=args.tokenizer)
        warning = check_same_model(npy.parent, loaded)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        queries = embed_texts(loaded.model.to(device), loaded.tokenizer, args.queries, device,
                              precision=args.precision)
        names = list(args.queries)
    else:
        raise ValueError("give text queries (with --model) or --query-embeddings")
    embeddings = open_embeddings(npy)
    if embeddings.shape[1] != queries.shape[1]:
        raise ValueError(f"queries are {queries.shape[1]}-d but {npy} is {embeddings.shape[1]}-d: embed them with "
                         "the model that made the video embeddings")
    hits = (faiss_topk(queries, npy, args.top_k, args.faiss) if args.faiss
            else chunked_topk(queries, embeddings, args.top_k, args.chunk_size, device))
    ids = read_ids(ids_file)
    for name, rows, scores in zip(names, hits.rows, hits.scores):
        found = [(ids[r], float(s)) for r, s in zip(rows, scores) if r >= 0]
        if args.json:
            print(json.dumps({"query": name, "results": [{"id": i, "score": s} for i, s in found]}))
        else:
            print(f"query: {name}")
            for rank, (i, s) in enumerate(found, 1):
                print(f"  {rank:3d}  {s:+.4f}  {i}")
    return 0
