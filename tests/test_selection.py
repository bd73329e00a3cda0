"""Selection rules, tie rules, the leak guard and the label budget
(specs/metrics-and-selection.md section 7, items 5-7)."""

import numpy as np
import pytest

from embedkit import selection as S
from embedkit.schema import Split
from embedkit.errors import EmbedkitError, SelectionLeakError


def rec(cid, step, val_wga, val_mean=0.5, test_wga=0.0, **config):
    return {
        "config_id": cid,
        "config": config,
        "step": step,
        "val": {
            "worst_group_acc": val_wga,
            "mean_acc": val_mean,
            "worst_class_acc": val_mean,
            "class_gap": None if val_wga is None else 1 - val_wga,
        },
        "test": {"worst_group_acc": test_wga, "mean_acc": test_wga},
    }


def make_split(n=200, seed=0, name="val"):
    r = np.random.default_rng(seed)
    return Split(
        name=name,
        Z=r.normal(size=(n, 3)).astype(np.float32),
        y=r.integers(0, 2, n),
        a=r.integers(0, 2, n),
        ids=np.arange(n).astype(str),
        rows=np.arange(1000, 1000 + n),
        class_names=["c0", "c1"],
        attr_names=["t0", "t1"],
    )


def test_rules_table_and_regime_defaults():
    assert S.RULES["val_wga"] == ("val", "worst_group_acc")
    assert S.RULES["val_worst_class"] == ("val", "worst_class_acc")
    assert S.RULES["oracle_wga"] == ("test", "worst_group_acc")
    assert (
        len([r for r in S.RULES if r.startswith("val_")]) == 12
    )  # SubpopBench 10 + val_gba + val_eval_wga
    assert S.REGIME_RULE == {"R1": "val_wga", "R2": "val_wga", "R3": "val_worst_class"}
    tr, va = make_split(name="train"), make_split()
    assert S.regime(tr, va) == "R1"
    assert S.regime(tr.hide_attrs(np.zeros(len(tr), bool)), va) == "R2"
    assert S.regime(tr, va.hide_attrs(np.zeros(len(va), bool))) == "R3"


def test_select_reads_val_only_and_default_tie_chain():
    records = [
        rec(0, 250, 0.7, 0.80, test_wga=0.99),
        rec(1, 250, 0.9, 0.70),
        rec(2, 500, 0.9, 0.75),
        rec(3, 250, 0.9, 0.75),
        rec(4, 250, 0.9, 0.75),
    ]
    best = S.select(records, "val_wga")
    # ties at 0.9 -> higher val mean (.75: ids 2,3,4) -> earlier step (250: ids 3,4) -> lower id
    assert best["config_id"] == 3 and best["score"] == 0.9
    assert best["rule"] == "val_wga" and best["split"] == "val" and best["grid_size"] == 5
    assert best["flags"] == {"oracle": False, "partial_groups": False}
    # the test metric of config 0 (0.99) never influences a val rule
    assert S.select(records, "val_mean")["config_id"] == 0


