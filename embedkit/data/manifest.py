"""Any image folder plus a CSV manifest (the `csv` adapter):

    <root>/manifest.csv      one row per image; column names are options
    <root>/<image_dir>/...   images at the paths of the path column (absolute paths work too)

Columns: path (`path_col`), label (`label_col`), split (`split_col`: train/val/test or 0/1/2),
optionally the spurious attribute (`attr_col`; set it to "" when there is none, then a = -1,
unknown) and an id (`id_col`; default the path). Labels and attributes are integers 0..K-1 or
names; `class_names` / `attr_names` (comma-separated) fix the order, otherwise integer labels are
named "0".."K-1" and names are sorted. An empty attribute cell means unknown (a = -1).

A column option left at `auto` is found by its common name (case-insensitive; `COMMON_NAMES`):
the label is `y` / `label` / `target` / ..., the attribute `a` / `attr` / `place` / `spurious` /
..., the split `split` / `fold` / `partition`, the path `path` / `filename` / `img_filename` / ....
Two candidates in one file are an error (name the column); no attribute column means a = -1.
What was picked is recorded in `meta["columns"]` (so in the cache), shown by `summary()` and
logged by `embedkit extract`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedkit.errors import EmbedkitError

from .base import FileDataset, Option
from .tables import Table, read_csv, sha256_file

AUTO = "auto"
COMMON_NAMES = {
    "path": ("path", "filename", "file", "img_filename", "image_path", "img_path", "image"),
    "label": ("y", "label", "labels", "target", "class"),
    "attr": ("a", "attr", "attribute", "place", "spurious", "bias"),
    "split": ("split", "fold", "partition"),
}


def pick_column(table: Table, role: str, option: str, given: str) -> tuple[str | None, bool]:
    """The column for `role` and whether it was auto-detected. `given` is the option's value:
    a column name, "auto", or "" (no attribute column)."""
    if given == "" and role == "attr":
        return None, False
    if given not in ("", AUTO):
        if given not in table.header:
            raise EmbedkitError(
                f"{table.path}: missing column {given!r} (found: {', '.join(table.header)})"
            )
        return given, False
    lower = {h.lower(): h for h in table.header}
    hits = [lower[c] for c in COMMON_NAMES[role] if c in lower]
    if len(hits) > 1:
        raise EmbedkitError(
            f"{table.path}: columns {' and '.join(repr(h) for h in hits)} could each be the "
            f"{role}; name one with --dataset-opt {option}=COLUMN"
        )
    if not hits:
        if role == "attr":
            return None, True
        raise EmbedkitError(
            f"{table.path}: no {role} column (looked for {', '.join(COMMON_NAMES[role])}; found: "
            f"{', '.join(table.header)}); name it with --dataset-opt {option}=COLUMN"
        )
    return hits[0], True


def encode(
    table: Table, column: str, names_option: str, allow_unknown: bool
) -> tuple[np.ndarray, list[str]]:
    """Column values to codes 0..K-1 (or -1 for an empty cell where `allow_unknown`) and names."""
    values = table.column(column)
    fixed = [v.strip() for v in names_option.split(",") if v.strip()] if names_option else None
    known = [v for v in values if not (allow_unknown and v == "")]
    numeric = all(v.lstrip("-").isdigit() for v in known)
    if fixed is None:
        fixed = (
            [str(k) for k in range(max(int(v) for v in known) + 1)]
            if numeric and known
            else sorted(set(known))
        )
    index = {n: k for k, n in enumerate(fixed)}
    codes = np.empty(len(values), np.int64)
    for i, v in enumerate(values):
        if allow_unknown and v == "":
            codes[i] = -1
        elif v in index:
            codes[i] = index[v]
        elif v.lstrip("-").isdigit():
            k = int(v)
            if not 0 <= k < len(fixed):
                raise table.error(
                    i, f"{column} {v} out of range 0..{len(fixed) - 1} ({', '.join(fixed)})"
                )
            codes[i] = k
        else:
            raise table.error(i, f"unknown {column} {v!r} (known: {', '.join(fixed)})")
    return codes, fixed


class CsvDataset(FileDataset):
    name = "csv"
    description = (
        "any image folder plus a CSV manifest; path/label/attribute/split columns by option, or "
        "found by their common names (y/label, a/attr/place/spurious, split)"
    )
    OPTIONS = {
        "manifest": Option("manifest.csv", str, "manifest file, relative to --root (or absolute)"),
        "image_dir": Option("", str, "folder the paths are relative to, relative to --root"),
        "path_col": Option(AUTO, str, "column with the image path (auto: path, filename, ...)"),
        "label_col": Option(AUTO, str, "column with the class label (auto: y, label, ...)"),
        "attr_col": Option(
            AUTO,
            str,
            "column with the spurious attribute (auto: a, attr, place, spurious, ...; "
            "'' for none: a = -1)",
        ),
        "split_col": Option(
            AUTO, str, "column with train/val/test or 0/1/2 (auto: split, fold, partition)"
        ),
        "id_col": Option("", str, "column with a unique id ('' uses the path)"),
        "class_names": Option("", str, "comma-separated class names in label order"),
        "attr_names": Option("", str, "comma-separated attribute names in attribute order"),
        "delimiter": Option(",", str, "field delimiter"),
    }

    def _setup(self):
        o = self.options
        root = self.folder("the manifest and the images")
        table = read_csv(
            root / o["manifest"], [o["id_col"]] if o["id_col"] else [], delimiter=o["delimiter"]
        )
        cols, detected = {}, []
        for role in ("path", "label", "attr", "split"):
            cols[role], auto = pick_column(table, role, f"{role}_col", o[f"{role}_col"])
            if auto:
                detected.append(role)
        paths = table.column(cols["path"])
        uid = table.column(o["id_col"]) if o["id_col"] else paths
        table.check_unique(uid, o["id_col"] or cols["path"])
        y, class_names = encode(table, cols["label"], o["class_names"], allow_unknown=False)
        if cols["attr"]:
            a, attr_names = encode(table, cols["attr"], o["attr_names"], allow_unknown=True)
        else:
            a, attr_names = np.full(len(table), -1, np.int64), []
        base = root / o["image_dir"]
        self.paths = [Path(p) if Path(p).is_absolute() else base / p for p in paths]
        picked = ", ".join(f"{r}={cols[r] or '(none: a = -1)'}" for r in cols)
        self._finish(
            uid,
            table.splits(cols["split"]),
            y,
            a,
            class_names,
            attr_names or ["unknown"],
            metadata_sha256=sha256_file(table.path),
            columns=cols,
            columns_detected=detected,
            note=f"columns {picked}"
            + (f" (auto-detected: {', '.join(detected)})" if detected else ""),
        )

    def summary(self) -> str:
        return super().summary() + f"\n{self.meta['note']}"
