"""Last-layer retraining (LLR) on a held-out half of val, and its class-balancing variants.

Sources: paper arXiv:2512.01766 (Hill, LaBonte, Zhang, Muthukumar, "On the Unreasonable
Effectiveness of Last-layer Retraining"; code: the Retrain datamodule of its milkshake codebase,
`balance_retrain` in {none, subsetting, upsampling, upweighting, mixture}, `mixture_ratio` = 2,
`heldout_pct` = 0.5); the balancing methods themselves come from paper arXiv:2407.13957 (repo
tmlabonte/revisiting-finetuning `milkshake/datamodules/retrain.py`), and CB-LLR is the
class-balanced last-layer retraining of paper arXiv:2309.08534 (repo
tmlabonte/last-layer-retraining).

Protocol [P]:
 1. The held-out set is val. perm = a seeded permutation of val (subsample stream); the retraining
    half is perm[:Nv//2], the model-selection half perm[Nv//2:] (`heldout_pct` = 0.5).
 2. A fresh linear head (new init) is trained on the retraining half, balanced by `balance`:
    - `none` (`llr`): the half as it is (group- and class-unbalanced);
    - `subsetting` (`cb_llr`): m = min_c n_c rows of every class, drawn without replacement;
    - `upsampling`: every row, minibatches drawn with P(i) proportional to 1/n_{y_i};
    - `upweighting`: every row, loss weight proportional to 1/n_{y_i} (normalised to mean 1);
    - `mixture`: min(n_c, ratio * m) rows of every class without replacement (a subset whose class
      imbalance is at most `mixture_ratio`), then upsampling on that subset.
    `gb_llr` is the paper's group-balanced retraining baseline: subsetting on groups (y, a), which
    needs the attribute on val (R2).
 3. (config, step) of the shared trainer grid are chosen on the selection half by the regime rule.
    The two halves are disjoint, so the leak guard accepts the run.

Frozen-embedding adaptation [W]: the shared SGD trainer (methods spec 0.3) replaces the papers'
Lightning loop (their 100 retraining epochs at one learning rate); its lr x wd grid and
checkpoints are the candidates of step 3. On a class-balanced retraining half `subsetting` keeps
every row, so `cb_llr` is then exactly `llr` (same rows, same seeds).
"""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.heads.balancing import balance_weights, sampler_probs, unit_counts
from embedkit.heads.params import Param
from embedkit.heads.trainer import SGDHead, Variant

BALANCES = ("none", "subsetting", "upsampling", "upweighting", "mixture")


def heldout_halves(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(retraining half, selection half) positions of n held-out rows: perm[:n//2], perm[n//2:]."""
    if n < 4:
        raise EmbedkitError(f"last-layer retraining needs at least 4 held-out (val) rows, got {n}")
    perm = rng.permutation(n)
    return perm[: n // 2], perm[n // 2 :]


def capped_subset(
    k: np.ndarray, n_units: int, cap_ratio: float, rng: np.random.Generator
) -> np.ndarray:
    """min(n_u, cap_ratio * m) rows of every non-empty unit u (m = min_u n_u), without replacement,
    as sorted positions into k. cap_ratio = 1 is the balanced subset (subsetting); 2 is
    mixture's."""
    n = unit_counts(k, n_units)
    m = int(n[n > 0].min())
    cap = int(np.floor(cap_ratio * m))
    keep = [
        rng.choice(np.flatnonzero(k == u), size=min(int(n[u]), cap), replace=False)
        for u in np.flatnonzero(n > 0)
    ]
    return np.sort(np.concatenate(keep))


class LLRHead(SGDHead):
    """Last-layer retraining on a held-out half of val (LLR, CB-LLR and its balancing variants).

    Class-balanced by subsetting, upsampling, upweighting or mixture, or group-balanced (gb_llr)."""

    name = "llr"
    needs_val_attrs = False

    PARAMS = {
        **SGDHead.PARAMS,
        # "none" is a legal balance (plain LLR), not a missing value.
        "balance": Param(
            "choice",
            "none",
            "class (or group) balancing of the retraining half: none, subsetting, "
            "upsampling, upweighting or mixture",
            choices=BALANCES,
        ),
        "unit": Param(
            "choice",
            "class",
            "balancing unit: class (y) or group (y, a; gb_llr)",
            choices=("class", "group"),
        ),
        "mixture_ratio": Param(
            "float", 2.0, "mixture: cap of the larger units at this multiple of the smallest", low=1
        ),
    }

    def __init__(self, seed: int = 0, selection_rule: str | None = None, **params):
        super().__init__(seed, selection_rule, **params)
        p = self.params
        self.needs_val_attrs = p["unit"] == "group" and p["balance"] != "none"
        self.regimes = ("R1", "R2") if self.needs_val_attrs else ("R1", "R2", "R3")

    def _fit(self, train, val, monitor):
        p = self.params
        rng = np.random.default_rng(self.seeds["subsample"])  # the halves, then the subset
        fit_pos, sel_pos = heldout_halves(len(val), rng)
        held = val.subset(np.sort(fit_pos))
        if p["unit"] == "group" and p["balance"] != "none":
            known = np.flatnonzero(held.a >= 0)  # a label budget may hide some attributes
            held = held.subset(known)
            k, n_units = held.g, held.n_groups
        else:
            k, n_units = held.y, held.n_classes
        rows, variant = np.arange(len(held)), Variant()
        bal = p["balance"]
        if bal == "subsetting":
            rows = capped_subset(k, n_units, 1.0, rng)
        elif bal == "mixture":
            rows = capped_subset(k, n_units, float(p["mixture_ratio"]), rng)
            variant = Variant(sampler=sampler_probs(k[rows], n_units))
        elif bal == "upsampling":
            variant = Variant(sampler=sampler_probs(k, n_units))
        elif bal == "upweighting":
            variant = Variant(weights=balance_weights(k, n_units, 1.0))
        fit = held.subset(rows)
        if len(np.unique(fit.y)) < val.n_classes:
            raise EmbedkitError(
                f"{self.name}: the retraining half holds {len(np.unique(fit.y))} of "
                f"{val.n_classes} classes"
            )
        select = val.subset(np.sort(sel_pos))
        res = self.run_grid(fit.Z, fit.y, select, monitor, variants=[variant])
        self.adopt([res], select, "val[select]")
        self.rows_ = {
            "fit": np.sort(fit.rows),
            "tune": np.array([], np.int64),
            "select": np.sort(select.rows),
        }
        self.artifacts_["fit_rows"] = np.sort(fit.rows)
        self.info_.update(
            balance=bal,
            unit=p["unit"],
            n_heldout=int(len(held)),
            n_fit_rows=int(len(fit)),
            n_select_rows=int(len(select)),
            fit_unit_counts=np.bincount(k[rows], minlength=n_units).tolist(),
        )
