"""AFR, Automatic Feature Reweighting (methods spec section 6; paper arXiv:2306.11074, repo
AndPotap/afr).

Stage 1: an ERM head (W0, b0) fitted on `train_fit` (a seeded 80 % of train; selected by val mean
accuracy, which reads no group label). Stage 2 reweights the held-out 20 % (`train_holdout`) with y
only:
    p_i = softmax(W0 z_i + b0)[y_i]
    w~_i = exp(-gamma p_i);  class balance: w~_i *= n_0 / n_{y_i};  w = w~ / sum(w~)
    L(W, b) = sum_i w_i CE(W z_i + b, y_i) + lambda (||W - W0||_F^2 + ||b - b0||^2)
initialised at (W0, b0), full batch, plain SGD (no momentum, no weight decay), gradient-norm
clipping at 1.0, constant LR; one epoch = one step. (gamma, lambda, epoch) are chosen on val.

`stage1=stored` uses the cache's own head instead; on rows the backbone saw p_i ~ 1 makes the
weights uniform (AFR degenerates to ERM), so that needs `allow_seen_rows=True`. Whenever the cache
records that the backbone saw held-out rows (`Split.seen`), AFR refuses them in one line unless
`allow_seen_rows=True`, and the override is stored in the record (`info.seen_override`). The
effective sample size ESS = 1 / sum w_i^2 of every gamma is logged.

Defaults and their sources: the paper's protocol (full batch, SGD without momentum, clipping at 1,
500 epochs at lr 1e-2 on Waterbirds), evaluated every epoch as the official `train_embeddings.py`
selects over every epoch (`eval_every=1`). The paper's step size assumes ResNet-50 post-ReLU feature
scales and does not transfer: on a planted Waterbirds-size cache (D = 2048, unit-variance features)
the head barely leaves (W0, b0) in 500 clipped steps at lr 1e-2 (val WGA 0.29 -> 0.33 in every
config of `grid=waterbirds`). So the step size is a small grid selected on validation like gamma and
lambda: lr = lr_paper x `lr_scale_grid` (1, 10, 100, 1000); `lr_scale_grid=1` is the paper's value.

Budget [W]: the paper's Waterbirds grid is gamma in linspace(4, 20, 33) x lambda in {0, .1, .2, .3}
(132 configs, `grid=waterbirds`; `grid=celeba` gives the paper's 30). The default `grid=fast` keeps
the paper's lambdas and every sixteenth gamma, {4, 12, 20} (12 (gamma, lambda) pairs, a sub-grid of
the paper's), times the 4 step sizes: 48 configs, each full-batch epoch costing as much as
~N_holdout/128 minibatch steps per config and each epoch evaluated, so the full grid alone would
take a large share of a sweep's budget.
"""

from __future__ import annotations

import numpy as np
import torch

from embedkit.errors import EmbedkitError
from embedkit.heads.erm import ERMHead
from embedkit.heads.heldout import check_unseen, unseen_need
from embedkit.heads.params import Param
from embedkit.heads.trainer import (
    TRAINER_DEFAULTS,
    SGDHead,
    StepContext,
    Variant,
    as_grid,
    weighted_mean,
)
from embedkit.metrics import softmax
from embedkit.selection import GRIDS, expand_grid

PRESETS = {
    "waterbirds": {**GRIDS["afr_waterbirds"], "lr": 1e-2, "epochs": 500},
    "celeba": {**GRIDS["afr_celeba"], "lr": 2e-2, "epochs": 1000},
    "fast": {
        "gamma": list(np.linspace(4, 20, 3)),
        "lam": list(GRIDS["afr_waterbirds"]["lam"]),
        "lr": 1e-2,
        "epochs": 500,
    },
}


def afr_weights(
    p, y, gamma: float, class_balance: bool = True, n_classes: int | None = None
) -> np.ndarray:
    """w = w~ / sum(w~) with w~_i = exp(-gamma p_i), times n_0 / n_{y_i} under class balancing."""
    p, y = np.asarray(p, np.float64), np.asarray(y)
    w = np.exp(-float(gamma) * p)
    if class_balance:
        n = np.bincount(y, minlength=n_classes or int(y.max()) + 1).astype(np.float64)
        # n_0 / n_c; when class 0 is absent from the holdout any common factor gives the same w.
        ref = n[0] if n[0] > 0 else n[n > 0][0]
        w = w * (ref / n[y])
    return w / w.sum()


def effective_sample_size(w) -> float:
    w = np.asarray(w, np.float64)
    return float(w.sum() ** 2 / np.sum(w**2))


