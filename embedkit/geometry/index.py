"""The FAISS index every nearest-neighbour query in embedkit goes through (ecosystem-notes section
4).

Exact search (`IndexFlatIP` / `IndexFlatL2`) is the default: worst-group analysis wants the true
neighbours. Above `ivf_threshold` rows (one million by default) an `IndexIVFFlat` is built instead
and its recall against exact search is measured on a sample of the rows and kept in `recall_`, so an
approximate answer is never silent. GPU indexes are used when `faiss.get_num_gpus() > 0` (and
`use_gpu` is not False); otherwise everything runs on the CPU.

Metrics: "ip" (inner product, larger is closer), "cosine" (inner product of L2-normalised rows),
"l2" (faiss reports *squared* Euclidean distances, smaller is closer).
"""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError

METRICS = ("ip", "cosine", "l2")
IVF_THRESHOLD = 1_000_000
# faiss GPU flat and IVF search refuse k (and nprobe) above this.
GPU_MAX_K = 2048


def _faiss():
    try:
        import faiss
    except ImportError:  # pragma: no cover - faiss is a dependency
        raise EmbedkitError(
            "faiss is not installed: pip install faiss-cpu (or faiss-gpu on Linux x86_64)"
        ) from None
    return faiss


def gpu_available() -> bool:
    return _faiss().get_num_gpus() > 0


def as_float32(X, what: str = "embeddings") -> np.ndarray:
    X = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    if X.ndim != 2:
        raise EmbedkitError(f"{what} must be a 2-D matrix, got shape {X.shape}")
    if not np.isfinite(X).all():
        row = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
        raise EmbedkitError(f"{what}: non-finite value in row {row}")
    return X


