"""Metrics against hand-computed values (specs/metrics-and-selection.md section 7, items 1-4)."""

import numpy as np
import pytest

from embedkit import metrics as M

# A hand-made split: 2 classes x 2 attributes = 4 groups, group 2 has no rows.
#   row:   0  1  2  3  4  5  6  7  8  9
Y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
P = np.array([0, 0, 0, 1, 1, 1, 1, 1, 0, 1])
G = np.array([0, 0, 0, 1, 1, 3, 3, 3, 3, 3])
# group 0: rows 0-2, 3/3 right; group 1: rows 3-4, 0/2; group 2: empty; group 3: rows 5-9, 4/5.


def test_group_report_hand_computed_with_empty_group():
    r = M.group_report(
        Y,
        P,
        G,
        n_groups=4,
        n_classes=2,
        train_counts=[50, 10, 5, 35],
        group_names=["a", "b", "c", "d"],
    )
    assert r["per_group"]["a"] == {
        "acc": 1.0,
        "n": 3,
        "ci95": pytest.approx(M.wilson_interval(3, 3)),
    }
    assert r["per_group"]["b"]["acc"] == 0.0 and r["per_group"]["c"] == {
        "acc": None,
        "n": 0,
        "ci95": None,
    }
    assert r["worst_group_acc"] == 0.0 and r["worst_group"] == "b"
    assert r["empty_groups"] == ["c"]
    assert r["small_groups"] == ["a", "b", "d"]
    assert r["mean_acc"] == pytest.approx(7 / 10)
    assert r["group_balanced_acc"] == pytest.approx((1 + 0 + 0.8) / 3)  # empty group excluded
    # π renormalised over the groups present on this split: (50, 10, 35) / 95
    assert r["weighted_mean_acc"] == pytest.approx((50 * 1 + 10 * 0 + 35 * 0.8) / 95)
    # class recalls: class 0 3/5, class 1 4/5
    assert r["balanced_class_acc"] == pytest.approx(0.7)
    assert r["worst_class_acc"] == pytest.approx(0.6)
    assert r["class_gap"] == pytest.approx(0.2)
    # precision: predicted 0 on rows 0,1,2,8 -> 3/4; predicted 1 on rows 3-7,9 -> 4/6
    assert r["avg_prec"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert r["worst_prec"] == pytest.approx(4 / 6)
    f0 = 2 * 0.75 * 0.6 / (0.75 + 0.6)
    f1 = 2 * (4 / 6) * 0.8 / (4 / 6 + 0.8)
    assert r["avg_f1"] == pytest.approx((f0 + f1) / 2) and r["worst_f1"] == pytest.approx(
        min(f0, f1)
    )
    assert r["no_prediction_classes"] == []
    assert r["mean_kinds"] == {
        "mean_acc": "plain",
        "weighted_mean_acc": "trainw",
        "group_balanced_acc": "gba",
    }
    assert r["hidden_rows"] == 0 and r["partial_groups"] is False


def test_precision_with_no_predictions_is_zero_and_flagged():
    y = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 0, 0])
    prec, none = M.class_precisions(y, pred, 2)
    assert prec.tolist() == [0.5, 0.0] and none.tolist() == [False, True]
    r = M.group_report(y, pred, np.array([0, 1, 2, 3]), n_groups=4, n_classes=2)
    assert r["no_prediction_classes"] == [1] and r["worst_prec"] == 0.0 and r["worst_f1"] == 0.0


