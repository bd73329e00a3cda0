"""The frozen-backbone interface and the pieces every family shares.

A `Backbone` owns a model in eval mode on one device, its eval preprocessing (`transform`, built
from `preprocess_config` so the recorded config is the applied one), and its provenance (weights
file and SHA-256, layer, precision, preprocessing, normalisation). `features(x)` returns the
embedding at the chosen layer and, when the model has its own classifier, that classifier's logits
(AFR, JTT and EIIL read them from the cache).

`ClassifierBackbone` covers every network that ends in a linear classifier (torchvision models,
the CIFAR ResNets, embedkit checkpoints): the default embedding is the input of that last Linear
(the penultimate representation), captured with a forward pre-hook, so no model needs surgery.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from embedkit.devices import resolve_device
from embedkit.errors import EmbedkitError

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PENULTIMATE = "penultimate"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise EmbedkitError(f"--precision {precision!r}: choose from {', '.join(PRECISIONS)}")
    return precision


def allow_random(spec: str, allow_random_init: bool) -> None:
    """Untrained weights only on explicit request (they are for testing mechanics, not numbers)."""
    if not allow_random_init:
        raise EmbedkitError(
            f"backbone {spec}: no weights; pass --allow-random-init to build it randomly "
            "initialised"
        )


def sha256_file(path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def load_weights_file(path, spec: str) -> dict:
    """`torch.load(weights_only=True)` of a local checkpoint with one-line errors."""
    p = Path(path)
    if not p.is_file():
        raise EmbedkitError(f"backbone {spec}: checkpoint {p} not found")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights-only refusals all land here
        detail = (str(e).splitlines() or [""])[0][:200]
        raise EmbedkitError(
            f"backbone {spec}: cannot load checkpoint {p} with weights_only=True "
            f"({type(e).__name__}: {detail})"
        ) from None
    if not isinstance(obj, dict):
        raise EmbedkitError(
            f"backbone {spec}: checkpoint {p} holds a {type(obj).__name__}, not a dict of tensors"
        )
    return obj


def state_dict_of(obj: dict, path, spec: str) -> dict:
    """The tensor dict inside a checkpoint: `obj['state_dict']` (or 'model'), else `obj` itself;
    a DataParallel `module.` prefix is stripped."""
    sd = obj
    for k in ("state_dict", "model"):
        if isinstance(obj.get(k), dict):
            sd = obj[k]
            break
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise EmbedkitError(
            f"backbone {spec}: checkpoint {path} holds no state dict (keys: "
            f"{', '.join(list(obj)[:6])})"
        )
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_strict(model: nn.Module, sd: dict, path, spec: str, arch: str) -> None:
    """Strict load; a checkpoint of another architecture is one line naming what does not fit.
    (torch's own BatchNorm upgrade of pre-1.0 state dicts without `num_batches_tracked` applies.)"""
    own = model.state_dict()
    wrong = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    what = []
    if wrong:
        k = wrong[0]
        what.append(
            f"{len(wrong)} shape mismatches (e.g. {k}: checkpoint {tuple(sd[k].shape)}, "
            f"model {tuple(own[k].shape)})"
        )
    else:
        res = model.load_state_dict(sd, strict=False)
        if res.missing_keys:
            what.append(f"{len(res.missing_keys)} missing keys (e.g. {res.missing_keys[0]})")
        if res.unexpected_keys:
            what.append(
                f"{len(res.unexpected_keys)} unexpected keys (e.g. {res.unexpected_keys[0]})"
            )
    if what:
        raise EmbedkitError(
            f"backbone {spec}: checkpoint {path} is not a {arch} checkpoint: {'; '.join(what)}"
        )


class Backbone:
    """A frozen feature extractor. Subclasses set the attributes in `__init__` and implement
    `_forward(x) -> (feats, logits | None)`."""

    key: str
    dim: int
    num_classes: int | None = None
    transform = None
    preprocess_config: dict
    model: nn.Module
    device: torch.device
    precision: str = "fp32"
    layer: str = PENULTIMATE
    default_dtype = "float32"  # storage dtype of the cache (CLIP towers default to float16)
    normalised = False  # are the stored features L2-normalised
    has_text = False
    # Rows the weights were trained on, per dataset ({name: {"uids", ...}}): only embedkit's own
    # train-erm checkpoints know them; None everywhere else ("unknown", never "unseen").
    seen_record: dict | None = None
    modality = "image"  # what the extractor feeds it: "image" or "text" rows

    # The data path, in three steps the extractor calls: `transform.geometry(row)` per row in the
    # DataLoader workers, `collate_fn(items)` per batch there too, `prepare(batch)` on the model's
    # device. Images: resize/crop to uint8, stack, then normalise once per batch. Text backbones
    # replace all three (tokenise with dynamic padding, then move the token tensors).
    @property
    def collate_fn(self):
        from .preprocess import stack_images

        return stack_images

    def prepare(self, batch):
        return self.transform.normalize(batch.to(self.device, non_blocking=True))

    def _setup_model(self, model: nn.Module, device, precision: str) -> None:
        self.device = resolve_device(device)
        self.precision = check_precision(precision)
        # channels_last on CPU too: oneDNN convolutions run ~1.5-2x faster in NHWC on this class
        # of machine (README-mobilenet.md measured 25 -> 55 img/s for MobileNetV2).
        self.model = (
            model.eval().requires_grad_(False).to(self.device, memory_format=torch.channels_last)
        )

    def _autocast(self):
        dt = PRECISIONS[self.precision]
        if dt is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dt)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings [B, D] (float32) and the model's own logits [B, C] (or None) for a batch
        of preprocessed images [B, 3, H, W]."""
        x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.no_grad(), self._autocast():
            feats, logits = self._forward(x)
        return feats.float(), (None if logits is None else logits.float())

    def _forward(self, x):
        raise NotImplementedError

    def erm_head(self):
        """(W0 [C, D], b0 [C]) of the model's own classifier when the embedding is its input."""
        return None

    def encode_text(self, prompts) -> np.ndarray:
        raise EmbedkitError(
            f"backbone {self.key} has no text tower (only openclip:MODEL:PRETRAINED has one)"
        )

    def provenance(self) -> dict:
        return {
            "backbone_spec": self.spec,
            "layer": self.layer,
            "precision": self.precision,
            "normalised": bool(self.normalised),
            "num_classes": self.num_classes or 0,
            "preprocess_json": self.preprocess_config,
            "torch_version": str(torch.__version__),
            **self._provenance,
        }

    def __repr__(self):
        return f"<{type(self).__name__} {self.key} dim={self.dim} on {self.device}>"


