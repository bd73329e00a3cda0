"""SCER — Spurious Correlation-Aware Embedding Regularization (methods spec section 7).

Sources: paper arXiv:2511.04401 (read through a summary; symbols as in the spec); repo
MLAI-Yonsei/SCER `scer/learning/algorithms.py` (class `SCER`), `hparams_registry.py`, `sweep.py`,
`train.py`.

Symbols (spec 7.1-7.2): group means mu_(y,a); spurious difference Delta_spur (same class, different
attribute) and core difference Delta_core (same attribute, different class), see
`embedkit.geometry.directions`; Sigma with ||v||_Sigma = sqrt(v^T Sigma v); the released code's loss
per minibatch of embeddings z [B, k]:
  1. Sigma = I_k + 0.1 C_b / (||C_b||_F + 1e-6), C_b the unbiased covariance of z (gradient flows);
  2. L_dro = sum_g q_g mean_{i in g} l_i with q <- q exp(eta mean_{i in g} l_i), q <- q / sum q
     (section 4);
  3-4. delta_sp = unit(mean_{y, a<a'} |mu(y,a') - mu(y,a)|), delta_c = unit(mean_{a, y<y'} |mu(y',a)
       - mu(y,a)|);
  5. a0 = (n_00 + n_11) / (2B) (code) or 1/2 sum_y P(y) max_a P(a|y) on train counts
     (orientation-free);
  6. beta* = (Sigma + a0 delta_sp delta_sp^T)^{-1} delta_c   (analytic, not the classifier weight);
  7. s = <beta*, delta_sp>/||beta*||_Sigma, r = <beta*, delta_c>/||beta*||_Sigma, L_emb = lambda_sp
     |s| - lambda_c r;
  8. L_total = L_dro + L_emb; a batch missing a group reuses the previous L_emb as a detached
     constant.

Frozen-embedding adaptations (spec 7.4):
- `scer_proj` (default, variant "proj"): a trainable residual map z = x + MLP_phi(x) (Linear(D, h)
  -> ReLU -> Linear(h, D), last layer zero-initialised, so training starts at the frozen features),
  or `proj=linear` Linear(D, k) (identity-initialised when k = D); the linear head reads z and the
  section 7.2 loss acts on the batch of z's. With no trainable map the code loss would have zero
  gradient (spec 7.2 step 9).
- `scer_ll` (variant "ll"): no projection; beta := the head's centred rows w_j = W_j - mean_j W_j
  (binary: w = W_1 - W_0 up to scale), Delta's and Sigma computed once on all train rows, signed
  directions with Delta_c oriented class 1 minus class 0; L_emb = lambda_sp |<w,
  delta_sp>|/||w||_Sigma - lambda_c <w, delta_c>/||w||_Sigma, averaged over classes j (and attribute
  pairs). Batches come from the shared trainer's group-balanced sampler (P(i) = 1/(G n_g(i)),
  i.i.d.), so every group is present in practically every batch of 108 when G = 4; an incomplete
  batch takes step 8's detached fallback, and `reg_active_frac` records how often the regulariser
  acted (with many groups, e.g. 10 x 10, raise `batch_size`). Configuration of the released code
  matched by default: group-balanced batches with the per-batch a0 = (n_00 + n_11)/(2B) of step 5
  (`a0_mode=auto` on 2 x 2 groups), as in every draw of the released random search (group_balanced
  True); h = 512 (spec 7.4).
`a0_mode=orientation_free`
is the train-count constant, and the fallback for other group shapes. Sigma solves use the Woodbury
identity on the batch's rank-(B-1) covariance (exact;
the spec asks for a solve, never an explicit inverse).

Selection: val worst-group accuracy over (config, step), never the released collector's test oracle.
Frozen-feature SCER numbers are not comparable with the paper's end-to-end numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from embedkit.errors import EmbedkitError
from embedkit.geometry.directions import (
    Sigma,
    attribute_pair_directions,
    class_core_directions,
    group_means,
    mean_difference_directions,
)
from embedkit.heads.balancing import sampler_probs
from embedkit.heads.groupdro import GroupDROLoss
from embedkit.heads.params import Param
from embedkit.heads.trainer import (
    TRAINER_PARAMS,
    HeadState,
    SGDHead,
    Standardizer,
    Variant,
    _default_uniform,
    as_grid,
    fit_grid,
    seeded_loop,
)

# ----------------------------------------------------------------------------------------------
# a0, beta* and the two regularisers
# ----------------------------------------------------------------------------------------------


def a0_code(counts) -> float:
    """The released code's a0 = 1/2 [P(a=1|y=1) P(y=1) + P(a=0|y=0) P(y=0)] = (n_00 + n_11) / (2B)
    from the batch's group counts [2, 2] (assumes the majority groups are (0,0) and (1,1))."""
    counts = np.asarray(counts, np.float64)
    if counts.shape != (2, 2):
        raise EmbedkitError(
            f"scer: a0_mode=code needs 2 classes x 2 attributes, not {counts.shape}"
        )
    return float((counts[0, 0] + counts[1, 1]) / (2.0 * counts.sum()))


