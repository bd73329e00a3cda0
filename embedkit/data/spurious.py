"""Shared construction of the seeded spurious-correlation benchmarks.

Every benchmark here aligns attribute value k with class k, and its strength in a split is
rho = P(a = y), set per split by an option (`train_corr`, `val_corr`, `test_corr`). Counts are
exact rather than Bernoulli draws: within each class y of n_y rows, round(rho * n_y) carry the
aligned attribute a = y and the rest are spread evenly over the other attribute values. So the
realised correlation equals rho up to rounding, and the group table follows from the options alone.
"""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError

from .base import Option, check_fraction


def round_half_up(x: float) -> int:
    return int(np.floor(x + 0.5 + 1e-9))


def largest_remainder(n: int, fractions) -> np.ndarray:
    """Integer counts summing to n, proportional to `fractions` (ties go to the lower index)."""
    f = np.asarray(fractions, np.float64)
    raw = n * f / f.sum()
    out = np.floor(raw + 1e-9).astype(np.int64)
    order = np.argsort(-(raw - out), kind="stable")
    out[order[: n - out.sum()]] += 1
    return out


def attribute_counts(n_y: int, y: int, rho: float, n_attrs: int) -> np.ndarray:
    """Counts over attribute values for the n_y rows of class y: round(rho * n_y) aligned (a = y),
    the rest spread evenly over the other values in the order y+1, y+2, ... (mod n_attrs)."""
    out = np.zeros(n_attrs, np.int64)
    out[y] = round_half_up(rho * n_y)
    rest = n_y - out[y]
    others = [(y + j) % n_attrs for j in range(1, n_attrs)]
    for j, k in enumerate(others):
        out[k] = rest // len(others) + (1 if j < rest % len(others) else 0)
    return out


def group_table(n: int, class_fractions, rho: float) -> np.ndarray:
    """[C, A=C] group counts of a split of n rows: classes by `class_fractions`, then
    `attribute_counts` within each class."""
    n_y = largest_remainder(n, class_fractions)
    return np.stack([attribute_counts(int(m), y, rho, len(n_y)) for y, m in enumerate(n_y)])


def assign_attributes(
    y: np.ndarray, rho: float, n_attrs: int, rng: np.random.Generator
) -> np.ndarray:
    """Attributes for given labels with the exact per-class counts of `attribute_counts`, placed on
    a random subset of each class's rows."""
    a = np.empty(len(y), np.int64)
    for c in range(n_attrs):
        rows = np.flatnonzero(y == c)
        values = np.repeat(np.arange(n_attrs), attribute_counts(len(rows), c, rho, n_attrs))
        a[rows] = rng.permutation(values)
    return a


def flip_labels(
    y: np.ndarray, noise: float, n_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Label noise with exact counts: round(noise * n_c) random rows of each class c move to a
    uniformly drawn other class. Returns the mask of flipped rows (y is changed in place)."""
    flipped = np.zeros(len(y), bool)
    original = y.copy()
    for c in range(n_classes):
        rows = np.flatnonzero(original == c)
        pick = rng.choice(rows, round_half_up(noise * len(rows)), replace=False)
        y[pick] = (c + rng.integers(1, n_classes, len(pick))) % n_classes
        flipped[pick] = True
    return flipped


def pad_to(gray: np.ndarray, size: int) -> np.ndarray:
    """Centre [N, h, w] images on a black size x size canvas."""
    n, h, w = gray.shape
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((n, size, size), gray.dtype)
    out[:, top : top + h, left : left + w] = gray
    return out


class Pool:
    """A seeded, shuffled supply of source items (indices) drawn without replacement, so no item
    appears twice in a benchmark."""

    def __init__(self, items, rng: np.random.Generator, what: str):
        self.items = rng.permutation(np.asarray(items))
        self.used = 0
        self.what = what

    def take(self, n: int) -> np.ndarray:
        if self.used + n > len(self.items):
            raise EmbedkitError(
                f"not enough {self.what}: the options need {self.used + n}, "
                f"the source has {len(self.items)}; lower the split sizes"
            )
        out = self.items[self.used : self.used + n]
        self.used += n
        return out


def draw_groups(
    table: np.ndarray, core: list[Pool], spurious: list[Pool], rng: np.random.Generator
):
    """Rows of one split of a composite benchmark: for each group (y, a) with table[y, a] rows,
    that many core items from core[y] and spurious items from spurious[a], in a random row order.
    Returns (y, a, core items, spurious items)."""
    ys, as_, cs, ss = [], [], [], []
    for y in range(table.shape[0]):
        for a in range(table.shape[1]):
            m = int(table[y, a])
            ys.append(np.full(m, y, np.int64))
            as_.append(np.full(m, a, np.int64))
            cs.append(core[y].take(m))
            ss.append(spurious[a].take(m))
    order = rng.permutation(int(table.sum()))
    return tuple(np.concatenate(v)[order] for v in (ys, as_, cs, ss))


def donor_row(samples, i: int, a: int) -> int:
    """A row of the same split as row i whose attribute is a, chosen deterministically (i modulo
    their count): the source of the spurious part of row i's counterfactual."""
    rows = np.flatnonzero((samples.split == samples.split[i]) & (samples.a == a))
    if rows.size == 0:
        raise EmbedkitError(f"no row with attribute {a} in the split of row {i}: no counterfactual")
    return int(rows[i % rows.size])


def correlation_options(defaults) -> dict:
    """`train_corr`, `val_corr`, `test_corr` options; a default of None means balanced,
    rho = 1 / n_classes (0.5 for two classes)."""
    out = {}
    for split, v in zip(("train", "val", "test"), defaults):
        note = "balanced, 1/n_classes" if v is None else v
        out[f"{split}_corr"] = Option(v, float, f"P(a = y) in {split} (default {note})")
    return out


def resolve_correlations(dataset: str, options: dict, n_classes: int) -> dict:
    """{split: rho} with None read as balanced; each must lie in [0, 1]."""
    out = {}
    for split in ("train", "val", "test"):
        v = options[f"{split}_corr"]
        out[split] = 1.0 / n_classes if v is None else check_fraction(dataset, f"{split}_corr", v)
    return out