def test_dfr_tie_prefers_larger_C_and_hsfm_later_epoch():
    grid = S.DFR_C_GRID
    assert grid == (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
    scores = [0.6, 0.8, 0.8, 0.7, 0.8, 0.5, 0.5]
    records = [rec(i, 0, s, 0.5 + 0.01 * i, C=c) for i, (c, s) in enumerate(zip(grid, scores))]
    assert S.select(records, "val_wga", tie="larger_C")["config"]["C"] == 0.7
    # the default chain would have preferred the higher val mean (C = 0.07)
    assert S.select(records, "val_wga")["config"]["C"] == 0.07
    epochs = [rec(0, e, s) for e, s in [(1, 0.8), (2, 0.9), (3, 0.7), (4, 0.9)]]
    assert S.select(epochs, "val_wga", tie="later_epoch")["step"] == 4
    assert S.select(epochs, "val_wga")["step"] == 2


def test_min_class_gap_minimises_and_none_scores_skipped():
    records = [rec(0, 0, 0.6), rec(1, 0, 0.9), rec(2, 0, None)]
    best = S.select(records, "val_min_class_gap")
    assert best["config_id"] == 1 and best["score"] == pytest.approx(0.1)
    with pytest.raises(EmbedkitError, match="no candidate"):
        S.select([rec(0, 0, None)], "val_wga")
    with pytest.raises(EmbedkitError, match="unknown selection rule"):
        S.select(records, "val_best")


def test_oracle_only_behind_flag_and_tagged():
    records = [rec(0, 0, 0.9, test_wga=0.5), rec(1, 0, 0.5, test_wga=0.8)]
    with pytest.raises(SelectionLeakError, match="oracle=True"):
        S.select(records, "oracle_wga")  # the SCER collector's OracleWorstAcc
    best = S.select(records, "oracle_wga", oracle=True)
    assert best["config_id"] == 1 and best["flags"]["oracle"] is True and best["split"] == "test"


def test_guard_refuses_selection_on_fitted_rows_and_passes_dfr_halves():
    val = np.arange(100, 200)
    perm = np.random.default_rng(0).permutation(val)
    sel, fit = perm[:50], perm[50:]
    assert S.check_leak(fit, sel) == {
        "selected_on_fit_data": False,
        "selected_on_report_rows": False,
    }
    # SubpopBench DFR: fits on a group-subsampled val and selects on the same val
    with pytest.raises(SelectionLeakError, match="fitted on"):
        S.check_leak(np.sort(perm[:40]), val)
    # HSFM default: hard set drawn from val, epochs selected on val
    with pytest.raises(SelectionLeakError):
        S.check_leak(np.r_[np.arange(0, 50), val[:30]], val)
    # GERNE App. G "tuned on test": the selection rows are the report rows
    test_rows = np.arange(200, 300)
    with pytest.raises(SelectionLeakError, match="reported on"):
        S.check_leak(np.arange(0, 100), test_rows, report_rows=test_rows)
    flags = S.check_leak(np.sort(perm[:40]), val, allow_overlap=True)
    assert flags["selected_on_fit_data"] is True


def test_rule_name_and_grid_size_stored():
    """group_DRO#10 (the rule actually used must be stored) and BalancingGroups#3 (grid size)."""
    best = S.select([rec(i, 0, 0.5 + i / 10) for i in range(4)], "val_worst_class")
    assert (
        best["rule"] == "val_worst_class"
        and best["metric"] == "worst_class_acc"
        and best["grid_size"] == 4
    )


def test_label_budget_masks_identical_across_calls_nested_and_sized():
    n = 1199
    masks = {b: S.label_budget_mask(n, b, seed=7) for b in S.LABEL_BUDGETS}
    assert [int(m.sum()) for m in masks.values()] == [0, 12, 60, 120, 300, 600, 1199]
    assert np.array_equal(masks[0.1], S.label_budget_mask(n, 0.1, seed=7))  # same for every method
    assert not np.array_equal(masks[0.1], S.label_budget_mask(n, 0.1, seed=8))
    for small, big in zip(S.LABEL_BUDGETS, S.LABEL_BUDGETS[1:]):
        assert not (masks[small] & ~masks[big]).any()
    with pytest.raises(EmbedkitError, match="label budget"):
        S.label_budget_mask(n, 1.5, 0)


def test_label_budget_changes_attributes_only():
    val = make_split()
    seen = S.apply_label_budget(val, 0.25, seed=1)
    assert (
        np.array_equal(seen.Z, val.Z)
        and np.array_equal(seen.y, val.y)
        and np.array_equal(seen.rows, val.rows)
    )
    visible = seen.a >= 0
    assert visible.sum() == 50 and np.array_equal(seen.a[visible], val.a[visible])
    assert np.array_equal(visible, S.label_budget_mask(len(val), 0.25, 1))
    assert S.apply_label_budget(val, 1.0, 1) is val
    assert (S.apply_label_budget(val, 0.0, 1).a == -1).all()


def test_reserve_val_stratified_and_disjoint():
    val = make_split(400)
    kept, reserved = S.reserve_val(val, 0.2, seed=0)
    assert len(np.intersect1d(kept.rows, reserved.rows)) == 0 and len(kept) + len(reserved) == 400
    for gi in range(4):
        n_g = (val.g == gi).sum()
        assert (reserved.g == gi).sum() == int(np.floor(0.2 * n_g + 0.5))


def test_expand_grid_order_and_class_weight_grid():
    cfgs = S.expand_grid(S.SGD_GRID)
    assert (
        len(cfgs) == 9
        and cfgs[0] == {"lr": 1e-3, "wd": 0.0}
        and cfgs[1] == {"lr": 1e-3, "wd": 1e-4}
    )
    assert len(S.DFR_CLASS_WEIGHT_GRID) == 14
    assert S.DFR_CLASS_WEIGHT_GRID.count({0: 1.0, 1: 1.0}) == 2
    assert len(S.expand_grid(S.GRIDS["afr_waterbirds"])) == 132
    assert len(S.expand_grid(S.GRIDS["afr_celeba"])) == 30
