"""The shared SGD head trainer (methods spec section 0.3) and the base class of the heads that use
it.

One call trains a whole grid of heads at once. Every config's parameters are stacked along a leading
axis K (linear: W [K, C, D], b [K, C]), every config sees the same minibatch indices drawn from the
sampler stream, and one batched matmul per step computes all K x C logits. Evaluation is batched the
same way. Per-config hyperparameters (lr, wd, anything an objective reads) are tensors of length K.

Grid structure: `configs = variants x grid`. A `Variant` carries what changes the data a config
sees (a sampler P(i) or per-example loss weights: JTT's upweighted error set, AFR's weights for one
gamma); the `grid` lists optimiser settings (lr, wd, and method knobs such as GroupDRO's eta). All
variants share the uniforms of the sampler stream (common random numbers), so two variants with the
same sampler see identical batches.

Spec symbols: batch loss `L_B = (1/|B|) sum_{i in B} w_i l_i` with w normalised to mean 1 over the
fitting rows; SGD momentum 0.9, constant LR, weight decay on weights only (biases excluded);
standardisation `z' = (z - mu)/sigma` fitted on the fitting rows, a stored head mapped by
`W0' = W0 diag(sigma)`, `b0' = b0 + W0 mu`.

Methods customise the loss with an `objective(ctx) -> [K]` callable (GroupDRO's q-weighted group
means, AFR's L2 pull towards the initial head, SCER's regulariser); it may define `record(k) ->
dict` to add fields (GroupDRO's q) to every evaluation record of config k. Hooks change the step
itself without a loop of their own (see `fit_grid`): GERNE's biased and less-biased batches are a
batch-draw hook, IPG's corrective step a post-grad / after-update hook. Test data never enters:
per-step test metrics come from the runner's `Monitor`, which is handed the K heads' logits at each
evaluation.

Determinism (spec 0.4): on CPU the trainer runs under `torch.use_deterministic_algorithms(True)`
with an optional fixed thread count (restored afterwards), init and sampler draws come from their
own seeded streams, so the same seeds and thread count give bitwise-identical heads. On GPU the
TF32/cuDNN flags are recorded instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from embedkit import selection
from embedkit.configs import field_names, resolve
from embedkit.determinism import reproducible
from embedkit.devices import resolve_device
from embedkit.errors import EmbedkitError
from embedkit.heads.base import Head
from embedkit.heads.monitor import Monitor, as_monitor
from embedkit.heads.params import Param
from embedkit.metrics import evaluate_split
from embedkit.selection import SGD_GRID

DEFAULT_LR_GRID = tuple(SGD_GRID["lr"])
DEFAULT_WD_GRID = tuple(SGD_GRID["wd"])
# Rows per chunk when evaluating heads on a split (bounds the [K, chunk, H] activations of MLP
# heads).
_EVAL_CHUNK = 4096

# Trainer settings every SGD head exposes as parameters. The spec's budget is 5,000 steps with an
# evaluation every 250; embedkit's default is 1,000 / 100 so that the full default sweep (about 15
# heads x 3 seeds on a Waterbirds-size cache) fits in 5 minutes on 2 CPU cores: a step costs ~K x B
# x D x C multiply-adds twice, compute-bound on CPU. 1,000 steps of 128 rows are 27 epochs of
# Waterbirds; linear heads on frozen features converge (or are early-stopped by selection) well
# within that at the grid's larger learning rates. `steps=5000 eval_every=250` restores the spec's
# budget. One thread by default: deterministic everywhere, and small matmuls gain little from a
# second thread while losing much when the cores are shared. Device: "cpu" in every head (one choice
# for all, issue 11): deterministic and bitwise reproducible; `device=auto` or `cuda` opts in.
DEVICE = Param(
    "choice",
    "cpu",
    "where the head trains: cpu (deterministic, the default of every head), "
    "auto (cuda when available) or cuda",
    choices=("cpu", "auto", "cuda"),
)
THREADS = Param(
    "int",
    1,
    "CPU threads while fitting (fixed for reproducibility; none = torch's default)",
    low=1,
    nullable=True,
)
TRAINER_PARAMS = {
    "lr_grid": Param("floats", DEFAULT_LR_GRID, "SGD learning rates searched (constant LR)", low=0),
    "wd_grid": Param(
        "floats", DEFAULT_WD_GRID, "weight decays searched (weights only, not biases)", low=0
    ),
    "steps": Param("int", 1000, "SGD steps per config", low=1),
    "eval_every": Param("int", 100, "steps between evaluations (and the last step)", low=1),
    "batch_size": Param(
        "int",
        128,
        "rows per minibatch (full = every row every step)",
        low=1,
        extra=("full",),
        nullable=True,
    ),
    "model": Param(
        "choice",
        "linear",
        "head model: linear, or an MLP with one hidden layer",
        choices=("linear", "mlp"),
    ),
    "hidden": Param("int", 512, "hidden width of model=mlp", low=1),
    "standardize": Param(
        "bool", False, "standardise features on the fitting rows (head mapped back to raw)"
    ),
    "device": DEVICE,
    "threads": THREADS,
}
TRAINER_DEFAULTS = {k: p.default for k, p in TRAINER_PARAMS.items()}


def as_grid(values) -> tuple[float, ...]:
    """A grid parameter as a tuple of floats (accepts one number, a sequence or '1e-3,1e-2')."""
    if isinstance(values, str):
        values = [v for v in values.replace(";", ",").split(",") if v.strip()]
    return tuple(float(v) for v in np.atleast_1d(np.asarray(values, dtype=object)))


def lr_wd_grid(lrs=DEFAULT_LR_GRID, wds=DEFAULT_WD_GRID) -> list[dict]:
    return [{"lr": lr, "wd": wd} for lr in as_grid(lrs) for wd in as_grid(wds)]


# ------------------------------------------------------------------------------------------------
# Sampling
# ------------------------------------------------------------------------------------------------


def sampler_cdf(weights) -> np.ndarray:
    """Cumulative distribution of P(i) = weights_i / sum(weights), float64, last entry exactly 1.

    Unnormalised weights keep the uniform case exact: weights of ones give cdf = (i+1)/N, so an
    explicit uniform sampler (JTT with lambda_up = 1) draws the very rows the default one draws."""
    w = np.asarray(weights, np.float64)
    if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise EmbedkitError(
            "sampler weights must be a non-empty 1-D array of finite non-negative numbers "
            "with a positive sum"
        )
    cdf = np.cumsum(w)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


def draw_indices(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Rows drawn with replacement by inverse CDF from uniforms u in [0, 1) (any shape)."""
    idx = np.searchsorted(cdf, u, side="right")
    return np.minimum(idx, len(cdf) - 1).astype(np.int64)


