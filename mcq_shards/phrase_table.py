"""``--phrases-file``: a user's own noun and verb phrases per sample, instead of the converter's parser.

A group that has the original's metadata can train on exactly its phrases. Three layouts, told apart by extension:

* ``.jsonl``: one object per line, ``{"id": ..., "nouns": [...], "verbs": [...]}``; ``"caption"`` in place of
  ``"id"`` matches by caption text.
* ``.csv``: a header naming ``id`` (or ``caption``), ``nouns`` and ``verbs``; each list cell is a JSON list or a
  Python list literal (``['old woman', 'green grass']``).
* ``.tsv``: the original's ``*_noun_verb.tsv`` metadata, read as its code read it: a header row, then columns by
  position (caption, media path, nouns, verbs), the lists as Python list literals; matched by caption, the one
  column whose meaning is certain. A list cell that is no literal (unquoted words) is split on commas, as the
  original's own code split every cell.

List cells are parsed with ``json`` or ``ast.literal_eval`` (literals only: nothing in the file is executed). A
malformed file stops with ``file:line:column``, as do two entries for one sample that disagree; a sample with no
entry becomes a counted reject; entries that match no sample are counted in the manifest.
"""

from __future__ import annotations

import ast
import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from mcq_shards.tables import InputError, read_table
from mcq_shards.tario import sha256_file

LAYOUTS = (".jsonl", ".csv", ".tsv")


@dataclass
class PhraseTable:
    path: Path
    by: str  # "id" or "caption": which field of a sample the entries name
    entries: dict[str, tuple[list[str], list[str]]]
    used: set[str] = field(default_factory=set)
    comma_split: int = 0  # list cells that were no literal and were split on commas

    def lookup(self, sample_id: str, caption: str) -> tuple[list[str], list[str]] | None:
        name = sample_id if self.by == "id" else caption
        found = self.entries.get(name)
        if found is not None:
            self.used.add(name)
        return found

    def summary(self) -> dict:
        return {"path": str(self.path), "sha256": sha256_file(self.path), "matched_by": self.by,
                "entries": len(self.entries), "entries_used": len(self.used),
                "entries_unused": len(self.entries) - len(self.used), "cells_split_on_commas": self.comma_split}


def read_phrase_table(path: Path) -> PhraseTable:
    suffix = path.suffix.lower()
    if suffix not in LAYOUTS:
        raise InputError(path, None, None, f"unknown phrases layout {suffix or '(no extension)'!r}; "
                                           f"name the file .jsonl, .csv or .tsv")
    table = PhraseTable(path, "caption" if suffix == ".tsv" else "id", {})
    if suffix == ".jsonl":
        _read_jsonl(table)
    elif suffix == ".csv":
        _read_csv(table)
    else:
        _read_original_tsv(table)
    return table


def _add(table: PhraseTable, name: str, nouns: list[str], verbs: list[str], line: int) -> None:
    known = table.entries.get(name)
    if known is not None and known != (nouns, verbs):
        raise InputError(table.path, line, None, f"{table.by} {name!r} is listed again with other phrases")
    table.entries[name] = (nouns, verbs)


def _read_jsonl(table: PhraseTable) -> None:
    decided = False
    with open(table.path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as err:
                raise InputError(table.path, line_no, err.colno, f"invalid JSON: {err.msg}") from None
            if not isinstance(entry, dict):
                raise InputError(table.path, line_no, 1, "expected an object with id (or caption), nouns, verbs")
            if not decided:
                table.by, decided = ("id" if "id" in entry else "caption"), True
            if table.by not in entry:
                raise InputError(table.path, line_no, None, f"no {table.by!r} (the first line decided the file "
                                                            f"matches samples by {table.by})")
            nouns, verbs = (_as_list(entry.get(k, []), table.path, line_no, k) for k in ("nouns", "verbs"))
            _add(table, str(entry[table.by]), nouns, verbs, line_no)


def _read_csv(table: PhraseTable) -> None:
    with open(table.path, encoding="utf-8", newline="") as f:
        header = next(csv.reader(f), [])
    table.by = "id" if "id" in header else "caption"
    for line, row in read_table(table.path, [table.by, "nouns", "verbs"]):
        nouns, verbs = (_parse_cell(row[k], table, line, k) for k in ("nouns", "verbs"))
        _add(table, row[table.by], nouns, verbs, line)


def _read_original_tsv(table: PhraseTable) -> None:
    with open(table.path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader, None)  # the header: the original reads columns by position
        for row in reader:
            line = reader.line_num
            if not row:
                continue
            if len(row) < 4:
                raise InputError(table.path, line, len(row) + 1, f"{len(row)} columns; the original's metadata "
                                                                 "has caption, path, nouns, verbs")
            nouns, verbs = (_parse_cell(row[i], table, line, name) for i, name in ((2, "nouns"), (3, "verbs")))
            _add(table, row[0].strip(), nouns, verbs, line)


def _parse_cell(cell: str, table: PhraseTable, line: int, column: str) -> list[str]:
    text = cell.strip()
    if not text or text == "[]":
        return []
    try:
        value = json.loads(text)
    except ValueError:
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            if table.by == "caption" and text.startswith("[") and text.endswith("]"):
                table.comma_split += 1
                return [p.strip() for p in text[1:-1].split(",") if p.strip()]
            raise InputError(table.path, line, None, f"{column}: not a JSON list or a Python list literal: "
                                                     f"{text[:60]!r}") from None
    return _as_list(value, table.path, line, column)


def _as_list(value, path: Path, line: int, column: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InputError(path, line, None, f"{column}: expected a list of strings, got {str(value)[:60]!r}")
    return [v.strip() for v in value if v.strip()]

