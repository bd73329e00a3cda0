"""The one table writer: result tables (runs), study tables (studies/lr) and analysis summaries
all leave through `write_csv` and `markdown`, so a CSV and its markdown twin always agree on
columns, missing values and the std rule named in the caption.

STD_RULE is the std every table reports: the sample std over seeds (ddof = 1), computed by
`embedkit.metrics.seed_summary`.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

STD_RULE = "sample std (ddof = 1)"


def columns_of(rows: Sequence[dict]) -> list[str]:
    """Every key of every row, in first-seen order."""
    return list(dict.fromkeys(k for r in rows for k in r))


def write_csv(path, rows: Sequence[dict], columns: Sequence[str] | None = None) -> Path:
    """One row per dict; None and absent values are empty cells."""
    path = Path(path)
    cols = list(columns) if columns is not None else columns_of(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})
    return path


def markdown(header: Sequence[str], rows: Sequence[Sequence], caption: str = "") -> str:
    """A GitHub markdown table (cells already formatted; a '|' inside a cell becomes '/'),
    preceded by its caption."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    for r in rows:
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in r) + " |")
    return (caption + "\n\n" if caption else "") + "\n".join(lines) + "\n"
