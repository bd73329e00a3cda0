"""Small ERM backbone trainer (methods spec section 11.4, `backbone_train`; `embedkit train-erm`).

Trains a small network from scratch (or from `init`) with plain cross-entropy on the train split
of a dataset adapter, with SGD at one learning rate, and writes the small-backbone checkpoint
that `embedkit extract --backbone checkpoint:PATH` reads (format in the team brief):

    {"format": "embedkit-backbone", "format_version": 1, "arch", "arch_kwargs", "num_classes",
     "state_dict", "preprocess": {"size", "mean", "std"}, "train": {dataset, lr, epochs, seed, ...},
     "seen": {DATASET: {"splits", "n", "uids", "uids_sha256"}, ...}}

`seen` names, per dataset, the rows (by uid) whose images the weights were trained on, those of
the `--init` checkpoint included, so that `extract` can mark them in the cache and AFR/JTT can
refuse held-out rows that are not held out.

Nothing is selected: no early stopping, no validation or test reads. The images of the train
split are decoded once into a uint8 tensor held in memory and normalised per batch, so the hot
loop never touches PIL. With the same seed, thread count and device the weights are bitwise
identical (methods spec 0.4): the init, the batch order and the kernels are all seeded or
deterministic.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from embedkit.configs import resolve
from embedkit.configs import settings as settings_of
from embedkit.determinism import cpu_threads, deterministic
from embedkit.errors import EmbedkitError

ARCHS = ("small_cnn", "resnet_cifar", "mlp", "resnet18")
OPTIMIZERS = ("sgd", "adam")
ARCH_HELP = (
    "small_cnn, resnet_cifar[:DEPTH], mlp[:DEPTHxWIDTH] (default 5x2000) or resnet18[:WEIGHTS.pth]"
)


class TrainingDiverged(EmbedkitError):
    """The loss became NaN or infinite; the LR study records such a run as `diverged`."""

    def __init__(self, lr: float, epoch: int, step: int, loss: float):
        super().__init__(
            f"training diverged at lr={lr:g}, epoch {epoch}, step {step} (loss {loss}); "
            "try a smaller --lr or a warm-up"
        )
        self.lr, self.epoch, self.step, self.loss = lr, epoch, step, loss


# ----------------------------------------------------------------------------------------------
# Architectures and checkpoints
# ----------------------------------------------------------------------------------------------


def parse_arch(spec: str) -> tuple[str, dict, str | None]:
    """(name, arch kwargs, local weights file or None): 'small_cnn' -> ('small_cnn', {}, None);
    'resnet_cifar:20' -> depth 20; 'mlp:5x2000' -> depth 5, width 2000; 'resnet18:FILE.pth' ->
    torchvision ResNet-18 initialised from a local state dict (random init without FILE)."""
    name, _, rest = str(spec).partition(":")
    if name not in ARCHS:
        raise EmbedkitError(f"--arch {spec!r}: choose {ARCH_HELP}")
    if name == "small_cnn":
        if rest:
            raise EmbedkitError(
                f"--arch {spec!r}: small_cnn takes no suffix; set its width with --width"
            )
        return name, {}, None
    if name == "resnet18":
        return name, {}, rest or None
    if name == "mlp":
        try:
            depth, width = (int(v) for v in (rest or "5x2000").lower().split("x"))
        except ValueError:
            raise EmbedkitError(
                f"--arch {spec!r}: write mlp:DEPTHxWIDTH such as mlp:5x2000"
            ) from None
        return name, {"depth": depth, "width": width}, None
    try:
        depth = int(rest or 20)
    except ValueError:
        raise EmbedkitError(f"--arch {spec!r}: DEPTH must be an integer such as 20 or 56") from None
    return name, {"depth": depth}, None


def resolve_arch_kwargs(name: str, kwargs: dict) -> dict:
    """Every architecture argument spelled out, so the checkpoint rebuilds the same network."""
    if name == "small_cnn":
        from embedkit.backbones.small_cnn import small_cnn_config

        try:
            return small_cnn_config(**kwargs)
        except TypeError:
            raise EmbedkitError(
                f"small_cnn: unknown architecture option(s) in {sorted(kwargs)}; "
                "known: width, depth, hidden, batchnorm"
            ) from None
    if name == "mlp":
        from embedkit.backbones.mlp import mlp_config

        try:
            return mlp_config(**kwargs)
        except TypeError:
            raise EmbedkitError(
                f"mlp: unknown architecture option(s) in {sorted(kwargs)}; "
                "known: depth, width, dropout"
            ) from None
    known = {"resnet_cifar": {"depth"}, "resnet18": set()}[name]
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise EmbedkitError(
            f"{name}: option(s) {', '.join(unknown)} do not apply "
            "(--width and batchnorm: small_cnn only; --dropout: mlp only)"
        )
    return kwargs


def build_backbone(arch: str, num_classes: int, arch_kwargs: dict) -> torch.nn.Module:
    """Through the checkpoint backbone's registry, so training and extraction build alike."""
    from embedkit.backbones.checkpoint import _builders

    builders = _builders()
    if arch not in builders:
        raise EmbedkitError(
            f"unknown architecture {arch!r} in checkpoint; known: {', '.join(builders)}"
        )
    return builders[arch](num_classes=num_classes, **arch_kwargs)


