"""IPG — Invariance Pair Guidance (methods spec section 10).  RECONSTRUCTED.

Published (paper arXiv:2502.18975, abstract level only) [P]: invariance pairs (inputs that differ only
in the spurious attribute and share the label); a corrective gradient computed from the pairs
complements ordinary mini-batch gradient descent ("dual update"); the correction is adaptive and
governed by a predefined invariance condition. No equations, code or hyperparameters are published.

Everything below is embedkit's reconstruction [R] (spec 10.2-10.3), every choice a parameter:

- pair set P = {(z_i, z_i')}, i = 1..M, same label y_i, built in embedding space:
  `pairs="nn"` (P1): anchor i's partner j* = argmin_{j: y_j = y_i, a_j != a_i} cosine distance on
  L2-normalised Z (exact FAISS search), mutual nearest neighbours kept, optional cap `M`;
  `pairs="mean_shift"` (P2): u_y = mu_{y,a=1} - mu_{y,a=0} from the labelled rows,
  z' = z - (a_i - a') u_y (more than two attribute values: z' = z + mu_{y,a'} - mu_{y,a_i}, a' drawn
  among the class's other attribute values [W]).
  (P3 pseudo-attributes and P4 true counterfactuals come from group inference and the data pipeline:
  pass their pairs through `pairs=(Zp, Zq)`.)
- discrepancy D(theta; P_b): `sym_kl` (default) = (1/|P_b|) sum_i 1/2 [KL(p_i||p_i') + KL(p_i'||p_i)],
  p_i = softmax(h_theta(z_i)); `logit_mse` = (1/|P_b|) sum_i ||h(z_i) - h(z_i')||^2; `tv` total variation;
- invariance condition C(theta): D(theta; P_b) <= eps (and, with `eps_agree`, argmax agreement >= 1 - eps_agree);
- dual update `sequential` (default): (1) theta' = OptStep(theta, grad L_task(theta; B)); (2) if the condition
  fails at theta': theta <- theta' - eta lambda_t g_c, g_c = grad D(theta'; P_b),
  lambda_t = lambda min(1, (D - eps)/eps) (`soft`) or lambda (`hard`), g_c rescaled to ||grad L_task|| when
  `norm_match`; else theta <- theta'. `joint`: one step on grad L_task + lambda_t grad D (gated by C);
  `project` (PCGrad-style): when C fails and <grad L_task, g_c> < 0 the task gradient loses its component
  along g_c, then the joint step.
- OptStep is the `erm` head's optimiser (the shared trainer's SGD, momentum 0.9, weight decay on weights
  only, constant LR eta, same init and batches: eps = inf is `erm` bit for bit); the corrective step is
  plain SGD with the same eta. The lr x wd grid is trained at once (vectorised over configs) and selected
  by the label regime's rule; the fraction of corrected steps (and the mean D) is logged in every history
  record under "ipg" (the spec expects it to decay; on the real ResNet-20 caches it stays near 1 with
  eps = 0.01: the task step keeps re-learning the attribute and the correction keeps removing it).

Defaults [R]: P2 pairs from train, sym-KL, `soft`, no norm-match, `sequential` (the spec's defaults),
pair batch Bp = 128; eps in {0.01, 0.05, 0.1} x lambda in {0.1, 1, 10} (the spec's grid) trained at
once with the shared trainer's lr x wd grid and selected on val by the regime rule; task batch and
budget are the shared trainer's (1,000 steps, evaluation every 100; the spec's SGD budget is 5,000 /
250). P1 pairs help less on the real ResNet-20 caches: few mutual pairs exist (13 / 83 / 79 on
colored_mnist / waterbirds_like / dominoes, where colour or background dominates the neighbourhoods).

Every table that shows IPG carries the label "reconstructed" (`info_["reconstructed"] = True`).
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

from embedkit.determinism import reproducible
from embedkit.analysis.index import knn
from embedkit.errors import EmbedkitError
from embedkit.heads.base import Head
from embedkit.heads.trainer import (TRAINER_DEFAULTS, LinearModel, as_grid, draw_indices, lr_wd_grid,
                                    sampler_cdf, sgd_step)
from embedkit.metrics import evaluate_split
from embedkit.selection import check_leak, select

DISCREPANCIES = ("sym_kl", "logit_mse", "tv")
UPDATES = ("sequential", "joint", "project")


# -- pairs ---------------------------------------------------------------------------------------

def nn_pairs(Z: np.ndarray, y: np.ndarray, a: np.ndarray, mutual: bool = True) -> np.ndarray:
    """P1: cosine nearest neighbours of the same class and a different attribute.

    Returns [M, 2] row indices into Z, sorted; rows with a = -1 take no part. For each (class y,
    attribute value v) the anchors of (y, v) search the rows of class y whose attribute is known and
    differs from v. `mutual` keeps only mutual pairs (first < second); otherwise every anchor keeps
    its neighbour (anchor first; a mutual pair then appears once from each side) [W].
    """
    partner = np.full(len(y), -1, np.int64)
    known = a >= 0
    for c in np.unique(y[known]):
        in_c = known & (y == c)
        for v in np.unique(a[in_c]):
            anchors = np.flatnonzero(in_c & (a == v))
            base = np.flatnonzero(in_c & (a != v))
            if len(base) == 0:
                continue
            _, I = knn(Z[base], Z[anchors], 1, metric="cosine")
            partner[anchors] = base[I[:, 0]]
    i = np.flatnonzero(partner >= 0)
    if mutual:
        i = i[partner[partner[i]] == i]
        i = i[i < partner[i]]
    return np.stack([i, partner[i]], axis=1)


def mean_shift_pairs(Z: np.ndarray, y: np.ndarray, a: np.ndarray, n_attrs: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P2: (rows [M], Zq [M, D], dropped) with z' = z + mu_{y,a'} - mu_{y,a}.

    With two attribute values a' = 1 - a, which is the spec's z' = z - (a - a') u_y. Labelled rows
    whose class has no other attribute value present are returned in `dropped` (not silently lost).
    """
    Z = np.asarray(Z, np.float64)
    rows, Zq, dropped = [], [], []
    known = a >= 0
    for c in np.unique(y[known]):
        in_c = np.flatnonzero(known & (y == c))
        present = np.unique(a[in_c])                                  # sorted attribute values of class c
        if len(present) < 2:
            dropped.append(in_c)
            continue
        mu = np.stack([Z[in_c[a[in_c] == v]].mean(axis=0) for v in present])
        own = np.searchsorted(present, a[in_c])
        if len(present) == 2:
            other = 1 - own
        else:                                                         # uniform over the other values
            r = rng.integers(len(present) - 1, size=len(in_c))
            other = r + (r >= own)
        rows.append(in_c)
        Zq.append(Z[in_c] + mu[other] - mu[own])
    D = Z.shape[1]
    rows = np.concatenate(rows) if rows else np.empty(0, np.int64)
    Zq = (np.concatenate(Zq) if Zq else np.empty((0, D))).astype(np.float32)
    return rows, Zq, (np.concatenate(dropped) if dropped else np.empty(0, np.int64))