def a0_orientation_free(counts) -> float:
    """a0 = 1/2 sum_y P(y) max_a P(a|y) = 1/2 sum_y max_a n_ya / N from train counts [C, A]
    (Waterbirds 3498/184/56/1057 -> 4555/9590 = 0.47497)."""
    counts = np.asarray(counts, np.float64)
    return float(0.5 * counts.max(axis=1).sum() / counts.sum())


def beta_star(sigma: Sigma, delta_sp, delta_c, a0: float):
    """beta* = (Sigma + a0 delta_sp delta_sp^T)^{-1} delta_c (spec 7.2 step 6)."""
    return sigma.solve(delta_c, delta_sp, a0)


def code_terms(
    z,
    y,
    a,
    C: int,
    A: int,
    a0,
    direction_mode: str = "abs",
    sigma_mode: str = "code_shrunk",
    ridge: float = 1e-2,
    sigma: Sigma | None = None,
):
    """(s, r) of spec 7.2 steps 1-7 on one batch of embeddings z [B, k] (differentiable in z):
    s = <beta*, delta_sp>/||beta*||_Sigma, r = <beta*, delta_c>/||beta*||_Sigma. `a0` is a number or
    "code" (batch counts); `sigma` a precomputed Sigma of z (else built by `sigma_mode`)."""
    if sigma is None:
        sigma = (
            Sigma.code_shrunk(z)
            if sigma_mode == "code_shrunk"
            else Sigma.within_ridge(z, y, a, C, A, ridge)
        )
    mu, counts = group_means(z, y, a, C, A)
    d = mean_difference_directions(mu, counts, direction_mode, normalize=True)
    a0 = a0_code(counts) if a0 == "code" else float(a0)
    beta = beta_star(sigma, d.spurious, d.core, a0)
    n_beta = sigma.norm(beta)
    return (beta @ d.spurious) / n_beta, (beta @ d.core) / n_beta


def ll_terms(W, core, spurious, sigma: Sigma):
    """Per config (W [K, C, D] or [C, D]): (spur [K], core [K]) with the centred rows w_j = W_j -
    mean_j W_j, spur = mean_j mean_pairs |<w_j, Delta_sp^pair>| / ||w_j||_Sigma and core = mean_j
    <w_j, Delta_c^(j)> / ||w_j||_Sigma, for per-class core directions [C, D] and attribute-pair
    spurious directions [P, D].
    Binary: |<w, Delta_sp>|/||w||_Sigma and <w, Delta_c>/||w||_Sigma with w = W_1 - W_0."""
    w = W - W.mean(-2, keepdims=True)
    norm = sigma.norm(w)  # [K, C]
    core_t = ((w * core).sum(-1) / norm).mean(-1)
    spur_t = (abs(w @ spurious.T) / norm[..., None]).mean((-1, -2))
    return spur_t, core_t


# ----------------------------------------------------------------------------------------------
# The projection model (scer_proj): K stacked (projection, linear head) pairs for the trainer
# ----------------------------------------------------------------------------------------------


