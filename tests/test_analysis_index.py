"""The FAISS index wrapper against brute-force numpy search (the only place numpy search is allowed:
as the reference, ecosystem-notes section 4)."""

import faiss
import numpy as np
import pytest

from embedkit.geometry.index import Index, knn
from embedkit.errors import EmbedkitError


def brute(X, Q, k, metric):
    """Reference search: full score matrix, stable sort."""
    X, Q = X.astype(np.float64), Q.astype(np.float64)
    if metric == "cosine":
        X = X / np.linalg.norm(X, axis=1, keepdims=True)
        Q = Q / np.linalg.norm(Q, axis=1, keepdims=True)
    if metric == "l2":
        S = (Q**2).sum(1)[:, None] + (X**2).sum(1)[None] - 2 * Q @ X.T
        order = np.argsort(S, axis=1, kind="stable")[:, :k]
    else:
        S = Q @ X.T
        order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(S, order, 1), order


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(2000, 24)).astype(np.float32), rng.normal(size=(50, 24)).astype(
        np.float32
    )


@pytest.mark.parametrize("metric", ["ip", "l2", "cosine"])
def test_flat_search_equals_brute_force(data, metric):
    X, Q = data
    S, I = Index(X, metric).search(Q, 7)
    S_ref, I_ref = brute(X, Q, 7, metric)
    np.testing.assert_array_equal(I, I_ref)
    np.testing.assert_allclose(S, S_ref, rtol=1e-4, atol=1e-4)
    assert Index(X, metric).kind == "flat" and Index(X, metric).recall_ is None


def test_knn_helper_and_self_search(data):
    X, _ = data
    S, I = knn(X, X[:5], 3, "l2")
    assert (I[:, 0] == np.arange(5)).all()  # each row is its own nearest neighbour
    _, I_self = Index(X, "l2").search_self(3, rows=np.arange(5))
    np.testing.assert_array_equal(I_self, brute(X, X[:5], 4, "l2")[1][:, 1:])


def test_self_search_with_duplicates_keeps_k_other_rows():
    X = np.array([[0, 0], [0, 0], [0, 0], [5, 5]], np.float32)
    _, I = Index(X, "l2").search_self(2)
    for r in range(3):
        assert r not in I[r] and set(I[r]) <= {0, 1, 2}
    assert I.shape == (4, 2)


def test_ivf_recall_is_reported_and_exact_when_every_list_is_probed(data):
    X, Q = data
    ivf = Index(X, "l2", ivf_threshold=1000, nlist=16, nprobe=16)
    assert ivf.kind == "ivf"
    rec = ivf.describe()["recall"]
    assert rec["recall_at_k"] == 1.0 and rec["nlist"] == 16 and rec["n_queries"] == 1000
    np.testing.assert_array_equal(ivf.search(Q, 5)[1], brute(X, Q, 5, "l2")[1])


def test_ivf_recall_measures_the_approximation(data):
    X, Q = data
    ivf = Index(X, "ip", ivf_threshold=1000, nlist=32, nprobe=1, recall_queries=300)
    # Recompute the recall on the same rows independently with the numpy reference.
    rng = np.random.default_rng(1)  # the wrapper's recall rows: seed + 1
    q = np.sort(rng.choice(len(X), 300, replace=False))
    hits = [
        len(np.intersect1d(a, b))
        for a, b in zip(brute(X, X[q], 10, "ip")[1], ivf.search(X[q], 10)[1])
    ]
    assert ivf.recall_["recall_at_k"] == pytest.approx(np.mean(hits) / 10)
    assert (
        ivf.recall_["recall_at_k"] < 1.0
    )  # one probed list of 32 misses neighbours on Gaussian data


def test_bad_input_names_the_problem(data):
    X, Q = data
    bad = X.copy()
    bad[3, 1] = np.nan
    with pytest.raises(EmbedkitError, match="row 3"):
        Index(bad)
    with pytest.raises(EmbedkitError, match="dimension"):
        Index(X).search(Q[:, :5], 2)
    with pytest.raises(EmbedkitError, match="metric"):
        Index(X, "manhattan")
    with pytest.raises(EmbedkitError, match="only 3 rows"):
        Index(X[:3]).search_self(3)


@pytest.mark.skipif(faiss.get_num_gpus() == 0, reason="faiss sees no GPU")
def test_gpu_index_matches_cpu(data):
    X, Q = data
    gpu = Index(X, "ip", use_gpu=True)
    assert gpu.on_gpu
    np.testing.assert_array_equal(
        gpu.search(Q, 5)[1], Index(X, "ip", use_gpu=False).search(Q, 5)[1]
    )
