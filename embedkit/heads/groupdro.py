"""GroupDRO on the last layer (methods spec section 4; paper arXiv:1911.08731, the online
exponentiated-gradient update of repo kohpangwei/group_DRO `loss.py`).

Per step and per config, with l_i the per-example cross-entropy of the batch B:
- group means  l_g = (sum_{i in B, g_i = g} l_i) / max(1, n_g^B)   (0 for a group absent from B);
- adjustment   l~_g = l_g + C_adj,g / sqrt(n_g), n_g the full-train count, applied only when every
  C_adj,g > 0 (as the reference does);
- update       q <- q * exp(eta * l~) (no gradient through q), q <- q / sum(q); q starts at 1/G and
  persists across steps;
- loss         L = sum_g q_g l~_g (the adjustment is a constant: same gradient as sum_g q_g l_g).
Groups without train rows never appear in a batch: like an absent group they keep exp(0) = 1 and
lose mass through the renormalisation; their adjustment is not applied (1/sqrt(0) is undefined).
The greedy `--btl` variant is not implemented.
"""

from __future__ import annotations

import numpy as np
import torch

from embedkit.heads.balancing import sampler_probs
from embedkit.heads.params import Param
from embedkit.heads.trainer import SGDHead, StepContext, Variant, as_grid
from embedkit.selection import GRIDS


class GroupDROLoss:
    """The GroupDRO objective for K configs at once: eta [K], n_groups G, train counts n_g [G],
    adjustments C_adj [G] (or a scalar). Holds q [K, G]; `q_history` keeps q at every evaluation.
    Reads the batch's group ids from `ctx.batch["g"]` (pass row_data={"g": g} to the trainer)."""

    def __init__(self, eta, n_groups: int, train_counts=None, adj=0.0):
        self.eta = torch.as_tensor(np.asarray(eta, np.float64)).reshape(-1)
        self.G = int(n_groups)
        counts = np.zeros(self.G) if train_counts is None else np.asarray(train_counts, np.float64)
        adj = np.broadcast_to(np.asarray(adj, np.float64), (self.G,))
        # The reference adds the adjustment only when every C_adj,g > 0.
        shift = np.zeros(self.G)
        if np.all(adj > 0):
            ok = counts > 0
            shift[ok] = adj[ok] / np.sqrt(counts[ok])
        self.shift = torch.as_tensor(shift)
        self.q = None

    def group_means(self, losses: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """l_g [K, G] = segment sums of losses [K, B] over g [K, B] divided by max(1, n_g^B)."""
        onehot = torch.nn.functional.one_hot(g, self.G).to(losses.dtype)  # [K, B, G]
        sums = torch.einsum("kb,kbg->kg", losses, onehot)
        counts = onehot.sum(dim=1)
        return sums / counts.clamp(min=1)

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        losses = ctx.losses if ctx.weights is None else ctx.losses * ctx.weights
        lg = self.group_means(losses, ctx.batch["g"])
        K = lg.shape[0]
        dev, dt = lg.device, lg.dtype
        if self.q is None:
            self.q = torch.full((K, self.G), 1.0 / self.G, dtype=dt, device=dev)
        eta = self.eta.to(dev, dt).expand(K) if self.eta.numel() == 1 else self.eta.to(dev, dt)
        shift = self.shift.to(dev, dt)
        adjusted = lg + shift
        with torch.no_grad():
            q = self.q * torch.exp(eta[:, None] * adjusted.detach())
            self.q = q / q.sum(dim=1, keepdim=True)
        return (self.q * adjusted).sum(dim=1)

    def record(self, k: int) -> dict:
        return {"q": None if self.q is None else [float(v) for v in self.q[k].cpu()]}


class GroupDROHead(SGDHead):
    """Last-layer GroupDRO: the exponentiated-gradient group weights q over train groups (y, a),
    grid eta x lr x wd, (config, step) chosen by val WGA."""

    name = "groupdro"
    regimes = ("R1",)
    needs_train_attrs = True

    # Spec defaults [W]: eta in {1e-3, 1e-2, 1e-1}, wd in {1e-4, 1e-3, 1e-2, 1e-1}, the shared
    # LR grid and step budget; C_adj = 0. Group-balanced batches by default: every run of the
    # official kohpangwei/group_DRO scripts passes `--reweight_groups` (P(i) = 1/(G n_g(i)));
    # `sampler=uniform` is the reading of the loss alone.
    PARAMS = {
        **SGDHead.PARAMS,
        "eta_grid": Param(
            "floats",
            tuple(GRIDS["gdro"]["eta"]),
            "step sizes eta of the group weights q searched",
            low=0,
        ),
        "wd_grid": Param(
            "floats", tuple(GRIDS["gdro"]["wd"]), "weight decays searched (weights only)", low=0
        ),
        "adj": Param(
            "floats",
            0.0,
            "generalisation adjustment C_adj (one number, or one per group; used only "
            "when every C_adj,g > 0)",
            low=0,
        ),
        "sampler": Param(
            "choice",
            "group",
            "batch sampler: uniform rows, or group-balanced "
            "(P(i) = 1/(G n_g(i)), the official --reweight_groups)",
            choices=("uniform", "group"),
        ),
    }

    def _fit(self, train, val, monitor):
        p = self.params
        grid = [{"eta": eta, **c} for eta in as_grid(p["eta_grid"]) for c in self.default_grid()]
        g = train.g
        counts = np.bincount(g, minlength=train.n_groups)
        variant = (
            Variant(sampler=sampler_probs(g, train.n_groups))
            if p["sampler"] == "group"
            else Variant()
        )
        loss = GroupDROLoss([c["eta"] for c in grid], train.n_groups, counts, p["adj"])
        res = self.run_grid(
            train.Z,
            train.y,
            val,
            monitor,
            grid=grid,
            variants=[variant],
            objective=loss,
            row_data={"g": g},
        )
        self.adopt([res], val)
        self.rows_ = {
            "fit": np.sort(train.rows),
            "tune": np.array([], np.int64),
            "select": np.sort(val.rows),
        }
        self.info_.update(
            train_group_counts=counts.tolist(),
            q_final=loss.q.cpu().numpy().tolist() if loss.q is not None else None,
        )
