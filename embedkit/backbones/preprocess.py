"""Eval preprocessing built from a recorded config, so what the cache records is what was applied.

Config keys (all stored in the cache's `preprocess_json`):

    size           [H, W] of the network input (None: keep the image size)
    resize_mode    "shortest": scale the shorter side to `resize`, then centre-crop `size`
                   "squash":   resize the whole image to `size` (no crop; Coral's MobileNets)
                   "longest":  scale the longer side to fit `size`, then pad centred with `fill`
                   "none":     no resizing (CIFAR networks on 32x32 inputs)
    resize         shorter side before the crop ("shortest" only; 256 for a 224 ImageNet crop)
    interpolation  "bilinear" | "bicubic" | "nearest" (PIL resampling with antialias)
    mean, std      per-channel normalisation of [0, 1] RGB
    fill           padding grey level for "longest"

The rules follow the published pipelines they stand for: torchvision's `Resize(int)` +
`CenterCrop` for "shortest" on a square input, open_clip's keep-ratio rounding otherwise.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from embedkit.errors import EmbedkitError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
MODES = ("shortest", "squash", "longest", "none")
_INTERP = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def preprocess_config(
    size=None,
    resize_mode="shortest",
    resize=None,
    interpolation="bilinear",
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    fill=0,
) -> dict:
    """A validated, JSON-ready preprocessing config."""
    if resize_mode not in MODES:
        raise EmbedkitError(
            f"preprocess: resize_mode {resize_mode!r} is not one of {', '.join(MODES)}"
        )
    if interpolation not in _INTERP:
        raise EmbedkitError(
            f"preprocess: interpolation {interpolation!r} is not one of {', '.join(_INTERP)}"
        )
    if size is not None:
        size = [int(s) for s in ([size] if np.isscalar(size) else size)]
        size = size * 2 if len(size) == 1 else size
    if resize_mode != "none" and size is None:
        raise EmbedkitError(f"preprocess: resize_mode {resize_mode!r} needs a size")
    if resize_mode == "shortest":
        resize = int(resize or min(size))
    else:
        resize = None
    return {
        "size": size,
        "resize_mode": resize_mode,
        "resize": resize,
        "interpolation": interpolation,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "fill": int(fill),
    }


class Preprocess:
    """PIL RGB image -> normalised CHW float tensor, as its config says. Picklable (DataLoader
    workers under spawn)."""

    def __init__(self, config: dict):
        self.config = config
        self._interp = _INTERP[config["interpolation"]]

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.normalize(self.geometry(img)[None])[0]

    def geometry(self, img: Image.Image) -> torch.Tensor:
        """The per-image part: resize / crop / pad to a uint8 CHW tensor. The extractor runs this
        in DataLoader workers and `normalize` once per batch (on the GPU when there is one): a
        quarter of the bytes to move, and no per-image float work on the data path."""
        c = self.config
        if img.mode != "RGB":
            img = img.convert("RGB")
        mode, size = c["resize_mode"], c["size"]
        if mode == "shortest":
            if size[0] == size[1]:
                img = F.resize(img, c["resize"], interpolation=self._interp)
            else:
                img = F.resize(
                    img,
                    self._keep_ratio(img, size, longest=False, scale=c["resize"] / min(size)),
                    interpolation=self._interp,
                )
            img = F.center_crop(img, size)
        elif mode == "squash":
            img = F.resize(img, size, interpolation=self._interp)
        elif mode == "longest":
            img = F.resize(
                img, self._keep_ratio(img, size, longest=True), interpolation=self._interp
            )
            img = self._pad_to(img, size, c["fill"])
        return F.pil_to_tensor(img)

    def normalize(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> float32, scaled to [0, 1] then standardised: the same operations,
        in the same order, as torchvision's to_tensor + normalize (bitwise equal)."""
        mean = torch.as_tensor(self.config["mean"], dtype=torch.float32, device=batch.device).view(
            1, -1, 1, 1
        )
        std = torch.as_tensor(self.config["std"], dtype=torch.float32, device=batch.device).view(
            1, -1, 1, 1
        )
        return batch.to(torch.float32).div(255).sub(mean).div(std)

    @staticmethod
    def _keep_ratio(img, size, longest: bool, scale: float = 1.0) -> list[int]:
        w, h = img.size
        rh, rw = h / (size[0] * scale), w / (size[1] * scale)
        r = max(rh, rw) if longest else min(rh, rw)
        return [round(h / r), round(w / r)]

    @staticmethod
    def _pad_to(img, size, fill):
        w, h = img.size
        th, tw = size
        if th > h or tw > w:
            img = F.pad(
                img,
                [
                    max(tw - w, 0) // 2,
                    max(th - h, 0) // 2,
                    (max(tw - w, 0) + 1) // 2,
                    (max(th - h, 0) + 1) // 2,
                ],
                fill=fill,
            )
        return F.center_crop(img, size)

    def __repr__(self):
        return f"Preprocess({self.config})"


def stack_images(items):
    """The image extractor's collate: stack a batch of (uint8 CHW tensor or None, reason); an
    unreadable row becomes a zero image of the batch's shape (its features are zeroed and the
    row flagged after the forward pass)."""
    xs = [x for x, _ in items if x is not None]
    reasons = [why for _, why in items]
    shape = xs[0].shape if xs else (3, 32, 32)
    if any(x.shape != shape for x in xs):
        raise EmbedkitError(
            f"images of different sizes in one batch ({tuple(shape)} and others); the backbone's "
            "preprocessing does not resize: choose a backbone with a fixed input size"
        )
    dtype = xs[0].dtype if xs else torch.uint8
    x = torch.stack([x if x is not None else torch.zeros(shape, dtype=dtype) for x, _ in items])
    return x, reasons