@dataclass
class Variant:
    """What one block of configs trains on: `sampler` (unnormalised P(i) over the fitting rows,
    None = uniform) and `weights` (per-example loss weights, None = all 1), tagged into each
    config dict by `tag`."""

    tag: dict = field(default_factory=dict)
    sampler: np.ndarray | None = None
    weights: np.ndarray | None = None


# ------------------------------------------------------------------------------------------------
# Standardisation and exported heads
# ------------------------------------------------------------------------------------------------


@dataclass
class Standardizer:
    """`z' = (z - mu) / sigma` with mu, sigma fitted on the fitting rows (sigma = 1 where a
    feature is constant there)."""

    mu: np.ndarray
    sigma: np.ndarray

    @classmethod
    def fit(cls, Z) -> Standardizer:
        Z = np.asarray(Z, np.float64)
        sd = Z.std(axis=0)
        return cls(Z.mean(axis=0).astype(np.float32), np.where(sd > 0, sd, 1.0).astype(np.float32))

    def transform(self, Z) -> np.ndarray:
        Z = np.asarray(Z)
        dt = Z.dtype if Z.dtype in (np.float32, np.float64) else np.float32
        return ((Z.astype(dt) - self.mu) / self.sigma).astype(dt)

    def map_head(self, W0, b0):
        """A raw-coordinate head in standardised coordinates: W0' = W0 diag(sigma), b0' = b0 + W0
        mu."""
        W0, b0 = np.asarray(W0, np.float64), np.asarray(b0, np.float64)
        return W0 * self.sigma, b0 + W0 @ self.mu.astype(np.float64)

    def unmap_head(self, W, b):
        """The inverse map: a standardised-coordinate head back on raw features."""
        W, b = np.asarray(W, np.float64), np.asarray(b, np.float64)
        W_raw = W / self.sigma
        return W_raw, b - W_raw @ self.mu.astype(np.float64)


@dataclass
class HeadState:
    """A trained head as numpy arrays, applied to raw features. `linear`: coef [C, D], intercept [C]
    (standardisation folded in). `mlp`: W1 [H, D], b1, W2 [C, H], b2, and mu/sigma when
    standardised."""

    kind: str
    arrays: dict

    def logits(self, Z) -> np.ndarray:
        a = self.arrays
        # float32 heads (the default) compute in float32; float64 heads (tests) in float64.
        Z = np.asarray(
            Z, np.result_type(np.float32, a["coef" if self.kind == "linear" else "W1"].dtype)
        )
        if self.kind == "linear":
            return Z @ a["coef"].T + a["intercept"]
        if "mu" in a:
            Z = (Z - a["mu"]) / a["sigma"]
        h = np.maximum(Z @ a["W1"].T + a["b1"], 0.0)
        return h @ a["W2"].T + a["b2"]