def _pool(t: torch.Tensor, name: str) -> torch.Tensor:
    if t.ndim == 4:
        return t.mean(dim=(2, 3))
    if t.ndim == 2:
        return t
    raise EmbedkitError(
        f"layer {name!r} gives a {t.ndim}-D output; choose a layer with a [B, C, H, W] "
        "or [B, D] output"
    )


class ClassifierBackbone(Backbone):
    """A network ending in a Linear classifier `head`. The embedding is the head's input
    (`layer` None or 'penultimate') or the output of the named submodule, global-average-pooled
    when it is a feature map; the logits are always the full network's output."""

    def __init__(
        self,
        spec: str,
        key: str,
        model: nn.Module,
        head: nn.Linear,
        preprocess_config: dict,
        transform,
        *,
        device="cpu",
        precision="fp32",
        layer: str | None = None,
        provenance: dict | None = None,
    ):
        self.spec = spec
        self.layer = layer or PENULTIMATE
        self.key = key if self.layer == PENULTIMATE else f"{key}@{self.layer}"
        self.preprocess_config = preprocess_config
        self.transform = transform
        self.num_classes = int(head.out_features)
        self._setup_model(model, device, precision)
        self._head = head
        self._captured: dict = {}
        if self.layer == PENULTIMATE:
            head.register_forward_pre_hook(
                lambda m, args: self._captured.__setitem__("feats", args[0])
            )
            self.dim = int(head.in_features)
        else:
            modules = dict(self.model.named_modules())
            if self.layer not in modules:
                names = [n for n, _ in self.model.named_children()]
                raise EmbedkitError(
                    f"backbone {spec}: no layer {self.layer!r}; top-level layers: "
                    f"{', '.join(names)}"
                )
            modules[self.layer].register_forward_hook(
                lambda m, args, out: self._captured.__setitem__("feats", _pool(out, self.layer))
            )
            self.dim = int(self._probe_dim())
        self._provenance = {
            "pooling": "none" if self.layer == PENULTIMATE else "global_avg",
            **(provenance or {}),
        }

    def _probe_dim(self) -> int:
        size = self.preprocess_config.get("crop") or self.preprocess_config.get("resize") or 32
        h, w = (size, size) if isinstance(size, int) else size
        with torch.no_grad():
            self.model(torch.zeros(1, 3, h, w, device=self.device))
        return self._captured.pop("feats").shape[1]

    def _forward(self, x):
        logits = self.model(x)
        return self._captured.pop("feats"), logits

    def erm_head(self):
        if self.layer != PENULTIMATE:
            return None
        W = self._head.weight.detach().float().cpu().numpy()
        b = (
            self._head.bias.detach().float().cpu().numpy()
            if self._head.bias is not None
            else np.zeros(W.shape[0], np.float32)
        )
        return W, b