def test_waterbirds_worked_fixture():
    """Spec section 2: group accuracies (0.99, 0.80, 0.70, 0.95), train counts 3498/184/56/1057."""
    counts = np.array([3498, 184, 56, 1057])
    pi = counts / counts.sum()
    assert np.round(pi, 4).tolist() == [0.7295, 0.0384, 0.0117, 0.2204]
    accs, n = [0.99, 0.80, 0.70, 0.95], 100
    y, pred, g = [], [], []
    for k, acc in enumerate(accs):
        right = int(round(acc * n))
        y += [k // 2] * n
        pred += [k // 2] * right + [1 - k // 2] * (n - right)
        g += [k] * n
    r = M.group_report(
        np.array(y), np.array(pred), np.array(g), n_groups=4, n_classes=2, train_counts=counts
    )
    assert r["worst_group_acc"] == pytest.approx(0.70)
    assert round(r["group_balanced_acc"], 3) == 0.860
    assert round(r["weighted_mean_acc"], 4) == 0.9705
    assert r["mean_acc"] == pytest.approx(0.86)  # plain mean of this balanced test


def test_hidden_attributes_mark_partial_groups():
    g = G.copy()
    g[3:5] = -1  # the label budget hid group 1
    r = M.group_report(Y, P, g, n_groups=4, n_classes=2)
    assert r["hidden_rows"] == 2 and r["partial_groups"] is True
    assert r["worst_group_acc"] == pytest.approx(0.8)  # over the visible groups only
    assert r["worst_class_acc"] == pytest.approx(0.6)  # class metrics still use every row


def test_probability_metrics_hand_computed():
    y = np.array([0, 1, 1, 0])
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]])
    # confidences .9 .6 .7 .8, hits 1 1 0 0; M=15 bins of width 1/15: .9 -> bin 13, .6 -> 8, .7 ->
    # 10, .8 -> 11
    assert M.ece(probs, y, 15) == pytest.approx((0.1 + 0.4 + 0.7 + 0.8) / 4)
    assert M.ece(probs, y, 1) == pytest.approx(abs(0.5 - 0.75))
    assert M.brier(probs, y) == pytest.approx((2 * 0.01 + 2 * 0.16 + 2 * 0.49 + 2 * 0.64) / 4)
    assert M.nll(probs, y) == pytest.approx(-np.mean(np.log([0.9, 0.6, 0.3, 0.2])))
    # AUROC of p1 = (.1,.6,.3,.8) for y = (0,1,1,0): positive/negative pairs won 2 of 4
    assert M.auroc(probs, y) == pytest.approx(0.5)
    # AP: ranking .8(neg) .6(pos) .3(pos) .1(neg): precision at the positives 1/2, 2/3
    assert M.auprc(probs, y) == pytest.approx((1 / 2 + 2 / 3) / 2)
    r = M.group_report(
        y, probs.argmax(1), np.array([0, 3, 2, 1]), n_groups=4, n_classes=2, probs=probs
    )
    assert r["ece_bins"] == 15 and r["ece"] == pytest.approx(0.5)


def test_ece_zero_when_perfectly_calibrated():
    # Within each confidence level the hit rate equals the confidence.
    conf = np.repeat([0.6, 0.8, 1.0], 10)
    hits = np.r_[np.arange(10) < 6, np.arange(10) < 8, np.ones(10, bool)]
    y = np.where(hits, 0, 1)
    probs = np.stack([conf, 1 - conf], 1)
    assert M.ece(probs, y) == pytest.approx(0.0, abs=1e-12)


def test_auroc_auprc_match_sklearn_with_ties_and_multiclass(rng):
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) + np.eye(3)[y]
    probs = np.round(
        np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 2
    )  # rounding makes ties
    probs /= probs.sum(1, keepdims=True)
    assert M.auroc(probs, y) == pytest.approx(
        roc_auc_score(y, probs, multi_class="ovr", average="macro")
    )
    ap = np.mean([average_precision_score(y == c, probs[:, c]) for c in range(3)])
    assert M.auprc(probs, y) == pytest.approx(ap)
    yb = (y == 1).astype(int)
    pb = np.stack([1 - probs[:, 1], probs[:, 1]], 1)
    assert M.auroc(pb, yb) == pytest.approx(roc_auc_score(yb, pb[:, 1]))
    assert M.auprc(pb, yb) == pytest.approx(average_precision_score(yb, pb[:, 1]))


def test_bias_aligned_eval_groups_attr_and_minority():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 0, 1, 0, 1])
    b = np.array([0, 1, 0, 2, 2, 1])
    out = M.acc_bias_aligned(y, pred, b)
    # y == b at rows 0, 4: hits 1, 0; y != b rows 1, 2, 3, 5: hits 0, 0, 1, 0
    assert out["acc_ba"] == pytest.approx(0.5) and out["acc_bc"] == pytest.approx(0.25)
    # misclassified with y != b: rows 1 (pred 1 = b), 2 (pred 0 = b), 5 (pred 1 = b) -> 3/3
    assert out["bbc"] == pytest.approx(1.0)
    eg = np.array([[1, 0], [1, 1], [0, 1], [0, 1], [0, 0], [1, 0]], bool)
    assert M.wga_eval_groups(y, pred, eg) == pytest.approx(1 / 3)
    assert M.minority_group_acc(y, pred, np.array([0, 0, 1, 1, 2, 2]), [1]) == pytest.approx(0.5)
    assert M.attr_acc(np.array([0, 1, -1, 1]), np.array([0, 0, 1, 1])) == pytest.approx(2 / 3)