# ------------------------------------------------------------------------------------------------
# Models: K stacked heads
# ------------------------------------------------------------------------------------------------


def _default_uniform(gen, shape, fan_in):
    # nn.Linear's default init: kaiming_uniform(a=sqrt(5)) for weights and U(+-1/sqrt(fan_in)) for
    # biases both reduce to U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bound = 1.0 / np.sqrt(fan_in)
    return (torch.rand(shape, generator=gen, dtype=torch.float32) * 2 - 1) * bound


class LinearModel:
    """K linear heads D -> C (`W` [K, C, D], `b` [K, C])."""

    kind = "linear"
    decay = ("W",)

    def __init__(self, dim: int, n_classes: int):
        self.dim, self.n_classes = dim, n_classes

    def init_params(self, gen) -> dict:
        return {
            "W": _default_uniform(gen, (self.n_classes, self.dim), self.dim),
            "b": _default_uniform(gen, (self.n_classes,), self.dim),
        }

    def forward(self, p, x):
        """Logits [K, B, C] for x [B, D] (shared batch) or [U, B, D] (configs grouped by
        variant)."""
        W, b = p["W"], p["b"]
        K, C, D = W.shape
        if x.dim() == 2:
            out = torch.addmm(b.reshape(-1), x, W.reshape(K * C, D).t())  # [B, K*C]
            return out.view(-1, K, C).transpose(0, 1), {}
        U = x.shape[0]
        out = torch.baddbmm(
            b.reshape(U, 1, -1), x, W.reshape(U, -1, D).transpose(1, 2)
        )  # [U, B, Kg*C]
        return out.view(U, x.shape[1], K // U, C).permute(0, 2, 1, 3).reshape(K, x.shape[1], C), {}

    def export(self, p, std: Standardizer | None) -> HeadState:
        W, b = p["W"], p["b"]
        if std is not None:
            W, b = (v.astype(p["W"].dtype) for v in std.unmap_head(W, b))
        return HeadState("linear", {"coef": W, "intercept": b})


class MLPModel:
    """K one-hidden-layer heads D -> H -> C with ReLU."""

    kind = "mlp"
    decay = ("W1", "W2")

    def __init__(self, dim: int, n_classes: int, hidden: int):
        self.dim, self.n_classes, self.hidden = dim, n_classes, int(hidden)

    def init_params(self, gen) -> dict:
        D, H, C = self.dim, self.hidden, self.n_classes
        return {
            "W1": _default_uniform(gen, (H, D), D),
            "b1": _default_uniform(gen, (H,), D),
            "W2": _default_uniform(gen, (C, H), H),
            "b2": _default_uniform(gen, (C,), H),
        }

    def forward(self, p, x):
        W1, b1, W2, b2 = p["W1"], p["b1"], p["W2"], p["b2"]
        K, H, D = W1.shape
        if x.dim() == 2:
            h = torch.addmm(b1.reshape(-1), x, W1.reshape(K * H, D).t())  # [B, K*H]
            h = h.view(-1, K, H).transpose(0, 1)
        else:
            U, B = x.shape[:2]
            h = torch.baddbmm(b1.reshape(U, 1, -1), x, W1.reshape(U, -1, D).transpose(1, 2))
            h = h.view(U, B, K // U, H).permute(0, 2, 1, 3).reshape(K, B, H)
        h = torch.relu(h)
        return torch.baddbmm(b2.unsqueeze(1), h, W2.transpose(1, 2)), {"hidden": h}

    def export(self, p, std: Standardizer | None) -> HeadState:
        arrays = dict(p)
        if std is not None:
            arrays.update(mu=std.mu, sigma=std.sigma)
        return HeadState("mlp", arrays)


def build_head_model(model, dim: int, n_classes: int, hidden: int = 512):
    """The K-stacked head model: linear, mlp, or a model object passed through (not a backbone:
    embedkit.backbones.train_backbone.build_backbone builds those)."""
    if model == "linear":
        return LinearModel(dim, n_classes)
    if model == "mlp":
        return MLPModel(dim, n_classes, hidden)
    if hasattr(model, "forward") and hasattr(model, "init_params"):
        return model
    raise EmbedkitError(f"unknown head model {model!r}; use linear or mlp")


# ------------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------------


@dataclass
class StepContext:
    """What an objective sees each step. `losses` [K, B] per-example cross-entropy (with grad);
    `weights` [K, B] normalised loss weights or None; `batch[name]` [K, B] the caller's `row_data`
    on this batch; `params` / `init` the stacked parameters (init detached); `aux` model
    intermediates (e.g. MLP hidden units); `step` counts from 1; `lr` [K] the configs' learning
    rates."""

    losses: torch.Tensor
    weights: torch.Tensor | None
    batch: dict
    params: dict
    init: dict
    aux: dict
    logits: torch.Tensor
    step: int
    lr: torch.Tensor | None = None


def weighted_mean(ctx: StepContext) -> torch.Tensor:
    """The default objective: L_B = (1/|B|) sum_i w_i l_i per config."""
    return (ctx.losses if ctx.weights is None else ctx.losses * ctx.weights).mean(dim=1)


@dataclass
class GridResult:
    history: list
    selected: dict | None  # the chosen record (None without validation)
    state: HeadState | None  # the head of the chosen record
    final: list  # HeadState per config at the last step
    snapshots: dict  # step -> [HeadState per config]
    configs: list
    info: dict


def sgd_step(
    params: dict,
    grads: dict,
    bufs: dict,
    lr: torch.Tensor,
    wd: torch.Tensor,
    *,
    momentum: float = 0.9,
    decay=("W",),
) -> None:
    """One SGD step of every config at once (methods spec 0.3), in place: each parameter's leading
    axis is the config, `lr` and `wd` hold one value per config, weight decay acts on the
    parameters named in `decay` only (not biases), `bufs` carries the heavy-ball momentum. The one
    update rule of the shared trainer, reused by heads with their own loops (GERNE, IPG)."""
    with torch.no_grad():
        for k, p in params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            g = grads[k]
            if k in decay:
                g = torch.addcmul(g, wd.view(shape), p)
            if momentum:
                bufs[k] = g if bufs[k] is None else bufs[k].mul_(momentum).add_(g)
                g = bufs[k]
            p.addcmul_(lr.view(shape), g, value=-1.0)


@dataclass(frozen=True)
class LoopConfig:
    """The loop settings of one `fit_grid` call (what every config of the grid shares), validated
    once, here. What is trained on and how it is selected (the data, grid, variants, val, monitor,
    rule, init, objective, hooks) are arguments of `fit_grid`, not loop settings.

    `steps` SGD steps, an evaluation every `eval_every` (and at the last step); `batch_size` rows
    per minibatch (None = full batch); `model` linear, mlp (`hidden` units) or a model object with
    `init_params`/`forward`; `standardize` the features on the fitting rows; SGD `momentum`;
    per-config gradient-norm clipping at `clip_norm`; `dtype` float32 or float64; `device`, CPU
    `threads` (None = torch's default); `init_seed` / `sampler_seed` the two seeded streams;
    `snapshot_steps`: steps at which every config's head is also returned."""

    steps: int = 1000
    eval_every: int = 100
    batch_size: int | None = 128
    model: object = "linear"
    hidden: int = 512
    standardize: bool = False
    momentum: float = 0.9
    clip_norm: float | None = None
    dtype: str = "float32"
    device: object = "cpu"
    threads: int | None = None
    init_seed: int = 0
    sampler_seed: int = 0
    snapshot_steps: tuple = ()

    def __post_init__(self):
        if self.dtype not in ("float32", "float64"):
            raise EmbedkitError(f"trainer: dtype must be float32 or float64, not {self.dtype!r}")
        steps, eval_every = int(self.steps), int(self.eval_every)
        if steps < 1 or eval_every < 1:
            raise EmbedkitError(
                f"trainer: steps ({steps}) and eval_every ({eval_every}) must be >= 1"
            )
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise EmbedkitError(f"trainer: batch_size {self.batch_size} must be >= 1 (or None)")
        build_head_model(self.model, 1, 2, self.hidden)  # an unknown model: its error now
        normal = {
            "steps": steps,
            "eval_every": eval_every,
            "batch_size": None if self.batch_size is None else int(self.batch_size),
            "hidden": int(self.hidden),
            "snapshot_steps": tuple(int(s) for s in self.snapshot_steps),
        }
        for k, v in normal.items():  # frozen: the normal form is set once, here
            object.__setattr__(self, k, v)


LOOP_SETTINGS = field_names(LoopConfig)


def seeded_loop(head: Head, **settings) -> LoopConfig:
    """A LoopConfig on `head`'s init and sampler seed streams, with its device and threads
    parameters unless `settings` set them (settings: any other LoopConfig fields)."""
    kw = {"init_seed": head.seeds["init"], "sampler_seed": head.seeds["sampler"]}
    kw.update({k: head.params[k] for k in ("device", "threads") if k not in settings})
    return LoopConfig(**kw, **settings)


def fit_grid(
    Z,
    y,
    grid: list[dict],
    loop: LoopConfig | None = None,
    *,
    variants: list[Variant] | None = None,
    val=None,
    monitor: Monitor | None = None,
    rule: str | None = None,
    tie: str = "default",
    init: tuple | None = None,
    objective=None,
    row_data: dict | None = None,
    config_offset: int = 0,
    hooks=(),
    **settings,
) -> GridResult:
    """Train every config of `variants x grid` on the fitting rows (Z [N, D], y [N]) with the loop
    settings of `loop` (a LoopConfig) or keyword arguments of the same names (`steps=1000,
    eval_every=100`; they override the config's fields; an unknown one is a TypeError).

    grid: dicts with at least `lr` and `wd` (weight decay, weights only); other keys are recorded
    and are for the objective to read. `batch_size=None` = full batch (every row every step, as
    AFR). `init=(W0, b0)` starts every linear head from a stored raw-coordinate head (mapped when
    standardising); otherwise PyTorch's default init from `init_seed`, the same for all configs.
    With `val`, each evaluation (every `eval_every` steps and the last) writes one record per config
    `{config_id, config, step, val, test}` (test and any other split from the runner's `monitor`,
    which is handed the K heads' logits, never the other way round), and the head chosen by `rule`
    (ties: `tie`) is kept. `snapshot_steps`: also return every config's head at these steps.

    `hooks`: objects that change the step without a loop of their own (any of these methods):
    - `draw(step) -> rows` (at most one hook): the batch-draw hook; its row indices [B'] replace the
      sampler's batch for every config (GERNE's biased and less-biased batches, side by side);
    - `on_grads(ctx, grads)`: the post-grad hook, after clipping and before the SGD update; it may
      edit `grads` in place (IPG's joint and projected corrections);
    - `after_update(ctx, grads)`: after the update, e.g. a corrective step on `ctx.params` in place
      (IPG's sequential dual update);
    - `record(k) -> dict` (fields added to config k's evaluation records, like an objective's) and
      `evaluated(step)` (called after each evaluation).
    A config whose val logits are not finite (diverged) gets `val: None` and is never selected.
    """
    t0 = time.perf_counter()
    lc = resolve(LoopConfig, loop, settings, "fit_grid")
    steps, eval_every, batch_size, model = lc.steps, lc.eval_every, lc.batch_size, lc.model
    hidden, standardize, momentum, clip_norm = lc.hidden, lc.standardize, lc.momentum, lc.clip_norm
    dtype, device, threads = lc.dtype, lc.device, lc.threads
    init_seed, sampler_seed, snapshot_steps = lc.init_seed, lc.sampler_seed, lc.snapshot_steps
    Z = np.asarray(Z, dtype)
    y = np.asarray(y, np.int64)
    if Z.ndim != 2 or len(Z) != len(y) or len(y) == 0:
        raise EmbedkitError(
            f"trainer: features {Z.shape} and labels {y.shape} do not match (or are empty)"
        )
    if not grid:
        raise EmbedkitError("trainer: empty hyperparameter grid")
    for c in grid:
        if "lr" not in c or "wd" not in c:
            raise EmbedkitError(f"trainer: grid entry {c} needs lr and wd")
    N, D = Z.shape
    C = val.n_classes if val is not None else int(y.max()) + 1
    if y.min() < 0 or y.max() >= C:
        raise EmbedkitError(f"trainer: labels must lie in 0..{C - 1}")
    variants = variants or [Variant()]
    U, Kg = len(variants), len(grid)
    K = U * Kg
    configs = [{**v.tag, **c} for v in variants for c in grid]

    dev = resolve_device(device)
    tdtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    std = Standardizer.fit(Z) if standardize else None
    net = build_head_model(model, D, C, hidden)

    with reproducible(threads, active=dev.type == "cpu"):
        Zt = torch.as_tensor(std.transform(Z) if std else Z, device=dev).to(tdtype)
        yt = torch.as_tensor(y, device=dev)
        rows = {k: torch.as_tensor(np.asarray(v), device=dev) for k, v in (row_data or {}).items()}
        for k, v in rows.items():
            if len(v) != N:
                raise EmbedkitError(f"trainer: row_data[{k!r}] has {len(v)} rows, expected {N}")

        # Parameters: one init broadcast to every config.
        if init is not None:
            if net.kind != "linear":
                raise EmbedkitError("trainer: initialising from a stored head needs model=linear")
            W0, b0 = std.map_head(*init) if std else (np.asarray(init[0]), np.asarray(init[1]))
            if W0.shape != (C, D):
                raise EmbedkitError(
                    f"trainer: initial head has shape {W0.shape}, expected ({C}, {D})"
                )
            one = {
                "W": torch.as_tensor(np.asarray(W0, np.float64)),
                "b": torch.as_tensor(np.asarray(b0, np.float64)),
            }
        else:
            one = net.init_params(torch.Generator().manual_seed(int(init_seed)))
        params = {
            k: v.to(dev, tdtype).unsqueeze(0).repeat(K, *([1] * v.dim())).requires_grad_()
            for k, v in one.items()
        }
        init_p = {k: v.detach().clone() for k, v in params.items()}
        shape = {k: (K,) + (1,) * (v.dim() - 1) for k, v in params.items()}
        lr = torch.tensor([float(c["lr"]) for c in configs], dtype=tdtype, device=dev)
        wd = torch.tensor([float(c["wd"]) for c in configs], dtype=tdtype, device=dev)
        bufs = {k: None for k in params}

        # Loss weights [K, N], each variant's normalised to mean 1 over the fitting rows.
        wt = None
        if any(v.weights is not None for v in variants):
            W = np.ones((U, N))
            for u, v in enumerate(variants):
                if v.weights is not None:
                    w = np.asarray(v.weights, np.float64)
                    if (
                        w.shape != (N,)
                        or not np.all(np.isfinite(w))
                        or (w < 0).any()
                        or w.sum() <= 0
                    ):
                        raise EmbedkitError(
                            f"trainer: loss weights of variant {v.tag} must be {N} finite "
                            "non-negative numbers with a positive sum"
                        )
                    W[u] = w / w.mean()
            wt = torch.as_tensor(np.repeat(W, Kg, axis=0), device=dev).to(tdtype)

        # Batches: shared by all configs unless variants carry different samplers.
        full = batch_size is None
        samplers = [v.sampler for v in variants]
        per_variant = (
            not full
            and U > 1
            and any(s is not None for s in samplers)
            and not all(s is samplers[0] for s in samplers)
        )
        if full and any(s is not None for s in samplers):
            raise EmbedkitError("trainer: a sampler needs a batch size (full batch uses every row)")
        for s in samplers:
            if s is not None and len(s) != N:
                raise EmbedkitError(f"trainer: sampler weights have {len(s)} rows, expected {N}")
        cdfs = [sampler_cdf(np.ones(N) if s is None else s) for s in samplers]
        rng = np.random.default_rng(int(sampler_seed))
        B = N if full else int(batch_size)
        all_rows = torch.arange(N, device=dev)

        hooks = list(hooks or ())
        drawers = [h for h in hooks if hasattr(h, "draw")]
        if len(drawers) > 1:
            raise EmbedkitError("trainer: at most one batch-draw hook")
        drawer = drawers[0] if drawers else None
        if drawer is not None and (full or per_variant):
            raise EmbedkitError(
                "trainer: a batch-draw hook draws one batch for every config (needs a batch size "
                "and one sampler)"
            )
        recorders = [o for o in (objective, *hooks) if o is not None and hasattr(o, "record")]
        eval_steps = set(range(eval_every, steps + 1, eval_every)) | {steps}
        snap_steps = {int(s) for s in snapshot_steps if 1 <= int(s) <= steps}
        evals = (
            _Evaluator(net, std, val, as_monitor(monitor), dev, tdtype) if val is not None else None
        )
        if evals is not None and rule is None:
            raise EmbedkitError("trainer: validation given without a selection rule")

        history, snapshots = [], {}
        best_key, best_rec, best_state = None, None, None
        chunk = max(1, min(steps, eval_every, 1000))
        step = 0
        while step < steps:
            n = min(chunk, steps - step)
            if not full and drawer is None:
                u = rng.random((n, B))
                idx_np = (
                    np.stack([draw_indices(c, u) for c in cdfs], axis=1)
                    if per_variant
                    else draw_indices(cdfs[0], u)[:, None]
                )  # [n, U|1, B]
                idx_chunk = torch.as_tensor(idx_np, device=dev)
            for j in range(n):
                step += 1
                if drawer is not None:
                    ib = torch.as_tensor(
                        np.asarray(drawer.draw(step), np.int64), device=dev
                    ).unsqueeze(0)
                    x, yb = Zt.index_select(0, ib[0]), yt[ib]
                elif full:
                    x, yb, ib = Zt, yt, all_rows.unsqueeze(0)
                else:
                    ib = idx_chunk[j]  # [U|1, B]
                    x = (
                        Zt.index_select(0, ib.reshape(-1)).view(*ib.shape, D)
                        if per_variant
                        else Zt.index_select(0, ib[0])
                    )
                    yb = yt[ib]
                logits, aux = net.forward(params, x)
                ibK = ib.repeat_interleave(Kg, dim=0) if per_variant else ib.expand(K, -1)
                yK = yb.repeat_interleave(Kg, dim=0) if per_variant else yb.expand(K, -1)
                Bs = ib.shape[-1]
                losses = F.cross_entropy(
                    logits.reshape(K * Bs, C), yK.reshape(-1), reduction="none"
                ).view(K, Bs)
                ctx = StepContext(
                    losses=losses,
                    weights=None if wt is None else (wt if full else wt.gather(1, ibK)),
                    batch={k: v[ibK] for k, v in rows.items()},
                    params=params,
                    init=init_p,
                    aux=aux,
                    logits=logits,
                    step=step,
                    lr=lr,
                )
                loss = (objective or weighted_mean)(ctx)
                grads = torch.autograd.grad(loss.sum(), list(params.values()))
                with torch.no_grad():
                    grads = dict(zip(params, grads))
                    if clip_norm is not None:
                        # Per-config total-norm clipping (torch.nn.utils.clip_grad_norm_ semantics).
                        total = torch.sqrt(
                            sum(g.pow(2).reshape(K, -1).sum(1) for g in grads.values())
                        )
                        coef = torch.clamp(float(clip_norm) / (total + 1e-6), max=1.0)
                        grads = {k: g * coef.view(shape[k]) for k, g in grads.items()}
                for h in hooks:  # outside no_grad: a hook may need autograd
                    if hasattr(h, "on_grads"):
                        h.on_grads(ctx, grads)
                with torch.no_grad():
                    sgd_step(params, grads, bufs, lr, wd, momentum=momentum, decay=net.decay)
                for h in hooks:
                    if hasattr(h, "after_update"):
                        h.after_update(ctx, grads)
                if step in snap_steps:
                    snapshots[step] = _export_all(net, params, std)
                if evals is not None and step in eval_steps:
                    new = evals(params, step, configs, config_offset, recorders)
                    history.extend(new)
                    for h in hooks:
                        if hasattr(h, "evaluated"):
                            h.evaluated(step)
                    # Incremental running best: select is an argmax under a total order, so the
                    # best of (previous best + new records) is the best of all records so far,
                    # at O(K) per evaluation instead of O(len(history)).
                    top = selection.select(
                        ([best_rec] if best_rec is not None else []) + new, rule, tie=tie
                    )
                    key = (top["config_id"], top["step"])
                    if key != best_key:
                        best_key = key
                        best_rec = next(r for r in new if (r["config_id"], r["step"]) == key)
                        best_state = _export_one(net, params, std, top["config_id"] - config_offset)
        final = _export_all(net, params, std)

    selected = None
    if history:
        selected = selection.select(history, rule, tie=tie)
        # The running best equals the final choice because select is an argmax under a total order.
        if (selected["config_id"], selected["step"]) != best_key:
            raise EmbedkitError(
                "trainer: selection is not consistent over growing records (internal error)"
            )
    info = {
        "n_fit": N,
        "dim": D,
        "n_classes": C,
        "n_configs": K,
        "steps": steps,
        "eval_every": eval_every,
        "batch_size": None if full else B,
        "model": net.kind,
        "standardize": bool(standardize),
        "momentum": momentum,
        "clip_norm": clip_norm,
        "device": str(dev),
        "dtype": dtype,
        "threads": torch.get_num_threads() if threads is None else int(threads),
        "deterministic": dev.type == "cpu",
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if dev.type == "cuda":
        info.update(
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            cudnn_tf32=torch.backends.cudnn.allow_tf32,
        )
    return GridResult(history, selected, best_state, final, snapshots, configs, info)


def _numpy_params(params, k=None):
    # A copy: on CPU .numpy() shares memory with the parameters, which keep training in place.
    return {
        n: np.array((v.detach() if k is None else v.detach()[k]).cpu().numpy(), copy=True)
        for n, v in params.items()
    }


def _export_one(net, params, std, k) -> HeadState:
    return net.export(_numpy_params(params, k), std)


def _export_all(net, params, std) -> list:
    arrays = _numpy_params(params)
    K = next(iter(arrays.values())).shape[0]
    return [net.export({n: v[k] for n, v in arrays.items()}, std) for k in range(K)]


class _Evaluator:
    """Batched evaluation of all K heads on val: one forward pass per evaluation, then the metrics
    of each config's logits; the monitor is handed the same batched forward for its splits (their
    transformed features are cached here by array identity, so each is converted once)."""

    def __init__(self, net, std, val, monitor: Monitor, dev, tdtype):
        self.net, self.std, self.dev, self.tdtype = net, std, dev, tdtype
        self.val, self.monitor = val, monitor
        self._tensors = {}
        self.Zval = self.tensor(val.Z)

    def tensor(self, Z) -> torch.Tensor:
        key = id(Z)
        if key not in self._tensors:  # the array is kept alongside, so its id stays unique
            X = torch.as_tensor(
                self.std.transform(Z) if self.std else np.asarray(Z), device=self.dev
            )
            self._tensors[key] = (Z, X.to(self.tdtype))
        return self._tensors[key][1]

    def logits(self, params, Z) -> np.ndarray:
        with torch.no_grad():
            parts = [
                self.net.forward(params, Z[i : i + _EVAL_CHUNK])[0]
                for i in range(0, len(Z), _EVAL_CHUNK)
            ]
        return torch.cat(parts, dim=1).float().cpu().numpy()  # [K, N, C]

    def __call__(self, params, step, configs, offset, recorders=()) -> list:
        val_logits = self.logits(params, self.Zval)
        # A diverged config (non-finite logits) gets no metrics, so selection never picks it.
        finite = [bool(np.isfinite(val_logits[k]).all()) for k in range(len(configs))]
        watched = self.monitor.score_many(
            lambda Z: self.logits(params, self.tensor(Z)), len(configs), keep=lambda k: finite[k]
        )
        recs = []
        for k, cfg in enumerate(configs):
            rec = {
                "config_id": offset + k,
                "config": cfg,
                "step": step,
                "val": evaluate_split(val_logits[k], self.val) if finite[k] else None,
                **watched[k],
            }
            for r in recorders:
                rec.update(r.record(k))
            recs.append(rec)
        return recs


# ------------------------------------------------------------------------------------------------
# Base class of the heads trained with fit_grid
# ------------------------------------------------------------------------------------------------


class SGDHead(Head):
    """A head trained with the shared SGD trainer; the trainer's settings are its parameters
    (see TRAINER_PARAMS). After fit: `state_` (HeadState of the selected head), `coef_` and
    `intercept_` for linear heads on raw features."""

    PARAMS = dict(TRAINER_PARAMS)

    def loop_config(self, **overrides) -> LoopConfig:
        """This head's trainer settings and seeds as a LoopConfig (`overrides` replace fields)."""
        p = self.params
        kw = {
            "steps": int(p["steps"]),
            "eval_every": int(p["eval_every"]),
            "batch_size": None if p["batch_size"] in (None, "full") else int(p["batch_size"]),
            "model": p["model"],
            "hidden": int(p["hidden"]),
            "standardize": bool(p["standardize"]),
        }
        kw.update(overrides)
        return seeded_loop(self, **kw)

    def default_grid(self) -> list[dict]:
        return lr_wd_grid(self.params["lr_grid"], self.params["wd_grid"])

    def run_grid(self, Z, y, val, monitor, grid=None, **kw) -> GridResult:
        """fit_grid with this head's settings and selection rule; returns the result unadopted.
        `kw`: loop settings that replace the head's (LoopConfig fields) and fit_grid's other
        arguments (variants, init, objective, ...)."""
        loop = self.loop_config(**{k: v for k, v in kw.items() if k in LOOP_SETTINGS})
        return fit_grid(
            Z,
            y,
            grid if grid is not None else self.default_grid(),
            loop,
            val=val,
            monitor=monitor,
            rule=self.rule(val),
            **{k: v for k, v in kw.items() if k not in LOOP_SETTINGS},
        )

    def adopt(self, results: list[GridResult], val, split_name: str = "val") -> None:
        """Make the best head over one or more grid results this head's state (selection over the
        union of their records; config ids must not collide). `val` is the split every record's
        val metrics were computed on (`split_name` names it)."""
        rule = self.rule(val)
        self.history_ = [r for res in results for r in res.history]
        top = self._select(self.history_, rule, split_name, rows=val.rows)
        key = (top["config_id"], top["step"])
        owner = next(
            res for res in results if any((r["config_id"], r["step"]) == key for r in res.history)
        )
        self.state_ = owner.state
        if self.state_.kind == "linear":
            self.coef_, self.intercept_ = (
                self.state_.arrays["coef"],
                self.state_.arrays["intercept"],
            )
        self.info_["trainer"] = results[0].info if len(results) == 1 else [r.info for r in results]
        self.info_["grid_size"] = sum(len(r.configs) for r in results)

    def decision_function(self, Z) -> np.ndarray:
        return self.state_.logits(Z)
