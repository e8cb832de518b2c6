"""Reading the input tables (CSV, TSV, JSON) strictly: a malformed file stops the run at once.

A conversion of millions of rows must not fail hours in, nor quietly skip a line a wrong delimiter
broke. So each source reads its whole table before converting anything, and every structural error
is an :class:`InputError` that names the file, line and column. Text is decoded with
``surrogateescape`` so that a row whose caption is not UTF-8 becomes one reject, not a stopped run.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Iterator

csv.field_size_limit(sys.maxsize)


class InputError(Exception):
    """A structural error in an input file: ``file:line:column: message``."""

    def __init__(self, path: Path | str, line: int | None, column: int | None, message: str):
        where = ":".join(str(p) for p in (path, line, column) if p is not None)
        super().__init__(f"{where}: {message}")


def is_utf8(text: str) -> bool:
    """False when ``text`` was read with ``surrogateescape`` from bytes that are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# UTF-8 that drops a leading byte-order mark
ENCODING = "utf-8-sig"


def _open(path: Path):
    if not path.is_file():
        raise InputError(path, None, None, "file not found")
    return open(path, encoding=ENCODING, errors="surrogateescape", newline="")


def read_table(path: Path, columns: list[str], delimiter: str = ",",
               header: bool = True, quoting: int = csv.QUOTE_MINIMAL) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield ``(line, {column: value})`` for each data row.

    With ``header``, the first row names the columns and each of ``columns`` must be among them.
    Without, the rows must have exactly ``len(columns)`` fields, in that order. A row with a
    different number of fields than the header stops the run: it means a wrong delimiter or broken
    quoting, and guessing would misattribute captions.
    """
    with _open(path) as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting, strict=True)
        try:
            names = next(reader) if header else list(columns)
        except StopIteration:
            raise InputError(path, 1, None, "file is empty") from None
        except csv.Error as err:
            raise InputError(path, reader.line_num, None, f"malformed: {err}") from None
        for position, column in enumerate(columns):
            if column not in names:
                hint = f" (is the delimiter {delimiter!r} right?)" if len(names) == 1 else ""
                raise InputError(path, 1, len(names) + 1,
                                 f"missing column {column!r}; the header has {names}{hint}")
        where = [names.index(c) for c in columns]
        if not header:
            f.seek(0)
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting, strict=True)
        line = reader.line_num + 1
        try:
            for row in reader:
                if not row:
                    line = reader.line_num + 1
                    continue
                if len(row) != len(names):
                    column = min(len(row), len(names)) + 1
                    raise InputError(path, line, column,
                                     f"row has {len(row)} fields, expected {len(names)} "
                                     f"({', '.join(names)}); wrong delimiter or quoting?")
                yield line, {c: row[i] for c, i in zip(columns, where)}
                line = reader.line_num + 1
        except csv.Error as err:
            raise InputError(path, reader.line_num, None, f"malformed: {err}") from None


def read_json(path: Path):
    """Parse a JSON file; a syntax error names its line and column."""
    with _open(path) as f:
        text = f.read()
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(path, err.lineno, err.colno, f"invalid JSON: {err.msg}") from None


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a list file (one id per line)."""
    with _open(path) as f:
        return [line.strip() for line in f if line.strip()]
