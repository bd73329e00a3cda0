"""Group metrics (specs/metrics-and-selection.md sections 2 and 5). Pure functions of labels,
predictions or probabilities, group ids and optional weights; nothing here loads a model.

Key names follow the run record of DESIGN section 3: `worst_group_acc`, `mean_acc` (plain),
`weighted_mean_acc` (train-proportion weighted), `group_balanced_acc`, `per_group`. The spec's
short names map onto them through `SPEC_KEYS`. Every report names which mean is which in
`mean_kinds` (spec section 3: rows with different mean kinds never share a column).
"""

from __future__ import annotations

import numpy as np

SMALL_GROUP = 20
ECE_BINS = 15

# The spec's names (metrics-and-selection.md section 2) -> keys in a `group_report`.
SPEC_KEYS = {
    "wga": "worst_group_acc",
    "mean_acc": "mean_acc",
    "mean_acc_trainw": "weighted_mean_acc",
    "gba": "group_balanced_acc",
    "bal_class_acc": "balanced_class_acc",
    "worst_class_acc": "worst_class_acc",
    "class_gap": "class_gap",
    "avg_prec": "avg_prec",
    "worst_prec": "worst_prec",
    "avg_f1": "avg_f1",
    "worst_f1": "worst_f1",
    "auroc": "auroc",
    "auprc": "auprc",
    "ece": "ece",
    "brier": "brier",
    "nll": "nll",
    "wga_eval_groups": "worst_eval_group_acc",
}
# mean kind (spec section 3) -> the report key holding that mean.
MEAN_KINDS = {"plain": "mean_acc", "trainw": "weighted_mean_acc", "gba": "group_balanced_acc"}


def _nan_to_none(x):
    return None if x is None or not np.isfinite(x) else float(x)


# ----------------------------------------------------------------------------------------------
# Accuracy by group and class
# ----------------------------------------------------------------------------------------------


