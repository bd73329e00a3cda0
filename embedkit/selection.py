"""Model selection (specs/metrics-and-selection.md section 4): grids, selection rules as pure
functions over stored history records, the leak guard, and the validation label budget.

A history record is `{config_id, config, step, val: metrics, test: metrics | None}` (one per
evaluation, written by every head). `select` reads only `val` unless `oracle=True`; its result is
the chosen record plus `rule`, `split`, `score`, `tie`, `grid_size` and `flags`.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from embedkit.errors import EmbedkitError, SelectionLeakError
from embedkit.seeds import spawn_seeds

# rule -> (split, metric key in a metrics.group_report). Every rule maximises its score except
# the ones in MINIMISE (spec 4.2: `val_min_class_gap` maximises -class_gap).
RULES: dict[str, tuple[str, str]] = {
    "val_wga": ("val", "worst_group_acc"),  # SubpopBench ValWorstAccAttributeYes
    "val_eval_wga": (
        "val",
        "worst_eval_group_acc",
    ),  # overlapping groups (CivilComments' 16; WILDS/JTT)
    "val_worst_class": ("val", "worst_class_acc"),  # SubpopBench ValWorstAccAttributeNo
    "val_mean": ("val", "mean_acc"),
    "val_bal_acc": ("val", "balanced_class_acc"),
    "val_gba": ("val", "group_balanced_acc"),  # GERNE Table 1 target (group-balanced acc.)
    "val_avg_prec": ("val", "avg_prec"),
    "val_worst_prec": ("val", "worst_prec"),
    "val_avg_f1": ("val", "avg_f1"),
    "val_worst_f1": ("val", "worst_f1"),
    "val_auroc": ("val", "auroc"),
    "val_min_class_gap": ("val", "class_gap"),
    "oracle_mean": ("test", "mean_acc"),
    "oracle_wga": ("test", "worst_group_acc"),
}
MINIMISE = frozenset({"val_min_class_gap"})
TIES = ("default", "larger_C", "later_epoch")

# Default rule per label regime (spec 4.2; methods spec 0.2).
REGIME_RULE = {"R1": "val_wga", "R2": "val_wga", "R3": "val_worst_class"}

# -- grids from the specs ------------------------------------------------------------------------
# Shared SGD head trainer (methods 0.3): lr x wd, in this order.
SGD_GRID = {"lr": [1e-3, 1e-2, 1e-1], "wd": [0.0, 1e-4, 1e-2]}
# DFR (methods 3): the reference iterates C in this order; ties go to the earlier, larger C.
DFR_C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
# DFR_Tr class weights (`tune_class_weights_dfr_train`): each weight on class 1, then on class 0;
# 14 dicts, {0: 1, 1: 1} occurring twice as in the reference list.
DFR_CLASS_WEIGHTS = [1.0, 2.0, 3.0, 10.0, 100.0, 300.0, 1000.0]
DFR_CLASS_WEIGHT_GRID = [{0: 1.0, 1: w} for w in DFR_CLASS_WEIGHTS] + [
    {0: w, 1: 1.0} for w in DFR_CLASS_WEIGHTS
]
# Label-budget axis (spec 4.5): fraction of val rows whose attribute stays visible.
LABEL_BUDGETS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
# Per-method grids quoted by the methods spec (sections 4-6); heads expand them with `expand_grid`.
GRIDS = {
    "sgd": SGD_GRID,
    "dfr": {"C": list(DFR_C_GRID)},
    "gdro": {"eta": [1e-3, 1e-2, 1e-1], "wd": [1e-4, 1e-3, 1e-2, 1e-1]},
    "jtt": {
        "T": [1, 2, 5, 10, 20, 40, 60],
        "lambda_up": [4, 5, 6, 20, 50, 100],
        "wd1": [1e-3, 1e-2, 1e-1, 1.0],
    },
    "afr_waterbirds": {"gamma": list(np.linspace(4, 20, 33)), "lam": [0.0, 0.1, 0.2, 0.3]},
    "afr_celeba": {"gamma": list(np.linspace(1, 3, 10)), "lam": [1e-3, 1e-2, 1e-1]},
}


def expand_grid(grid: dict) -> list[dict]:
    """Cartesian product of a {name: values} grid in key order (config id = list index)."""
    keys = list(grid)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(grid[k] for k in keys))]


# -- rules ---------------------------------------------------------------------------------------


def regime(train, val) -> str:
    """Label regime from the visible attributes (methods spec 0.2): R1 = every train row and some
    val rows carry a; R2 = some val rows carry a; R3 = no attributes on val."""
    on_val = bool((val.a >= 0).any())
    if on_val and len(train) and bool((train.a >= 0).all()):
        return "R1"
    return "R2" if on_val else "R3"


def _score(record: dict, rule: str) -> float | None:
    split, key = RULES[rule]
    metrics = record.get(split) or {}
    v = metrics.get(key)
    if v is None or not math.isfinite(v):
        return None
    return -v if rule in MINIMISE else v


def _tie_key(record: dict, tie: str):
    step = record.get("step", 0) or 0
    cid = record.get("config_id", 0) or 0
    if tie == "larger_C":
        return (record["config"]["C"], -cid)
    if tie == "later_epoch":
        return (step, -cid)
    mean = (record.get("val") or {}).get("mean_acc")
    return (mean if mean is not None else -math.inf, -step, -cid)


def select(records, rule: str = "val_wga", *, tie: str = "default", oracle: bool = False) -> dict:
    """Pick one record by `rule` (maximised; see RULES), breaking exact ties by `tie`:
    default = higher val mean_acc, then earlier step, then lower config id; `larger_C` (DFR) =
    larger C, then lower config id; `later_epoch` (HSFM) = later step, then lower config id.

    Oracle rules read test metrics and are refused unless `oracle=True`; their result carries
    `flags.oracle`. The result also stores the rule, the split it read and the grid size (a large
    grid can overfit validation: issue facebookresearch/BalancingGroups#3).
    """
    if rule not in RULES:
        raise EmbedkitError(f"unknown selection rule {rule!r}; choose from {', '.join(RULES)}")
    if tie not in TIES:
        raise EmbedkitError(f"unknown tie rule {tie!r}; choose from {', '.join(TIES)}")
    split, key = RULES[rule]
    if split == "test" and not oracle:
        raise SelectionLeakError(
            f"rule {rule!r} selects on test metrics; pass oracle=True (results are tagged oracle)"
        )
    records = list(records)
    scored = [(s, r) for r in records if (s := _score(r, rule)) is not None]
    if not scored:
        raise EmbedkitError(
            f"no candidate has a {split} {key!r} to select on with rule {rule!r} "
            f"({len(records)} records)"
        )
    best = max(scored, key=lambda sr: (sr[0], _tie_key(sr[1], tie)))
    chosen = dict(best[1])
    val = chosen.get("val") or {}
    chosen.update(
        rule=rule,
        split=split,
        metric=key,
        score=(-best[0] if rule in MINIMISE else best[0]),
        tie=tie,
        grid_size=len({r.get("config_id") for r in records}),
        n_candidates=len(records),
        flags={"oracle": split == "test", "partial_groups": bool(val.get("partial_groups", False))},
    )
    return chosen


def check_leak(fit_rows, select_rows, report_rows=None, allow_overlap: bool = False) -> dict:
    """The guard of spec 4.4: selection may not read rows whose labels entered a fit, nor the
    report (test) rows. Raises `SelectionLeakError` naming the overlap unless `allow_overlap`;
    returns the flags to store (`selected_on_fit_data`, `selected_on_report_rows`)."""
    sel = np.unique(np.asarray(select_rows if select_rows is not None else [], np.int64))
    flags = {}
    for name, rows, flag in (
        ("fitted on", fit_rows, "selected_on_fit_data"),
        ("reported on (test)", report_rows, "selected_on_report_rows"),
    ):
        both = np.intersect1d(sel, np.asarray(rows if rows is not None else [], np.int64))
        flags[flag] = bool(both.size)
        if both.size and not allow_overlap:
            raise SelectionLeakError(
                f"selection reads {both.size} of {sel.size} rows that the head was {name} (first "
                "cache row "
                f"{int(both[0])}); use disjoint rows, or allow_overlap=True to tag the result"
            )
    return flags


# The flags of `check_leak` and `select` that keep a run out of the default tables and figures.
EXCLUDING_FLAGS = ("oracle", "selected_on_fit_data", "selected_on_report_rows")


def excluded_flags(record: dict) -> list[str]:
    """The flags of a run record that keep it out of the default tables and figures (spec 4.4):
    selected on test, or on rows it was fitted on."""
    flags = record.get("flags") or {}
    return [k for k in EXCLUDING_FLAGS if flags.get(k)]


# -- label budget --------------------------------------------------------------------------------


def _budget_rng(seed: int) -> np.random.Generator:
    # A child of the subsample stream: the same for every method at a given seed, and not the
    # generator DFR or HSFM draw their own val permutations from.
    return np.random.default_rng(np.random.SeedSequence(spawn_seeds(seed)["subsample"]).spawn(1)[0])


def label_budget_mask(n: int, budget: float, seed: int) -> np.ndarray:
    """Boolean mask over n val rows: round(budget * n) rows drawn uniformly without replacement.
    Masks are nested across budgets for one seed (a larger budget keeps every visible row of a
    smaller one) and depend only on (n, budget, seed), so every method sees the same rows."""
    budget = float(budget)
    if not 0.0 <= budget <= 1.0:
        raise EmbedkitError(f"label budget {budget} is not a fraction in [0, 1]")
    k = int(math.floor(budget * n + 0.5))
    mask = np.zeros(n, bool)
    mask[_budget_rng(seed).permutation(n)[:k]] = True
    return mask


def apply_label_budget(val_split, budget: float, seed: int):
    """The val split with a = -1 outside the budget's visible rows (y, features and row ids are
    untouched: the budget changes what a method sees of the attribute and nothing else)."""
    if float(budget) >= 1.0:
        return val_split
    return val_split.hide_attrs(label_budget_mask(len(val_split), budget, seed))


def reserve_val(val_split, fraction: float, seed: int):
    """(kept, reserved): a seeded, group-stratified `fraction` of val that no method may fit or
    tune on (`val_reserved`, spec 4.4); only cross-method selection reads it. Rows with unknown
    attribute are stratified by class."""
    if not 0.0 <= fraction < 1.0:
        raise EmbedkitError(f"val_reserved fraction {fraction} is not in [0, 1)")
    rng = np.random.default_rng(np.random.SeedSequence(spawn_seeds(seed)["subsample"]).spawn(2)[1])
    g = val_split.g
    strata = np.where(g >= 0, g, val_split.n_groups + val_split.y)
    reserved = np.zeros(len(val_split), bool)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        reserved[rng.permutation(idx)[: int(math.floor(fraction * len(idx) + 0.5))]] = True
    return val_split.subset(np.flatnonzero(~reserved)), val_split.subset(np.flatnonzero(reserved))
