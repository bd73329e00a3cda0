"""The numpy-only vocabulary every layer shares: the sample table, a loaded split, split names
and group ids (DESIGN section 4). No h5py, no torch: data adapters, heads and analysis read these
without opening a cache.

The group of a row is g = y * n_attrs + a (-1 where the attribute is unknown).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from embedkit.errors import EmbedkitError

SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------------------------
# The sample table
# ----------------------------------------------------------------------------------------------


@dataclass
class Samples:
    """Per-sample metadata shared by every backbone in a file.

    `split` holds 0/1/2 (train/val/test); `a` is -1 where the attribute is unknown.
    The group definition is g = y * n_attrs + a (-1 when a is unknown).
    """

    uid: np.ndarray
    split: np.ndarray
    y: np.ndarray
    a: np.ndarray
    class_names: list[str]
    attr_names: list[str]
    valid: np.ndarray | None = None
    dataset: str = "imported"
    meta: dict = field(default_factory=dict)  # dataset options, seed, correlation per split, ...
    # Optional overlapping evaluation groups (CivilComments: toxic x each identity): a boolean
    # membership matrix [N, G_eval] beside the single training attribute `a`.
    eval_groups: np.ndarray | None = None
    eval_group_names: list = field(default_factory=list)

    def __post_init__(self):
        n = len(self.uid)
        self.uid = np.asarray(self.uid).astype(str)
        self.split = as_split_codes(self.split, "split")
        self.y = np.asarray(self.y).astype(np.int64)
        self.a = np.full(n, -1, np.int64) if self.a is None else np.asarray(self.a).astype(np.int64)
        self.valid = np.ones(n, bool) if self.valid is None else np.asarray(self.valid, bool)
        self.class_names = [str(c) for c in self.class_names]
        self.attr_names = [str(c) for c in self.attr_names]
        for name in ("split", "y", "a", "valid"):
            if len(getattr(self, name)) != n:
                raise EmbedkitError(
                    f"arrays of different lengths: uid has {n} rows, {name} has "
                    f"{len(getattr(self, name))}"
                )
        bad = np.flatnonzero((self.y < 0) | (self.y >= len(self.class_names)))
        if bad.size:
            raise EmbedkitError(
                f"label out of range at row {bad[0]} (uid {self.uid[bad[0]]}): y={self.y[bad[0]]}, "
                f"declared classes {self.class_names}"
            )
        bad = np.flatnonzero((self.a < -1) | (self.a >= len(self.attr_names)))
        if bad.size:
            raise EmbedkitError(
                f"attribute out of range at row {bad[0]} (uid {self.uid[bad[0]]}): "
                f"a={self.a[bad[0]]}, declared attributes {self.attr_names} (-1 = unknown)"
            )
        if self.eval_groups is not None:
            self.eval_groups = np.asarray(self.eval_groups, bool)
            self.eval_group_names = [str(c) for c in self.eval_group_names]
            if self.eval_groups.shape != (n, len(self.eval_group_names)):
                raise EmbedkitError(
                    f"eval_groups must be [{n} rows, {len(self.eval_group_names)} named groups], "
                    f"not {list(self.eval_groups.shape)}"
                )
        uniq, counts = np.unique(self.uid, return_counts=True)
        if (counts > 1).any():
            raise EmbedkitError(
                f"duplicate uid {uniq[counts > 1][0]!r}: every sample needs its own id"
            )

    def __len__(self):
        return len(self.uid)

    @property
    def n_attrs(self) -> int:
        return len(self.attr_names)

    @property
    def g(self) -> np.ndarray:
        return group_ids(self.y, self.a, self.n_attrs)

    def group_names(self) -> list[str]:
        return group_names(self.class_names, self.attr_names)

    def split_order(self) -> np.ndarray:
        """Stable permutation that puts rows in train, val, test order."""
        return np.argsort(self.split, kind="stable")

    def take(self, idx) -> Samples:
        return replace(
            self,
            uid=self.uid[idx],
            split=self.split[idx],
            y=self.y[idx],
            a=self.a[idx],
            valid=self.valid[idx],
            eval_groups=None if self.eval_groups is None else self.eval_groups[idx],
        )

    def same_rows(self, other: Samples) -> bool:
        return (
            len(self) == len(other)
            and np.array_equal(self.uid, other.uid)
            and np.array_equal(self.split, other.split)
            and np.array_equal(self.y, other.y)
            and np.array_equal(self.a, other.a)
        )


def group_ids(y, a, n_attrs: int) -> np.ndarray:
    y = np.asarray(y, np.int64)
    a = np.asarray(a, np.int64)
    return np.where(a >= 0, y * n_attrs + a, -1)


def group_names(class_names: Sequence[str], attr_names: Sequence[str]) -> list[str]:
    return [f"{c}|{t}" for c in class_names for t in attr_names]


def as_split_codes(split, what: str) -> np.ndarray:
    """Accept split names ('train'/'val'/'valid'/'validation'/'test') or codes 0/1/2."""
    arr = np.asarray(split)
    if arr.dtype.kind in "iu":
        bad = np.flatnonzero((arr < 0) | (arr > 2))
        if bad.size:
            raise EmbedkitError(
                f"unknown split value {arr[bad[0]]} at row {bad[0]} of {what}: use 0/1/2"
            )
        return arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        raise EmbedkitError(f"{what} must hold split names or integer codes 0/1/2, not floats")
    alias = {"train": 0, "val": 1, "valid": 1, "validation": 1, "test": 2, "0": 0, "1": 1, "2": 2}
    out = np.empty(len(arr), np.uint8)
    for i, s in enumerate(arr):
        key = s.decode() if isinstance(s, bytes) else str(s)
        code = alias.get(key.strip().lower())
        if code is None:
            raise EmbedkitError(
                f"unknown split name {key!r} at row {i} of {what}: use train/val/test or 0/1/2"
            )
        out[i] = code
    return out


def split_code(name: str) -> int:
    try:
        return SPLITS.index({"valid": "val", "validation": "val"}.get(name, name))
    except ValueError:
        raise EmbedkitError(f"unknown split {name!r}: choose from {', '.join(SPLITS)}") from None


# ----------------------------------------------------------------------------------------------
# A loaded split
# ----------------------------------------------------------------------------------------------


@dataclass
class Split:
    """One split of one backbone, in memory. `Z` is float32 whatever the dtype on disk.

    `rows` are the row indices in the cache file; run records use them to state which rows a head
    was fitted, tuned and selected on (metrics spec section 4.4).
    """

    name: str
    Z: np.ndarray
    y: np.ndarray
    a: np.ndarray
    ids: np.ndarray
    rows: np.ndarray
    class_names: list[str]
    attr_names: list[str]
    backbone: str = ""
    logits: np.ndarray | None = None
    # The backbone's frozen ERM head (W0 [C, D], b0 [C]) and stored text-tower prompts, when the
    # cache has them: zero-shot, text projections, AFR and HSFM initialisation read them here.
    erm_head: tuple | None = None
    text: dict | None = None
    train_group_counts: np.ndarray | None = None  # n_g on train: the weighted-mean metric needs it
    eval_groups: np.ndarray | None = None  # [N, G_eval] overlapping evaluation groups, or None
    eval_group_names: list | None = None
    # Rows the backbone was trained on (`/embeddings/<key>/seen`). Without that record `seen_known`
    # is False and `seen` all False: "unknown", which a head that needs unseen rows must not read
    # as "unseen" without saying so (heads/heldout.py).
    seen: np.ndarray | None = None
    seen_known: bool = False

    def __post_init__(self):
        n = len(self.y)
        if self.seen is None:
            self.seen, self.seen_known = np.zeros(n, bool), False
        self.seen = np.asarray(self.seen, bool)
        if len(self.seen) != n:
            raise EmbedkitError(f"split {self.name}: seen has {len(self.seen)} rows, y has {n}")

    @property
    def g(self) -> np.ndarray:
        return group_ids(self.y, self.a, self.n_attrs)

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_attrs(self) -> int:
        return len(self.attr_names)

    @property
    def n_groups(self) -> int:
        return self.n_classes * self.n_attrs

    @property
    def group_names(self) -> list[str]:
        return group_names(self.class_names, self.attr_names)

    def __len__(self):
        return len(self.y)

    def subset(self, idx) -> Split:
        idx = np.asarray(idx)
        return replace(
            self,
            Z=self.Z[idx],
            y=self.y[idx],
            a=self.a[idx],
            ids=self.ids[idx],
            rows=self.rows[idx],
            logits=None if self.logits is None else self.logits[idx],
            seen=self.seen[idx],
            eval_groups=None if self.eval_groups is None else self.eval_groups[idx],
        )

    def hide_attrs(self, visible: np.ndarray) -> Split:
        """The same rows with a = -1 where `visible` is False (the label budget)."""
        return replace(self, a=np.where(np.asarray(visible, bool), self.a, -1))

    def group_counts(self) -> np.ndarray:
        g = self.g
        return np.bincount(g[g >= 0], minlength=self.n_groups)
