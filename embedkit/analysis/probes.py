"""Spurious and core directions from linear probes, beside the group-mean estimates of
`embedkit.geometry.directions`.

The attribute probe is a logistic regression of a on z; its weight vector (in raw feature
coordinates) is the spurious direction. Rows are weighted 1/n_(y,a) (group-balanced) so that the
class, which is correlated with the attribute on a biased split, cannot stand in for it; the core
direction is the same probe of y under the same weights. Binary labels give one weight vector; with
more values the direction is the leading right singular vector of the centred weight rows. Each
direction is oriented so that it points from value 0 towards value 1 (<v, mu_1 - mu_0> >= 0), like
the group-mean directions.
"""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.geometry.directions import group_means, mean_difference_directions
from embedkit.geometry.index import as_float32


def _balanced_weights(y, a) -> np.ndarray:
    g = y * (a.max() + 1) + a
    counts = np.bincount(g)
    w = 1.0 / counts[g]
    return w * len(w) / w.sum()


def linear_probe(Z, target, weights=None, *, C: float = 1.0, max_iter: int = 2000) -> dict:
    """Fit a logistic-regression probe (features standardised for conditioning, weights mapped
    back to raw coordinates: w_raw = w_std / sigma). Returns {"W" [K or 1, D], "b", "classes",
    "direction" [D] unit, "train_balanced_acc"}."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    Z = as_float32(Z)
    target = np.asarray(target, np.int64)
    classes = np.unique(target)
    if classes.size < 2:
        raise EmbedkitError(
            f"a linear probe needs at least two label values, got {classes.tolist()}"
        )
    mu, sd = Z.mean(axis=0), Z.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    clf = LogisticRegression(C=C, max_iter=max_iter)
    clf.fit((Z - mu) / sd, target, sample_weight=weights)
    W = clf.coef_ / sd
    b = clf.intercept_ - W @ mu
    if W.shape[0] == 1:
        v = W[0]
    else:
        Wc = W - W.mean(axis=0)
        v = np.linalg.svd(Wc, full_matrices=False)[2][0]
    # Orient from the first label value towards the second (as the group-mean directions).
    m = [Z[target == c].mean(axis=0) for c in classes[:2]]
    if float(v @ (m[1] - m[0])) < 0:
        v = -v
    pred = clf.predict((Z - mu) / sd)
    return {
        "W": W.astype(np.float32),
        "b": b.astype(np.float32),
        "classes": classes.tolist(),
        "direction": (v / np.linalg.norm(v)).astype(np.float32),
        "train_balanced_acc": float(balanced_accuracy_score(target, pred)),
    }


def probe_directions(Z, y, a, *, C: float = 1.0) -> dict:
    """Spurious direction = group-balanced probe of a; core direction = group-balanced probe of y.
    Only rows with a known attribute are used."""
    Z, y, a = as_float32(Z), np.asarray(y, np.int64), np.asarray(a, np.int64)
    known = a >= 0
    if len(np.unique(a[known])) < 2:
        raise EmbedkitError("the attribute probe needs rows with at least two attribute values")
    w = _balanced_weights(y[known], a[known])
    sp = linear_probe(Z[known], a[known], w, C=C)
    core = linear_probe(Z[known], y[known], w, C=C)
    return {"spurious": sp, "core": core}


def direction_estimates(Z, y, a, n_classes: int, n_attrs: int, *, C: float = 1.0) -> dict:
    """Both estimates of the spurious and core directions and how well they agree.

    group_mean: Delta_spur, Delta_core (signed, spec section 7.1) from `directions`;
    probe: the group-balanced attribute / class probe weight vectors.
    """
    mu, counts = group_means(as_float32(Z), y, a, n_classes, n_attrs)
    gm = mean_difference_directions(mu, counts, mode="signed")
    pr = probe_directions(Z, y, a, C=C)

    def cos(u, v):
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    return {
        "group_mean": {
            "spurious": np.asarray(gm.spurious, np.float32),
            "core": np.asarray(gm.core, np.float32),
        },
        "probe": {"spurious": pr["spurious"]["direction"], "core": pr["core"]["direction"]},
        "probe_train_balanced_acc": {
            "attribute": pr["spurious"]["train_balanced_acc"],
            "class": pr["core"]["train_balanced_acc"],
        },
        "cos_group_mean_vs_probe": {
            "spurious": cos(gm.spurious, pr["spurious"]["direction"]),
            "core": cos(gm.core, pr["core"]["direction"]),
        },
        "cos_spurious_core": {
            "group_mean": cos(gm.spurious, gm.core),
            "probe": cos(pr["spurious"]["direction"], pr["core"]["direction"]),
        },
    }
