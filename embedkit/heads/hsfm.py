"""HSFM — Hard-Set-Guided Feature-Space Meta-Learning (methods spec section 8).

Sources: paper arXiv:2603.29313; repo ArianYp/Feature-Space-Meta-Learning commit 996e64d
`code/train_hsfm.py` (Algorithm 1, Eqs. 5-6 and 12-14). Symbols as in the spec:

- support S = {(h_i, y_i)}, `n_s` real train embeddings per class, h_i^0 = f(x_i); the h_i are the
  parameters (free per-sample, per-dimension edits e_i = h_i - h_i^0, no norm penalty);
- hard set H(theta): per class c the `K_hard` val rows with the largest CE under the current head;
- inner loop: plain GD from theta_0 on the full support, theta_{t+1} = theta_t - alpha grad CE(S;
  theta_t), t = 0..T-1, differentiable (`create_graph=True`);
- outer: min_h CE(H(theta_0); theta_T(h)) by Adam(eta) on h, gradient-norm clipping at `clip` (10);
- after the `K_H` outer steps of an epoch the persistent head takes T Adam(lr = alpha) steps on
  CE(S with h detached); that head is theta_0 for the next epoch. Both Adam states persist.
- selection: the epoch by val worst-group accuracy, ties -> later epoch (metrics spec 4.2).

The paper draws the hard set from the same val it selects on; embedkit's default
`val_split_for_hard=0.5` [W, spec option] draws the hard set from a seeded group-stratified half of
val and selects on the other half, so the run passes the leak guard and takes part in default tables
(measured on the real caches: the same test WGA within noise). `val_split_for_hard=0` is the paper's
protocol: the run is flagged `val_used_for_training` / `selected_on_fit_data` (the runner then needs
`--allow-overlap`, and flagged runs stay out of default tables).

Hyperparameters: `preset` = "waterbirds" (default) | "celeba" | "metashift" | "dominoes" (paper
Table 11, for 2048-d ResNet-50 features); explicit n_s, T, alpha, eta, K_H, K_hard, epochs override
the preset. The inner/head step size alpha does not transfer across feature scales, so by default it
is selected with the epoch on the selection rows from the preset's alpha x (1, 10, 100)
(`alpha_grid` gives other candidates; an explicit `alpha` fixes it). No default here was chosen on
test metrics. `selected_["split"]` is "val[select]" when the hard set took the other part of val.
theta_ERM is the cache's stored ERM head when its shape fits, otherwise an `erm` probe fitted on
train first (spec choices: "CLIP backbones: fit an erm probe on train first").

Artifacts for the edit visualisation (spec 8.1): `support_before` (H0 [N_s, D]), `support_after`
(H at the selected epoch), `support_y` (yS), `support_rows` (cache rows of the support items).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from embedkit import heads as _heads
from embedkit.determinism import reproducible
from embedkit.errors import EmbedkitError
from embedkit.heads.base import Head
from embedkit.heads.params import Param
from embedkit.heads.trainer import THREADS
from embedkit.selection import check_leak, reserve_val, select

# Paper Table 11 as encoded in the released code (2048-d ResNet-50 features) [P].
PRESETS = {
    "waterbirds": dict(n_s=16, T=15, alpha=5e-5, eta=1.0, K_H=15, K_hard=64, epochs=40),
    "celeba": dict(n_s=1024, T=10, alpha=5e-5, eta=1.0, K_H=5, K_hard=256, epochs=20),
    "metashift": dict(n_s=32, T=15, alpha=5e-5, eta=1e-2, K_H=10, K_hard=64, epochs=10),
    "dominoes": dict(n_s=16, T=10, alpha=1e-4, eta=1.0, K_H=15, K_hard=256, epochs=40),
}
# The paper's alpha does not transfer across feature scales: an Adam(alpha) head step moves a logit
# by up to alpha * ||z||_1, about 30x less on the 64-d ResNet-20 features of the project's real
# caches than on ResNet-50 avgpool features. So by default alpha is selected on the selection rows
# (never the hard-set rows, never test) from the preset's value times ALPHA_SCALES [W]; an explicit
# `alpha` (or `alpha_grid`) fixes it.
ALPHA_SCALES = (1.0, 10.0, 100.0)
HYPER = tuple(PRESETS["waterbirds"])


def hard_set(losses: np.ndarray, y: np.ndarray, K: int, n_classes: int) -> np.ndarray:
    """Row indices of the hard set: per class c, the K rows of y == c with the largest loss
    (all of them when the class has fewer); equal losses go to the lower index [W]."""
    out = []
    for c in range(n_classes):
        rows = np.flatnonzero(y == c)
        order = np.argsort(-losses[rows], kind="stable")
        out.append(rows[order[:K]])
    return np.concatenate(out)


def unrolled_head(H, yS, W0, b0, T: int, alpha: float):
    """theta_T(H): T differentiable plain-GD steps of the linear head from theta_0 = (W0, b0) on
    the support (H, yS); the graph back to H is kept (second order)."""
    W, b = W0.detach().clone().requires_grad_(True), b0.detach().clone().requires_grad_(True)
    for _ in range(T):
        loss = F.cross_entropy(H @ W.T + b, yS)
        gW, gb = torch.autograd.grad(loss, (W, b), create_graph=True)
        W, b = W - alpha * gW, b - alpha * gb
    return W, b


def outer_loss(H, yS, W0, b0, Xh, yh, T: int, alpha: float):
    """L_out = CE(Xh theta_T(H)^T, yh): the hard-set loss after adapting on the edited support."""
    W, b = unrolled_head(H, yS, W0, b0, T, alpha)
    return F.cross_entropy(Xh @ W.T + b, yh)


def hypergradient(H, yS, W0, b0, Xh, yh, T: int, alpha: float):
    """(L_out, dL_out/dH) through the T unrolled steps."""
    H = H.detach().requires_grad_(True)
    loss = outer_loss(H, yS, W0, b0, Xh, yh, T, alpha)
    (g,) = torch.autograd.grad(loss, H)
    return loss.detach(), g


class HSFMHead(Head):
    """Hard-set-guided feature-space meta-learning: edit a class-balanced support so a head adapted
    on it fits the hardest val rows."""

    name = "hsfm"
    regimes = ("R1", "R2")

    # The hyperparameters come from `preset` (the paper's per-dataset values, or embedkit's);
    # any of n_s, T, alpha, eta, K_H, K_hard, epochs given explicitly overrides the preset's value.
    # alpha_grid None: the preset's alpha x ALPHA_SCALES, selected with the epoch on val[select].
    PARAMS = {
        "preset": Param(
            "choice",
            "waterbirds",
            "hyperparameter preset: the paper's Table 11 rows (2048-d ResNet-50 "
            "features) or embedkit's",
            choices=tuple(PRESETS),
        ),
        "n_s": Param("int", None, "support rows per class (none = the preset's)", low=1),
        "T": Param(
            "int",
            None,
            "inner GD steps (and head Adam steps per epoch; none = the preset's)",
            low=1,
        ),
        "alpha": Param(
            "float",
            None,
            "inner step size alpha (and the head's Adam lr; none = alpha_grid)",
            low=0,
        ),
        "eta": Param(
            "float", None, "outer Adam lr on the support edits (none = the preset's)", low=0
        ),
        "K_H": Param("int", None, "outer steps per epoch (none = the preset's)", low=1),
        "K_hard": Param("int", None, "hard-set rows per class (none = the preset's)", low=1),
        "epochs": Param("int", None, "epochs (none = the preset's)", low=1),
        "alpha_grid": Param(
            "floats",
            None,
            "inner step sizes searched on val[select] (none = alpha if given, else "
            "the preset's alpha x (1, 10, 100))",
            low=0,
        ),
        "clip": Param(
            "float", 10.0, "gradient-norm clipping of the outer step", low=0, open_low=True
        ),
        "val_split_for_hard": Param(
            "float",
            0.5,
            "fraction of val (group-stratified) the hard set is drawn from; the "
            "rest selects. 0 = the paper's protocol (flagged)",
            low=0,
            high=1,
            open_high=True,
        ),
        "init": Param(
            "choice",
            "auto",
            "theta_ERM: the stored ERM head when it fits (auto), stored, or an erm probe",
            choices=("auto", "stored", "erm"),
        ),
        "threads": THREADS,
    }

    def resolved(self) -> dict:
        """The hyperparameters in force: the preset's, overridden by explicit values."""
        hp = dict(PRESETS[self.params["preset"]])
        hp.update({k: self.params[k] for k in HYPER if self.params[k] is not None})
        for k in ("n_s", "T", "K_H", "K_hard", "epochs"):
            hp[k] = int(hp[k])
            if hp[k] < 1:
                raise EmbedkitError(f"hsfm: {k} must be >= 1, not {hp[k]}")
        hp["alpha"], hp["eta"] = float(hp["alpha"]), float(hp["eta"])
        return hp

    def alphas(self) -> list[float]:
        """The inner step sizes tried: `alpha_grid`, else an explicit `alpha`, else the preset's
        alpha x ALPHA_SCALES."""
        p = self.params
        if p["alpha_grid"] is not None:
            out = [
                float(a)
                for a in np.atleast_1d(
                    np.asarray(
                        p["alpha_grid"].split(",")
                        if isinstance(p["alpha_grid"], str)
                        else p["alpha_grid"],
                        float,
                    )
                )
            ]
        elif p["alpha"] is not None:
            out = [float(p["alpha"])]
        else:
            out = [PRESETS[p["preset"]]["alpha"] * s for s in ALPHA_SCALES]
        if not out or min(out) < 0:
            raise EmbedkitError(f"hsfm: alpha_grid must hold step sizes >= 0, got {out}")
        return out

    # -- theta_ERM ----------------------------------------------------------------------------
    def _theta_erm(self, train, val):
        """(W0, b0, source, probe rows). The cache's stored ERM head when it matches the classes;
        otherwise (CLIP and other backbones without a task head) an `erm` probe fitted on train
        first, as the spec's choices prescribe, since theta_0 shapes the first hard set."""
        stored = train.erm_head
        matches = stored is not None and np.shape(stored[0]) == (train.n_classes, train.Z.shape[1])
        mode = self.params["init"]
        if mode == "stored" and not matches:
            raise EmbedkitError(
                "hsfm: init=stored but the cache has no ERM head with "
                f"{train.n_classes} classes and dim {train.Z.shape[1]} for backbone "
                f"{train.backbone!r}"
            )
        if mode == "stored" or (mode == "auto" and matches):
            return (
                np.asarray(stored[0], np.float32),
                np.asarray(stored[1], np.float32),
                "stored",
                None,
            )
        probe = _heads.create("erm", seed=self.seed).fit(train, val)
        return (
            np.asarray(probe.coef_, np.float32),
            np.asarray(probe.intercept_, np.float32),
            "erm",
            probe.rows_,
        )

    # -- fit --------------------------------------------------------------------------------
    def _fit(self, train, val, monitor):
        # Spec 0.4 on CPU: deterministic kernels and a fixed thread count (one thread is also the
        # fastest for these small matrices on shared cores), restored afterwards.
        with reproducible(self.params["threads"]):
            self._bilevel(train, val, monitor)

    def _bilevel(self, train, val, monitor):
        hp = self.resolved()
        C = train.n_classes
        n_s = hp["n_s"]

        # Support: n_s random train rows per class (subsample stream), class by class.
        rng = np.random.default_rng(self.seeds["subsample"])
        idx = []
        for c in range(C):
            rows = np.flatnonzero(train.y == c)
            if len(rows) == 0:
                raise EmbedkitError(
                    f"hsfm: class {train.class_names[c]!r} has no train rows for the support set"
                )
            idx.append(rows[rng.permutation(len(rows))[:n_s]])
        idx = np.concatenate(idx)
        yS_np = train.y[idx]

        # Hard-set pool and selection rows: all of val, or a seeded group-stratified fraction of val
        # (the same draw as a `val_reserved` part) for the hard set and the rest for selection.
        frac = float(self.params["val_split_for_hard"])
        sel, pool = reserve_val(val, frac, self.seed) if frac > 0 else (val, val)
        if len(sel) == 0 or len(pool) == 0:
            raise EmbedkitError(
                f"hsfm: val_split_for_hard={frac} leaves an empty hard-set pool or selection part "
                f"of val ({len(val)} rows)"
            )

        # The probe (when no ERM head is stored) selects on the hard-set pool, never on `sel`.
        W0, b0, init_source, probe_rows = self._theta_erm(train, pool)
        H0 = torch.from_numpy(np.ascontiguousarray(train.Z[idx], np.float32))
        yS = torch.from_numpy(yS_np.astype(np.int64))
        V = torch.from_numpy(np.ascontiguousarray(pool.Z, np.float32))
        yV = torch.from_numpy(pool.y.astype(np.int64))

        rule = self.rule(val)
        best = None
        for cid, alpha in enumerate(self.alphas()):
            config = {"preset": self.params["preset"], **hp, "alpha": alpha}
            best, hard = self._run(
                config, cid, H0, yS, V, yV, pool, sel, monitor, W0, b0, rule, best
            )

        # The rows actually read: the selection part of val when the hard set took the other part.
        chosen = self._select(
            self.history_,
            rule,
            "val[select]" if frac > 0 else "val",
            tie="later_epoch",
            rows=sel.rows,
        )
        self.coef_, self.intercept_, H_best, best_epoch, outer_losses, _ = best

        fit_rows, tune_rows = np.union1d(train.rows[idx], pool.rows), np.empty(0, np.int64)
        if probe_rows is not None:
            fit_rows = np.union1d(fit_rows, np.asarray(probe_rows["fit"], np.int64))
            tune_rows = np.sort(np.asarray(probe_rows["select"], np.int64))
        overlap = frac == 0
        flags = check_leak(np.union1d(fit_rows, tune_rows), sel.rows, allow_overlap=overlap)
        self.rows_ = {"fit": fit_rows, "tune": tune_rows, "select": np.sort(sel.rows)}

        H0_np = H0.numpy()
        edit = np.linalg.norm(H_best - H0_np, axis=1) / np.maximum(
            np.linalg.norm(H0_np, axis=1), 1e-12
        )
        self.info_.update(
            {
                "hyperparameters": chosen["config"],
                "alpha_grid": self.alphas(),
                "init": init_source,
                "best_epoch": int(best_epoch),
                "val_wga": chosen["val"]["worst_group_acc"],
                "support_per_class": np.bincount(yS_np, minlength=C).tolist(),
                "hard_set_size": int(len(hard)),
                "outer_loss": outer_losses,
                "relative_edit_norm_mean": float(edit.mean()),
                "val_used_for_training": overlap,
                **flags,
            }
        )
        self.artifacts_.update(
            {
                "support_before": H0_np,
                "support_after": H_best,
                "support_y": yS_np.astype(np.int64),
                "support_rows": train.rows[idx].astype(np.int64),
            }
        )

    def _run(self, config, cid, H0, yS, V, yV, pool, sel, monitor, W0, b0, rule, best):
        """One bilevel run (Algorithm 1) at `config`; appends its per-epoch records to history_ and
        returns (the running best (W, b, H, epoch, outer losses) over all runs so far, last hard
        set)."""
        T, alpha, eta, K_H, K, E = (
            config[k] for k in ("T", "alpha", "eta", "K_H", "K_hard", "epochs")
        )
        C = len(W0)
        H = torch.nn.Parameter(H0.clone())
        head_W = torch.nn.Parameter(torch.from_numpy(W0.copy()))
        head_b = torch.nn.Parameter(torch.from_numpy(b0.copy()))
        opt_H = torch.optim.Adam([H], lr=eta)
        opt_head = torch.optim.Adam([head_W, head_b], lr=alpha)
        theta0 = (head_W.detach().clone(), head_b.detach().clone())
        outer_losses, hard = [], None
        for epoch in range(1, E + 1):
            with torch.no_grad():
                losses = F.cross_entropy(V @ theta0[0].T + theta0[1], yV, reduction="none").numpy()
            hard = hard_set(losses, pool.y, K, C)  # fixed for the epoch
            Xh, yh = V[hard], yV[hard]
            for _ in range(K_H):
                L_out = outer_loss(H, yS, theta0[0], theta0[1], Xh, yh, T, alpha)
                opt_H.zero_grad()
                L_out.backward()
                torch.nn.utils.clip_grad_norm_([H], max_norm=float(self.params["clip"]))
                opt_H.step()
            outer_losses.append(float(L_out.detach()))
            Hd = H.detach()
            for _ in range(T):
                opt_head.zero_grad()
                F.cross_entropy(Hd @ head_W.T + head_b, yS).backward()
                opt_head.step()
            theta0 = (head_W.detach().clone(), head_b.detach().clone())

            W_np, b_np = theta0[0].numpy(), theta0[1].numpy()
            rec = self._record(
                cid, config, epoch, sel, lambda Z, W=W_np, b=b_np: Z @ W.T + b, monitor
            )
            self.history_.append(rec)
            # select() is a total order over records: the best of (previous best, this record) is
            # the
            # best so far, so keeping that state avoids storing every epoch.
            top = rec if best is None else select([best[5], rec], rule=rule, tie="later_epoch")
            if _same(top, rec):
                best = (W_np.copy(), b_np.copy(), Hd.numpy().copy(), epoch, outer_losses, rec)
        return best, hard


def _same(a, b) -> bool:
    return (a["config_id"], a["step"]) == (b["config_id"], b["step"])