def per_group_accuracy(y, pred, g, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """(acc_g [G] with NaN for empty groups, n_g [G]). Rows with g = -1 are ignored."""
    y, pred, g = np.asarray(y), np.asarray(pred), np.asarray(g)
    m = g >= 0
    n = np.bincount(g[m], minlength=n_groups).astype(np.int64)
    hits = np.bincount(g[m], weights=(pred[m] == y[m]).astype(np.float64), minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n > 0, hits / np.maximum(n, 1), np.nan)
    return acc, n


def worst_group_acc(y, pred, g, n_groups: int | None = None) -> float:
    """min over groups with rows of acc_g (empty groups excluded); NaN when no group has rows."""
    g = np.asarray(g)
    n_groups = int(g.max(initial=-1)) + 1 if n_groups is None else n_groups
    acc, n = per_group_accuracy(y, pred, g, n_groups)
    return float(np.nanmin(acc)) if (n > 0).any() else float("nan")


def class_recalls(y, pred, n_classes: int) -> np.ndarray:
    """recall_c = acc({y = c}); NaN for classes absent from y."""
    y, pred = np.asarray(y), np.asarray(pred)
    n = np.bincount(y, minlength=n_classes)
    hits = np.bincount(y, weights=(pred == y).astype(np.float64), minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, hits / np.maximum(n, 1), np.nan)


def class_precisions(y, pred, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(precision_c [C], no_prediction [C] bool). precision_c = |{ŷ=c, y=c}| / |{ŷ=c}|, and 0
    (flagged in `no_prediction`) when c is never predicted."""
    y, pred = np.asarray(y), np.asarray(pred)
    n_pred = np.bincount(pred, minlength=n_classes)[:n_classes]
    hits = np.bincount(pred, weights=(pred == y).astype(np.float64), minlength=n_classes)[
        :n_classes
    ]
    none = n_pred == 0
    return np.where(none, 0.0, hits / np.maximum(n_pred, 1)), none


def class_f1(y, pred, n_classes: int) -> np.ndarray:
    """F1_c = 2 P_c R_c / (P_c + R_c), 0 when both are 0; NaN for classes absent from y."""
    rec = class_recalls(y, pred, n_classes)
    prec, _ = class_precisions(y, pred, n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    return np.where(np.isnan(rec), np.nan, f1)


def acc_bias_aligned(y, pred, b) -> dict:
    """`acc_ba` / `acc_bc` (accuracy on rows with y = b / y != b) and `bbc` (among misclassified
    rows with y != b, the fraction predicted as b), for a spurious label b in the label space."""
    y, pred, b = np.asarray(y), np.asarray(pred), np.asarray(b)
    ba, bc = y == b, y != b
    wrong = bc & (pred != y)
    return {
        "acc_ba": _mean_or_none(pred[ba] == y[ba]),
        "acc_bc": _mean_or_none(pred[bc] == y[bc]),
        "bbc": _mean_or_none(pred[wrong] == b[wrong]),
    }


def _mean_or_none(x):
    x = np.asarray(x)
    return float(x.mean()) if x.size else None


def minority_group_acc(y, pred, g, minority_groups) -> float | None:
    """Accuracy on the rows of the designated minority group(s)."""
    m = np.isin(np.asarray(g), np.asarray(minority_groups))
    return _mean_or_none(np.asarray(pred)[m] == np.asarray(y)[m])


def wga_eval_groups(y, pred, eval_groups) -> float | None:
    """min over columns of a boolean [N, G_eval] membership matrix (overlap allowed) of the
    accuracy on that column's rows; columns without rows are skipped."""
    eg = np.asarray(eval_groups, bool)
    hit = (np.asarray(pred) == np.asarray(y)).astype(np.float64)
    n = eg.sum(axis=0)
    if not (n > 0).any():
        return None
    return float(np.min((hit @ eg)[n > 0] / n[n > 0]))


def attr_acc(a, pred_a) -> float | None:
    """Accuracy of an attribute probe on rows whose attribute is known (a >= 0)."""
    a, pred_a = np.asarray(a), np.asarray(pred_a)
    m = a >= 0
    return _mean_or_none(pred_a[m] == a[m])


# ----------------------------------------------------------------------------------------------
# Scores and calibration
# ----------------------------------------------------------------------------------------------


def ece(probs, y, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error over M equal-width bins of the confidence κ = max_c p_c:
    Σ_b (|B_b|/n) |acc(B_b) − mean κ on B_b|. Bin b holds (b−1)/M < κ ≤ b/M (κ = 0 in bin 1).
    Compare values only at equal M; reports store M as `ece_bins`."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    if len(y) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    hit = (probs.argmax(axis=1) == y).astype(np.float64)
    b = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    gap = np.bincount(b, weights=hit, minlength=n_bins) - np.bincount(
        b, weights=conf, minlength=n_bins
    )
    return float(np.abs(gap).sum() / len(y))


def brier(probs, y) -> float:
    """(1/n) Σ_i Σ_c (p_ic − 1[y_i = c])²."""
    probs = np.asarray(probs, np.float64)
    onehot = np.eye(probs.shape[1])[np.asarray(y)]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def nll(probs, y) -> float:
    """−(1/n) Σ_i log p_i[y_i]; probabilities are floored at the smallest positive double so a
    confident mistake gives a large finite value instead of inf."""
    probs = np.asarray(probs, np.float64)
    p = probs[np.arange(len(probs)), np.asarray(y)]
    return float(-np.log(np.maximum(p, np.finfo(np.float64).tiny)).mean())


def _roc_pr_points(score, pos):
    """Cumulative (true, false) positives at each distinct score threshold, highest first: one
    sort serves both AUROC and average precision."""
    order = np.argsort(-score)
    s, t = score[order], pos[order].astype(np.float64)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # end of each tied block
    tp = np.cumsum(t)[last]
    return tp, (last + 1) - tp


def _binary_scores(score, pos) -> tuple[float, float]:
    """(AUROC, AP) of one binary problem. AUROC = area under the ROC curve through every
    threshold (trapezoids: ties count one half), equal to the Mann-Whitney statistic with average
    ranks; AP = Σ_n (R_n − R_{n−1}) P_n over distinct thresholds (the step-wise area under the
    precision-recall curve, no interpolation). NaN where undefined."""
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0:
        return float("nan"), float("nan")
    tp, fp = _roc_pr_points(score, pos)
    ap = float(np.sum(np.diff(np.r_[0.0, tp]) / n_pos * tp / (tp + fp)))
    if n_neg == 0:
        return float("nan"), ap
    tp0, fp0 = np.r_[0.0, tp], np.r_[0.0, fp]
    return float(np.sum(np.diff(fp0) * (tp0[1:] + tp0[:-1]) / 2) / (n_pos * n_neg)), ap


def ranking_scores(probs, y) -> tuple[float, float]:
    """(AUROC, AUPRC): binary on p[:, 1]; multi-class the macro one-vs-rest mean over classes with
    both positives and negatives [W]. AUPRC is computed as average precision."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    if probs.shape[1] == 2:
        return _binary_scores(probs[:, 1], y == 1)
    vals = [
        _binary_scores(probs[:, c], y == c)
        for c in range(probs.shape[1])
        if 0 < (y == c).sum() < len(y)
    ]
    return tuple(float(np.mean(v)) for v in zip(*vals)) if vals else (float("nan"), float("nan"))


def auroc(probs, y) -> float:
    return ranking_scores(probs, y)[0]


def auprc(probs, y) -> float:
    return ranking_scores(probs, y)[1]


# ----------------------------------------------------------------------------------------------
# Weights and inferred groups
# ----------------------------------------------------------------------------------------------


def ess(w) -> float:
    """Effective sample size 1 / Σ w_i² of weights normalised to Σ w = 1."""
    w = np.asarray(w, np.float64)
    w = w / w.sum()
    return float(1.0 / np.sum(w**2))


def ari(true_groups, inferred) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(np.asarray(true_groups), np.asarray(inferred)))


def purity(true_groups, inferred) -> float:
    """Σ over inferred groups of the count of their majority true group, divided by n."""
    t, k = (
        np.unique(true_groups, return_inverse=True)[1],
        np.unique(inferred, return_inverse=True)[1],
    )
    table = np.zeros((k.max() + 1, t.max() + 1), np.int64)
    np.add.at(table, (k, t), 1)
    return float(table.max(axis=1).sum() / len(t))


def minority_precision_recall(true_minority, inferred_minority) -> dict:
    """Precision and recall of an inferred minority mask against the true one."""
    t, p = np.asarray(true_minority, bool), np.asarray(inferred_minority, bool)
    tp = float((t & p).sum())
    return {
        "minority_precision": tp / p.sum() if p.any() else None,
        "minority_recall": tp / t.sum() if t.any() else None,
    }


# ----------------------------------------------------------------------------------------------
# Uncertainty (spec section 5)
# ----------------------------------------------------------------------------------------------


def seed_summary(values) -> dict:
    """Mean, sample std (ddof = 1) and standard error std/√n over seeds; std and se are None for
    a single value."""
    v = np.asarray([x for x in values if x is not None], np.float64)
    n = len(v)
    std = float(v.std(ddof=1)) if n > 1 else None
    return {
        "mean": float(v.mean()) if n else None,
        "std": std,
        "se": std / np.sqrt(n) if std is not None else None,
        "n": n,
    }


def wilson_interval(hits: int, n: int, z: float = 1.959963984540054) -> tuple[float, float] | None:
    """Wilson score interval (95 % by default) for a proportion hits/n; None when n = 0."""
    if n == 0:
        return None
    p = hits / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def bootstrap_ci(
    y,
    pred,
    g,
    metric=None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    n_groups: int | None = None,
) -> dict:
    """Percentile bootstrap interval of `metric(y, pred, g)` (default: worst-group accuracy),
    resampling rows with replacement **within each group at its own size** (rows with g = -1
    form one more stratum), so every resample keeps the group sizes."""
    y, pred, g = np.asarray(y), np.asarray(pred), np.asarray(g)
    n_groups = int(g.max(initial=-1)) + 1 if n_groups is None else n_groups
    metric = metric or (lambda yy, pp, gg: worst_group_acc(yy, pp, gg, n_groups))
    rng = np.random.default_rng(seed)
    strata = [np.flatnonzero(g == k) for k in np.unique(g)]
    vals = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([s[rng.integers(0, len(s), len(s))] for s in strata])
        vals[b] = metric(y[idx], pred[idx], g[idx])
    alpha = (1 - level) / 2
    lo, hi = np.nanquantile(vals, [alpha, 1 - alpha])
    return {
        "point": float(metric(y, pred, g)),
        "lo": float(lo),
        "hi": float(hi),
        "level": level,
        "n_boot": n_boot,
        "seed": seed,
        "stratified_by": "group",
    }


# ----------------------------------------------------------------------------------------------
# One split's report
# ----------------------------------------------------------------------------------------------


def group_report(
    y,
    pred,
    g,
    *,
    n_groups: int | None = None,
    n_classes: int | None = None,
    train_counts=None,
    group_names=None,
    probs=None,
    ece_bins: int = ECE_BINS,
) -> dict:
    """Every group metric of one split as a JSON-able dict.

    `train_counts` (n_g on the train split of the same dataset variant) gives the
    train-proportion weighted mean; without it that key is None. `probs` [N, C] adds ECE (with
    its bin count M), Brier score, NLL, AUROC and AUPRC. Rows with g = -1 (attribute hidden by
    the label budget) count for the class metrics but not for any group; when such rows exist
    and a group has no visible row, `partial_groups` is True (spec section 4.4).
    """
    y, pred, g = np.asarray(y), np.asarray(pred), np.asarray(g)
    n_classes = (
        int(max(y.max(initial=0), pred.max(initial=0))) + 1 if n_classes is None else n_classes
    )
    n_groups = (int(g.max(initial=-1)) + 1) if n_groups is None else n_groups
    acc, n = per_group_accuracy(y, pred, g, n_groups)
    present = n > 0
    names = list(group_names) if group_names is not None else [str(i) for i in range(n_groups)]
    rec = class_recalls(y, pred, n_classes)
    cls = np.isfinite(rec)  # classes present in y
    prec, no_pred = class_precisions(y, pred, n_classes)
    f1 = class_f1(y, pred, n_classes)
    hidden = int((g < 0).sum())
    out = {
        "n": int(len(y)),
        "worst_group_acc": float(np.min(acc[present])) if present.any() else None,
        "mean_acc": float(np.mean(pred == y)) if len(y) else None,
        "group_balanced_acc": float(np.mean(acc[present])) if present.any() else None,
        "balanced_class_acc": float(np.mean(rec[cls])) if cls.any() else None,
        "worst_class_acc": float(np.min(rec[cls])) if cls.any() else None,
        "class_gap": float(np.max(rec[cls]) - np.min(rec[cls])) if cls.any() else None,
        "avg_prec": float(np.mean(prec[cls])) if cls.any() else None,
        "worst_prec": float(np.min(prec[cls])) if cls.any() else None,
        "no_prediction_classes": [int(c) for c in np.flatnonzero(no_pred & cls)],
        "avg_f1": float(np.mean(f1[cls])) if cls.any() else None,
        "worst_f1": float(np.min(f1[cls])) if cls.any() else None,
        "per_group": {
            names[i]: {
                "acc": None if not present[i] else float(acc[i]),
                "n": int(n[i]),
                "ci95": wilson_interval(int(round(acc[i] * n[i])), int(n[i]))
                if present[i]
                else None,
            }
            for i in range(n_groups)
        },
        "per_class_recall": [_nan_to_none(r) for r in rec],
        "empty_groups": [names[i] for i in range(n_groups) if not present[i]],
        "small_groups": [names[i] for i in range(n_groups) if 0 < n[i] < SMALL_GROUP],
        "hidden_rows": hidden,
        "partial_groups": bool(hidden > 0 and not present.all()),
        "weighted_mean_acc": None,
        "mean_kinds": {key: kind for kind, key in MEAN_KINDS.items()},
    }
    if out["worst_group_acc"] is not None:
        worst = int(np.flatnonzero(present)[np.argmin(acc[present])])
        out["worst_group"] = names[worst]
    if train_counts is not None:
        pi = np.asarray(train_counts, np.float64)[:n_groups] * present
        if pi.sum() > 0:
            out["weighted_mean_acc"] = float(np.sum(pi / pi.sum() * np.nan_to_num(acc)))
    if probs is not None and len(y):
        probs = np.asarray(probs, np.float64)
        if not np.isfinite(probs).all():  # a diverged head: say so rather than score NaNs
            out.update(
                ece=None,
                ece_bins=int(ece_bins),
                brier=None,
                nll=None,
                auroc=None,
                auprc=None,
                nonfinite_probs=True,
            )
            return out
        roc, pr = ranking_scores(probs, y)
        out.update(
            ece=ece(probs, y, ece_bins),
            ece_bins=int(ece_bins),
            brier=brier(probs, y),
            nll=nll(probs, y),
            auroc=_nan_to_none(roc),
            auprc=_nan_to_none(pr),
        )
    return out


def evaluate_split(logits, split) -> dict:
    """`group_report` of a head's logits [N, C] on a cache Split (its groups, names and the
    train group counts for the weighted mean)."""
    logits = np.asarray(logits)
    probs = None
    if logits.ndim == 2:
        z = logits - logits.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        pred = logits.argmax(axis=1)
    else:
        pred = logits
    out = group_report(
        split.y,
        pred,
        split.g,
        n_groups=split.n_groups,
        n_classes=split.n_classes,
        train_counts=split.train_group_counts,
        group_names=split.group_names,
        probs=probs,
    )
    if getattr(split, "eval_groups", None) is not None:
        out.update(eval_group_report(split.y, pred, split.eval_groups, split.eval_group_names))
    return out


def eval_group_report(y, pred, eval_groups, names) -> dict:
    """The overlapping evaluation groups' accuracies (CivilComments' toxic x identity groups,
    as WILDS, JTT and SubpopBench score them): `worst_eval_group_acc` = `wga_eval_groups`, and
    each group's accuracy and size. A row counts in every group it belongs to."""
    eg = np.asarray(eval_groups, bool)
    hit = (np.asarray(pred) == np.asarray(y)).astype(np.float64)
    n = eg.sum(axis=0)
    acc = [float(hit[eg[:, j]].mean()) if n[j] else None for j in range(eg.shape[1])]
    present = [j for j in range(eg.shape[1]) if n[j]]
    worst = min(present, key=lambda j: acc[j]) if present else None
    return {
        "worst_eval_group_acc": wga_eval_groups(y, pred, eg),
        "worst_eval_group": None if worst is None else str(names[worst]),
        "per_eval_group": {
            str(names[j]): {"acc": acc[j], "n": int(n[j])} for j in range(eg.shape[1])
        },
    }


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of [N, C] logits, shifted by the row max so that exp never overflows."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
