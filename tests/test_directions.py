"""Group-mean directions and the Sigma-norm (specs/methods.md section 7.1-7.2): closed forms from
group means, numpy and torch agreement, and exact Woodbury solves."""

import numpy as np
import pytest
import torch

from embedkit.geometry.directions import (
    Sigma,
    alignment,
    attribute_pair_directions,
    class_core_directions,
    group_means,
    mean_difference_directions,
    pair_differences,
    sigma_norm,
)
from embedkit.errors import EmbedkitError


def _binary(rng, n=200, D=6):
    y = rng.integers(0, 2, n)
    a = rng.integers(0, 2, n)
    Z = rng.normal(size=(n, D)) + 2.0 * y[:, None] * np.eye(D)[0] + 1.5 * a[:, None] * np.eye(D)[1]
    return Z, y, a


def _mask_mean(Z, m):
    return Z[m].mean(0)


def test_directions_equal_closed_form_from_group_means(rng):
    Z, y, a = _binary(rng)
    mu, n = group_means(Z, y, a, 2, 2)
    m = {(i, j): _mask_mean(Z, (y == i) & (a == j)) for i in (0, 1) for j in (0, 1)}
    for i in (0, 1):
        for j in (0, 1):
            np.testing.assert_allclose(mu[i, j], m[i, j], rtol=1e-12)
            assert n[i, j] == ((y == i) & (a == j)).sum()
    # Paper (section 7.1): Delta_spur = E_y[mu(y,1) - mu(y,0)], Delta_core = E_d[mu(1,d) - mu(0,d)].
    d = mean_difference_directions(mu, n, "signed")
    np.testing.assert_allclose(
        d.spurious, 0.5 * ((m[0, 1] - m[0, 0]) + (m[1, 1] - m[1, 0])), rtol=1e-12
    )
    np.testing.assert_allclose(
        d.core, 0.5 * ((m[1, 0] - m[0, 0]) + (m[1, 1] - m[0, 1])), rtol=1e-12
    )
    # Code (section 7.2 step 4), groups G0..G3 = (0,0), (0,1), (1,0), (1,1).
    G = [m[0, 0], m[0, 1], m[1, 0], m[1, 1]]
    dsp = 0.5 * (abs(G[1] - G[0]) + abs(G[3] - G[2]))
    dc = 0.5 * (abs(G[2] - G[0]) + abs(G[3] - G[1]))
    u = mean_difference_directions(mu, n, "abs", normalize=True)
    np.testing.assert_allclose(u.spurious, dsp / (np.linalg.norm(dsp) + 1e-6), rtol=1e-12)
    np.testing.assert_allclose(u.core, dc / (np.linalg.norm(dc) + 1e-6), rtol=1e-12)
    # The planted axes are recovered: core along e0, spurious along e1.
    assert abs(d.core[0]) > 1.5 and abs(d.spurious[1]) > 1.0


def test_torch_path_matches_numpy_and_is_differentiable(rng):
    Z, y, a = _binary(rng, n=40, D=5)
    mu, n = group_means(Z, y, a, 2, 2)
    Zt = torch.tensor(Z, requires_grad=True)
    mut, nt = group_means(Zt, torch.tensor(y), torch.tensor(a), 2, 2)
    np.testing.assert_array_equal(n, nt)
    for mode in ("signed", "abs"):
        dn = mean_difference_directions(mu, n, mode, normalize=True)
        dt = mean_difference_directions(mut, nt, mode, normalize=True)
        np.testing.assert_allclose(dt.core.detach().numpy(), dn.core, rtol=1e-12)
        np.testing.assert_allclose(dt.spurious.detach().numpy(), dn.spurious, rtol=1e-12)

    def f(Zv):
        mu_, n_ = group_means(Zv, y, a, 2, 2)
        d = mean_difference_directions(mu_, n_, "abs", normalize=True)
        S = Sigma.code_shrunk(Zv)
        beta = S.solve(d.core, d.spurious, 0.4)
        return (beta @ d.spurious) / S.norm(beta)

    assert torch.autograd.gradcheck(f, (Zt,), eps=1e-6, atol=1e-6)