@dataclass
class ProjectionState(HeadState):
    """A trained scer_proj head on raw features: (standardise), z = phi(x), logits = z W^T + b."""

    def project(self, Z) -> np.ndarray:
        a = self.arrays
        Z = np.asarray(Z, np.float32)
        if "mu" in a:
            Z = (Z - a["mu"]) / a["sigma"]
        if self.kind == "scer_proj_mlp":
            return Z + np.maximum(Z @ a["P1"].T + a["c1"], 0.0) @ a["P2"].T + a["c2"]
        return Z @ a["P"].T + a["c"]

    def logits(self, Z) -> np.ndarray:
        return self.project(Z) @ self.arrays["W"].T + self.arrays["b"]


class ProjectionModel:
    """`proj="mlp"`: z = x + Linear(h, D)(ReLU(Linear(D, h)(x))), the second layer zero-initialised;
    `proj="linear"`: z = Linear(D, k)(x), identity-initialised (zero bias) when k = D. Linear head k
    -> C.
    Weight decay on every weight matrix, not on biases (shared trainer convention)."""

    def __init__(
        self, dim: int, n_classes: int, proj: str = "mlp", hidden: int = 512, k: int | None = None
    ):
        if proj not in ("mlp", "linear"):
            raise EmbedkitError(f"scer: proj must be mlp or linear, not {proj!r}")
        self.dim, self.n_classes, self.proj, self.hidden = dim, n_classes, proj, int(hidden)
        self.k = dim if proj == "mlp" or k is None else int(k)
        self.kind = f"scer_proj_{proj}"
        self.decay = ("P1", "P2", "W") if proj == "mlp" else ("P", "W")

    def init_params(self, gen) -> dict:
        D, H, k, C = self.dim, self.hidden, self.k, self.n_classes
        if self.proj == "mlp":
            p = {
                "P1": _default_uniform(gen, (H, D), D),
                "c1": _default_uniform(gen, (H,), D),
                "P2": torch.zeros(D, H),
                "c2": torch.zeros(D),
            }
        elif k == D:
            p = {"P": torch.eye(D), "c": torch.zeros(D)}
        else:
            p = {"P": _default_uniform(gen, (k, D), D), "c": _default_uniform(gen, (k,), D)}
        p.update(W=_default_uniform(gen, (C, k), k), b=_default_uniform(gen, (C,), k))
        return p

    def project(self, p, x):
        """z [K, B, k] for a shared batch x [B, D]."""
        if x.dim() != 2:
            raise EmbedkitError("scer: the projection model trains on one shared batch per step")
        if self.proj == "mlp":
            K, H, D = p["P1"].shape
            h = torch.relu(torch.addmm(p["c1"].reshape(-1), x, p["P1"].reshape(K * H, D).t()))
            h = h.view(-1, K, H).transpose(0, 1)  # [K, B, H]
            return torch.baddbmm(p["c2"].unsqueeze(1), h, p["P2"].transpose(1, 2)) + x
        K, k, D = p["P"].shape
        return (
            torch.addmm(p["c"].reshape(-1), x, p["P"].reshape(K * k, D).t())
            .view(-1, K, k)
            .transpose(0, 1)
        )

    def forward(self, p, x):
        z = self.project(p, x)
        return torch.baddbmm(p["b"].unsqueeze(1), z, p["W"].transpose(1, 2)), {"z": z}

    def export(self, p, std) -> ProjectionState:
        arrays = {k: v.astype(np.float32) for k, v in p.items()}
        if std is not None:
            arrays.update(mu=std.mu, sigma=std.sigma)
        return ProjectionState(self.kind, arrays)


# ----------------------------------------------------------------------------------------------
# The objective: GroupDRO base loss + L_emb
# ----------------------------------------------------------------------------------------------