# -- the two steps -------------------------------------------------------------------------------

def discrepancy(W, b, Zp, Zq, kind: str = "sym_kl"):
    """D(theta; P_b) per config: W [K, C, D], b [K, C], pairs [B, D] -> [K]; also the argmax
    agreement [K]."""
    K, C, D = W.shape
    both = torch.addmm(b.reshape(-1), torch.cat([Zp, Zq]), W.reshape(K * C, D).t())   # one matmul, [2B, K*C]
    lp, lq = both.view(2, len(Zp), K, C).permute(0, 2, 1, 3)                           # [K, B, C] each
    agree = (lp.argmax(-1) == lq.argmax(-1)).to(lp.dtype).mean(-1)
    if kind == "logit_mse":
        return ((lp - lq) ** 2).sum(-1).mean(-1), agree
    logp, logq = torch.log_softmax(lp, -1), torch.log_softmax(lq, -1)
    p, q = logp.exp(), logq.exp()
    if kind == "tv":
        return 0.5 * (p - q).abs().sum(-1).mean(-1), agree
    return (0.5 * (p - q) * (logp - logq)).sum(-1).mean(-1), agree   # 1/2 [KL(p||q) + KL(q||p)]


def condition_fails(Dv, agree, eps, eps_agree: float | None):
    """Where the invariance condition C(theta) does not hold, per config [K] bool (`eps` a number or
    a per-config tensor [K])."""
    fail = Dv > torch.as_tensor(eps, dtype=Dv.dtype)
    if eps_agree is not None:
        fail = fail | (agree < 1.0 - eps_agree)
    return fail


