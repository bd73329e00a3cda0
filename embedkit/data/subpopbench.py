"""SubpopBench's metadata layout (the `subpopbench` adapter), one adapter for all its image sets:

    <metadata>   metadata_<dataset>.csv as SubpopBench's `download.py` writes it (pandas `to_csv`,
                 header line, no index column): at least `filename, split, y, a`; other columns
                 (`id`, CheXpert's finding columns, ...) are ignored
    <root>/...   the images; a `filename` is joined to --root as SubpopBench joins it
                 (`os.path.join`), so the absolute paths MetaShift, ImageNetBG, NICO++, CheXpert
                 and Breeds write are used as they are

`split` is 0/1/2 (train/val/test) or, for ImageNetBG, the names train/val/test. Rows of any other
split (Breeds' zero-shot 3, CXRMultisite's deploy 3, ImageNetBG's mixed_rand / only_fg / no_fg) are
left out and counted in `meta["other_splits"]`, unless the `test_split` option names that value as
the test split (then the original test rows are the ones left out). `y` and `a` are integers
(`True`/`False` and integral floats such as `1.0`, which pandas writes, are read as integers); an
empty `a` is unknown (a = -1). uid = filename, which must be unique among the rows kept.

`read_metadata` is also what `embedkit import --from subpopbench` (DPE's feats_<split>.npy) reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedkit.errors import EmbedkitError

from .base import FileDataset, Option
from .tables import Table, read_csv, sha256_file

REQUIRED = ("filename", "split", "y", "a")
_SPLIT_VALUES = {"0": 0, "train": 0, "1": 1, "val": 1, "2": 2, "test": 2}


@dataclass
class Metadata:
    """The rows of one metadata file that fall in train/val/test, in file order."""

    table: Table
    rows: np.ndarray  # indices into table.rows
    filename: list[str]
    split: np.ndarray  # 0/1/2
    y: np.ndarray
    a: np.ndarray  # -1 = unknown
    other_splits: dict  # split value -> rows left out
    test_split: str

    @property
    def path(self) -> Path:
        return self.table.path


def int_cell(table: Table, i: int, column: str, value: str, allow_empty: bool) -> int:
    v = value.strip()
    if v == "" and allow_empty:
        return -1
    if v in ("True", "False"):  # MIMICNotes: a = (gender == 'M') is written as a bool
        return int(v == "True")
    try:
        f = float(v)
    except ValueError:
        raise table.error(i, f"{column} {value!r} is not an integer") from None
    if not np.isfinite(f) or f != int(f):
        raise table.error(i, f"{column} {value!r} is not an integer")
    return int(f)


def _split_key(value: str) -> str:
    """A split cell as one canonical text: pandas writes 0 or 0.0, ImageNetBG writes names."""
    v = value.strip()
    try:
        f = float(v)
        if f == int(f):
            return str(int(f))
    except ValueError:
        pass
    return v


def read_metadata(path, test_split: str = "") -> Metadata:
    """Read a SubpopBench metadata CSV; errors name the file and line."""
    table = read_csv(path, REQUIRED)
    test_key = _split_key(test_split) if test_split else ""
    splits = [_split_key(v) for v in table.column("split")]
    if test_key and test_key not in splits:
        raise EmbedkitError(
            f"{table.path}: test_split {test_split!r} matches no row of column 'split' "
            f"(values: {', '.join(sorted(set(splits)))})"
        )
    codes = np.full(len(table), -1, np.int64)
    other: dict[str, int] = {}
    for i, v in enumerate(splits):
        code = _SPLIT_VALUES.get(v.lower())
        if test_key:
            code = 2 if v == test_key else (None if code == 2 else code)
        if code is None:
            other[v] = other.get(v, 0) + 1
        else:
            codes[i] = code
    keep = np.flatnonzero(codes >= 0)
    if keep.size == 0:
        raise EmbedkitError(
            f"{table.path}: no row has split 0/1/2 (train/val/test) in column 'split'"
        )
    files, ys, as_ = table.column("filename"), table.column("y"), table.column("a")
    y = np.array([int_cell(table, i, "y", ys[i], False) for i in keep], np.int64)
    a = np.array([int_cell(table, i, "a", as_[i], True) for i in keep], np.int64)
    for name, arr, low in (("y", y, 0), ("a", a, -1)):
        bad = np.flatnonzero(arr < low)
        if bad.size:
            raise table.error(int(keep[bad[0]]), f"{name} {arr[bad[0]]} is negative")
    filename = [files[i] for i in keep]
    sub = Table(
        table.path, table.header, [table.rows[i] for i in keep], [table.lines[i] for i in keep]
    )
    sub.check_unique(filename, "filename")
    return Metadata(
        table, keep, filename, codes[keep].astype(np.uint8), y, a, other, test_key or "2"
    )


def find_metadata(folder: Path, how_to_name: str) -> Path:
    """The one metadata*.csv in `folder`; none or several is an error saying how to name it."""
    found = sorted(Path(folder).glob("metadata*.csv"))
    if len(found) != 1:
        raise EmbedkitError(
            f"{folder}: {'no' if not found else len(found)} metadata*.csv files here; "
            f"name the SubpopBench metadata CSV with {how_to_name}"
        )
    return found[0]


def default_names(values: np.ndarray, option: str, what: str, path) -> list[str]:
    """Names 0..K-1 for integer codes, or the comma-separated `option` (checked to cover them)."""
    k = int(values.max()) + 1 if (values >= 0).any() else 1
    if not option:
        return [str(c) for c in range(k)]
    names = [v.strip() for v in option.split(",") if v.strip()]
    if len(names) < k:
        raise EmbedkitError(
            f"{path}: {what} go up to {k - 1} but only {len(names)} names were given"
        )
    return names


def dataset_name(path) -> str:
    """`metadata_waterbirds.csv` -> "waterbirds" (SubpopBench's file names); else the file stem."""
    stem = Path(path).stem
    return stem[len("metadata_") :] if stem.startswith("metadata_") else stem


class SubpopBench(FileDataset):
    name = "subpopbench"
    description = (
        "SubpopBench layout: --root = the image root, metadata=metadata_<dataset>.csv (filename, "
        "split 0/1/2, y, a); MetaShift, ImageNetBG, NICO++, CheXpert, Living17, ..."
    )
    OPTIONS = {
        "metadata": Option(
            "",
            str,
            "the metadata CSV, relative to --root or absolute "
            "('' = the one metadata*.csv in --root)",
        ),
        "test_split": Option(
            "",
            str,
            "split value used as test (e.g. 3 for Breeds zero-shot, mixed_rand "
            "for ImageNetBG); '' = 2 / test",
        ),
        "class_names": Option("", str, "comma-separated class names in y order"),
        "attr_names": Option("", str, "comma-separated attribute names in a order"),
    }

    def _setup(self):
        o = self.options
        root = self.folder("the images (and usually the metadata CSV)")
        meta_path = (
            root / o["metadata"]
            if o["metadata"]
            else find_metadata(root, "--dataset-opt metadata=FILE")
        )
        m = read_metadata(meta_path, o["test_split"])
        class_names = default_names(m.y, o["class_names"], "labels y", m.path)
        attr_names = default_names(m.a, o["attr_names"], "attributes a", m.path)
        self.paths = [Path(os.path.join(root, f)) for f in m.filename]
        self._finish(
            m.filename,
            m.split,
            m.y,
            m.a,
            class_names,
            attr_names,
            subpopbench_dataset=dataset_name(m.path),
            metadata_file=str(m.path),
            metadata_sha256=sha256_file(m.path),
            other_splits=m.other_splits,
            test_split=m.test_split,
        )