class SCERLoss:
    """L_total = L_dro + L_emb per config. L_dro is `groupdro.GroupDROLoss` (the same code path as
    the `groupdro` head); L_emb is the code loss on the batch's z (proj) or the head-weight loss
    (ll)."""

    def __init__(
        self,
        configs,
        n_classes: int,
        n_attrs: int,
        train_counts,
        *,
        variant: str,
        direction_mode: str,
        sigma_mode: str,
        sigma_ridge: float,
        a0=None,
        ll_dirs=None,
    ):
        self.dro = GroupDROLoss(
            [c["eta"] for c in configs], n_classes * n_attrs, train_counts.reshape(-1)
        )
        self.lam_sp = torch.tensor([float(c["lambda_sp"]) for c in configs])
        self.lam_c = torch.tensor([float(c["lambda_core"]) for c in configs])
        self.C, self.A, self.variant = n_classes, n_attrs, variant
        self.direction_mode, self.sigma_mode, self.ridge = direction_mode, sigma_mode, sigma_ridge
        self.a0, self.ll_dirs = a0, ll_dirs
        self.needed = np.flatnonzero(np.asarray(train_counts).reshape(-1) > 0)
        self.prev = None  # last L_emb per config, detached (spec 7.2 step 8)
        self.steps = self.active = 0
        self.off = bool((self.lam_sp == 0).all() and (self.lam_c == 0).all())

    def __call__(self, ctx) -> torch.Tensor:
        L_dro = self.dro(ctx)
        self.steps += 1
        if self.off:  # lambda_sp = lambda_c = 0: exactly the GroupDRO objective
            return L_dro
        lam_sp, lam_c = self.lam_sp.to(L_dro), self.lam_c.to(L_dro)
        if self.variant == "ll":
            core, spurious, sigma = self.ll_dirs
            s, r = ll_terms(ctx.params["W"], core, spurious, sigma)
            self.active += 1
            emb = lam_sp * s - lam_c * r
        else:
            emb = self._code_loss(ctx, lam_sp, lam_c)
        self.prev = emb.detach()
        return L_dro + emb

    def _code_loss(self, ctx, lam_sp, lam_c):
        g = ctx.batch["g"][0]
        present = np.unique(g.cpu().numpy())
        if not np.isin(self.needed, present).all():
            # A group is missing from the batch: the previous L_emb as a constant (no gradient).
            return self.prev if self.prev is not None else torch.zeros_like(lam_sp)
        self.active += 1
        y, a = g // self.A, g % self.A
        out = []
        for k in range(ctx.aux["z"].shape[0]):
            s, r = code_terms(
                ctx.aux["z"][k],
                y,
                a,
                self.C,
                self.A,
                self.a0,
                self.direction_mode,
                self.sigma_mode,
                self.ridge,
            )
            out.append(lam_sp[k] * abs(s) - lam_c[k] * r)
        return torch.stack(out)

    def record(self, k: int) -> dict:
        return {
            **self.dro.record(k),
            "l_emb": None if self.prev is None else float(self.prev[k]),
            "reg_active_frac": self.active / max(self.steps, 1),
        }


# ----------------------------------------------------------------------------------------------
# The head
# ----------------------------------------------------------------------------------------------

# Spec 7.5 defaults (hparam seed 0): eta 1e-2, lambda_sp = lambda_core = 1, lr 1e-3, wd 1e-4, batch
# 108, SGD momentum 0.9, 5,001 steps, evaluation every 300 (Waterbirds) or 250 (CMNIST). Embedkit
# [W], for the Waterbirds-size budget: proj keeps the paper's lambdas and adds lr 1e-2 to its lr
# 1e-3 (a head trained from scratch on frozen features), 400 steps evaluated every 50 (projected
# heads overfit early on wide features); ll is cheap, so it also selects lambda in {0.1, 1} and lr
# over the shared grid, 600 steps.
VARIANT_DEFAULTS = {
    "proj": {
        "lambda_sp": 1.0,
        "lambda_core": 1.0,
        "lr_grid": (1e-3, 1e-2),
        "steps": 400,
        "eval_every": 50,
    },
    "ll": {
        "lambda_sp": (0.1, 1.0),
        "lambda_core": (0.1, 1.0),
        "lr_grid": (1e-3, 1e-2, 1e-1),
        "steps": 600,
        "eval_every": 100,
    },
}