def lambda_t(Dv, lam, eps, schedule: str):
    """lambda_t = lambda min(1, (D - eps)/eps) (`soft`) or lambda (`hard`); `lam`, `eps` numbers or
    per-config tensors [K]. Where eps is 0 or infinite the soft ramp is undefined: lambda."""
    lam = torch.as_tensor(lam, dtype=Dv.dtype).expand_as(Dv)
    eps = torch.as_tensor(eps, dtype=Dv.dtype).expand_as(Dv)
    if schedule == "hard":
        return lam.clone()
    ramp = torch.isfinite(eps) & (eps > 0)
    safe = torch.where(ramp, eps, torch.ones_like(eps))
    return torch.where(ramp, lam * torch.clamp((Dv - safe) / safe, max=1.0), lam)


def corrective_step(W, b, Zp, Zq, eta, *, eps, lam, schedule: str = "soft",
                    kind: str = "sym_kl", eps_agree: float | None = None, task_norm=None):
    """Step 2 of the dual update on W [K, C, D], b [K, C] (in place, plain SGD); `eps`, `lam`
    numbers or per-config tensors [K].

    Where C(theta') holds nothing changes; elsewhere theta <- theta' - eta lambda_t g_c, with g_c
    rescaled to `task_norm` [K] (||grad L_task||) when given (`norm_match`). Returns (D [K], fail [K]).
    """
    Wg, bg = W.detach().requires_grad_(True), b.detach().requires_grad_(True)
    Dv, agree = discrepancy(Wg, bg, Zp, Zq, kind)
    fail = condition_fails(Dv.detach(), agree, eps, eps_agree)
    if fail.any():
        gW, gb = torch.autograd.grad(Dv.sum(), (Wg, bg))   # configs are independent: per-config grads
        scale = torch.as_tensor(eta, dtype=W.dtype) * lambda_t(Dv.detach(), lam, eps, schedule) * fail
        if task_norm is not None:
            scale = scale * task_norm / (_norm(gW, gb) + 1e-12)
        with torch.no_grad():
            W -= scale[:, None, None] * gW
            b -= scale[:, None] * gb
    return Dv.detach(), fail


def _norm(gW, gb):
    return torch.sqrt((gW ** 2).sum((1, 2)) + (gb ** 2).sum(1))