def test_empty_groups_and_unknown_attributes_are_skipped(rng):
    Z, y, a = _binary(rng, n=120, D=4)
    a = a.copy()
    a[(y == 1) & (a == 0)] = -1  # group (1,0) empty, its rows unknown
    mu, n = group_means(Z, y, a, 2, 2)
    assert n[1, 0] == 0 and np.isnan(mu[1, 0]).all()
    d = mean_difference_directions(mu, n, "signed")
    np.testing.assert_allclose(d.spurious, mu[0, 1] - mu[0, 0])  # only class 0 has both
    np.testing.assert_allclose(d.core, mu[1, 1] - mu[0, 1])  # only attribute 1 has both
    diffs, pairs = pair_differences(mu, n, "core")
    assert pairs.tolist() == [[1, 0, 1]]
    with pytest.raises(EmbedkitError, match="spurious pair"):
        mean_difference_directions(mu, np.array([[5, 0], [7, 0]]), "signed")


def test_multiclass_directions(rng):
    C, A, D = 3, 3, 4
    y = np.repeat(np.arange(C), 30)
    a = np.tile(np.arange(A), 30)
    Z = rng.normal(size=(len(y), D))
    mu, n = group_means(Z, y, a, C, A)
    core = class_core_directions(mu, n)
    for j in range(C):
        want = np.mean([mu[j, d] - mu[k, d] for d in range(A) for k in range(C) if k != j], axis=0)
        np.testing.assert_allclose(core[j], want, rtol=1e-12)
    sp, keys = attribute_pair_directions(mu, n)
    assert keys.tolist() == [[0, 1], [0, 2], [1, 2]]
    np.testing.assert_allclose(
        sp[1], np.mean([mu[k, 2] - mu[k, 0] for k in range(C)], axis=0), rtol=1e-12
    )
    # Binary reduction: row 1 is Delta_core, row 0 its negative.
    Zb, yb, ab = _binary(rng)
    mub, nb = group_means(Zb, yb, ab, 2, 2)
    cb = class_core_directions(mub, nb)
    dc = mean_difference_directions(mub, nb).core
    np.testing.assert_allclose(cb[1], dc, rtol=1e-12)
    np.testing.assert_allclose(cb[0], -dc, rtol=1e-12)


@pytest.mark.parametrize("n", [12, 50])  # factored (n < D) and dense (n >= D) paths
def test_code_shrunk_sigma_and_solves(rng, n):
    D = 20
    Z = rng.normal(size=(n, D)) * np.linspace(0.5, 2.0, D)
    C = np.cov(Z, rowvar=False, ddof=1)
    want = np.eye(D) + 0.1 * C / (np.linalg.norm(C) + 1e-6)
    S = Sigma.code_shrunk(Z)
    np.testing.assert_allclose(S.dense(), want, rtol=1e-12, atol=1e-14)
    v = rng.normal(size=(3, D))
    np.testing.assert_allclose(S.quad(v), np.einsum("id,de,ie->i", v, want, v), rtol=1e-12)
    np.testing.assert_allclose(sigma_norm(v, S), sigma_norm(v, want), rtol=1e-12)
    u, rhs = rng.normal(size=D), rng.normal(size=D)
    np.testing.assert_allclose(
        S.solve(rhs, u, 0.3),
        np.linalg.solve(want + 0.3 * np.outer(u, u), rhs),
        rtol=1e-9,
        atol=1e-12,
    )
    np.testing.assert_allclose(S.solve(rhs), np.linalg.solve(want, rhs), rtol=1e-9, atol=1e-12)


def test_within_ridge_sigma(rng):
    Z, y, a = _binary(rng, n=60, D=8)
    S = Sigma.within_ridge(Z, y, a, 2, 2, ridge=0.05)
    mu, _ = group_means(Z, y, a, 2, 2)
    R = Z - mu[y, a]
    Sw = R.T @ R / (len(Z) - 4)
    np.testing.assert_allclose(S.dense(), Sw + 0.05 * np.trace(Sw) / 8 * np.eye(8), rtol=1e-12)


def test_alignment_is_sigma_cosine(rng):
    D = 6
    Z = rng.normal(size=(30, D))
    S = Sigma.code_shrunk(Z)
    M = S.dense()
    beta, delta = rng.normal(size=(2, D)), rng.normal(size=D)
    cors = [b @ delta / np.sqrt(b @ M @ b) / np.sqrt(delta @ M @ delta) for b in beta]
    np.testing.assert_allclose(alignment(beta, delta, S), np.mean(cors), rtol=1e-12)
    np.testing.assert_allclose(alignment(3.0 * beta[0], delta, M), cors[0], rtol=1e-12)
    assert (
        abs(alignment(delta, delta, np.eye(D)) - 1.0) < 1e-12
    )  # Euclidean numerator: 1 only for I
