"""k-means with FAISS, GEORGE-style per-class group inference (methods.md section 14.2) and the
agreement of inferred groups with the true ones (section 14.4).

`infer_george` returns `InferredGroups`; its `.a` is an attribute-like array (0..n_attrs-1 per row),
so any head that takes `a` can train on pseudo-groups g = y*n_attrs + a:

    groups = infer_george(train.Z, train.y, logits=train.logits, seed=seeds["infer"])
    pseudo_train = dataclasses.replace(train, a=groups.a, attr_names=groups.attr_names)

FAISS specifics [P: facebookresearch/faiss extra_wrappers.py]: `faiss.Kmeans` silently subsamples to
`max_points_per_centroid * k` rows; embedkit raises that cap to N/k so every row is used (the sample
size actually used is reported as `n_train`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from embedkit import metrics
from embedkit.errors import EmbedkitError
from embedkit.geometry.index import _faiss, as_float32, gpu_available, l2_normalize

REDUCE = ("none", "margin", "pca")
# Inferred groups below max(0.5 % of the class, 25 rows) are flagged (section 14.4) and, when
# over-clustering, are not kept (the GEORGE code's size rule).
TINY_ABS, TINY_FRAC = 25, 0.005


@dataclass
class KMeansResult:
    centroids: np.ndarray  # [k, D]
    labels: np.ndarray  # [N] nearest centroid of every input row
    objective: float  # final sum of squared distances (or of similarities if spherical)
    n_train: int  # rows faiss actually trained on
    params: dict = field(default_factory=dict)

    def assign(self, X) -> np.ndarray:
        """Nearest centroid of new rows (same metric as training)."""
        faiss = _faiss()
        X = as_float32(X)
        spherical = self.params.get("spherical", False)
        idx = (
            faiss.IndexFlatIP(self.centroids.shape[1])
            if spherical
            else faiss.IndexFlatL2(self.centroids.shape[1])
        )
        idx.add(self.centroids)
        return idx.search(l2_normalize(X) if spherical else X, 1)[1][:, 0].astype(np.int64)


INITS = ("k-means++", "random")


def kmeans(
    X,
    k: int,
    *,
    niter: int = 20,
    nredo: int = 1,
    seed: int = 0,
    spherical: bool = False,
    init: str = "k-means++",
    use_all_rows: bool = True,
    max_points_per_centroid: int = 256,
    use_gpu: bool | None = None,
) -> KMeansResult:
    """`faiss.Kmeans` with the embedkit defaults: all rows used (unless `use_all_rows=False`, then
    faiss's own `max_points_per_centroid` subsampling), a fixed seed, k-means++ seeding (as
    scikit-learn and the GEORGE code; `init="random"` is faiss's own default), `spherical` for
    cosine k-means, the best of `nredo` runs."""
    faiss = _faiss()
    X = as_float32(X)
    n, d = X.shape
    k = int(k)
    if not 1 <= k <= n:
        raise EmbedkitError(f"k-means with k={k} needs 1 <= k <= rows ({n})")
    mppc = max(int(np.ceil(n / k)), 1) if use_all_rows else int(max_points_per_centroid)
    if init not in INITS:
        raise EmbedkitError(f"unknown k-means init {init!r}: choose from {', '.join(INITS)}")
    gpu = bool(gpu_available() if use_gpu is None else use_gpu)
    method = (
        faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS
        if init == "k-means++"
        else faiss.ClusteringInitMethod_RANDOM
    )
    km = faiss.Kmeans(
        d,
        k,
        niter=int(niter),
        nredo=int(nredo),
        seed=int(seed),
        spherical=bool(spherical),
        max_points_per_centroid=mppc,
        min_points_per_centroid=1,
        gpu=gpu,
        verbose=False,
        init_method=method,
    )
    km.train(X)
    Xs = l2_normalize(X) if spherical else X
    _, labels = km.index.search(Xs, 1)
    n_train = min(n, k * mppc)
    return KMeansResult(
        centroids=np.asarray(km.centroids, np.float32),
        labels=labels[:, 0].astype(np.int64),
        objective=float(km.obj[-1]) if km.obj is not None and len(km.obj) else float("nan"),
        n_train=int(n_train),
        params={
            "k": k,
            "niter": int(niter),
            "nredo": int(nredo),
            "seed": int(seed),
            "spherical": bool(spherical),
            "init": init,
            "max_points_per_centroid": mppc,
            "gpu": gpu,
            "faiss_version": faiss.__version__,
            "threads": int(faiss.omp_get_max_threads()),
        },
    )


# ----------------------------------------------------------------------------------------------
# Agreement with true groups (section 14.4)
# ----------------------------------------------------------------------------------------------


def agreement(pred_groups, true_groups, y=None, true_a=None, pred_a=None) -> dict:
    """Adjusted Rand index and purity (embedkit.metrics) of inferred groups against true groups;
    rows with a true group < 0 are left out. With y, true_a and pred_a also minority precision and
    recall [W]: a true-minority row is one whose attribute is not its class's most common one; an
    inferred-minority row is one outside its class's largest inferred group."""
    pred_groups, true_groups = np.asarray(pred_groups), np.asarray(true_groups)
    m = true_groups >= 0
    if not m.any():
        return {"n": 0, "ari": None, "purity": None}
    out = {
        "n": int(m.sum()),
        "ari": metrics.ari(true_groups[m], pred_groups[m]),
        "purity": metrics.purity(true_groups[m], pred_groups[m]),
    }
    if y is not None and true_a is not None and pred_a is not None:
        y, ta, pa = np.asarray(y)[m], np.asarray(true_a)[m], np.asarray(pred_a)[m]
        true_min, pred_min = np.zeros(len(y), bool), np.zeros(len(y), bool)
        for c in np.unique(y):
            r = y == c
            true_min[r] = ta[r] != np.bincount(ta[r]).argmax()
            pred_min[r] = pa[r] != np.bincount(pa[r]).argmax()
        out.update(metrics.minority_precision_recall(true_min, pred_min))
    return out


# ----------------------------------------------------------------------------------------------
# GEORGE (section 14.2)
# ----------------------------------------------------------------------------------------------


def _cluster_score(F, labels, rng, max_rows: int) -> float:
    """GEORGE's k-selection score: the mean over clusters of each cluster's mean silhouette
    (scikit-learn `silhouette_samples`), on at most `max_rows` rows drawn with the infer stream."""
    from sklearn.metrics import silhouette_samples

    idx = (
        np.arange(len(F))
        if len(F) <= max_rows
        else np.sort(rng.choice(len(F), max_rows, replace=False))
    )
    lab = labels[idx]
    if len(np.unique(lab)) < 2:
        return -1.0
    s = silhouette_samples(F[idx], lab)
    return float(np.mean([s[lab == c].mean() for c in np.unique(lab)]))


def _margins(logits, y) -> np.ndarray:
    """m_i = logit_{y_i} - max_{c != y_i} logit_c (the Waterbirds config's 1-d hardness)."""
    L = np.asarray(logits, np.float64)
    own = L[np.arange(len(y)), y]
    other = L.copy()
    other[np.arange(len(y)), y] = -np.inf
    return (own - other.max(axis=1))[:, None]


def _losses(logits, y) -> np.ndarray:
    L = np.asarray(logits, np.float64)
    L = L - L.max(axis=1, keepdims=True)
    return np.log(np.exp(L).sum(axis=1)) - L[np.arange(len(y)), y]


@dataclass
class InferredGroups:
    """Per-class clusters as pseudo-attributes. `a[i]` is row i's cluster within its class, so
    g = y*n_attrs + a numbers the pseudo-groups (section 14.2 step 4)."""

    a: np.ndarray
    y: np.ndarray
    n_attrs: int
    k_per_class: list[int]
    models: (
        list  # per class: (reduce fn, KMeansResult, sub-cluster models | None, label map | None)
    )
    scores: list[dict]  # per class: {k: score}
    sizes: list[list[int]]
    warnings: list[str]
    params: dict

    @property
    def attr_names(self) -> list[str]:
        return [f"cluster{j}" for j in range(self.n_attrs)]

    @property
    def g(self) -> np.ndarray:
        return self.y * self.n_attrs + self.a

    def assign(self, Z, y, logits=None) -> np.ndarray:
        """Pseudo-attributes of new rows (e.g. val): nearest centroid of their class's
        clustering."""
        Z, y = as_float32(Z), np.asarray(y, np.int64)
        out = np.zeros(len(y), np.int64)
        for c, (reduce, km, sub, label_map) in enumerate(self.models):
            r = np.flatnonzero(y == c)
            if r.size == 0 or km is None:
                continue
            F = reduce(Z[r], None if logits is None else np.asarray(logits)[r], y[r])
            base = km.assign(F)
            if sub is None:
                out[r] = base
                continue
            fac = self.params["overcluster_factor"]
            fine = base * fac
            for b, model in enumerate(sub):
                m = base == b
                if model is not None and m.any():
                    fine[m] += model.assign(F[m])
            out[r] = [label_map[int(f)] for f in fine]
        return out


def _reducer(kind: str, F_fit, logits, y, pca_dim: int, normalize: bool):
    """A function (Z, logits, y) -> features for clustering, fitted on one class's rows."""
    if kind == "margin":
        if logits is None:
            raise EmbedkitError(
                "reduce='margin' needs the cache's stored ERM logits (none for this backbone)"
            )
        return lambda Z, L, yy: _margins(L, yy).astype(np.float32)
    if kind == "pca":
        from sklearn.decomposition import PCA

        p = PCA(n_components=min(pca_dim, *F_fit.shape), random_state=0).fit(F_fit)
        post = l2_normalize if normalize else (lambda X: X)
        return lambda Z, L, yy: post(p.transform(Z).astype(np.float32))
    if kind == "none":
        return (lambda Z, L, yy: l2_normalize(Z)) if normalize else (lambda Z, L, yy: Z)
    raise EmbedkitError(f"unknown reduce {kind!r}: choose from {', '.join(REDUCE)}")


def infer_george(
    Z,
    y,
    *,
    logits=None,
    reduce: str = "none",
    pca_dim: int = 2,
    normalize: bool = False,
    k_grid=range(2, 11),
    niter: int = 20,
    n_init: int = 3,
    silhouette_rows: int = 10_000,
    overcluster: bool = False,
    overcluster_factor: int = 5,
    seed: int = 0,
) -> InferredGroups:
    """GEORGE step by step (methods.md 14.2), with FAISS k-means as the clustering backend.

    1. per class y: F_y = reduce(Z[y]) (`none`, `margin` from stored logits, or `pca` to `pca_dim`);
       optional L2 normalisation;
    2. k-means (faiss, `n_init` restarts, all rows) for every k in `k_grid`; k chosen by the mean
       per-cluster silhouette on <= `silhouette_rows` rows, ties to the larger k (as the GEORGE
       code);
    3. optional over-clustering: each cluster split into `overcluster_factor` sub-clusters; a
       sub-cluster is kept only if its silhouette rises above its parent's (and 0), its mean loss
       (CE of the stored logits) is at least its parent's, and it has >= max(0.5 % of the class, 25)
       rows; rows of sub-clusters not kept merge back into their parent's cluster;
    4. a~ = cluster id within the class; pseudo-group = y*n_attrs + a~.
    """
    Z, y = as_float32(Z), np.asarray(y, np.int64)
    if len(Z) != len(y):
        raise EmbedkitError(f"arrays of different lengths: Z has {len(Z)} rows, y has {len(y)}")
    if overcluster and logits is None:
        raise EmbedkitError(
            "over-clustering needs per-row losses from the cache's stored ERM logits (none found)"
        )
    if logits is not None and (
        np.ndim(logits) != 2 or len(logits) != len(y) or np.shape(logits)[1] <= y.max()
    ):
        raise EmbedkitError(
            f"logits of shape {np.shape(logits)} do not score the {int(y.max()) + 1} classes of "
            f"{len(y)} rows (a backbone's own head of another label set?)"
        )
    rng = np.random.default_rng(seed)
    k_grid = sorted({int(k) for k in k_grid})
    a = np.zeros(len(y), np.int64)
    models, scores, sizes, ks, notes = [], [], [], [], []
    for c in range(int(y.max()) + 1 if len(y) else 0):
        r = np.flatnonzero(y == c)
        Lc = None if logits is None else np.asarray(logits)[r]
        if r.size < 2:
            models.append((None, None, None, None))
            scores.append({})
            sizes.append([int(r.size)])
            ks.append(1)
            continue
        reduce_fn = _reducer(reduce, Z[r], Lc, y[r], pca_dim, normalize)
        F = reduce_fn(Z[r], Lc, y[r])
        best, best_score, sc = None, -2.0, {}
        for k in k_grid:
            if k >= len(F):  # silhouette needs fewer clusters than rows
                break
            km = kmeans(F, k, niter=niter, nredo=n_init, seed=seed + c)
            sc[k] = _cluster_score(F, km.labels, rng, silhouette_rows)
            if sc[k] >= best_score:
                best, best_score = km, sc[k]
        if best is None:
            best = kmeans(F, 1, niter=niter, seed=seed + c)
        labels, sub, label_map = best.labels, None, None
        if overcluster:
            labels, sub, label_map = _overcluster(
                F,
                best,
                _losses(Lc, y[r]),
                overcluster_factor,
                niter,
                n_init,
                seed + c,
                rng,
                silhouette_rows,
            )
        a[r] = labels
        count = np.bincount(labels)
        tiny = [int(j) for j in np.flatnonzero(count < max(TINY_ABS, TINY_FRAC * r.size))]
        if tiny:
            notes.append(
                f"class {c}: inferred group(s) {tiny} have fewer than max(25, 0.5% of the class) "
                "rows"
            )
        models.append((reduce_fn, best, sub, label_map))
        scores.append(sc)
        sizes.append(count.tolist())
        ks.append(int(labels.max()) + 1)
    for note in notes:
        warnings.warn(note)
    return InferredGroups(
        a=a,
        y=y,
        n_attrs=max(ks) if ks else 1,
        k_per_class=ks,
        models=models,
        scores=scores,
        sizes=sizes,
        warnings=notes,
        params={
            "reduce": reduce,
            "pca_dim": pca_dim,
            "normalize": normalize,
            "k_grid": k_grid,
            "niter": niter,
            "n_init": n_init,
            "silhouette_rows": silhouette_rows,
            "overcluster": overcluster,
            "overcluster_factor": overcluster_factor,
            "seed": seed,
            "backend": "faiss.Kmeans",
        },
    )


def _overcluster(
    F, base: KMeansResult, losses, fac: int, niter: int, n_init: int, seed: int, rng, max_rows: int
):
    """Section 14.2 step 3 on one class; returns (labels, sub-models per base cluster, label
    map)."""
    from sklearn.metrics import silhouette_samples

    k0 = base.centroids.shape[0]
    fine = np.zeros(len(F), np.int64)
    sub = []
    for b in range(k0):
        r = np.flatnonzero(base.labels == b)
        if r.size < fac:
            sub.append(None)
            fine[r] = b * fac
            continue
        km = kmeans(F[r], fac, niter=niter, nredo=n_init, seed=seed + 1000 + b)
        sub.append(km)
        fine[r] = km.labels + b * fac
    idx = (
        np.arange(len(F))
        if len(F) <= max_rows
        else np.sort(rng.choice(len(F), max_rows, replace=False))
    )
    s_orig = (
        silhouette_samples(F[idx], base.labels[idx])
        if len(np.unique(base.labels[idx])) > 1
        else np.zeros(len(idx))
    )
    s_new = (
        silhouette_samples(F[idx], fine[idx])
        if len(np.unique(fine[idx])) > 1
        else np.zeros(len(idx))
    )
    parent_loss = [losses[base.labels == b].mean() for b in range(k0)]
    counts = np.bincount(fine, minlength=k0 * fac)
    size_min = max(len(F) * TINY_FRAC, TINY_ABS)
    keep = set()
    for j in range(k0 * fac):
        m = fine[idx] == j
        if counts[j] == 0 or not m.any():
            continue
        if (
            s_new[m].mean() > max(s_orig[m].mean(), 0.0)
            and losses[fine == j].mean() >= parent_loss[j // fac]
            and counts[j] >= size_min
        ):
            keep.add(j)
    # Renumber: a parent whose sub-clusters are not all kept keeps one id for its merged rows.
    label_map, nxt = {}, 0
    for b in range(k0):
        members = [b * fac + j for j in range(fac)]
        base_id = None
        if not all(m in keep for m in members):
            base_id, nxt = nxt, nxt + 1
        for m in members:
            if m in keep:
                label_map[m], nxt = nxt, nxt + 1
            else:
                label_map[m] = base_id
    labels = np.array([label_map[int(f)] for f in fine], np.int64)
    return labels, sub, label_map


def task_logits(split):
    """A cache Split's stored logits when they score its own classes, else None (a backbone's own
    head of another label set, e.g. CIFAR-10's 10 classes on a 2-class dataset)."""
    L = split.logits
    return L if L is not None and L.ndim == 2 and L.shape[1] == split.n_classes else None


def george_pseudo_attrs(split, **kwargs) -> np.ndarray:
    """Attribute-like pseudo-labels for a cache Split (its Z, y and stored logits when they score
    its classes): the `a` a head can train on in place of true attributes."""
    return infer_george(split.Z, split.y, logits=task_logits(split), **kwargs).a