class IPGHead(Head):
    """Invariance Pair Guidance [RECONSTRUCTED]: SGD on the task plus a corrective step on the pair discrepancy when the invariance condition fails."""

    name = "ipg"
    reconstructed = True          # the run record's flag: every IPG table says "reconstructed"
    regimes = ("R1", "R2", "R3")
    needs_val_attrs = False

    @classmethod
    def default_params(cls) -> dict:
        # eps x lam: the spec's grid [R] (section 10), trained at once with lr x wd and selected on
        # val by the regime rule; pairs, discrepancy, schedule and update are the spec's defaults.
        return {"pairs": "mean_shift", "mutual": True, "pair_source": "train", "M": None, "discrepancy": "sym_kl",
                "eps": (0.01, 0.05, 0.1), "eps_agree": None, "lam": (0.1, 1.0, 10.0), "schedule": "soft",
                "norm_match": False,
                "update": "sequential",
                "Bt": TRAINER_DEFAULTS["batch_size"], "Bp": 128, "lr_grid": TRAINER_DEFAULTS["lr_grid"],
                "wd_grid": TRAINER_DEFAULTS["wd_grid"], "steps": TRAINER_DEFAULTS["steps"],
                "eval_every": TRAINER_DEFAULTS["eval_every"], "threads": TRAINER_DEFAULTS["threads"]}

    def __init__(self, seed: int = 0, selection_rule: str | None = None, **params):
        super().__init__(seed=seed, selection_rule=selection_rule, **params)
        p = self.params
        for key, allowed in (("discrepancy", DISCREPANCIES), ("update", UPDATES), ("schedule", ("soft", "hard")),
                             ("pair_source", ("train", "val"))):
            if p[key] not in allowed:
                raise EmbedkitError(f"ipg: {key} must be one of {', '.join(allowed)}, not {p[key]!r}")
        if isinstance(p["pairs"], str) and p["pairs"] not in ("nn", "mean_shift"):
            raise EmbedkitError(f"ipg: pairs must be nn, mean_shift or a (Zp, Zq) tuple, not {p['pairs']!r}")
        for key in ("norm_match", "mutual"):
            if not isinstance(p[key], bool):
                raise EmbedkitError(f"ipg: {key} must be true or false, not {p[key]!r}")
        if not all(e >= 0 for e in as_grid(p["eps"])):
            raise EmbedkitError(f"ipg: eps must be >= 0 (inf disables the correction), not {p['eps']}")
        if not all(v >= 0 for v in as_grid(p["lam"])):
            raise EmbedkitError(f"ipg: lam must be >= 0, not {p['lam']}")

    def grid(self) -> list[dict]:
        """lr x wd x eps x lam, every config trained at once."""
        p = self.params
        return [{**c, "eps": e, "lam": l} for e in as_grid(p["eps"]) for l in as_grid(p["lam"])
                for c in lr_wd_grid(p["lr_grid"], p["wd_grid"])]

    def unmet(self, train, val) -> str | None:
        """Why the pairs cannot be built from these splits (the runner skips the head then)."""
        p = self.params
        if not isinstance(p["pairs"], str):
            return None
        src = train if p["pair_source"] == "train" else val
        if not (src.a >= 0).any():
            return f"ipg: pairs={p['pairs']} needs attribute labels on some {src.name} rows; none are visible"
        return None

    # -- pairs ------------------------------------------------------------------------------
    def _pairs(self, train, val):
        """(Zp, Zq, info, fit rows) for the configured pair type; the pairs stream draws caps."""
        p, rng = self.params, np.random.default_rng(self.seeds["pairs"])
        if not isinstance(p["pairs"], str):
            Zp, Zq = (np.asarray(x, np.float32) for x in p["pairs"])
            if Zp.shape != Zq.shape or Zp.ndim != 2 or Zp.shape[1] != train.Z.shape[1]:
                raise EmbedkitError(f"ipg: given pairs must be two [M, {train.Z.shape[1]}] matrices, "
                                    f"got {Zp.shape} and {Zq.shape}")
            rows, info = np.empty(0, np.int64), {"type": "given"}
        else:
            why = self.unmet(train, val)
            if why:
                raise EmbedkitError(f"{why} (use pair_source=val, or pass pairs=(Zp, Zq))")
            src = train if p["pair_source"] == "train" else val
            if p["pairs"] == "nn":
                ij = nn_pairs(src.Z, src.y, src.a, mutual=bool(p["mutual"]))
                Zp, Zq, used = src.Z[ij[:, 0]], src.Z[ij[:, 1]], ij.ravel()
                info = {"type": "nn", "mutual": bool(p["mutual"]), "n_pairs": int(len(ij))}
            else:
                r, Zq, dropped = mean_shift_pairs(src.Z, src.y, src.a, src.n_attrs, rng)
                Zp, used = src.Z[r], r
                info = {"type": "mean_shift", "n_dropped_no_other_attr": int(len(dropped))}
            rows = np.unique(src.rows[src.a >= 0]) if p["pairs"] == "mean_shift" else np.unique(src.rows[used])
            info["source"] = src.name
        if len(Zp) == 0:
            raise EmbedkitError(f"ipg: no invariance pairs could be built ({info}); every class needs rows "
                                f"with two different attribute values")
        if p["M"] is not None and int(p["M"]) < len(Zp):
            keep = np.sort(rng.choice(len(Zp), int(p["M"]), replace=False))
            Zp, Zq = Zp[keep], Zq[keep]
        info["M"] = int(len(Zp))
        return np.ascontiguousarray(Zp, np.float32), np.ascontiguousarray(Zq, np.float32), info, rows

    # -- fit --------------------------------------------------------------------------------
    def _fit(self, train, val, test):
        p = self.params
        Zp_np, Zq_np, pair_info, pair_rows = self._pairs(train, val)
        grid = self.grid()
        K, C, (N, D) = len(grid), train.n_classes, train.Z.shape
        with reproducible(p["threads"]):
            snapshots = self._loop(train, val, test, grid, torch.from_numpy(Zp_np), torch.from_numpy(Zq_np))

        rule = self.rule(val)
        chosen = select(self.history_, rule=rule)
        k, step = chosen["config_id"], chosen["step"]
        self.coef_, self.intercept_ = snapshots[step]["W"][k], snapshots[step]["b"][k]
        self.selected_ = {key: chosen[key] for key in ("config_id", "config", "step", "rule", "split", "score", "tie")}
        fit_rows = np.union1d(train.rows, pair_rows)
        # Pairs drawn from val (pair_source=val) put val labels into the fit: allowed, but tagged.
        val_in_pairs = bool(len(np.intersect1d(pair_rows, val.rows)))
        flags = check_leak(fit_rows, val.rows, None if test is None else test.rows, allow_overlap=val_in_pairs)
        self.rows_ = {"fit": fit_rows, "tune": np.empty(0, np.int64), "select": np.sort(val.rows)}
        self.info_ = {"reconstructed": True, "pairs": pair_info, "grid_size": K,
                      "corrected_fraction": [r["ipg"]["corrected_fraction"] for r in self.history_
                                             if r["config_id"] == k],
                      "val_used_for_training": val_in_pairs, **flags}

    def _loop(self, train, val, test, grid, Zp, Zq) -> dict:
        """The two-step loop over all configs at once. Step 1 is the shared trainer's arithmetic
        (same init, same sampler draws, same SGD update), so with eps = inf the heads are the
        `erm` head's bit for bit; step 2 (or the joint step) adds the correction."""
        p = self.params
        K, C, (N, D) = len(grid), train.n_classes, train.Z.shape
        net = LinearModel(D, C)
        one = net.init_params(torch.Generator().manual_seed(int(self.seeds["init"])))
        params = {k: v.unsqueeze(0).repeat(K, *([1] * v.dim())).requires_grad_() for k, v in one.items()}
        W, b = params["W"], params["b"]
        lr = torch.tensor([c["lr"] for c in grid], dtype=torch.float32)
        wd = torch.tensor([c["wd"] for c in grid], dtype=torch.float32)
        bufs = {"W": None, "b": None}
        Zt, yt = torch.from_numpy(np.ascontiguousarray(train.Z, np.float32)), torch.from_numpy(train.y.astype(np.int64))
        cdf = sampler_cdf(np.ones(N))
        rng_s = np.random.default_rng(int(self.seeds["sampler"]))
        rng_p = np.random.default_rng(np.random.SeedSequence(int(self.seeds["pairs"])).spawn(1)[0])
        Bt, Bp = int(p["Bt"]), min(int(p["Bp"]), len(Zp))
        eps = torch.tensor([float(c["eps"]) for c in grid], dtype=torch.float32)
        lam = torch.tensor([float(c["lam"]) for c in grid], dtype=torch.float32)
        any_finite, mode = bool(torch.isfinite(eps).any()), p["update"]
        steps, every = int(p["steps"]), int(p["eval_every"])
        eval_steps = set(range(every, steps + 1, every)) | {steps}

        snapshots, n_fail, n_steps, D_sum = {}, torch.zeros(K), 0, torch.zeros(K)
        for t in range(1, steps + 1):
            ib = torch.from_numpy(draw_indices(cdf, rng_s.random(Bt)))
            logits, _ = net.forward(params, Zt.index_select(0, ib))
            losses = F.cross_entropy(logits.reshape(K * Bt, C), yt[ib].expand(K, -1).reshape(-1),
                                     reduction="none").view(K, Bt)
            gW, gb = torch.autograd.grad(losses.mean(dim=1).sum(), (W, b))
            gnorm = _norm(gW, gb) if p["norm_match"] else None
            ip = torch.from_numpy(rng_p.integers(0, len(Zp), Bp))
            if mode == "sequential":
                sgd_step(params, {"W": gW, "b": gb}, bufs, lr, wd)                 # step 1
                if any_finite:             # eps = inf everywhere: plain ERM, skip the pair pass
                    Dv, fail = corrective_step(W, b, Zp[ip], Zq[ip], lr, eps=eps, lam=lam, schedule=p["schedule"],
                                               kind=p["discrepancy"], eps_agree=p["eps_agree"], task_norm=gnorm)
                else:
                    Dv, fail = torch.zeros(K), torch.zeros(K, dtype=torch.bool)
            else:
                Dv, fail = self._joint_step(W, b, gW, gb, gnorm, Zp[ip], Zq[ip], eps, lam)
                sgd_step(params, {"W": gW, "b": gb}, bufs, lr, wd)
            n_fail += fail.to(n_fail.dtype)
            D_sum += Dv
            n_steps += 1
            if t in eval_steps:
                snapshots[t] = {k: v.detach().numpy().copy() for k, v in params.items()}
                self._record(t, grid, net, params, val, test, n_fail / n_steps, D_sum / n_steps)
                n_fail, n_steps, D_sum = torch.zeros(K), 0, torch.zeros(K)
        return snapshots

    def _joint_step(self, W, b, gW, gb, gnorm, Zp, Zq, eps, lam):
        """`joint` / `project`: add lambda_t grad D (rescaled when norm-matched) to the task gradient
        in place where C(theta) fails; `project` first removes the conflicting task component."""
        p = self.params
        Wg, bg = W.detach().requires_grad_(True), b.detach().requires_grad_(True)
        Dv, agree = discrepancy(Wg, bg, Zp, Zq, p["discrepancy"])
        fail = condition_fails(Dv.detach(), agree, eps, p["eps_agree"])
        if fail.any():
            cW, cb = torch.autograd.grad(Dv.sum(), (Wg, bg))
            if p["update"] == "project":
                dot = (gW * cW).sum((1, 2)) + (gb * cb).sum(1)
                coef = torch.where(fail & (dot < 0), dot / (_norm(cW, cb) ** 2 + 1e-12), torch.zeros_like(dot))
                gW -= coef[:, None, None] * cW
                gb -= coef[:, None] * cb
            scale = lambda_t(Dv.detach(), lam, eps, p["schedule"]) * fail
            if gnorm is not None:
                scale = scale * gnorm / (_norm(cW, cb) + 1e-12)
            gW += scale[:, None, None] * cW
            gb += scale[:, None] * cb
        return Dv.detach(), fail

    def _record(self, step, grid, net, params, val, test, frac, Dmean):
        with torch.no_grad():
            out = {s.name: net.forward(params, torch.from_numpy(np.ascontiguousarray(s.Z, np.float32)))[0].numpy()
                   for s in (val, test) if s is not None}
        for k, cfg in enumerate(grid):
            finite = bool(np.isfinite(out[val.name][k]).all())     # a diverged config is never selected
            self.history_.append({
                "config_id": k, "config": cfg, "step": step,
                "val": evaluate_split(out[val.name][k], val) if finite else None,
                "test": evaluate_split(out[test.name][k], test) if test is not None and finite else None,
                "ipg": {"corrected_fraction": float(frac[k]), "discrepancy": float(Dmean[k]), "diverged": not finite},
            })
