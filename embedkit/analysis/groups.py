"""Where the groups sit: centroids, the centroid distance matrix, k-NN group purity, and the
nearest training neighbours of the worst group's errors. All neighbour search goes through
`embedkit.geometry.index.Index` (FAISS).

Groups follow the cache's definition g = y*A + a (rows with a = -1 have g = -1 and are left out
of every per-group number; the count left out is reported).
"""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.geometry.directions import group_means
from embedkit.geometry.index import Index, as_float32


def stratified_subsample(g, max_points: int, seed: int = 0) -> np.ndarray:
    """At most `max_points` row indices (sorted), filled group by group from the smallest: small
    groups keep all their rows, so minority groups stay visible in maps and purity estimates."""
    g = np.asarray(g)
    if len(g) <= max_points:
        return np.arange(len(g))
    rng = np.random.default_rng(seed)
    groups, counts = np.unique(g, return_counts=True)
    quota = np.zeros(len(groups), np.int64)
    left = max_points
    for done, i in enumerate(np.argsort(counts, kind="stable")):  # small groups get all their rows
        quota[i] = min(counts[i], left // (len(groups) - done))
        left -= quota[i]
    pick = [rng.choice(np.flatnonzero(g == gr), q, replace=False) for gr, q in zip(groups, quota)]
    return np.sort(np.concatenate(pick))


def group_centroids(Z, y, a, n_classes: int, n_attrs: int) -> tuple[np.ndarray, np.ndarray]:
    """(mu [G, D], n [G]): the mean embedding of each group g = y*A + a (NaN rows for empty
    groups)."""
    mu, n = group_means(as_float32(Z), y, a, n_classes, n_attrs)
    return mu.reshape(n_classes * n_attrs, -1), n.reshape(-1)


def centroid_distances(mu: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """[G, G] distances between centroids: cosine distance 1 - cos, or Euclidean. NaN for empty
    groups."""
    mu = np.asarray(mu, np.float64)
    if metric == "cosine":
        u = mu / np.linalg.norm(mu, axis=1, keepdims=True)
        D = 1.0 - u @ u.T
    elif metric == "euclidean":
        sq = (mu**2).sum(axis=1)
        D = np.sqrt(np.maximum(sq[:, None] + sq[None, :] - 2 * mu @ mu.T, 0.0))
    else:
        raise EmbedkitError(f"unknown centroid distance {metric!r}: choose cosine or euclidean")
    np.fill_diagonal(D, np.where(np.isnan(mu).any(axis=1), np.nan, 0.0))
    return D


def knn_purity(
    Z,
    y,
    a,
    n_classes: int,
    n_attrs: int,
    k: int = 10,
    metric: str = "cosine",
    group_names=None,
    max_queries: int | None = None,
    seed: int = 0,
    **index_kwargs,
) -> dict:
    """Per group, the mean share of a row's k nearest other rows that share its group, its class,
    and its attribute. Only rows with a known attribute take part (as queries and as neighbours).
    With `max_queries`, the shares are averaged over a group-stratified sample of that many query
    rows (the neighbours still come from every row).

    Returns {"k", "metric", "n_left_out", "n_queries", "per_group": {name: {n, n_queries,
    same_group, same_class, same_attr}}, "overall": {same_group, same_class, same_attr}}; None for
    empty groups.
    """
    y, a = np.asarray(y, np.int64), np.asarray(a, np.int64)
    known = np.flatnonzero(a >= 0)
    G = n_classes * n_attrs
    names = list(group_names) if group_names is not None else [str(i) for i in range(G)]
    if len(known) <= k:
        raise EmbedkitError(
            f"k-NN purity needs more than k={k} rows with a known attribute, got {len(known)}"
        )
    yk, ak = y[known], a[known]
    gk = yk * n_attrs + ak
    q = stratified_subsample(gk, max_queries, seed) if max_queries else np.arange(len(known))
    index = Index(np.asarray(Z)[known], metric, **index_kwargs)
    _, I = index.search_self(k, q)
    same = {
        "same_group": gk[I] == gk[q, None],
        "same_class": yk[I] == yk[q, None],
        "same_attr": ak[I] == ak[q, None],
    }
    row_share = {name: m.mean(axis=1) for name, m in same.items()}
    counts = np.bincount(gk, minlength=G)
    per_group = {}
    for gi in range(G):
        m = gk[q] == gi
        per_group[names[gi]] = {
            "n": int(counts[gi]),
            "n_queries": int(m.sum()),
            **{s: (float(v[m].mean()) if m.any() else None) for s, v in row_share.items()},
        }
    return {
        "k": int(k),
        "metric": metric,
        "index": index.describe(),
        "n_left_out": int(len(y) - len(known)),
        "n_queries": int(len(q)),
        "per_group": per_group,
        "overall": {s: float(v.mean()) for s, v in row_share.items()},
    }


def worst_group_errors(y, a, pred, n_attrs: int, group_names=None) -> tuple[int | None, np.ndarray]:
    """(worst group id by accuracy among non-empty groups, the rows of that group predicted
    wrongly)."""
    y, a, pred = np.asarray(y), np.asarray(a), np.asarray(pred)
    g = np.where(a >= 0, y * n_attrs + a, -1)
    present = np.unique(g[g >= 0])
    if present.size == 0:
        return None, np.zeros(0, np.int64)
    acc = np.array([np.mean(pred[g == gi] == y[g == gi]) for gi in present])
    worst = int(present[np.argmin(acc)])
    return worst, np.flatnonzero((g == worst) & (pred != y))


def error_neighbours(
    Zq,
    yq,
    aq,
    pred,
    Zdb,
    ydb,
    adb,
    n_attrs: int,
    k: int = 10,
    metric: str = "cosine",
    max_queries: int = 64,
    group_names=None,
    **index_kwargs,
) -> dict:
    """Nearest database rows (e.g. train) of the worst group's misclassified query rows (e.g. test).

    Returns the worst group, its error rows (query indices, at most `max_queries`, in row order),
    the neighbour indices and scores [nq, k] into the database, and the share of neighbours per
    database group and the share whose class equals the wrong prediction: a high share of neighbours
    from the other class with the query's attribute says the error follows the spurious attribute.
    """
    worst, err = worst_group_errors(yq, aq, pred, n_attrs)
    out = {"worst_group": None, "queries": [], "k": int(k), "metric": metric}
    if worst is None or err.size == 0:
        return out
    names = list(group_names) if group_names is not None else None
    n_errors, err = int(err.size), err[:max_queries]
    S, I = Index(Zdb, metric, **index_kwargs).search(np.asarray(Zq)[err], k)
    ydb, adb = np.asarray(ydb), np.asarray(adb)
    gdb = np.where(adb >= 0, ydb * n_attrs + adb, -1)
    ng = gdb[I]
    G = len(names) if names else int(max(gdb.max(), worst)) + 1
    shares = np.bincount(ng[ng >= 0].ravel(), minlength=G) / ng.size
    out.update(
        {
            "worst_group": names[worst] if names else worst,
            "worst_group_id": worst,
            "n_errors": n_errors,
            "queries": err.tolist(),
            "neighbours": I,
            "scores": S,
            "neighbour_group_share": {
                (names[i] if names else str(i)): float(shares[i]) for i in range(G)
            },
            "share_neighbours_of_predicted_class": float(
                np.mean(ydb[I] == np.asarray(pred)[err][:, None])
            ),
        }
    )
    return out