def test_ess_purity_ari_minority():
    assert M.ess(np.ones(8)) == pytest.approx(8)
    assert M.ess([1, 0, 0, 0]) == pytest.approx(1)
    assert M.ess([3, 1]) == pytest.approx(1 / (0.75**2 + 0.25**2))
    true = np.array([0, 0, 0, 1, 1, 2])
    inferred = np.array([5, 5, 7, 7, 7, 7])
    assert M.purity(true, inferred) == pytest.approx((2 + 2) / 6)
    assert M.ari(true, true + 10) == pytest.approx(1.0)
    mp = M.minority_precision_recall([1, 1, 0, 0], [1, 0, 1, 0])
    assert mp == {"minority_precision": 0.5, "minority_recall": 0.5}


def test_seed_summary_std_ddof1_and_se():
    s = M.seed_summary([0.7, 0.8, 0.9])
    assert s["mean"] == pytest.approx(0.8) and s["std"] == pytest.approx(0.1)
    assert s["se"] == pytest.approx(0.1 / np.sqrt(3)) and s["n"] == 3
    assert M.seed_summary([0.5])["std"] is None


def test_wilson_interval_known_values():
    lo, hi = M.wilson_interval(2, 8)  # the Waterbirds CLIP 'waterbird on land' group
    assert (round(lo, 4), round(hi, 4)) == (0.0715, 0.5907)
    assert M.wilson_interval(0, 0) is None
    lo, hi = M.wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-4)


def test_bootstrap_reproducible_and_stratified(rng):
    y = rng.integers(0, 2, 200)
    g = y * 2 + rng.integers(0, 2, 200)
    pred = np.where(rng.random(200) < 0.8, y, 1 - y)
    seen_sizes = []

    def wga_and_sizes(yy, pp, gg):
        seen_sizes.append(np.bincount(gg, minlength=4).tolist())
        return M.worst_group_acc(yy, pp, gg, 4)

    a = M.bootstrap_ci(y, pred, g, wga_and_sizes, n_boot=50, seed=3)
    b = M.bootstrap_ci(y, pred, g, n_boot=50, seed=3)
    assert (a["lo"], a["hi"]) == (b["lo"], b["hi"])
    assert a["lo"] <= a["point"] <= a["hi"]
    assert all(s == np.bincount(g, minlength=4).tolist() for s in seen_sizes)


def test_evaluate_split_uses_split_groups_and_train_counts():
    from embedkit.schema import Split

    Z = np.zeros((10, 2), np.float32)
    s = Split(
        name="test",
        Z=Z,
        y=Y,
        a=G % 2,
        ids=np.arange(10).astype(str),
        rows=np.arange(10),
        class_names=["c0", "c1"],
        attr_names=["t0", "t1"],
        train_group_counts=np.array([50, 10, 5, 35]),
    )
    logits = np.stack([1 - P, P], 1).astype(np.float32)
    r = M.evaluate_split(logits, s)
    assert r["worst_group_acc"] == 0.0 and r["per_group"]["c0|t1"]["n"] == 2
    assert r["weighted_mean_acc"] == pytest.approx((50 * 1 + 35 * 0.8) / 95)
    assert r["ece_bins"] == M.ECE_BINS and r["auroc"] is not None


def test_nonfinite_probabilities_reported_as_missing():
    probs = np.array([[np.nan, np.nan], [0.2, 0.8]])
    r = M.group_report(
        np.array([0, 1]), np.array([0, 1]), np.array([0, 3]), n_groups=4, n_classes=2, probs=probs
    )
    assert r["nonfinite_probs"] is True and r["ece"] is None and r["auroc"] is None
    assert r["mean_acc"] == 1.0
