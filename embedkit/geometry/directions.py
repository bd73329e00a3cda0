"""Group-mean spurious and core directions and the Sigma-norm (specs/methods.md section 7.1-7.4).

The one implementation of these quantities: the SCER head regularises with them and the analysis
commands report them. Every function takes numpy arrays or torch tensors (then it stays
differentiable, which SCER's projection variant needs: the loss back-propagates through the
group means, the directions and Sigma).

Symbols follow the SCER paper (arXiv:2511.04401) as summarised in the spec:
- group mean mu_(y,d) = E[x | y, d], d the spurious attribute ("domain");
- spurious difference (same class, different domains) Delta_spur^(y) = mu_(y,d_i) - mu_(y,d_j),
  Delta_spur = E_y[Delta_spur^(y)];
- core difference (same domain, different classes) Delta_core^(d) = mu_(y_i,d) - mu_(y_j,d),
  Delta_core = E_d[Delta_core^(d)];
- ||v||_Sigma = sqrt(v^T Sigma v); cor(beta, Delta) = <beta, Delta> / (||beta||_Sigma
  ||Delta||_Sigma).
Pairs are oriented "larger index minus smaller index" (a < a', y < y'), so on binary data the core
direction points from class 0 to class 1 and the spurious one from attribute 0 to attribute 1.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from embedkit.errors import EmbedkitError

# The released code's guard in every normalisation: delta / (||delta||_2 + 1e-6), Sigma's
# ||C||_F + 1e-6 (spec section 7.2 steps 1 and 4).
EPS = 1e-6
# Sigma = I + SHRINK * C / ||C||_F in the released code (spec section 7.2 step 1).
SHRINK = 0.1


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _xp(x):
    if _is_torch(x):
        import torch

        return torch
    return np


def _linalg(x):
    return _xp(x).linalg


class Directions(NamedTuple):
    core: object  # [D] (or [C, D] per class)
    spurious: object  # [D] (or [P, D] per attribute pair)


# ----------------------------------------------------------------------------------------------
# Group means and pairwise differences
# ----------------------------------------------------------------------------------------------


def group_means(Z, y, a, C: int, A: int):
    """mu_(y,a) for every class y < C and attribute a < A.

    Returns (mu [C, A, D], counts [C, A]); an empty group has a NaN row and count 0 (every
    function below skips it). Rows with a = -1 (unknown attribute) are ignored.
    """
    xp = _xp(Z)
    y, a = np.asarray(_to_numpy(y), np.int64), np.asarray(_to_numpy(a), np.int64)
    if Z.ndim != 2 or len(y) != Z.shape[0] or len(a) != Z.shape[0]:
        raise EmbedkitError(
            f"group_means: Z {tuple(Z.shape)}, y {y.shape}, a {a.shape} do not match"
        )
    if len(y) and (y.min() < 0 or y.max() >= C or a.max(initial=-1) >= A):
        raise EmbedkitError(f"group_means: labels out of range for C={C}, A={A}")
    known = a >= 0
    g = (y * A + a)[known]
    counts = np.bincount(g, minlength=C * A)
    if xp is np:
        Zk = np.asarray(Z)[known]
        order = np.argsort(g, kind="stable")
        sums = np.zeros((C * A, Z.shape[1]), dtype=np.result_type(Z.dtype, np.float32))
        present = np.flatnonzero(counts)
        if len(order):
            starts = np.concatenate([[0], np.cumsum(counts[present])[:-1]])
            sums[present] = np.add.reduceat(Zk[order], starts, axis=0)
        mu = sums / np.maximum(counts, 1)[:, None]
        mu[counts == 0] = np.nan
    else:
        idx = xp.as_tensor(np.flatnonzero(known), device=Z.device)
        gt = xp.as_tensor(g, device=Z.device)
        sums = xp.zeros(C * A, Z.shape[1], dtype=Z.dtype, device=Z.device).index_add(0, gt, Z[idx])
        mu = sums / xp.as_tensor(np.maximum(counts, 1), dtype=Z.dtype, device=Z.device)[:, None]
        mu = xp.where(xp.as_tensor(counts > 0, device=Z.device)[:, None], mu, float("nan"))
    return mu.reshape(C, A, Z.shape[1]), counts.reshape(C, A)


def pair_differences(mu, counts, kind: str):
    """Every signed pairwise mean difference of one kind, over groups present.

    kind "spurious": mu_(y,a') - mu_(y,a) for each class y and a < a' (same class, different
    domains); kind "core": mu_(y',a) - mu_(y,a) for each attribute a and y < y' (same domain,
    different classes), which is "spurious" on the class/attribute-transposed means.
    Returns (diffs [P, D], pairs [P, 3] int: (y, a, a') or (a, y, y')).
    """
    counts = np.asarray(counts)
    if kind == "core":
        mu, counts = mu.swapaxes(0, 1), counts.T
    elif kind != "spurious":
        raise EmbedkitError(f"pair_differences: kind must be 'spurious' or 'core', not {kind!r}")
    outer, inner = counts.shape
    pairs, rows = [], []
    for o in range(outer):
        for i in range(inner):
            for j in range(i + 1, inner):
                if counts[o, i] and counts[o, j]:
                    pairs.append((o, i, j))
                    rows.append(mu[o, j] - mu[o, i])
    if not rows:
        return None, np.zeros((0, 3), np.int64)
    return _xp(mu).stack(rows), np.asarray(pairs, np.int64)


def unit(v):
    """delta / (||delta||_2 + 1e-6) along the last axis (the released code's normalisation)."""
    return v / (((v * v).sum(-1, keepdims=True)) ** 0.5 + EPS)


def mean_difference_directions(
    mu, counts, mode: str = "signed", normalize: bool = False
) -> Directions:
    """(Delta_core, Delta_spur) [D] each, the mean over all pairs present of `pair_differences`.

    mode "signed": the paper's Delta_spur = E_y[mu_(y,1) - mu_(y,0)] and Delta_core
      = E_d[mu_(1,d) - mu_(0,d)] on binary data (spec section 7.1);
    mode "abs": the released code's element-wise absolute values before averaging (spec section 7.2
      step 4): delta_sp = 1/2(|mu_1 - mu_0| + |mu_3 - mu_2|), delta_c = 1/2(|mu_2 - mu_0| + |mu_3 -
      mu_1|) with mu_g, g = y*2 + a.
    normalize: delta <- delta / (||delta||_2 + 1e-6).
    """
    if mode not in ("signed", "abs"):
        raise EmbedkitError(f"direction_mode must be 'signed' or 'abs', not {mode!r}")
    out = []
    for kind in ("core", "spurious"):
        diffs, _ = pair_differences(mu, counts, kind)
        if diffs is None:
            raise EmbedkitError(
                f"no {kind} pair of non-empty groups: the {kind} direction needs two groups "
                f"that differ only in {'class' if kind == 'core' else 'attribute'}"
            )
        d = (abs(diffs) if mode == "abs" else diffs).mean(0)
        out.append(unit(d) if normalize else d)
    return Directions(*out)


def class_core_directions(mu, counts, normalize: bool = False):
    """Delta_c^(j) [C, D]: for each class j, the mean over domains d and classes y' != j (both
    groups present) of the core difference mu_(j,d) - mu_(y',d). Binary: row 1 = Delta_core, row 0 =
    -Delta_core.
    A class without any such pair gets a zero row."""
    counts = np.asarray(counts)
    C, A = counts.shape
    rows = []
    for j in range(C):
        diffs = [
            mu[j, d] - mu[k, d]
            for d in range(A)
            for k in range(C)
            if k != j and counts[j, d] and counts[k, d]
        ]
        rows.append(_xp(mu).stack(diffs).mean(0) if diffs else _xp(mu).zeros_like(mu[0, 0]))
    out = _xp(mu).stack(rows)
    return unit(out) if normalize else out


def attribute_pair_directions(mu, counts, normalize: bool = False):
    """Delta_spur^(a,a') [P, D] = E_y[mu_(y,a') - mu_(y,a)] over classes with both groups present,
    one row per attribute pair a < a' that has any (binary: the single row Delta_spur). Returns
    (dirs, pairs [P, 2])."""
    diffs, pairs = pair_differences(mu, counts, "spurious")
    if diffs is None:
        raise EmbedkitError(
            "no spurious pair of non-empty groups: every class has a single attribute value"
        )
    keys = sorted({(int(i), int(j)) for _, i, j in pairs})
    rows = [diffs[np.flatnonzero((pairs[:, 1] == i) & (pairs[:, 2] == j))].mean(0) for i, j in keys]
    out = _xp(mu).stack(rows)
    return (unit(out) if normalize else out), np.asarray(keys, np.int64)


# ----------------------------------------------------------------------------------------------
# Sigma and the Sigma-norm
# ----------------------------------------------------------------------------------------------


class Sigma:
    """Sigma = r*I + c * G^T G with G [m, D], kept in factored form when m < D (else dense).

    `code_shrunk` is the released code's Sigma = I + 0.1 * C / (||C||_F + 1e-6), C the unbiased
    covariance (spec section 7.2 step 1): G = centred rows / sqrt(n - 1), c = 0.1 / (||C||_F +
    1e-6), r = 1. On a minibatch of B << D rows it is a rank-(B-1) update of I, so solves use the
    Woodbury identity on a (B+1) x (B+1) system (exact, and differentiable in torch).
    `within_ridge` [W, embedkit option of section 7.3]: the pooled within-group covariance (the
    shared Sigma of the paper's Theorem 1) plus ridge * tr(S_w)/D * I.
    """

    def __init__(self, G, c: float = 1.0, r: float = 1.0, gram=None):
        self.G, self.c, self.r = G, c, r
        m, D = G.shape
        # gram = G G^T [m, m] when the caller has it already (code_shrunk needs it for ||C||_F).
        self._gram = gram
        self._dense = self._make_dense() if m >= D else None

    @classmethod
    def code_shrunk(cls, Z) -> Sigma:
        n, D = Z.shape
        if n < 2:
            raise EmbedkitError("Sigma: needs at least 2 rows for a covariance")
        Xc = (Z - Z.mean(0, keepdims=True)) / (n - 1) ** 0.5  # C = Xc^T Xc
        gram = Xc @ Xc.T if n <= D else Xc.T @ Xc  # same nonzero spectrum
        fro = ((gram * gram).sum()) ** 0.5
        scale = SHRINK / (fro + EPS)
        if n > D:  # gram is C itself
            return cls.from_dense(_eye_like(gram) + scale * gram)
        return cls(Xc, scale, 1.0, gram=gram)

    @classmethod
    def from_dense(cls, M) -> Sigma:
        """A Sigma given as a dense symmetric positive-definite [D, D] matrix."""
        obj = cls.__new__(cls)
        obj.G, obj.c, obj.r, obj._gram, obj._dense = None, None, None, None, M
        return obj

    @classmethod
    def within_ridge(cls, Z, y, a, C: int, A: int, ridge: float = 1e-2) -> Sigma:
        mu, counts = group_means(Z, y, a, C, A)
        y, a = np.asarray(_to_numpy(y)), np.asarray(_to_numpy(a))
        known = np.flatnonzero(a >= 0)
        n_groups = int((counts > 0).sum())
        if len(known) - n_groups < 1:
            raise EmbedkitError("Sigma within_ridge: needs more rows than groups")
        R = (Z[known] - mu.reshape(C * A, -1)[(y * A + a)[known]]) / (len(known) - n_groups) ** 0.5
        r = ridge * float(_to_numpy((R * R).sum())) / Z.shape[1]  # a constant scale, no gradient
        if r <= 0:
            raise EmbedkitError("Sigma within_ridge: zero within-group variance; ridge must be > 0")
        return cls(R, 1.0, r)

    def _make_dense(self):
        return self.r * _eye_like(self.G.T) + self.c * (self.G.T @ self.G)

    def dense(self):
        return self._dense if self._dense is not None else self._make_dense()

    def quad(self, v):
        """v^T Sigma v for each row of v [..., D]."""
        if self._dense is not None:
            return ((v @ self._dense) * v).sum(-1)
        Gv = v @ self.G.T
        return self.r * (v * v).sum(-1) + self.c * (Gv * Gv).sum(-1)

    def norm(self, v):
        """||v||_Sigma = sqrt(v^T Sigma v) for each row of v."""
        return self.quad(v) ** 0.5

    def solve(self, rhs, u=None, a0: float = 0.0):
        """(Sigma + a0 u u^T)^{-1} rhs for a vector rhs [D] (u [D] optional)."""
        la, xp = _linalg(rhs), _xp(rhs)
        if self._dense is not None:
            M = self._dense if u is None else self._dense + a0 * _outer(u, u)
            return la.solve(M, rhs[:, None])[:, 0]
        # Woodbury with Sigma + a0 u u^T = r I + M M^T, M = [sqrt(c) G^T, sqrt(a0) u] (never
        # formed).
        G, sc = self.G, self.c**0.5
        gram = self._gram if self._gram is not None else G @ G.T
        Mt_rhs = sc * (G @ rhs)
        MtM = self.c * gram
        if u is not None:
            su = (a0**0.5) * u
            Gu = (sc * (G @ su))[:, None]
            MtM = xp.concatenate(
                [xp.concatenate([MtM, Gu], 1), xp.concatenate([Gu.T, (su @ su).reshape(1, 1)], 1)],
                0,
            )
            Mt_rhs = xp.concatenate([Mt_rhs, (su @ rhs).reshape(1)])
        w = la.solve(self.r * _eye_like(MtM) + MtM, Mt_rhs[:, None])[:, 0]
        m = G.shape[0]
        Mw = sc * (w[:m] @ G) + (0 if u is None else w[m] * su)
        return (rhs - Mw) / self.r


def sigma_norm(v, sigma):
    """||v||_Sigma for each row of v; `sigma` is a Sigma or a dense [D, D] matrix."""
    if isinstance(sigma, Sigma):
        return sigma.norm(v)
    return (((v @ sigma) * v).sum(-1)) ** 0.5


def alignment(beta, delta, sigma):
    """cor(beta, Delta) = <beta, Delta> / (||beta||_Sigma ||Delta||_Sigma); for an m-row classifier
    beta [m, D] the mean over rows (spec section 7.1)."""
    beta = beta[None] if beta.ndim == 1 else beta
    cors = (beta @ delta) / (sigma_norm(beta, sigma) * sigma_norm(delta[None], sigma)[0])
    return cors.mean()


def _eye_like(M):
    """Identity of size M.shape[0] with M's dtype (and device)."""
    kw = {"device": M.device} if _is_torch(M) else {}
    return _xp(M).eye(M.shape[0], dtype=M.dtype, **kw)


def _outer(u, v):
    return u[:, None] * v[None, :]


def _to_numpy(x):
    return x.detach().cpu().numpy() if _is_torch(x) else x
