"""Metadata tables (CSV manifests, Waterbirds' metadata.csv, CelebA's lists) with errors that
name the file and line: a missing column, an unknown split, a label out of range or a duplicate id
is one `EmbedkitError`, never a skipped row."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedkit.errors import EmbedkitError

SPLIT_ALIASES = {
    "train": 0,
    "val": 1,
    "valid": 1,
    "validation": 1,
    "test": 2,
    "0": 0,
    "1": 1,
    "2": 2,
}


@dataclass
class Table:
    """Rows of text fields; `lines[i]` is the 1-based line number of row i in `path`."""

    path: Path
    header: list[str]
    rows: list[list[str]]
    lines: list[int]

    def __len__(self):
        return len(self.rows)

    def error(self, i: int, message: str) -> EmbedkitError:
        return EmbedkitError(f"{self.path}, line {self.lines[i]}: {message}")

    def column(self, name: str) -> list[str]:
        j = self.header.index(name)
        return [r[j].strip() for r in self.rows]

    def ints(
        self, name: str, allowed: Sequence[int] | None = None, what: str | None = None
    ) -> np.ndarray:
        """Column `name` as integers; a non-integer or (with `allowed`) an unlisted value is an
        error."""
        out = np.empty(len(self.rows), np.int64)
        ok = None if allowed is None else set(allowed)
        for i, v in enumerate(self.column(name)):
            try:
                out[i] = int(v)
            except ValueError:
                raise self.error(i, f"{what or name} {v!r} is not an integer") from None
            if ok is not None and out[i] not in ok:
                raise self.error(
                    i,
                    f"{what or name} {v!r} out of range (allowed: "
                    f"{', '.join(str(a) for a in sorted(ok))})",
                )
        return out

    def splits(self, name: str) -> np.ndarray:
        """Column `name` as split codes 0/1/2 (train/val/test, names or numbers)."""
        out = np.empty(len(self.rows), np.uint8)
        for i, v in enumerate(self.column(name)):
            code = SPLIT_ALIASES.get(v.lower())
            if code is None:
                raise self.error(
                    i, f"unknown split value {v!r} in column {name!r} (use train/val/test or 0/1/2)"
                )
            out[i] = code
        return out

    def check_unique(self, values: Sequence[str], what: str) -> None:
        first: dict[str, int] = {}
        for i, v in enumerate(values):
            if v in first:
                raise self.error(i, f"duplicate {what} {v!r} (also on line {self.lines[first[v]]})")
            first[v] = i


def read_csv(
    path, required: Sequence[str], delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL
) -> Table:
    """Read a CSV file with a header line; every name in `required` must be a column.
    `quoting=csv.QUOTE_NONE` reads files whose fields may hold bare quote characters (TaxiNLI)."""
    path = Path(path)
    if not path.is_file():
        raise EmbedkitError(f"{path}: no such metadata file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        header = next(reader, None)
        if header is None:
            raise EmbedkitError(f"{path}: empty metadata file (no header line)")
        header = [h.strip() for h in header]
        missing = [c for c in required if c not in header]
        if missing:
            raise EmbedkitError(
                f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(repr(c) for c in missing)} (found: {', '.join(header)})"
            )
        rows, lines = [], []
        for row in reader:
            if not any(field.strip() for field in row):
                continue
            if len(row) != len(header):
                raise EmbedkitError(
                    f"{path}, line {reader.line_num}: {len(row)} fields, "
                    f"the header has {len(header)}"
                )
            rows.append(row)
            lines.append(reader.line_num)
    return Table(path, header, rows, lines)


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
