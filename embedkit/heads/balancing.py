"""Class- and group-balanced reweighting, resampling and subsampling (methods spec section 2).

| mode | mechanism |
|---|---|
| `rw_class`, `rw_group` | loss weight w_i = (N / (K n_k(i)))^p, p = 1, rescaled to mean 1 |
| `rw_sqrt` | the same with p = 1/2 (unit: `unit` parameter, class by default) |
| `rs_class`, `rs_group` | sampler with replacement, P(i) = 1 / (K n_k(i)); plain batch mean |
| `sub_class`, `sub_group` | m = min_k n_k rows per unit without replacement (subsample stream),
then ERM |

k(i) is the unit of row i (its class or its group g = y A + a); K counts the units with n_k > 0.
Empty units are skipped with a warning (recorded in `info_["empty_units"]`); a fit with no unit
at all is refused.
"""

from __future__ import annotations

import warnings

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.heads.params import Param
from embedkit.heads.trainer import SGDHead, Variant

MODES = {
    "rw_class": ("rw", "class", 1.0),
    "rw_group": ("rw", "group", 1.0),
    "rw_sqrt": ("rw", None, 0.5),
    "rs_class": ("rs", "class", None),
    "rs_group": ("rs", "group", None),
    "sub_class": ("sub", "class", None),
    "sub_group": ("sub", "group", None),
}


def unit_ids(split, unit: str) -> tuple[np.ndarray, int]:
    """(k [N], number of possible units) for unit 'class' or 'group'."""
    if unit == "class":
        return np.asarray(split.y), split.n_classes
    if unit == "group":
        g = split.g
        if (g < 0).any():
            raise EmbedkitError(
                "group balancing needs the spurious attribute on every train row "
                f"({int((g < 0).sum())} rows have a = -1)"
            )
        return g, split.n_groups
    raise EmbedkitError(f"unknown balancing unit {unit!r}; use class or group")


def unit_counts(k: np.ndarray, n_units: int) -> np.ndarray:
    n = np.bincount(k, minlength=n_units)
    if not (n > 0).any():
        raise EmbedkitError("balancing: no unit has any row")
    return n


def balance_weights(k: np.ndarray, n_units: int, p: float = 1.0) -> np.ndarray:
    """w_i = (N / (K n_k(i)))^p rescaled to mean 1; for p = 1 the weighted mean loss equals the
    mean over units of the unit means."""
    n = unit_counts(k, n_units)
    K = int((n > 0).sum())
    w = (len(k) / (K * n[k].astype(np.float64))) ** p
    return w / w.mean()


def sampler_probs(k: np.ndarray, n_units: int) -> np.ndarray:
    """P(i) = 1 / (K n_k(i)): every non-empty unit is drawn with probability 1/K."""
    n = unit_counts(k, n_units)
    K = int((n > 0).sum())
    return 1.0 / (K * n[k].astype(np.float64))


def subsample_units(k: np.ndarray, n_units: int, rng: np.random.Generator) -> np.ndarray:
    """m = min over non-empty units of n_k rows from every non-empty unit, without replacement;
    sorted row indices."""
    n = unit_counts(k, n_units)
    m = int(n[n > 0].min())
    keep = [
        rng.choice(np.flatnonzero(k == u), size=m, replace=False) for u in np.flatnonzero(n > 0)
    ]
    return np.sort(np.concatenate(keep))


class BalancedHead(SGDHead):
    """Class- or group-balanced linear head: reweighting (rw_*), resampling (rs_*) or
    subsampling (sub_*) over the shared trainer grid."""

    name = "balanced"

    def __init__(self, seed: int = 0, selection_rule: str | None = None, **params):
        super().__init__(seed, selection_rule, **params)
        self.name = self.params["mode"]
        kind, unit, _ = MODES[self.name]
        self.unit = unit or self.params["unit"]
        # Group units need a on every train row (regime R1); class units need y only (R1-R3).
        self.needs_train_attrs = self.unit == "group"
        self.needs_val_attrs = False
        self.regimes = ("R1",) if self.unit == "group" else ("R1", "R2", "R3")

    PARAMS = {
        **SGDHead.PARAMS,
        "mode": Param(
            "choice",
            "rw_group",
            "balancing mechanism and unit (the registered name sets it)",
            choices=tuple(MODES),
        ),
        # `unit` only matters for rw_sqrt (the spec allows y or y,a): class keeps it usable in every
        # regime.
        "unit": Param(
            "choice",
            "class",
            "rw_sqrt's unit: class (y) or group (y, a)",
            choices=("class", "group"),
        ),
    }

    def _fit(self, train, val, monitor):
        kind, _, p = MODES[self.name]
        k, n_units = unit_ids(train, self.unit)
        n = np.bincount(k, minlength=n_units)
        empty = [int(u) for u in np.flatnonzero(n == 0)]
        if empty:
            names = train.class_names if self.unit == "class" else train.group_names
            warnings.warn(
                f"{self.name}: empty {self.unit} unit(s) skipped: "
                f"{', '.join(names[u] for u in empty)}"
            )
        fit = np.arange(len(train))
        variant = Variant()
        if kind == "rw":
            variant = Variant(weights=balance_weights(k, n_units, p))
        elif kind == "rs":
            variant = Variant(sampler=sampler_probs(k, n_units))
        else:
            fit = subsample_units(k, n_units, np.random.default_rng(self.seeds["subsample"]))
        res = self.run_grid(train.Z[fit], train.y[fit], val, monitor, variants=[variant])
        self.adopt([res], val)
        self.rows_ = {
            "fit": np.sort(train.rows[fit]),
            "tune": np.array([], np.int64),
            "select": np.sort(val.rows),
        }
        self.info_.update(
            unit=self.unit, unit_counts=n.tolist(), empty_units=empty, n_fit_rows=int(len(fit))
        )
        if kind == "sub":
            self.info_["rows_per_unit"] = int(n[n > 0].min())
