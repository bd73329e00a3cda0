"""GERNE — Gradient Extrapolation for Debiased Representation Learning (methods spec section 9).

Source: paper arXiv:2503.13236 (ICCV 2025, camera-ready with supplement; no official code). Symbols:

- K classes, A attribute values; alpha_ya = |X_ya| / |X_y| (within-class attribute frequency);
- biased batch B_b: p_b(a|y) = alpha_ya; less-biased batch B_lb: p_lb(a|y) = (1 - c) alpha_ya + c/A,
  c in (0, 1]; both uniform over classes (B rows per class) and uniform over rows within a group;
- L_b, L_lb = mean CE over B_b, B_lb; L_ext = L_lb + beta (L_lb - L_b) = (1 + beta) L_lb - beta L_b;
- in expectation (App. A) L_ext = (1/K) sum_(y,a) p_ext(a|y) L_ya with
  p_ext(a|y) = alpha_ya + c (beta + 1) (1/A - alpha_ya): group reweighting with weights
  p_ext(a|y)/K;
- bounds (App. C): beta in [-1, beta_max], beta_max = alpha''/(c (alpha'' - 1/A)) - 1, alpha'' = max
  alpha_ya; beta_eq = 1/c - 1 weights the groups equally;
- unknown attributes (section 9.4): a biased head f~ (class-balanced batches, weight decay x2, LR
  x0.1, selected by val class-balanced accuracy) scores p~(y|x); per class the floor(t |X_y|) least
  confident rows form the pseudo-group "hard", the rest "easy" (A~ = 2), then sections 9.1-9.2 run
  on them.

`gerne_expected` (section 9.6) is the deterministic expectation: full-batch CE with per-row weight
omega_i = p_ext(a_i|y_i) / (K |X_{y_i a_i}|).

On frozen embeddings only the head is debiased, so GERNE is noisy group reweighting of a near-convex
problem (spec 9.6): expect gains of the order of group resampling's, not the paper's.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from embedkit.errors import EmbedkitError
from embedkit.heads.base import Head
from embedkit.heads.params import Param
from embedkit.heads.trainer import (
    TRAINER_PARAMS,
    LoopConfig,
    Variant,
    as_grid,
    fit_grid,
    seeded_loop,
)
from embedkit.metrics import softmax
from embedkit.selection import check_leak, select

# Embedkit clips beta to at most this fraction of beta_max (spec 9.3 [W]: training diverges near the
# bound).
BETA_CLIP = 0.95


# ----------------------------------------------------------------------------------------------
# Group frequencies, p_ext and the beta bounds (spec 9.1-9.3)
# ----------------------------------------------------------------------------------------------


def within_class_frequencies(
    y, a, K: int, A: int, group_names=None
) -> tuple[np.ndarray, np.ndarray]:
    """(alpha [K, A], counts [K, A]) with alpha_ya = |X_ya| / |X_y|. GERNE assumes every group
    non-empty (spec 9: a less-biased batch draws c/A of each class from every group)."""
    y, a = np.asarray(y, np.int64), np.asarray(a, np.int64)
    if (a < 0).any():
        raise EmbedkitError(
            f"gerne: {int((a < 0).sum())} train rows have unknown attribute (a = -1); "
            "use attrs=unknown for pseudo-groups"
        )
    counts = np.bincount(y * A + a, minlength=K * A).reshape(K, A)
    empty = np.argwhere(counts == 0)
    if len(empty):
        y0, a0 = (int(v) for v in empty[0])
        name = group_names[y0 * A + a0] if group_names is not None else f"y={y0}, a={a0}"
        raise EmbedkitError(
            f"gerne: train group {name} has no rows; GERNE needs every group non-empty"
        )
    return counts / counts.sum(1, keepdims=True), counts


def batch_probs(alpha: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """(p_b, p_lb) [K, A]: p_b = alpha; p_lb = (1 - c) alpha + c/A."""
    _check_c(c)
    A = alpha.shape[1]
    return alpha, (1.0 - c) * alpha + c / A


def p_ext(alpha: np.ndarray, c: float, beta: float) -> np.ndarray:
    """p_ext(a|y) = alpha_ya + c (beta + 1) (1/A - alpha_ya) (App. A); equals (1 + beta) p_lb - beta
    p_b."""
    A = alpha.shape[1]
    return alpha + c * (beta + 1.0) * (1.0 / A - alpha)


def beta_max(alpha: np.ndarray, c: float) -> float:
    """beta_max = alpha''/(c (alpha'' - 1/A)) - 1 with alpha'' = max alpha_ya (App. C): the beta at
    which the largest majority group's simulated share reaches 0. +inf when every alpha_ya = 1/A (no
    bias)."""
    _check_c(c)
    A = alpha.shape[1]
    top = float(alpha.max())
    if top - 1.0 / A <= 1e-12:
        return math.inf
    return top / (c * (top - 1.0 / A)) - 1.0


def beta_interval(alpha: np.ndarray, c: float) -> tuple[float, float]:
    """The exact interval where p_ext(a|y) in [0, 1] for every group with alpha_ya != 1/A:
    per group i1 = -alpha/(c (1/A - alpha)) - 1, i2 = (1 - alpha)/(c (1/A - alpha)) - 1, then
    max_g min(i1, i2) <= beta <= min_g max(i1, i2) (spec 9.3)."""
    A = alpha.shape[1]
    al = alpha[np.abs(alpha - 1.0 / A) > 1e-12]
    if not al.size:
        return -math.inf, math.inf
    den = c * (1.0 / A - al)
    i1, i2 = -al / den - 1.0, (1.0 - al) / den - 1.0
    return float(np.minimum(i1, i2).max()), float(np.maximum(i1, i2).min())


def beta_eq(c: float) -> float:
    """beta_eq = 1/c - 1: c (beta + 1) = 1, every group weighted equally (p_ext = 1/A)."""
    _check_c(c)
    return 1.0 / c - 1.0


def check_beta(beta: float, alpha: np.ndarray, c: float) -> float:
    """The beta GERNE trains with: refused (EmbedkitError) outside [-1, beta_max]; clipped to at
    most 0.95 beta_max inside it (spec 9.3 [W])."""
    hi = beta_max(alpha, c)
    if not (-1.0 <= beta <= hi):
        raise EmbedkitError(
            f"gerne: beta={beta:g} is outside [-1, beta_max={hi:.4g}] for c={c:g} "
            f"(beta_max from the train group proportions, alpha''={float(alpha.max()):.4f})"
        )
    return min(float(beta), BETA_CLIP * hi)


def default_betas(alpha: np.ndarray, c: float) -> list[float]:
    """Spec 9.7 grid: {-1, 0, beta_eq} and 5 values linearly spaced in (beta_eq, 0.95 beta_max]."""
    eq, top = beta_eq(c), BETA_CLIP * beta_max(alpha, c)
    grid = [-1.0, 0.0, eq]
    if math.isfinite(top) and top > eq:
        grid += list(np.linspace(eq, top, 6)[1:])
    out = []
    for b in grid:
        if all(abs(b - o) > 1e-9 for o in out):
            out.append(float(b))
    return out


def expected_weights(
    y, a, alpha: np.ndarray, counts: np.ndarray, c: float, beta: float
) -> np.ndarray:
    """omega_i = p_ext(a_i|y_i) / (K |X_{y_i a_i}|): sum_i omega_i l_i = (1/K) sum_(y,a) p_ext(a|y)
    L_ya, the expectation of L_ext (`gerne_expected`, spec 9.6)."""
    K = alpha.shape[0]
    return (p_ext(alpha, c, beta) / (K * counts))[y, a]


def _check_c(c: float):
    if not 0.0 < c <= 1.0:
        raise EmbedkitError(f"gerne: mixing factor c={c:g} must be in (0, 1]")


# ----------------------------------------------------------------------------------------------
# Batches (spec 9.1, Algorithm 1)
# ----------------------------------------------------------------------------------------------


class GroupBatchSampler:
    """Index draws over the train rows for the biased and less-biased batches.

    `draw(p)`: per class y, counts n[A] ~ Multinomial(B, p[y]) (E[n] = B p[y]), then n[a] rows drawn
    uniformly with replacement from group (y, a); K*B row ids. `draw_coupled(ib, c)` [W, spec
    9.5/9.6 option]: B_lb from B_b slot by slot, keeping a slot's attribute with probability 1 - c
    and drawing it uniformly otherwise (marginal (1 - c) alpha + c/A = p_lb); a slot whose attribute
    is kept keeps its row, so the batches share every row not swapped.
    """

    def __init__(self, y, a, K: int, A: int, per_class: int, rng: np.random.Generator):
        self.y, self.a = np.asarray(y, np.int64), np.asarray(a, np.int64)
        self.K, self.A, self.B, self.rng = K, A, int(per_class), rng
        g = self.y * A + self.a
        self.order = np.argsort(g, kind="stable")
        self.count = np.bincount(g, minlength=K * A)
        self.start = np.concatenate([[0], np.cumsum(self.count)[:-1]])

    def _rows(self, groups: np.ndarray) -> np.ndarray:
        pick = (self.rng.random(len(groups)) * self.count[groups]).astype(np.int64)
        return self.order[self.start[groups] + pick]

    def draw(self, p: np.ndarray) -> np.ndarray:
        n = self.rng.multinomial(self.B, p)  # [K, A]
        groups = np.repeat(np.arange(self.K * self.A), n.ravel())
        return self._rows(groups)

    def draw_coupled(self, ib: np.ndarray, c: float) -> np.ndarray:
        a_b = self.a[ib]
        swap = self.rng.random(len(ib)) < c
        a_lb = np.where(swap, self.rng.integers(0, self.A, len(ib)), a_b)
        fresh = self._rows(self.y[ib] * self.A + a_lb)
        return np.where(a_lb == a_b, ib, fresh)


# ----------------------------------------------------------------------------------------------
# Pseudo-groups (spec 9.4)
# ----------------------------------------------------------------------------------------------


def pseudo_groups(conf: np.ndarray, y: np.ndarray, K: int, t: float) -> np.ndarray:
    """a~ [N]: per class y, the floor(t |X_y|) rows with the lowest p~(y|x) get a~ = 1 ("hard"), the
    rest a~ = 0 ("easy"). Equal confidences go to the lower row index [W]."""
    if not 0.0 < t < 1.0:
        raise EmbedkitError(f"gerne: pseudo-group fraction t={t:g} must be in (0, 1)")
    conf, y = np.asarray(conf), np.asarray(y)
    out = np.zeros(len(y), np.int64)
    for k in range(K):
        rows = np.flatnonzero(y == k)
        m = int(math.floor(t * len(rows)))
        out[rows[np.argsort(conf[rows], kind="stable")[:m]]] = 1
    return out


# ----------------------------------------------------------------------------------------------
# Training (spec 9.6 pseudocode): K*B-row biased and less-biased batches, one backward of L_ext
# ----------------------------------------------------------------------------------------------


class GERNEBatches:
    """The batch-draw hook of `trainer.fit_grid`: per step the biased batch B_b ~ p_b (shared by
    every config) followed by one less-biased batch B_lb ~ p_lb per mixing factor c (K*B rows each),
    side by side: rows [(1 + |cs|) K B]."""

    def __init__(
        self, sampler: GroupBatchSampler, alpha: np.ndarray, cs: list[float], coupling: str
    ):
        self.sampler, self.alpha, self.cs, self.coupling = sampler, alpha, cs, coupling
        self.probs = {c: batch_probs(alpha, c)[1] for c in cs}

    def draw(self, step: int) -> np.ndarray:
        ib = self.sampler.draw(self.alpha)
        ilb = [
            self.sampler.draw(self.probs[c])
            if self.coupling == "independent"
            else self.sampler.draw_coupled(ib, c)
            for c in self.cs
        ]
        return np.concatenate([ib] + ilb)


class ExtrapolatedLoss:
    """The objective on GERNEBatches' rows: L_b = mean CE over B_b, L_lb = mean CE over the config's
    B_lb (slot cidx[k] of the stacked less-biased batches), L_ext = (1 + beta) L_lb - beta L_b
    [K]."""

    def __init__(self, configs: list[dict], cs: list[float], n: int):
        self.beta = torch.tensor([float(cfg["beta"]) for cfg in configs])
        self.cidx = torch.tensor([cs.index(float(cfg["c"])) for cfg in configs])
        self.n = int(n)

    def __call__(self, ctx) -> torch.Tensor:
        K = ctx.losses.shape[0]
        ce = ctx.losses.view(K, -1, self.n)  # [K, 1 + |cs|, n]
        beta, cidx = self.beta.to(ce), self.cidx.to(ce.device)
        L_b = ce[:, 0].mean(1)
        L_lb = ce[:, 1:].mean(2).gather(1, cidx[:, None])[:, 0]
        return (1 + beta) * L_lb - beta * L_b


def train_gerne_grid(
    Z,
    y,
    a,
    K: int,
    A: int,
    configs: list[dict],
    *,
    val,
    monitor=None,
    rule: str,
    steps: int,
    eval_every: int,
    per_class: int,
    coupling: str,
    sampler_seed: int,
    init_seed: int,
    standardize: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    config_offset: int = 0,
    group_names=None,
):
    """Train every config {c, beta, lr, wd} on the rows (Z, y, a) with GERNE's update:
    per step B_b ~ p_b and B_lb ~ p_lb (K*B rows each), L_ext = (1 + beta) L_lb - beta L_b, and
    SGD (momentum 0.9, weight decay on weights only) on each config's linear head.

    Configs with the same c share their batches (common random numbers from the sampler stream);
    the biased batch is shared by all. This is the shared trainer (`fit_grid`) with GERNE's two
    batches as its batch-draw hook and L_ext as its objective, so the kept head is the selected
    (config, step)'s by construction. Returns (history, best HeadState, info).
    """
    alpha, _ = within_class_frequencies(y, a, K, A, group_names)
    cs = sorted({float(cfg["c"]) for cfg in configs})
    if coupling not in ("independent", "coupled"):
        raise EmbedkitError(f"gerne: coupling must be independent or coupled, not {coupling!r}")
    sampler = GroupBatchSampler(y, a, K, A, per_class, np.random.default_rng(sampler_seed))
    n = K * int(per_class)
    res = fit_grid(
        Z,
        y,
        configs,
        LoopConfig(
            steps=steps,
            eval_every=eval_every,
            batch_size=(1 + len(cs)) * n,
            standardize=standardize,
            init_seed=init_seed,
            sampler_seed=sampler_seed,
            device=device,
            threads=threads,
        ),
        val=val,
        monitor=monitor,
        rule=rule,
        objective=ExtrapolatedLoss(configs, cs, n),
        hooks=[GERNEBatches(sampler, alpha, cs, coupling)],
        config_offset=config_offset,
    )
    return (
        res.history,
        res.state,
        {"alpha": alpha.tolist(), "n_configs": len(configs), "batch_rows": n, "trainer": res.info},
    )


# ----------------------------------------------------------------------------------------------
# The head
# ----------------------------------------------------------------------------------------------


class GERNEHead(Head):
    """GERNE: extrapolate from the biased past the less-biased gradient, (1 + beta) L_lb - beta L_b.

    Known attributes, or pseudo-groups from a biased head's least confident rows; beta bounded by
    the train group proportions; (t, c, beta, lr, wd, step) chosen on val by the target metric (WGA
    or GBA)."""

    name = "gerne"
    needs_val_attrs = False

    PARAMS = {
        "attrs": Param(
            "choice",
            "auto",
            "known attributes, pseudo-groups (unknown), or auto (known when every train row has a)",
            choices=("auto", "known", "unknown"),
        ),
        # spec 9.7: c in {0.5, 1}; 0.5 is the Datasets-2 value. Not `c_grid`: DFR's `C_grid` is an
        # L1 strength.
        "mix_grid": Param(
            "floats",
            (0.5,),
            "mixing factors c of the less-biased batch, p_lb = (1 - c) alpha + c/A",
            low=0,
            high=1,
            open_low=True,
        ),
        "beta": Param(
            "floats",
            None,
            "extrapolation factors beta (none = the spec 9.7 grid per c; bounds from the "
            "train group proportions enforced)",
            low=-1,
        ),
        "t_grid": Param(
            "floats",
            (0.005, 0.01, 0.02, 0.05, 0.1, 0.2),
            "pseudo-group fractions t (attrs unknown)",
            low=0,
            high=1,
            open_low=True,
            open_high=True,
        ),
        # [W] a 2 x 2 corner of the shared lr x wd grid: with 8 betas per c that is 32 configs,
        #     which keeps a Waterbirds-size fit within the sweep's budget.
        "lr_grid": Param("floats", (1e-2, 1e-1), "SGD learning rates searched", low=0),
        "wd_grid": Param("floats", (1e-4, 1e-2), "weight decays searched (weights only)", low=0),
        "batch_per_class": Param("int", 64, "rows per class in each of the two batches", low=1),
        "batch_unit": Param(
            "choice",
            "class",
            "batch_per_class counts rows per class, or per group (x A)",
            choices=("class", "group"),
        ),
        "coupling": Param(
            "choice",
            "independent",
            "less-biased batch drawn independently or coupled slot by slot to the biased one",
            choices=("independent", "coupled"),
        ),
        # None: 1000 / 100 sampled; 300 / 30 for the expected variant, whose full-batch steps cost
        # N / (2 K B) times more (Waterbirds size: about 19x) [W].
        "steps": Param(
            "int", None, "SGD steps (none = 1000, or 300 for the expected variant)", low=1
        ),
        "eval_every": Param("int", None, "steps between evaluations (none = steps / 10)", low=1),
        "target": Param(
            "choice", "wga", "the val metric that selects: wga or gba", choices=("wga", "gba")
        ),
        "pseudo_folds": Param(
            "int", 0, ">= 2: out-of-fold confidences for the pseudo-groups [W]", low=0
        ),
        "expected": Param(
            "bool", False, "gerne_expected: deterministic full-batch p_ext reweighting"
        ),
        "standardize": TRAINER_PARAMS["standardize"],
        "device": TRAINER_PARAMS["device"],
        "threads": TRAINER_PARAMS["threads"],
    }

    def rule(self, val) -> str:
        if self.selection_rule:
            return self.selection_rule
        if not (val.a >= 0).any():
            return "val_worst_class"
        return "val_wga" if self.params["target"] == "wga" else "val_gba"

    # -- fit --------------------------------------------------------------------------------
    def _fit(self, train, val, monitor):
        p = self.params
        known = p["attrs"] == "known" or (p["attrs"] == "auto" and bool((train.a >= 0).all()))
        K = train.n_classes
        rows_tune = np.empty(0, np.int64)
        if known:
            blocks = [(None, train.a, train.n_attrs)]
        else:
            conf, biased_info = self._biased_confidences(train, val)
            rows_tune = np.sort(val.rows)
            self.info_["biased_head"] = biased_info
            blocks, skipped = [], []
            for t in as_grid(p["t_grid"]):
                a_t = pseudo_groups(conf, train.y, K, t)
                hard = np.bincount(train.y[a_t == 1], minlength=K)
                if (hard == 0).any() or (hard == np.bincount(train.y, minlength=K)).any():
                    skipped.append(t)  # a pseudo-group would be empty for some class
                    continue
                blocks.append((t, a_t, 2))
            if not blocks:
                raise EmbedkitError(
                    f"gerne: every t in {list(as_grid(p['t_grid']))} leaves a class without "
                    "hard (or easy) rows; use larger t"
                )
            self.info_["skipped_t"] = skipped

        rule, history, states, bounds = self.rule(val), [], [], []
        for t, a_fit, A in blocks:
            # batch_unit "group": B rows per group on average in a balanced batch, so A*B per class.
            per_class = int(p["batch_per_class"]) * (A if p["batch_unit"] == "group" else 1)
            names = train.group_names if t is None else None
            alpha, counts = within_class_frequencies(train.y, a_fit, K, A, names)
            configs = []
            for c in as_grid(p["mix_grid"]):
                bmax = beta_max(alpha, c)
                betas = (
                    default_betas(alpha, c)
                    if p["beta"] is None
                    else [check_beta(b, alpha, c) for b in as_grid(p["beta"])]
                )
                bounds.append(
                    {
                        "t": t,
                        "c": c,
                        "beta_max": _finite(bmax),
                        "beta_eq": beta_eq(c),
                        "beta_interval": [_finite(v) for v in beta_interval(alpha, c)],
                        "betas": betas,
                    }
                )
                for beta in betas:
                    for lr in as_grid(p["lr_grid"]):
                        for wd in as_grid(p["wd_grid"]):
                            configs.append(
                                {
                                    **({} if t is None else {"t": t}),
                                    "c": c,
                                    "beta": beta,
                                    "lr": lr,
                                    "wd": wd,
                                }
                            )
            hist, state = self._train_block(
                train,
                val,
                monitor,
                a_fit,
                A,
                alpha,
                counts,
                configs,
                rule,
                len(history),
                per_class,
                names,
            )
            history += hist
            states.append((hist, state))

        self.history_ = history
        top = self._select(history, rule, "val", rows=val.rows)
        self.state_ = next(
            s for h, s in states if any(r["config_id"] == top["config_id"] for r in h)
        )
        self.coef_, self.intercept_ = self.state_.arrays["coef"], self.state_.arrays["intercept"]
        flags = check_leak(train.rows, val.rows)
        self.rows_ = {"fit": np.sort(train.rows), "tune": rows_tune, "select": np.sort(val.rows)}
        self.info_.update(
            {
                "variant": "expected" if p["expected"] else "sampled",
                "attrs": "known" if known else "unknown",
                "bounds": bounds,
                "grid_size": len({r["config_id"] for r in history}),
                "selected_p_ext": self._selected_p_ext(top["config"], blocks, train),
                **flags,
            }
        )
        if not known:  # the pseudo-groups the selected config trained on
            self.artifacts_["pseudo_attr"] = next(
                a for t, a, _ in blocks if t == top["config"]["t"]
            )

    def schedule(self) -> tuple[int, int]:
        """(steps, eval_every) in force."""
        p = self.params
        steps = int(p["steps"]) if p["steps"] is not None else (300 if p["expected"] else 1000)
        return steps, int(p["eval_every"]) if p["eval_every"] is not None else max(1, steps // 10)

    def _train_block(
        self, train, val, monitor, a_fit, A, alpha, counts, configs, rule, offset, per_class, names
    ):
        p, K = self.params, train.n_classes
        steps, eval_every = self.schedule()
        if not p["expected"]:
            hist, state, _ = train_gerne_grid(
                train.Z,
                train.y,
                a_fit,
                K,
                A,
                configs,
                val=val,
                monitor=monitor,
                rule=rule,
                steps=steps,
                eval_every=eval_every,
                per_class=per_class,
                coupling=p["coupling"],
                sampler_seed=self.seeds["sampler"],
                init_seed=self.seeds["init"],
                standardize=bool(p["standardize"]),
                device=p["device"],
                threads=p["threads"],
                config_offset=offset,
                group_names=names,
            )
            return hist, state
        # gerne_expected (spec 9.6): full-batch CE with omega_i = p_ext(a_i|y_i) / (K |X_{y_i
        # a_i}|); one
        # trainer variant per (c, beta) since the weights differ. sum omega = 1, so the trainer's
        # mean-1 normalisation gives (1/N) sum (N omega_i) l_i = sum omega_i l_i exactly.
        keys = []
        for cfg in configs:
            key = (cfg["c"], cfg["beta"])
            if key not in keys:
                keys.append(key)
        grid = [
            {"lr": cfg["lr"], "wd": cfg["wd"]}
            for cfg in configs
            if (cfg["c"], cfg["beta"]) == keys[0]
        ]
        variants = [
            Variant(
                tag={k: v for k, v in configs[0].items() if k == "t"} | {"c": c, "beta": b},
                weights=expected_weights(train.y, a_fit, alpha, counts, c, b),
            )
            for c, b in keys
        ]
        res = fit_grid(
            train.Z,
            train.y,
            grid,
            seeded_loop(
                self,
                steps=steps,
                eval_every=eval_every,
                batch_size=None,
                standardize=bool(p["standardize"]),
            ),
            variants=variants,
            val=val,
            monitor=monitor,
            rule=rule,
            config_offset=offset,
        )
        return res.history, res.state

    def _biased_confidences(self, train, val):
        """p~(y|x) on train from the biased head f~ (spec 9.4 step 1): class-balanced biased batches
        (GERNE with beta = -1), LR x 0.1 and weight decay x 2 relative to the grid, selected by val
        class-balanced accuracy. In-sample as in the paper, or out-of-fold with pseudo_folds >= 2
        [W]."""
        p, K = self.params, train.n_classes
        steps, eval_every = self.schedule()
        configs = [
            {"c": 1.0, "beta": -1.0, "lr": 0.1 * lr, "wd": 2.0 * wd}
            for lr in as_grid(p["lr_grid"])
            for wd in as_grid(p["wd_grid"])
        ]
        zeros = np.zeros(len(train), np.int64)
        folds = int(p["pseudo_folds"])
        if folds >= 2:
            order = np.random.default_rng(self.seeds["infer"]).permutation(len(train))
            parts = [np.sort(order[i::folds]) for i in range(folds)]
        else:
            parts = [None]
        conf, chosen = np.empty(len(train)), []
        for held in parts:
            fit = (
                np.arange(len(train)) if held is None else np.setdiff1d(np.arange(len(train)), held)
            )
            score = np.arange(len(train)) if held is None else held
            hist, state, _ = train_gerne_grid(
                train.Z[fit],
                train.y[fit],
                zeros[fit],
                K,
                1,
                configs,
                val=val,
                rule="val_bal_acc",
                steps=steps,
                eval_every=eval_every,
                per_class=int(p["batch_per_class"]),
                coupling="independent",
                sampler_seed=self.seeds["infer"],
                init_seed=self.seeds["init"],
                standardize=bool(p["standardize"]),
                device=p["device"],
                threads=p["threads"],
            )
            top = select(hist, "val_bal_acc")
            chosen.append(
                {"config": top["config"], "step": top["step"], "val_bal_acc": top["score"]}
            )
            prob = softmax(state.logits(train.Z[score]).astype(np.float64))
            conf[score] = prob[np.arange(len(score)), train.y[score]]
        return conf, {"selected": chosen, "folds": max(folds, 1), "in_sample": folds < 2}

    @staticmethod
    def _selected_p_ext(config, blocks, train):
        t = config.get("t")
        a_fit, A = next((a, A) for tt, a, A in blocks if tt == t)
        alpha, _ = within_class_frequencies(train.y, a_fit, train.n_classes, A)
        return p_ext(alpha, config["c"], config["beta"]).tolist()

    def decision_function(self, Z) -> np.ndarray:
        return self.state_.logits(Z)


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None  # JSON has no infinity
