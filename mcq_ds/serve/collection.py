"""A searchable video collection: the embeddings and ids `mcq-ds extract` wrote, opened so that memory stays flat
whatever the number of videos, checked against the model that embeds the queries.

The embedding matrix is memory-mapped (rows come from the page cache as the scan reads them), and so is the ids
file: only the offset of each line is kept (8 bytes a video), not a million Python strings.
"""
from __future__ import annotations

import json
import mmap
from pathlib import Path

import numpy as np

from ..eval.checkpoint import LoadedModel
from ..eval.identity import check_same_model
from ..eval.search import Hits, chunked_topk, embedding_files, faiss_index, faiss_topk, open_embeddings


class IdList:
    """The lines of an ids file (one id per line, each ending in a newline), read on demand from a memory map."""

    def __init__(self, path: Path, block: int = 1 << 24):
        self.path = path
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""
        ends = [np.flatnonzero(np.frombuffer(self._map[s:s + block], dtype=np.uint8) == 10) + s
                for s in range(0, len(self._map), block)]
        self._ends = np.concatenate(ends) if ends else np.zeros(0, np.int64)
        self._starts = np.concatenate([[0], self._ends[:-1] + 1]).astype(np.int64)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, row: int) -> str:
        return self._map[self._starts[row]:self._ends[row]].decode("utf-8")

    def row_of(self, item: str) -> int | None:
        """The row of the first line equal to `item`, None if there is none."""
        needle = item.encode("utf-8")
        at = -1
        while True:
            at = self._map.find(needle, at + 1)
            if at < 0:
                return None
            row = int(np.searchsorted(self._starts, at))
            if row < len(self) and self._starts[row] == at and self._ends[row] == at + len(needle):
                return row


class Collection:
    """Embeddings + ids of one `mcq-ds extract` folder, searchable by vectors of the model that wrote them."""

    def __init__(self, folder: Path, loaded: LoadedModel, faiss_factory: str | None = None):
        self.folder = Path(folder)
        npy, ids_file = embedding_files(self.folder)
        self.embeddings = open_embeddings(npy)
        self.ids = IdList(ids_file)
        if len(self.ids) != len(self.embeddings):
            raise ValueError(f"{ids_file} has {len(self.ids)} lines for {len(self.embeddings)} rows of {npy}: the "
                             "folder is damaged or half-written; extract it again")
        dim = loaded.model.cfg.embed_dim
        if self.embeddings.ndim != 2 or self.embeddings.shape[1] != dim:
            raise ValueError(f"{npy} holds {self.embeddings.shape[1:]}-d rows but {loaded.path} embeds queries in "
                             f"{dim} dimensions: these features were written by another model")
        self.warnings = [w for w in [check_same_model(self.folder, loaded)] if w]
        record = self.folder / "extract.json"
        self.about = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
        self._npy, self._faiss = npy, faiss_factory
        self._index = faiss_index(npy, faiss_factory) if faiss_factory else None
        self.method = f"faiss {faiss_factory}" if faiss_factory else "exact"

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries: np.ndarray, k: int) -> Hits:
        """Top-k rows for each query vector (unit rows), best first: the exact chunked scan, or FAISS."""
        if self._index is not None:
            return faiss_topk(queries, self._npy, k, self._faiss, self._index)
        return chunked_topk(queries, self.embeddings, k)

    def video_path(self, row: int) -> Path:
        """Where row's video is: its id, a path, relative ones taken from the folder extraction ran in."""
        path = Path(self.ids[row])
        if not path.is_absolute() and self.about.get("working_directory"):
            path = Path(self.about["working_directory"]) / path
        return path
