"""The MLP backbone of the large-learning-rate study (methods spec 11.3 B / 11.4: "MLP 5 x 2000
ReLU, as in the advcomp example script"), trained from scratch by `embedkit train-erm`.

    flatten(C x H x W) -> [Linear -> ReLU (-> Dropout p)] x depth  = forward_features, D = width
    fc: Linear(width, num_classes)

PyTorch's default Linear initialisation. Dropout (spec 11.3 C's comparator, default 0) follows
every hidden ReLU and is the identity in eval mode, so the embedding is the last post-ReLU layer
and its activation sparsity (spec 11.2) is meaningful. Parameter counts (weights + biases) for
Double-MNIST's 3 x 28 x 56 input and 10 classes: 5 x 2000 -> 4704*2000 + 2000 + 4 (2000*2000 +
2000) + 2000*10 + 10 = 25,438,010; the quick study's 5 x 256 -> 1,470,218.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from embedkit.errors import EmbedkitError


class MLP(nn.Module):
    def __init__(self, num_classes: int, input_shape, depth: int, width: int, dropout: float):
        super().__init__()
        layers, d_in = [nn.Flatten()], int(math.prod(input_shape))
        for _ in range(depth):
            layers += [nn.Linear(d_in, width), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d_in = width
        self.features = nn.Sequential(*layers)
        self.dim = int(width)
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def mlp_config(input_shape=None, depth: int = 5, width: int = 2000, dropout: float = 0.0) -> dict:
    """Every constructor argument resolved (what a checkpoint stores). `input_shape` [C, H, W] is
    the image the network reads; train-erm fills it in from the data."""
    if input_shape is None:
        raise EmbedkitError(
            "mlp: input_shape [C, H, W] is required (train-erm sets it from the images)"
        )
    shape = [int(v) for v in input_shape]
    depth, width, dropout = int(depth), int(width), float(dropout)
    if len(shape) != 3 or min(shape) < 1 or depth < 1 or width < 1 or not 0.0 <= dropout < 1.0:
        raise EmbedkitError(
            "mlp: need input_shape [C, H, W], depth >= 1, width >= 1, 0 <= dropout < 1 "
            f"(got {shape}, {depth}, {width}, {dropout})"
        )
    return {"input_shape": shape, "depth": depth, "width": width, "dropout": dropout}


def build_mlp(num_classes: int, **arch_kwargs) -> MLP:
    return MLP(num_classes, **mlp_config(**arch_kwargs))