class SCERHead(SGDHead):
    """SCER: GroupDRO plus the Sigma-norm spurious/core alignment regulariser (variant proj or ll).

    lambda_sp penalises alignment with the spurious direction and lambda_core rewards alignment with
    the core direction; variant proj (default) regularises a learned residual projection of the
    frozen features, variant ll the head's weight vector. (config, step) is chosen by val WGA."""

    name = "scer"
    regimes = ("R1",)
    needs_train_attrs = True

    PARAMS = {
        "variant": Param(
            "choice",
            "proj",
            "proj: regularise a learned residual projection of the features; "
            "ll: regularise the head's weights",
            choices=("proj", "ll"),
        ),
        "proj": Param(
            "choice",
            "mlp",
            "projection of variant proj: residual MLP or linear",
            choices=("mlp", "linear"),
        ),
        "hidden": Param(
            "int", 512, "hidden width h of the residual MLP projection (spec 7.4)", low=1
        ),
        "proj_dim": Param(
            "int", None, "output dim k of proj=linear (none = the feature dim)", low=1
        ),
        # Numbers or tuples (a grid); None = the variant's default (VARIANT_DEFAULTS). `eta_grid` as
        # in `groupdro`: the same GroupDRO step size (HSFM's `eta` is its outer Adam lr).
        "eta_grid": Param(
            "floats", 1e-2, "GroupDRO step sizes eta of the group weights q searched", low=0
        ),
        "lambda_sp": Param(
            "floats",
            None,
            "weight(s) of the spurious-alignment penalty (none = the variant's)",
            low=0,
        ),
        "lambda_core": Param(
            "floats", None, "weight(s) of the core-alignment reward (none = the variant's)", low=0
        ),
        "lr_grid": Param(
            "floats", None, "SGD learning rates searched (none = the variant's)", low=0
        ),
        "wd_grid": Param("floats", (1e-4,), "weight decays searched (weight matrices only)", low=0),
        "batch_size": Param("int", 108, "rows per minibatch", low=2),
        "sampler": Param(
            "choice",
            "group",
            "batch sampler: group-balanced or uniform",
            choices=("group", "uniform"),
        ),
        "steps": Param("int", None, "SGD steps (none = the variant's)", low=1),
        "eval_every": Param("int", None, "steps between evaluations (none = the variant's)", low=1),
        "search": Param(
            "int",
            0,
            "> 0: the spec 7.5 random search with that many configs instead of the grid",
            low=0,
        ),
        "search_seed": Param(
            "int", 0, "seed of the random search's draws (the same for every run seed)"
        ),
        "direction_mode": Param(
            "choice",
            None,
            "mean-difference directions: abs (the code's) or signed "
            "(none = abs for proj, signed for ll)",
            choices=(None, "abs", "signed"),
        ),
        "sigma_mode": Param(
            "choice",
            "code_shrunk",
            "Sigma: the code's shrunk batch covariance or a within-group ridge",
            choices=("code_shrunk", "within_ridge"),
        ),
        "sigma_ridge": Param(
            "float", 1e-2, "ridge of sigma_mode=within_ridge", low=0, open_low=True
        ),
        # auto: the released code's batch-count a0 (spec 7.2 step 5) on 2 x 2 groups, which with the
        # group-balanced sampler is the configuration of the released random search (group_balanced
        # True in every draw, spec 7.5); orientation_free (train counts) where the code's binary
        # formula does not apply.
        "a0_mode": Param(
            "choice",
            "auto",
            "a0: auto (the code's batch formula on 2 x 2 groups, else "
            "orientation_free), orientation_free (train counts) or code (batch counts)",
            choices=("auto", "orientation_free", "code"),
        ),
        "standardize": TRAINER_PARAMS["standardize"],
        "device": TRAINER_PARAMS["device"],
        "threads": TRAINER_PARAMS["threads"],
    }

    def resolved(self) -> dict:
        """The parameters in force: explicit values, else the variant's defaults."""
        p = dict(self.params)
        for k, v in VARIANT_DEFAULTS[p["variant"]].items():
            if p[k] is None:
                p[k] = v
        return p

    @property
    def direction_mode(self) -> str:
        return self.params["direction_mode"] or (
            "abs" if self.params["variant"] == "proj" else "signed"
        )

    # -- grid ---------------------------------------------------------------------------------
    def grid(self) -> list[dict]:
        """The configs: the product of the given values, or the spec 7.5 random search (the same
        draws for every run seed, like SubpopBench's hparams seed; batch size kept fixed [W])."""
        p = self.resolved()
        n = int(p["search"])
        if n <= 0:
            return [
                {
                    "eta": e,
                    "lambda_sp": ls,
                    "lambda_core": lc,
                    "lr": lr,
                    "wd": wd,
                    "hidden": int(p["hidden"]),
                }
                for e in as_grid(p["eta_grid"])
                for ls in as_grid(p["lambda_sp"])
                for lc in as_grid(p["lambda_core"])
                for lr in as_grid(p["lr_grid"])
                for wd in as_grid(p["wd_grid"])
            ]
        rng = np.random.default_rng(int(p["search_seed"]))
        out = []
        for _ in range(n):
            out.append(
                {
                    "eta": 10 ** rng.uniform(-3, -1),
                    "lambda_sp": rng.uniform(0, 1),
                    "lambda_core": rng.uniform(0, 1),
                    "lr": 10 ** rng.uniform(-4, -2),
                    "wd": 10 ** rng.uniform(-6, -3),
                    "hidden": int(rng.choice([256, 512, 1024])),
                }
            )
        return out

    # -- fit ----------------------------------------------------------------------------------
    def _fit(self, train, val, monitor):
        p = self.resolved()
        C, A = train.n_classes, train.n_attrs
        g = train.g
        counts = np.bincount(g, minlength=C * A).reshape(C, A)
        if p["variant"] == "ll" and self.direction_mode == "abs" and C != 2:
            raise EmbedkitError(
                "scer: direction_mode=abs with variant=ll needs 2 classes (use signed)"
            )
        if p["a0_mode"] == "code" and (C, A) != (2, 2):
            raise EmbedkitError(
                "scer: a0_mode=code is the released code's binary formula; use orientation_free"
            )
        std = Standardizer.fit(train.Z) if p["standardize"] else None
        X = std.transform(train.Z) if std else np.asarray(train.Z, np.float32)
        ll_dirs = self._ll_directions(X, train, counts) if p["variant"] == "ll" else None
        a0_mode = (
            p["a0_mode"]
            if p["a0_mode"] != "auto"
            else ("code" if (C, A) == (2, 2) else "orientation_free")
        )
        a0 = "code" if a0_mode == "code" else a0_orientation_free(counts)
        variant = (
            Variant(sampler=sampler_probs(g, train.n_groups))
            if p["sampler"] == "group"
            else Variant()
        )

        configs = self.grid()
        results, objectives, offset = [], [], 0
        for h in sorted({c["hidden"] for c in configs}) if p["variant"] == "proj" else [None]:
            block = [c for c in configs if p["variant"] == "ll" or c["hidden"] == h]
            if p["variant"] == "ll":
                block = [{k: v for k, v in c.items() if k != "hidden"} for c in block]
            model = (
                ProjectionModel(train.Z.shape[1], C, p["proj"], h, p["proj_dim"])
                if p["variant"] == "proj"
                else "linear"
            )
            loss = SCERLoss(
                block,
                C,
                A,
                counts,
                variant=p["variant"],
                direction_mode=self.direction_mode,
                sigma_mode=p["sigma_mode"],
                sigma_ridge=float(p["sigma_ridge"]),
                a0=a0,
                ll_dirs=ll_dirs,
            )
            results.append(
                fit_grid(
                    train.Z,
                    train.y,
                    block,
                    seeded_loop(
                        self,
                        steps=int(p["steps"]),
                        eval_every=int(p["eval_every"]),
                        batch_size=int(p["batch_size"]),
                        model=model,
                        standardize=bool(p["standardize"]),
                    ),
                    variants=[variant],
                    val=val,
                    monitor=monitor,
                    rule=self.rule(val),
                    objective=loss,
                    row_data={"g": g},
                    config_offset=offset,
                )
            )
            objectives.append(loss)
            offset += len(block)
        self.adopt(results, val)
        self.rows_ = {
            "fit": np.sort(train.rows),
            "tune": np.array([], np.int64),
            "select": np.sort(val.rows),
        }
        self.info_.update(
            hyperparameters={k: v for k, v in p.items() if k in VARIANT_DEFAULTS["proj"]},
            variant=p["variant"],
            direction_mode=self.direction_mode,
            a0=a0,
            a0_mode=a0_mode,
            train_group_counts=counts.reshape(-1).tolist(),
            reg_active_frac=[o.active / max(o.steps, 1) for o in objectives],
        )
        self._report_directions(train)

    def _ll_directions(self, X, train, counts):
        """scer_ll's constants from all train rows (spec 7.4): per-class core directions,
        attribute-pair spurious directions (unit, signed; abs mode: the code's aggregate, binary
        only) and Sigma."""
        C, A = train.n_classes, train.n_attrs
        Xt = torch.as_tensor(X, dtype=torch.float32)
        mu, n = group_means(Xt, train.y, train.a, C, A)
        if self.direction_mode == "abs":
            d = mean_difference_directions(mu, n, "abs", normalize=True)
            core, spur = torch.stack([-d.core, d.core]), d.spurious[None]
        else:
            core = class_core_directions(mu, n, normalize=True)
            spur, _ = attribute_pair_directions(mu, n, normalize=True)
        return core, spur, self._train_sigma(Xt, train)

    def _train_sigma(self, Z, train) -> Sigma:
        if self.params["sigma_mode"] == "code_shrunk":
            return Sigma.code_shrunk(Z)
        return Sigma.within_ridge(
            Z, train.y, train.a, train.n_classes, train.n_attrs, float(self.params["sigma_ridge"])
        )

    def _report_directions(self, train):
        """Directions on the train embeddings the head reads (z for proj, x for ll) and their
        alignment with the selected head (spec 7.1): cor(w, Delta) = <w, Delta>/(||w||_Sigma
        ||Delta||_Sigma) and the Theorem-1 quantities L = cor ||Delta||_Sigma, with w the centred
        head rows (binary: W_1 - W_0)."""
        C, A = train.n_classes, train.n_attrs
        state = self.state_
        if isinstance(state, ProjectionState):
            Zh, W = state.project(train.Z), state.arrays["W"]
        else:
            Zh, W = np.asarray(train.Z, np.float32), self.coef_
        Zh, W = np.asarray(Zh, np.float32), np.asarray(W, np.float32)
        mu, n = group_means(Zh, train.y, train.a, C, A)
        d = mean_difference_directions(mu, n, "signed")
        code = mean_difference_directions(mu, n, "abs", normalize=True)
        sigma = self._train_sigma(Zh, train)
        core, spur = class_core_directions(mu, n), attribute_pair_directions(mu, n)[0]
        L_spur, L_core = ll_terms(W, core, spur, sigma)
        cor_spur, cor_core = ll_terms(W, unit_sigma(core, sigma), unit_sigma(spur, sigma), sigma)
        info = {
            "space": "z" if isinstance(state, ProjectionState) else "x",
            "cor_core": float(cor_core),
            "cor_spur_abs": float(cor_spur),
            "L_core": float(L_core),
            "L_spur": float(L_spur),
            "norm_core_sigma": float(sigma.norm(d.core)),
            "norm_spur_sigma": float(sigma.norm(d.spurious)),
        }
        if isinstance(state, ProjectionState):
            a0 = self.info_["a0"] if self.info_["a0"] != "code" else a0_code(n)
            mode = self.direction_mode
            s, r = code_terms(Zh, train.y, train.a, C, A, a0, mode, sigma=sigma)
            X = np.asarray(train.Z, np.float32)
            s0, r0 = code_terms(
                X, train.y, train.a, C, A, a0, mode, sigma=self._train_sigma(X, train)
            )
            info.update(
                code_s=float(s), code_r=float(r), code_s_frozen=float(s0), code_r_frozen=float(r0)
            )
            mux, nx = group_means(X, train.y, train.a, C, A)
            dx = mean_difference_directions(mux, nx, "signed")
            self.artifacts_.update(
                delta_core_x=dx.core.astype(np.float32), delta_spur_x=dx.spurious.astype(np.float32)
            )
        self.info_["directions"] = info
        self.artifacts_.update(
            delta_core=d.core.astype(np.float32),
            delta_spur=d.spurious.astype(np.float32),
            delta_core_unit_abs=code.core.astype(np.float32),
            delta_spur_unit_abs=code.spurious.astype(np.float32),
        )


def unit_sigma(v, sigma: Sigma):
    """v / ||v||_Sigma per row (zero rows stay zero)."""
    nrm = sigma.norm(v)
    return v / np.where(nrm > 0, nrm, 1.0)[..., None]
