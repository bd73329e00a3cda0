"""The hypothesis summary of the LR study (methods spec 11.1 claims as tests) on tiny planted
studies whose effect has a known sign."""

import numpy as np
import pytest

from embedkit.studies.lr import hypotheses as H

LRS = [0.01, 0.03, 0.1, 0.3, 1.0]


def planted(effect, seeds=(0, 1, 2), noise=0.01):
    """Rows (lr, seed) whose `m` is effect(log lr, seed) plus small seeded noise."""
    rng = np.random.default_rng(0)
    return [
        {"lr": lr, "seed": s, "status": "ok", "m": effect(np.log(lr), s) + noise * rng.normal()}
        for lr in LRS
        for s in seeds
    ]


def test_spearman_matches_scipy_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    x, y = rng.integers(0, 4, 30).astype(float), rng.normal(size=30)
    assert H.spearman(x, y) == pytest.approx(spearmanr(x, y).statistic)
    assert np.isnan(H.spearman([1, 2, 3], [5, 5, 5]))


def test_planted_increasing_effect_is_supported_and_decreasing_is_not():
    up = H.trend_test(planted(lambda t, s: t), "m", +1)
    assert up["verdict"] == H.SUPPORTED and up["rho"] > 0.9 and up["ci"][0] > 0
    down = H.trend_test(planted(lambda t, s: -t), "m", +1)
    assert down["verdict"] == H.NOT_SUPPORTED and down["ci"][1] < 0
    # the same decrease is support for a claim predicting a decrease
    assert H.trend_test(planted(lambda t, s: -t), "m", -1)["verdict"] == H.SUPPORTED


def test_seeds_that_disagree_are_inconclusive_and_divergence_is_counted():
    rows = planted(lambda t, s: t if s == 0 else -t, seeds=(0, 1))
    rows.append({"lr": 3.0, "seed": 0, "status": "diverged"})
    res = H.trend_test(rows, "m", +1)
    assert res["verdict"] == H.INCONCLUSIVE and res["ci"][0] < 0 < res["ci"][1]
    assert res["n_diverged"] == 1 and res["n_runs"] == 10
    two = [r for r in planted(lambda t, s: t) if r["lr"] in (0.01, 0.1)]
    assert H.trend_test(two, "m", +1)["verdict"] == H.INCONCLUSIVE  # two LRs: no trend test


def test_best_lr_against_best_comparator():
    lr_rows = planted(lambda t, s: t)  # best LR: 1.0, m ~ 0
    comps = [
        {"config": f"wd={wd}", "seed": s, "status": "ok", "m": v + 0.01 * s}
        for wd, v in ((1e-4, -3.0), (1e-3, -1.0))
        for s in (0, 1, 2)
    ]
    res = H.comparator_test(lr_rows, comps, "m", +1)
    assert res["best_lr"] == 1.0 and res["best_comparator"] == "wd=0.001"
    assert res["diff"] == pytest.approx(1.0, abs=0.05) and res["verdict"] == H.SUPPORTED
    better = [{**c, "m": c["m"] + 5} for c in comps]
    assert H.comparator_test(lr_rows, better, "m", +1)["verdict"] == H.NOT_SUPPORTED


def test_claim_summary_gives_the_planted_verdicts():
    rows = [{**r, "erm_wga": r["m"], "net_comp_0.1": -r["m"]} for r in planted(lambda t, s: t)]
    comps = [
        {"config": "dropout=0.5", "seed": s, "status": "ok", "erm_wga": -5.0, "net_comp_0.1": 9.0}
        for s in (0, 1, 2)
    ]
    res = H.evaluate_claims(rows, comparator_rows=comps)
    by = {(r["claim"], r["trend"]["metric"]): r for r in res}
    assert set(by) == {
        ("robustness", "erm_wga"),
        ("compressibility", "net_comp_0.1"),
    }  # only present metrics
    assert by["robustness", "erm_wga"]["trend"]["verdict"] == H.SUPPORTED
    assert by["robustness", "erm_wga"]["vs_comparators"]["verdict"] == H.SUPPORTED
    assert by["compressibility", "net_comp_0.1"]["trend"]["verdict"] == H.NOT_SUPPORTED
    assert by["compressibility", "net_comp_0.1"]["vs_comparators"]["verdict"] == H.NOT_SUPPORTED
    md = H.summary_markdown(res, "planted")
    assert "| robustness | **erm_wga (+)** | +0.9" in md and "not supported" in md