def n_parameters(model: torch.nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def load_checkpoint(path) -> tuple[torch.nn.Module, dict]:
    """(model in eval mode, checkpoint dict) from a file written by `train_erm`, with the
    extractor's own checks (`embedkit.backbones`: weights-only load, strict state dict)."""
    from embedkit.backbones.base import load_strict, load_weights_file
    from embedkit.backbones.checkpoint import FORMAT, FORMAT_VERSION

    spec = f"checkpoint:{path}"
    ckpt = load_weights_file(path, spec)
    if ckpt.get("format") != FORMAT:
        raise EmbedkitError(
            f"{path}: not an embedkit backbone checkpoint (written by `embedkit train-erm`)"
        )
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise EmbedkitError(
            f"{path}: checkpoint format version {ckpt.get('format_version')} "
            f"is not supported (this embedkit reads version {FORMAT_VERSION})"
        )
    model = build_backbone(ckpt["arch"], int(ckpt["num_classes"]), dict(ckpt["arch_kwargs"]))
    load_strict(model, ckpt["state_dict"], path, spec, ckpt["arch"])
    return model.eval(), ckpt


def _plain(obj):
    """A JSON round trip, so that only types `torch.load(weights_only=True)` accepts are stored."""
    return json.loads(json.dumps(obj, default=str))


def _save_atomic(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Images in memory
# ----------------------------------------------------------------------------------------------


def load_images(ds, rows: np.ndarray) -> torch.Tensor:
    """Decode rows of an ImageDataset once into a uint8 tensor [N, 3, H, W] (all one size).
    The seeded benchmarks already hold their images as one array; it is used as is."""
    from embedkit.data.base import ArrayDataset

    if isinstance(ds, ArrayDataset):
        return (
            torch.from_numpy(np.ascontiguousarray(ds.images[rows])).permute(0, 3, 1, 2).contiguous()
        )
    first = np.asarray(ds.load(int(rows[0])).convert("RGB"))
    out = torch.empty((len(rows), 3, *first.shape[:2]), dtype=torch.uint8)
    for k, i in enumerate(rows):
        arr = first if k == 0 else np.asarray(ds.load(int(i)).convert("RGB"))
        if arr.shape != first.shape:
            raise EmbedkitError(
                f"dataset {ds.name}: row {int(i)} is {arr.shape[1]}x{arr.shape[0]}, row "
                f"{int(rows[0])} is {first.shape[1]}x{first.shape[0]}; "
                "train-erm needs one image size"
            )
        out[k] = torch.tensor(arr).permute(2, 0, 1)
    return out


def channel_stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 images on the [0, 1] scale (what ToTensor produces).
    A channel (nearly) constant in train gets std 1, not a tiny divisor that would blow up any
    test image that differs there (the blue channel of red/green digits)."""
    x = images.to(torch.float64).div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    std = torch.where(std < 1e-3, torch.ones_like(std), std)
    return [float(v) for v in mean], [float(v) for v in std]


def normalize(batch: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (batch.to(torch.float32).div_(255.0) - mean) / std


def predict_logits(
    model, images: torch.Tensor, preprocess: dict, batch_size: int = 256, train_mode: bool = False
) -> np.ndarray:
    """Logits [N, C] of uint8 images [N, 3, H, W] under a checkpoint's `preprocess`. With
    `train_mode` the network runs as in training (BatchNorm on batch statistics) on a copy, so
    the model's running statistics are left untouched."""
    import copy

    mean = torch.tensor(preprocess["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(preprocess["std"], dtype=torch.float32).view(1, -1, 1, 1)
    net = copy.deepcopy(model).train() if train_mode else model.eval()
    with torch.no_grad():
        parts = [
            net(normalize(images[i : i + batch_size], mean, std))
            for i in range(0, len(images), batch_size)
        ]
    return torch.cat(parts).numpy()


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


def _lr_at(step: int, total: int, lr: float, schedule: str, warmup: float) -> float:
    n_warm = int(round(warmup * total))
    if step < n_warm:
        return lr * (step + 1) / n_warm
    if schedule == "cosine":
        t = (step - n_warm) / max(1, total - n_warm)
        return 0.5 * lr * (1 + math.cos(math.pi * t))
    return lr


@dataclass(frozen=True)
class TrainConfig:
    """The settings of one `train_erm` run (see its docstring), validated once, here.

    `embedkit train-erm` builds one from its flags; `train_erm(dataset, config, out=...)` takes
    it, or the same settings as keyword arguments (keywords override the config's fields; an
    unknown one is a TypeError; embedkit/configs.py). The checkpoint records them under
    `train.config`."""

    arch: str = "small_cnn"
    lr: float = 0.02
    epochs: int = 8
    steps: int | None = None
    batch_size: int = 64
    seed: int = 0
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    l1: float = 0.0
    dropout: float | None = None
    schedule: str = "constant"
    warmup: float = 0.0
    checkpoint_steps: tuple = ()
    width: int | None = None
    arch_kwargs: dict = field(default_factory=dict)
    init: str | None = None
    device: str = "cpu"
    threads: int | None = 1
    save_early: tuple = ()
    holdout: float = 0.0

    def __post_init__(self):
        lr, epochs, steps, batch_size = self.lr, self.epochs, self.steps, self.batch_size
        if lr <= 0 or epochs < 1 or batch_size < 1 or (steps is not None and steps < 1):
            raise EmbedkitError(
                "train_erm: need lr > 0, epochs >= 1, steps >= 1, batch size >= 1 "
                f"(got lr={lr}, epochs={epochs}, steps={steps}, batch size={batch_size})"
            )
        if self.optimizer not in OPTIMIZERS:
            raise EmbedkitError(f"--optimizer {self.optimizer!r}: choose {' or '.join(OPTIMIZERS)}")
        if self.schedule not in ("constant", "cosine"):
            raise EmbedkitError(f"--schedule {self.schedule!r}: choose constant or cosine")
        if not 0.0 <= self.warmup < 1.0:
            raise EmbedkitError(f"--warmup {self.warmup}: a fraction of the steps in [0, 1)")
        if not 0.0 <= self.holdout < 1.0:
            raise EmbedkitError(
                f"--holdout {self.holdout}: a fraction of the train split in [0, 1)"
            )
        if self.l1 < 0 or self.weight_decay < 0:
            raise EmbedkitError(
                "train_erm: need l1 >= 0 and weight decay >= 0 "
                f"(got {self.l1}, {self.weight_decay})"
            )
        parse_arch(self.arch)  # a bad --arch spec: its one-line error now, not after loading
        early = tuple(sorted({int(e) for e in self.save_early}))
        if early and (steps is not None or not 1 <= early[0] <= early[-1] < epochs):
            raise EmbedkitError(
                f"--save-early {','.join(map(str, early))}: epochs must lie in 1..{epochs - 1} "
                "(the final checkpoint is written anyway; not with --steps)"
            )
        normal = {
            "epochs": int(epochs),
            "steps": None if steps is None else int(steps),
            "batch_size": int(batch_size),
            "seed": int(self.seed),
            "checkpoint_steps": tuple(int(v) for v in self.checkpoint_steps),
            "arch_kwargs": dict(self.arch_kwargs or {}),
            "init": None if self.init is None else str(self.init),
            "save_early": early,
        }
        for k, v in normal.items():  # frozen: the normal form is set once, here
            object.__setattr__(self, k, v)


def train_erm(
    dataset,
    config: TrainConfig | None = None,
    *,
    out=None,
    root=None,
    dataset_options: dict | None = None,
    log: Callable[[str], None] | None = print,
    **settings,
) -> Path:
    """Train an ERM backbone on the train split of `dataset` and write the checkpoint to `out`,
    with the settings of `config` (a TrainConfig) or keyword arguments of the same names
    (`lr=0.02, epochs=8`; they override the config's fields).

    `dataset` is a registered dataset name (built with `root` and `dataset_options`) or an
    ImageDataset. `arch`: see ARCH_HELP; `width` (small_cnn), `dropout` (mlp) and `arch_kwargs`
    set the architecture. `optimizer` 'sgd' (with `momentum`) or 'adam'; `weight_decay` on weight
    tensors only (biases and norm parameters are not decayed, as in methods spec 0.3); `l1` adds
    l1 * sum |w| over the same tensors to the loss (a comparator of spec 11.3 C); constant or
    cosine `schedule`, optional linear `warmup` (a fraction of the steps; a flagged deviation in
    the LR study). The budget is `steps` iterations when given (spec 11.4: iteration-based), else
    `epochs` passes; batches walk seeded permutations of the train rows, a new one per pass.
    `checkpoint_steps`: steps at which a checkpoint `<out stem>_step<N>.pt` is also written (the
    early checkpoints of spec 11.4). The defaults (small_cnn width 16 with BatchNorm, lr 0.02, 8
    epochs of 64) are the demo's: about 10 s on colored_digits on one CPU core, and an ERM head
    that leans on the colour (test worst-group accuracy near 0.1) while its features still carry
    the digit (DFR recovers ~0.85). `init` starts from another checkpoint of the same architecture
    (a new fc is drawn when the class count differs); `resnet18:FILE` starts from local
    torchvision weights. `threads`: CPU threads while training (restored afterwards; None =
    torch's default). One by default, as the shared head trainer: the weights then do not depend
    on the machine's core count, and on shared cores a second thread costs far more than it gains.
    The checkpoint records the rows the backbone saw (`trained_on`: split name and row ids of the
    dataset's sample table), for a cache's seen-by-backbone flags. Returns the checkpoint path.
    Raises TrainingDiverged on a non-finite loss (checkpoints already written are kept).

    `save_early` (epochs): also write the checkpoint of the same run after each of these epochs to
    `early_checkpoint_path(out, epoch)` (SELF's early-stopped model; `extract` each one into the
    same cache as its own backbone key).

    `holdout` (a fraction in [0, 1)) leaves the last part of the train split (in the dataset's row
    order) out of training, as AFR's official code does (`--train_prop=80` trains the backbone on
    the first 80 % of train, `--train_prop=-20` reweights the last 20 %; methods spec 6): the
    checkpoint's `seen` record lists only the rows trained on, so after `extract` the held-out
    rows read as unseen.
    """
    cfg = resolve(TrainConfig, config, settings, "train_erm")
    if out is None:
        raise EmbedkitError("train_erm: `out` (the checkpoint path) is required")
    arch, lr, epochs, steps = cfg.arch, cfg.lr, cfg.epochs, cfg.steps
    batch_size, seed, optimizer, momentum = cfg.batch_size, cfg.seed, cfg.optimizer, cfg.momentum
    weight_decay, l1, schedule, warmup = cfg.weight_decay, cfg.l1, cfg.schedule, cfg.warmup
    holdout, init = cfg.holdout, cfg.init
    options = dict(dataset_options or {})
    if isinstance(dataset, str):
        from embedkit import data

        ds = data.create(dataset, root=root, **options)
    else:
        ds = dataset
    name, kwargs, weights = parse_arch(arch)
    kwargs.update(cfg.arch_kwargs)
    if cfg.width is not None:
        kwargs["width"] = int(cfg.width)
    if cfg.dropout is not None:
        kwargs["dropout"] = float(cfg.dropout)

    t0 = time.perf_counter()
    samples = ds.samples()
    rows = np.flatnonzero(samples.split == 0)
    rows = rows[: rows.size - int(round(holdout * rows.size))]
    if rows.size == 0:
        raise EmbedkitError(
            f"dataset {ds.name}: the train split is empty" + (" after --holdout" if holdout else "")
        )
    num_classes = len(samples.class_names)
    images = load_images(ds, rows)
    if name == "mlp":
        kwargs["input_shape"] = list(images.shape[1:])
    kwargs = resolve_arch_kwargs(name, kwargs)
    labels = torch.as_tensor(samples.y[rows], dtype=torch.int64)
    mean, std = channel_stats(images)
    t_load = time.perf_counter() - t0
    per_epoch = math.ceil(len(rows) / batch_size)
    total = int(steps) if steps is not None else per_epoch * epochs
    ckpt_steps = sorted({v for v in cfg.checkpoint_steps if 0 < v < total})
    early_at = {e * per_epoch: e for e in cfg.save_early}  # the step that closes epoch e

    from embedkit.backbones.checkpoint import FORMAT, FORMAT_VERSION

    size = (
        images.shape[2]
        if images.shape[2] == images.shape[3]
        else [images.shape[2], images.shape[3]]
    )
    out = Path(out)
    info = {
        "dataset": ds.name,
        "dataset_options": options,
        "dataset_meta": getattr(ds, "meta", {}),
        "root": None if root is None else str(root),
        "lr": lr,
        "epochs": None if steps else epochs,
        "batch_size": batch_size,
        "seed": seed,
        "optimizer": optimizer,
        "momentum": momentum if optimizer == "sgd" else None,
        "weight_decay": weight_decay,
        "l1": l1,
        "schedule": schedule,
        "warmup": warmup,
        "total_steps": total,
        "n_train": int(len(rows)),
        "seen_split": "train",
        "holdout": holdout,
        "checkpoint_steps": ckpt_steps,
        "checkpoint_files": [str(step_path(out, k)) for k in ckpt_steps],
        "torch": torch.__version__,
        "config": settings_of(cfg),  # every setting of the run, as `TrainConfig(**config)` reads
    }

    def save(model, path, history, n_params, **extra):
        ckpt = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arch": name,
            "arch_kwargs": _plain(kwargs),
            "num_classes": num_classes,
            "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
            "preprocess": {"size": size, "mean": mean, "std": std},
            # which rows the backbone was fitted on (seen-by-backbone flags of a cache)
            "trained_on": {"split": "train", "rows": torch.as_tensor(rows, dtype=torch.int64)},
            "train": _plain(
                {
                    **info,
                    "steps": history[-1]["step"],
                    "history": history,
                    "init": init_info,
                    "n_parameters": n_params,
                    "final_loss": history[-1]["loss"],
                    "final_acc": history[-1]["acc"],
                    "load_seconds": round(t_load, 3),
                    "seconds": round(time.perf_counter() - t0, 3),
                    "device": str(dev),
                    "threads": torch.get_num_threads(),
                    **extra,
                }
            ),
            "seen": seen_record(ds.name, samples.uid[rows], "train", init_seen),
        }
        _save_atomic(ckpt, path)

    def on_checkpoint(model, k, hist, n_params):
        if k in ckpt_steps:
            save(model, step_path(out, k), hist, n_params)
        if k in early_at:
            path = early_checkpoint_path(out, early_at[k])
            save(
                model,
                path,
                hist,
                n_params,
                epochs=early_at[k],
                early_of=str(out),
                planned_epochs=epochs,
            )
            if log:
                log(f"wrote early checkpoint {path} (epoch {early_at[k]})")

    dev = torch.device(cfg.device)
    with cpu_threads(cfg.threads), deterministic(warn_only=dev.type != "cpu"):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = build_backbone(name, num_classes, kwargs)
        init_info, init_seen = None, None
        if weights:
            from embedkit.backbones.resnet18 import init_resnet18

            init_info = init_resnet18(model, weights)
        elif init:
            init_info, init_seen = _apply_init(model, init, name, kwargs, num_classes)
        n_params = n_parameters(model)
        model.to(dev)
        history = _fit(
            model,
            images,
            labels,
            mean,
            std,
            lr=lr,
            total=total,
            per_epoch=per_epoch,
            by_epoch=steps is None,
            batch_size=batch_size,
            seed=seed,
            optimizer=optimizer,
            momentum=momentum,
            weight_decay=weight_decay,
            l1=l1,
            schedule=schedule,
            warmup=warmup,
            device=dev,
            log=log,
            ckpt_steps=sorted(set(ckpt_steps) | set(early_at)),
            on_checkpoint=lambda k, hist: on_checkpoint(model, k, hist, n_params),
        )
        save(model, out, history, n_params)
    if log:
        log(
            f"wrote {out} ({name}, {n_params:,} parameters, {num_classes} classes, "
            f"dim {model.fc.in_features}, {total} steps, {time.perf_counter() - t0:.1f} s)"
        )
    return out


def step_path(out, step: int) -> Path:
    """Where the checkpoint at `step` of a run writing `out` goes."""
    out = Path(out)
    return out.with_name(f"{out.stem}_step{int(step)}{out.suffix}")


def early_checkpoint_path(out, epoch: int) -> Path:
    """Where `train_erm(save_early=...)` writes the checkpoint after `epoch`: OUT-epochE.pt beside
    OUT."""
    out = Path(out)
    return out.with_name(f"{out.stem}-epoch{int(epoch)}{out.suffix or '.pt'}")


def seen_record(dataset: str, uids, split: str, init_seen: dict | None = None) -> dict:
    """The checkpoint's `seen` entry: per dataset, the uids the weights were trained on, the init
    checkpoint's merged in. Uids name source images, so they hold across options of one dataset;
    rows of a dataset that is not listed, or listed as `unknown` (an init checkpoint older than this
    record), are "unknown" to `extract`, not "unseen"."""
    import hashlib

    out = {k: dict(v) for k, v in (init_seen or {}).items()}
    entry = out.setdefault(dataset, {"splits": [], "uids": []})
    merged = sorted(set(entry.get("uids", [])) | {str(u) for u in uids})
    entry.update(
        splits=entry.get("splits", []) + [split] * (split not in entry.get("splits", [])),
        uids=merged,
        n=len(merged),
        uids_sha256=hashlib.sha256("\n".join(merged).encode()).hexdigest(),
    )
    return out


def _apply_init(model, init, name: str, kwargs: dict, num_classes: int) -> tuple[dict, dict | None]:
    src, ckpt = load_checkpoint(init)
    if ckpt["arch"] != name or dict(ckpt["arch_kwargs"]) != _plain(kwargs):
        raise EmbedkitError(
            f"--init {init}: its architecture {ckpt['arch']} {ckpt['arch_kwargs']} differs from "
            f"--arch {name} {kwargs}"
        )
    state = src.state_dict()
    if int(ckpt["num_classes"]) != num_classes:
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    model.load_state_dict(state, strict=False)
    return (
        {
            "path": str(init),
            "dataset": ckpt["train"].get("dataset"),
            "new_fc": len(state) < len(src.state_dict()),
        },
        # a checkpoint without the record saw rows of its dataset that nobody listed
        ckpt.get("seen")
        or {ckpt["train"].get("dataset"): {"unknown": True, "splits": ["train"], "uids": []}},
    )


def _fit(
    model,
    images,
    labels,
    mean,
    std,
    *,
    lr,
    total,
    per_epoch,
    by_epoch,
    batch_size,
    seed,
    optimizer,
    momentum,
    weight_decay,
    l1,
    schedule,
    warmup,
    device,
    log,
    ckpt_steps=(),
    on_checkpoint=None,
) -> list[dict]:
    """`total` SGD/Adam steps over seeded permutations of the rows (a new one every `per_epoch`
    steps). A history record (mean loss and accuracy over the rows since the last record) closes
    every pass in epoch mode, and every checkpoint step and the last step in step mode."""
    mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    opt = (
        torch.optim.SGD(groups, lr=lr, momentum=momentum)
        if optimizer == "sgd"
        else torch.optim.Adam(groups, lr=lr)
    )
    gen = torch.Generator().manual_seed(seed)
    if device.type != "cpu":  # the uint8 train set fits on the device; no per-batch copies
        images, labels = images.to(device), labels.to(device)
    n = len(labels)
    record_at = (
        set(range(per_epoch, total + 1, per_epoch)) if by_epoch else set(ckpt_steps) | {total}
    )
    history, perm = [], None
    loss_sum, hits, seen, t0 = 0.0, 0, 0, time.perf_counter()
    model.train()
    for step in range(total):
        epoch, b = divmod(step, per_epoch)
        if b == 0:
            perm = torch.randperm(n, generator=gen)
        idx = perm[b * batch_size : (b + 1) * batch_size]
        if device.type != "cpu":
            idx = idx.to(device)
        x = normalize(images[idx], mean_t, std_t)
        y = labels[idx]
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, total, lr, schedule, warmup)
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        objective = loss + l1 * sum(p.abs().sum() for p in decay) if l1 > 0 else loss
        loss_value = loss.item()
        if not (math.isfinite(loss_value) and math.isfinite(objective.item())):
            raise TrainingDiverged(lr, epoch + 1, step, loss_value)
        opt.zero_grad(set_to_none=True)
        objective.backward()
        opt.step()
        loss_sum += loss_value * len(idx)
        hits += int((logits.argmax(1) == y).sum())
        seen += len(idx)
        if step + 1 in record_at:
            rec = {
                "epoch": epoch + 1,
                "step": step + 1,
                "loss": loss_sum / seen,
                "acc": hits / seen,
                "seconds": round(time.perf_counter() - t0, 3),
            }
            history.append(rec)
            if log:
                where = (
                    f"epoch {epoch + 1}/{total // per_epoch}"
                    if by_epoch
                    else f"step {step + 1}/{total}"
                )
                log(
                    f"{where}  loss {rec['loss']:.4f}  train acc {rec['acc']:.4f}  "
                    f"lr {opt.param_groups[0]['lr']:.3g}  {rec['seconds']:.1f} s"
                )
            loss_sum, hits, seen, t0 = 0.0, 0, 0, time.perf_counter()
            if step + 1 in ckpt_steps and on_checkpoint is not None:
                model.eval()
                on_checkpoint(step + 1, list(history))
                model.train()
    model.eval()
    return history
