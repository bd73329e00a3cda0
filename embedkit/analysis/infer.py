"""Group inference without attribute labels (methods spec section 14), beside the GEORGE-style
clustering of `clusters.py`: `infer_jtt` (14.1), `infer_eiil` (14.3), and `infer_groups`, which
runs any of jtt / eiil / george on a cache's train and val splits and returns the pseudo-attributes
the way GEORGE's are used (`clusters.py` docstring): an attribute-like array per split, so that

    pseudo = infer_groups("eiil", train, val, seed=seeds["infer"])
    train, val = pseudo.apply(train, "train"), pseudo.apply(val, "val")

gives splits whose `a` (and so g = y*A + a) are the inferred groups; any head then trains and
selects on them. Quality against the true groups (ARI, purity, minority precision/recall, section
14.4) is recorded per split where the true attribute is known; it is reporting only.

Reference logits [W]. JTT and EIIL read the logits of an ERM model. The cache's stored logits are
used when they score the task's classes (`clusters.task_logits`); otherwise (a backbone's own head
of another label set, or none) a linear ERM head is trained on the train embeddings with the shared
trainer under the infer stream: for EIIL at lr 1e-2, wd 1e-4, 1,000 steps; for JTT the
identification head of `jtt` (T = 2 epochs at lr 1e-2 with the strong weight decay 0.1 of its
default grid). Val rows get the same model's logits; EIIL infers the environments of each split
separately (it is transductive), JTT's error set on val is the same head's misclassified val rows,
GEORGE assigns val rows to the train clusters of their class.

EIIL [P: repo ecreager/eiil `opt_env/utils/opt_utils.py::split_data_opt`]: with l_i(s) = CE(s L_i,
y_i), q = sigmoid(u), u ~ N(0, 1) (infer stream), R_1 = mean_i q_i l_i, R_2 = mean_i (1 - q_i) l_i
over all N rows; maximise 1/2 ((dR_1/ds)^2 + (dR_2/ds)^2) at s = 1 over u with Adam (lr 1e-3, 10,000
full-batch steps); a~_i = 1[q_i > 0.5]. The derivative has the closed form dl_i/ds |_{s=1} =
(softmax(L_i) - onehot(y_i)) . L_i, so the loop differentiates through u only (the reference builds
the graph through s at every step; `tests/test_analysis_infer.py` runs that plain loop and checks
the assignment agrees).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch

from embedkit.analysis.clusters import agreement, infer_george, task_logits
from embedkit.errors import EmbedkitError
from embedkit.heads.jtt import error_set

METHODS = ("jtt", "eiil", "george")


# ----------------------------------------------------------------------------------------------
# JTT (14.1)
# ----------------------------------------------------------------------------------------------


def infer_jtt(logits, y) -> np.ndarray:
    """a~_i = 1[i in E], E = the rows the identification model misclassifies (jtt.error_set)."""
    a = np.zeros(len(y), np.int64)
    a[error_set(logits, y)] = 1
    return a


# ----------------------------------------------------------------------------------------------
# EIIL (14.3)
# ----------------------------------------------------------------------------------------------


def scale_derivative(logits, y) -> np.ndarray:
    """dl_i/ds at s = 1 for l_i(s) = CE(s L_i, y_i): (softmax(L_i) - onehot(y_i)) . L_i."""
    L = np.asarray(logits, np.float64)
    Z = L - L.max(axis=1, keepdims=True)
    p = np.exp(Z) / np.exp(Z).sum(axis=1, keepdims=True)
    p[np.arange(len(y)), np.asarray(y)] -= 1.0
    return (p * L).sum(axis=1)


def eiil_objective(q, dl) -> float:
    """1/2 ((mean q dl)^2 + (mean (1 - q) dl)^2): the EIIL penalty, symmetric under q <-> 1 - q."""
    q, dl = np.asarray(q, np.float64), np.asarray(dl, np.float64)
    return 0.5 * (np.mean(q * dl) ** 2 + np.mean((1 - q) * dl) ** 2)


def eiil_environments(
    logits, y, *, steps: int = 10_000, lr: float = 1e-3, seed: int = 0
) -> np.ndarray:
    """q = sigmoid(u) after maximising the EIIL penalty over u (u0 ~ N(0, 1) from `seed`)."""
    y = np.asarray(y, np.int64)
    if np.ndim(logits) != 2 or len(logits) != len(y) or np.shape(logits)[1] <= y.max():
        raise EmbedkitError(
            f"eiil: logits of shape {np.shape(logits)} do not score the {int(y.max()) + 1} "
            f"classes of {len(y)} rows"
        )
    dl = torch.as_tensor(scale_derivative(logits, y))
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.randn(len(y), generator=gen, dtype=torch.float64).requires_grad_()
    opt = torch.optim.Adam([u], lr=float(lr))
    for _ in range(int(steps)):
        q = torch.sigmoid(u)
        penalty = 0.5 * ((q * dl).mean() ** 2 + ((1 - q) * dl).mean() ** 2)
        opt.zero_grad()
        (-penalty).backward()
        opt.step()
    return torch.sigmoid(u).detach().numpy()


def infer_eiil(logits, y, **kwargs) -> np.ndarray:
    """a~_i = 1[q_i > 0.5]."""
    return (eiil_environments(logits, y, **kwargs) > 0.5).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Any method on a cache's splits
# ----------------------------------------------------------------------------------------------


@dataclass
class PseudoGroups:
    """Inferred attributes per split name, their names, and their quality against the true
    groups."""

    method: str
    a: dict  # split name -> [N] int64 pseudo-attribute
    n_attrs: int
    quality: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def attr_names(self) -> list[str]:
        return [f"{self.method}{j}" for j in range(self.n_attrs)]

    def apply(self, split, name: str):
        """The split with its attributes replaced by the inferred ones (GEORGE's path)."""
        a = self.a[name]
        if len(a) != len(split):
            raise EmbedkitError(
                f"inferred groups for {name!r} have {len(a)} rows, the split has {len(split)}"
            )
        return dataclasses.replace(split, a=a, attr_names=self.attr_names, train_group_counts=None)

    def record(self) -> dict:
        return {
            "method": self.method,
            "n_attrs": self.n_attrs,
            "attr_names": self.attr_names,
            "sizes": {
                k: np.bincount(v, minlength=self.n_attrs).tolist() for k, v in self.a.items()
            },
            "quality": self.quality,
            "info": self.info,
        }


def _erm_logits(train, splits, *, lr: float, wd: float, steps: int, seed: int):
    """Logits of one linear ERM head trained on train embeddings (shared trainer, infer stream)."""
    from embedkit.heads.trainer import LoopConfig, fit_grid

    s_init, s_samp = (
        int(c.generate_state(1)[0]) for c in np.random.SeedSequence(int(seed)).spawn(2)
    )
    res = fit_grid(
        train.Z,
        train.y,
        [{"lr": float(lr), "wd": float(wd)}],
        LoopConfig(
            steps=int(steps),
            eval_every=int(steps),
            init_seed=s_init,
            sampler_seed=s_samp,
            device="cpu",
            threads=1,
        ),
    )
    head = res.final[0]
    return {name: head.logits(s.Z) for name, s in splits.items()}


def _quality(pred_a, split) -> dict | None:
    if not (split.a >= 0).any():
        return None
    n_attrs = int(pred_a.max()) + 1 if len(pred_a) else 1
    return agreement(split.y * n_attrs + pred_a, split.g, y=split.y, true_a=split.a, pred_a=pred_a)


def infer_groups(
    method: str, train, val=None, *, seed: int = 0, eiil_steps: int = 10_000
) -> PseudoGroups:
    """Pseudo-attributes for train (and val) from `method` in jtt / eiil / george, reading y, the
    embeddings and the reference logits only (never a); quality recorded where a is known."""
    if method not in METHODS:
        raise EmbedkitError(f"unknown group inference {method!r}; choose from {', '.join(METHODS)}")
    splits = {"train": train} if val is None else {"train": train, "val": val}
    info = {}
    if method == "george":
        inf = infer_george(train.Z, train.y, logits=task_logits(train), seed=seed)
        a = {"train": inf.a}
        if val is not None:
            a["val"] = inf.assign(val.Z, val.y, task_logits(val))
        n_attrs = inf.n_attrs
        info.update(k_per_class=inf.k_per_class, params=inf.params)
    else:
        stored = {name: task_logits(s) for name, s in splits.items()}
        if all(L is not None for L in stored.values()):
            logits, info["reference"] = stored, "stored logits"
        elif method == "jtt":
            epoch = math.ceil(len(train) / 128)
            logits = _erm_logits(train, splits, lr=1e-2, wd=0.1, steps=2 * epoch, seed=seed)
            info["reference"] = "erm head: T=2 epochs, lr 1e-2, wd 0.1 (jtt identification)"
        else:
            logits = _erm_logits(train, splits, lr=1e-2, wd=1e-4, steps=1000, seed=seed)
            info["reference"] = "erm head: lr 1e-2, wd 1e-4, 1000 steps"
        if method == "jtt":
            a = {name: infer_jtt(L, splits[name].y) for name, L in logits.items()}
        else:
            a = {
                name: infer_eiil(L, splits[name].y, steps=eiil_steps, seed=seed + i)
                for i, (name, L) in enumerate(logits.items())
            }
            info["eiil"] = {"steps": int(eiil_steps), "lr": 1e-3}
        n_attrs = 2
    quality = {name: _quality(a[name], s) for name, s in splits.items()}
    return PseudoGroups(method=method, a=a, n_attrs=int(n_attrs), quality=quality, info=info)