def l2_normalize(X: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(X, axis=1, keepdims=True)
    return (X / np.maximum(n, 1e-12)).astype(np.float32)


class Index:
    """Nearest-neighbour search over the rows of `X` [N, D].

    ivf_threshold: N above which an IVF index replaces exact search (a parameter so tests can
        exercise IVF on small data). nlist defaults to about 4*sqrt(N); nprobe to nlist/8 (at
        least 1).
    recall_queries: rows used to measure the IVF index's recall@k against exact search.
    use_gpu: None = GPU when faiss sees one, False = CPU, True = GPU or an error.
    """

    def __init__(
        self,
        X,
        metric: str = "cosine",
        *,
        ivf_threshold: int = IVF_THRESHOLD,
        nlist: int | None = None,
        nprobe: int | None = None,
        use_gpu: bool | None = None,
        seed: int = 0,
        recall_queries: int = 1000,
        recall_k: int = 10,
    ):
        if metric not in METRICS:
            raise EmbedkitError(f"unknown metric {metric!r}: choose from {', '.join(METRICS)}")
        faiss = _faiss()
        X = as_float32(X)
        if metric == "cosine":
            X = l2_normalize(X)
        self.metric, self.n, self.dim = metric, X.shape[0], X.shape[1]
        if self.n == 0:
            raise EmbedkitError("cannot build a nearest-neighbour index over zero rows")
        if use_gpu and not gpu_available():
            raise EmbedkitError("use_gpu=True but faiss sees no GPU")
        self.on_gpu = bool(gpu_available() if use_gpu is None else use_gpu)
        self.kind = "ivf" if self.n > ivf_threshold else "flat"
        self.recall_ = None
        fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        flat = faiss.IndexFlatL2(self.dim) if metric == "l2" else faiss.IndexFlatIP(self.dim)
        if self.kind == "flat":
            index = flat
        else:
            self.nlist = int(nlist or max(1, min(int(4 * np.sqrt(self.n)), self.n // 39)))
            self.nprobe = int(nprobe or max(1, self.nlist // 8))
            index = faiss.IndexIVFFlat(flat, self.dim, self.nlist, fmetric)
            # faiss's own rule: about 256 training points per list are plenty.
            rng = np.random.default_rng(seed)
            n_train = min(self.n, 256 * self.nlist)
            train = (
                X if n_train == self.n else X[np.sort(rng.choice(self.n, n_train, replace=False))]
            )
            index.cp.seed = int(seed)
            index.train(train)
            index.nprobe = self.nprobe
        if self.on_gpu:
            self._res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._res, 0, index)
            if self.kind == "ivf":
                faiss.GpuParameterSpace().set_index_parameter(
                    index, "nprobe", min(self.nprobe, GPU_MAX_K)
                )
        index.add(X)
        self._index, self._stored = index, X
        if self.kind == "ivf":
            self.recall_ = self._measure_recall(X, recall_queries, recall_k, seed)

    @property
    def larger_is_closer(self) -> bool:
        return self.metric != "l2"

    def _prepare(self, Q) -> np.ndarray:
        Q = as_float32(Q, "queries")
        if Q.shape[1] != self.dim:
            raise EmbedkitError(
                f"queries have dimension {Q.shape[1]}, the index holds {self.dim}-d rows"
            )
        return l2_normalize(Q) if self.metric == "cosine" else Q

    def search(self, Q, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores [nq, k], indices [nq, k]) best first; index -1 where fewer than k rows exist."""
        k = int(k)
        if k < 1:
            raise EmbedkitError(f"k must be at least 1, got {k}")
        if self.on_gpu and k > GPU_MAX_K:
            raise EmbedkitError(
                f"k={k} is above the faiss GPU limit of {GPU_MAX_K}; pass use_gpu=False"
            )
        Q = self._prepare(Q)
        if len(Q) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        D, I = self._index.search(Q, k)
        return D, I.astype(np.int64)

    def search_self(self, k: int, rows=None) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest *other* indexed rows of the indexed rows `rows` (default: all of them).

        Searches k+1 and drops the row's own id; when duplicates push the row out of its own top
        k+1, the last hit is dropped instead, so every row gets exactly k neighbours.
        """
        k = int(k)
        if k >= self.n:
            raise EmbedkitError(
                f"k={k} neighbours requested but the index holds only {self.n} rows"
            )
        rows = np.arange(self.n) if rows is None else np.asarray(rows, np.int64)
        D, I = self.search(self._stored[rows], k + 1)
        own = I == rows[:, None]
        drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
        keep = np.ones_like(own)
        keep[np.arange(len(rows)), drop] = False
        return D[keep].reshape(len(rows), k), I[keep].reshape(len(rows), k)

    def _measure_recall(self, X, n_queries: int, k: int, seed: int) -> dict:
        faiss = _faiss()
        rng = np.random.default_rng(seed + 1)
        q = np.sort(rng.choice(self.n, min(n_queries, self.n), replace=False))
        k = min(k, self.n)
        exact = faiss.IndexFlatL2(self.dim) if self.metric == "l2" else faiss.IndexFlatIP(self.dim)
        exact.add(X)
        _, I_exact = exact.search(X[q], k)
        _, I_ivf = self._index.search(X[q], k)
        hits = [len(np.intersect1d(a, b[b >= 0])) for a, b in zip(I_exact, I_ivf)]
        return {
            "recall_at_k": float(np.mean(hits) / k),
            "k": int(k),
            "n_queries": int(len(q)),
            "nlist": self.nlist,
            "nprobe": self.nprobe,
        }

    def describe(self) -> dict:
        """What was built, for JSON summaries."""
        out = {
            "kind": self.kind,
            "metric": self.metric,
            "n": self.n,
            "dim": self.dim,
            "device": "gpu" if self.on_gpu else "cpu",
            "faiss_version": _faiss().__version__,
        }
        if self.recall_ is not None:
            out["recall"] = self.recall_
        return out


def knn(X, Q, k: int, metric: str = "cosine", **index_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """k nearest rows of X for every row of Q: (scores, indices), through `Index`."""
    return Index(X, metric, **index_kwargs).search(Q, k)