class L2Pull:
    """The weighted CE plus lambda (||W - W0||_F^2 + ||b - b0||^2), lambda per config, towards the
    trainer's initial head (W0, b0) (in the trainer's coordinates)."""

    def __init__(self, lam):
        self.lam = torch.as_tensor(np.asarray(lam, np.float64))

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        W, b = ctx.params["W"], ctx.params["b"]
        pull = (W - ctx.init["W"]).pow(2).sum(dim=(1, 2)) + (b - ctx.init["b"]).pow(2).sum(dim=1)
        return weighted_mean(ctx) + self.lam.to(W.device, W.dtype) * pull


class AFRHead(SGDHead):
    """Automatic Feature Reweighting: retrain the last layer on held-out train rows weighted by
    exp(-gamma p_i) of the ERM head's confidence, pulled towards that head."""

    name = "afr"
    regimes = ("R2",)

    PARAMS = {
        **SGDHead.PARAMS,
        "grid": Param(
            "choice",
            "fast",
            "preset (gamma, lambda, lr, epochs): fast (20 configs), waterbirds (the "
            "paper's 132) or celeba (30)",
            choices=tuple(PRESETS),
        ),
        "gamma_grid": Param(
            "floats", None, "reweighting temperatures gamma searched (none = the preset's)", low=0
        ),
        "lam_grid": Param(
            "floats",
            None,
            "L2 pulls lambda towards the stage-1 head searched (none = the preset's)",
            low=0,
        ),
        "lr": Param(
            "float", None, "stage-2 base learning rate (none = the preset's)", low=0, open_low=True
        ),
        "lr_scale_grid": Param(
            "floats",
            (1.0, 10.0, 100.0, 1000.0),
            "multipliers of the base learning rate searched on val",
            low=0,
            open_low=True,
        ),
        "epochs": Param(
            "int", None, "stage-2 full-batch epochs (= steps; none = the preset's)", low=1
        ),
        "eval_every": Param("int", 1, "epochs between evaluations (and the last)", low=1),
        "holdout_frac": Param(
            "float",
            0.2,
            "fraction of train held out for stage 2",
            low=0,
            high=1,
            open_low=True,
            open_high=True,
        ),
        "class_balance": Param("bool", True, "multiply the weights by n_0 / n_y (class balance)"),
        "stage1": Param(
            "choice",
            "fit",
            "stage-1 head: fitted here on the other train rows, or the cache's stored ERM head",
            choices=("fit", "stored"),
        ),
        "allow_seen_rows": Param(
            "bool",
            False,
            "accept held-out rows the backbone was (or may have been) trained on; "
            "recorded as info.seen_override",
        ),
    }

    def unmet(self, train, val) -> str | None:
        if self.params["stage1"] == "stored" and train.erm_head is None:
            return (
                "afr stage1=stored needs the frozen ERM head (W0, b0) stored with backbone "
                f"{train.backbone}"
            )
        if len(train) < 2:
            return None
        _, hold_idx = self.split_train(len(train))
        return unseen_need(
            "afr",
            train.subset(hold_idx),
            "held-out reweighting rows",
            allow=bool(self.params["allow_seen_rows"]),
        )

    def afr_grid(self) -> dict:
        p = self.params
        base = PRESETS[p["grid"]]
        return {
            "gamma": [
                float(g)
                for g in as_grid(p["gamma_grid"] if p["gamma_grid"] is not None else base["gamma"])
            ],
            "lam": [
                float(v)
                for v in as_grid(p["lam_grid"] if p["lam_grid"] is not None else base["lam"])
            ],
            "lr": float(p["lr"] if p["lr"] is not None else base["lr"]),
            "epochs": int(p["epochs"] if p["epochs"] is not None else base["epochs"]),
        }

    def configs(self) -> list[dict]:
        """The (gamma, lambda) configs of the chosen grid, in training order."""
        g = self.afr_grid()
        return expand_grid({"gamma": g["gamma"], "lam": g["lam"]})

    def split_train(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(train_fit, train_holdout) positions: a seeded (subsample stream) holdout_frac of
        train."""
        frac = float(self.params["holdout_frac"])
        if not 0.0 < frac < 1.0:
            raise EmbedkitError(f"afr: holdout_frac must lie in (0, 1), got {frac}")
        perm = np.random.default_rng(self.seeds["subsample"]).permutation(n)
        n_h = int(round(frac * n))
        if n_h < 1 or n_h >= n:
            raise EmbedkitError(
                f"afr: a holdout fraction of {frac} leaves no rows for one stage ({n} train rows)"
            )
        return np.sort(perm[n_h:]), np.sort(perm[:n_h])

    def _stage1(self, train, val, fit_idx):
        p = self.params
        if p["stage1"] == "stored":
            if train.erm_head is None:
                raise EmbedkitError(
                    "afr: stage1=stored needs a stored ERM head (W0, b0) in the cache"
                )
            if not p["allow_seen_rows"]:
                raise EmbedkitError(
                    "afr: stage1=stored reweights rows the backbone may have been trained on "
                    "(p_i ~ 1, uniform weights); pass allow_seen_rows=True if it never saw them"
                )
            W0, b0 = (np.asarray(h, np.float32) for h in train.erm_head)
            if W0.shape != (train.n_classes, train.Z.shape[1]):
                raise EmbedkitError(
                    f"afr: stored head has shape {W0.shape}, expected "
                    f"({train.n_classes}, {train.Z.shape[1]})"
                )
            return W0, b0
        shared = {
            k: p[k]
            for k in (
                "lr_grid",
                "wd_grid",
                "steps",
                "batch_size",
                "model",
                "standardize",
                "device",
                "threads",
            )
        }
        erm = ERMHead(
            seed=self.seed,
            selection_rule="val_mean",
            **shared,
            eval_every=TRAINER_DEFAULTS["eval_every"],
        ).fit(train.subset(fit_idx), val)
        self.info_["stage1"] = {"selected": erm.selected_, "n_fit_rows": int(len(fit_idx))}
        return erm.coef_, erm.intercept_

    def _fit(self, train, val, monitor):
        p = self.params
        grid = self.afr_grid()
        fit_idx, hold_idx = self.split_train(len(train))
        W0, b0 = self._stage1(train, val, fit_idx)
        hold = train.subset(hold_idx)
        # Reweighting reads the stage-1 head's confidence on the held-out rows: on rows the backbone
        # was trained on it is ~1 everywhere, and AFR degenerates to ERM.
        override = check_unseen(
            "afr", hold, "held-out reweighting rows", allow=bool(p["allow_seen_rows"])
        )
        if override:
            self.info_["seen_override"] = override
        conf = softmax((hold.Z @ W0.T + b0).astype(np.float64))[np.arange(len(hold)), hold.y]
        variants, ess = [], {}
        for gamma in grid["gamma"]:
            w = afr_weights(conf, hold.y, gamma, bool(p["class_balance"]), hold.n_classes)
            ess[repr(gamma)] = effective_sample_size(w)
            variants.append(Variant(tag={"gamma": gamma}, weights=w))
        lams = grid["lam"]
        scales = [float(v) for v in as_grid(p["lr_scale_grid"])]
        if min(scales) <= 0:
            raise EmbedkitError(f"afr: lr_scale_grid must be positive, got {scales}")
        cfgs = [
            {"lam": lam, "lr": grid["lr"] * sc, "lr_scale": sc, "wd": 0.0}
            for sc in scales
            for lam in lams
        ]
        res = self.run_grid(
            hold.Z,
            hold.y,
            val,
            monitor,
            grid=cfgs,
            variants=variants,
            objective=L2Pull([c["lam"] for _ in grid["gamma"] for c in cfgs]),
            init=(W0, b0),
            batch_size=None,
            momentum=0.0,
            clip_norm=1.0,
            steps=grid["epochs"],
            eval_every=int(p["eval_every"]),
        )
        self.adopt([res], val)
        w_sel = afr_weights(
            conf,
            hold.y,
            self.selected_["config"]["gamma"],
            bool(p["class_balance"]),
            hold.n_classes,
        )
        if (hold.a >= 0).all():
            g = hold.g
            self.info_["weight_mass_per_group"] = {
                name: float(w_sel[g == i].sum()) for i, name in enumerate(hold.group_names)
            }
        self.artifacts_.update(
            train_fit_rows=train.rows[fit_idx],
            train_holdout_rows=hold.rows,
            holdout_weights=w_sel.astype(np.float32),
            stage1_coef=W0,
            stage1_intercept=b0,
        )
        self.rows_ = {
            "fit": np.sort(train.rows),
            "tune": np.array([], np.int64),
            "select": np.sort(val.rows),
        }
        self.info_.update(
            afr_grid={**grid, "lr_scale": scales},
            ess=ess,
            n_holdout=int(len(hold_idx)),
            n_fit_rows=int(len(fit_idx)),
        )
