"""A small convolutional network for 32x32 (or 32x64) RGB benchmarks, sized for CPU training.

Used by `embedkit train-erm` (methods spec section 11.4, "small CNN") for the demo backbone and
the large-learning-rate study. Layout, for `width` w and `depth` k:

    [conv3x3 -> BatchNorm -> ReLU -> maxpool2] x k   channels w, 2w, ..., 2^(k-1) w
    global average pool -> Linear(2^(k-1) w, hidden) -> ReLU     = forward_features, D = hidden
    fc: Linear(hidden, num_classes)

Defaults: w = 16, k = 3, hidden = 4 * 2^(k-1) w = 256. BatchNorm is on by default: without it,
SGD with momentum 0.9 diverges on colored_digits from lr ~0.05, which would leave the upper half
of the study's LR grid empty; `batchnorm=False` gives the plain network.

The embedding is the post-ReLU output of a fully connected layer, so "activation sparsity"
(spec 11.2: fraction of exactly-zero post-ReLU activations at the penultimate layer) is
meaningful on it; a pooled conv map would almost never be exactly zero.
"""

from __future__ import annotations

import torch
from torch import nn

from embedkit.errors import EmbedkitError


class SmallCNN(nn.Module):
    def __init__(
        self,
        num_classes: int,
        width: int,
        depth: int,
        hidden: int,
        batchnorm: bool,
        in_channels: int = 3,
    ):
        super().__init__()
        layers, c_in = [], in_channels
        for i in range(depth):
            c_out = width * 2**i
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batchnorm))
            if batchnorm:
                layers.append(nn.BatchNorm2d(c_out))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c_out
        self.conv = nn.Sequential(*layers)
        self.dim = int(hidden)
        self.embed = nn.Linear(c_in, self.dim)
        self.fc = nn.Linear(self.dim, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not self.fc:
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).mean(dim=(2, 3))
        return torch.relu(self.embed(h))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def small_cnn_config(
    width: int = 16, depth: int = 3, hidden: int | None = None, batchnorm: bool = True
) -> dict:
    """Every constructor argument resolved (hidden defaults to 4x the last conv width), so a
    checkpoint's `arch_kwargs` rebuild the same network even if these defaults change."""
    width, depth = int(width), int(depth)
    if width < 1 or depth < 1 or (hidden is not None and int(hidden) < 1):
        raise EmbedkitError(
            "small_cnn: width, depth and hidden must be positive "
            f"(got width={width}, depth={depth}, hidden={hidden})"
        )
    return {
        "width": width,
        "depth": depth,
        "hidden": int(hidden or 4 * width * 2 ** (depth - 1)),
        "batchnorm": bool(batchnorm),
    }


def build_small_cnn(num_classes: int, **arch_kwargs) -> SmallCNN:
    """The small CNN from `small_cnn_config(**arch_kwargs)` (what a checkpoint stores)."""
    return SmallCNN(num_classes, **small_cnn_config(**arch_kwargs))
