"""The CIFAR ResNet of He et al. (2016, section 4.2): depth 6n+2 with option-A shortcuts.

    conv3x3(3 -> 16) -> BN -> ReLU
    3 stages of n BasicBlocks with 16, 32, 64 channels (first block of stages 2 and 3: stride 2)
    BasicBlock: conv3x3 -> BN -> ReLU -> conv3x3 -> BN, + shortcut, -> ReLU
    option A shortcut: where stride or width changes, x[:, :, ::2, ::2] zero-padded in channels
        (width/4 each side); no weights. Otherwise the identity.
    global average pool -> 64-d embedding (`forward_features`) -> fc: Linear(64, classes)

Layer names match the published checkpoints (`conv1`, `bn1`, `layer{1,2,3}.{i}.{conv,bn}{1,2}`),
except that their `linear` is our `fc` (the embedkit-backbone contract). Depths 20/32/44/56/110
are n = 3/5/7/9/18. Input: RGB in [0, 1] normalised with ImageNet mean/std, the statistics the
published checkpoints were trained with (../shared/data/weights/resnet_cifar/NOTES.md).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from embedkit.errors import EmbedkitError

from .base import (
    ClassifierBackbone,
    allow_random,
    load_strict,
    load_weights_file,
    sha256_file,
    state_dict_of,
)
from .preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, preprocess_config

DEPTHS = (20, 32, 44, 56, 110)


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = (planes - in_planes) // 2 if (stride != 1 or in_planes != planes) else None

    def shortcut(self, x):
        if self.pad is None:
            return x
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes, layers = 16, []
        for stage, width in enumerate((16, 32, 64)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(planes, width, stride=2 if (stage > 0 and i == 0) else 1))
                planes = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.dim = 64
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return out.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x))


def build_resnet_cifar(depth: int, num_classes: int = 10) -> ResNetCifar:
    """CIFAR ResNet-`depth` (6n+2); its arguments are what a checkpoint stores as `arch_kwargs`."""
    depth = int(depth)
    if depth < 8 or (depth - 2) % 6:
        raise EmbedkitError(
            f"resnet_cifar: depth {depth} is not 6n+2 (use one of {', '.join(map(str, DEPTHS))})"
        )
    return ResNetCifar(depth, int(num_classes))


def cifar_preprocess() -> dict:
    return preprocess_config(size=None, resize_mode="none", mean=IMAGENET_MEAN, std=IMAGENET_STD)


def create(
    spec: str, args: list[str], *, device, allow_random_init, layer, precision
) -> ClassifierBackbone:
    """`resnet_cifar:DEPTH:CHECKPOINT` (the published akamaster .th files or any state dict of
    this architecture; `random` builds an untrained one with --allow-random-init)."""
    if len(args) < 2 or not args[0].isdigit() or not args[1]:
        raise EmbedkitError(
            f"backbone {spec!r}: expected resnet_cifar:DEPTH:CHECKPOINT (e.g. "
            "resnet_cifar:20:resnet20-12fca82f.th)"
        )
    depth, path = int(args[0]), ":".join(args[1:])
    model = build_resnet_cifar(depth)
    prov = {
        "library": "embedkit",
        "model_name": f"resnet_cifar{depth}",
        "arch": "resnet_cifar",
        "arch_kwargs_json": {"depth": depth},
    }
    if path == "random":
        allow_random(spec, allow_random_init)
        prov.update(random_init=True, weights_tag="random-init", weights_sha256="")
        key = f"resnet_cifar:{depth}:random-init"
    else:
        obj = load_weights_file(path, spec)
        if obj.get("format") == "embedkit-backbone" and obj.get("arch") != "resnet_cifar":
            raise EmbedkitError(
                f"backbone {spec}: checkpoint {path} is an embedkit {obj.get('arch')} "
                f"backbone, not resnet_cifar (use checkpoint:{path})"
            )
        sd = {re.sub(r"^linear\.", "fc.", k): v for k, v in state_dict_of(obj, path, spec).items()}
        num_classes = sd["fc.weight"].shape[0] if "fc.weight" in sd else 10
        if num_classes != 10:
            model = build_resnet_cifar(depth, num_classes)
        load_strict(model, sd, path, spec, f"resnet_cifar depth-{depth}")
        name = path.rstrip("/").rsplit("/", 1)[-1]
        prov.update(
            random_init=False,
            weights_tag=name,
            weights_file=str(Path(path).resolve()),
            weights_sha256=sha256_file(path),
        )
        if "best_prec1" in obj:
            prov["published_top1"] = round(float(obj["best_prec1"]), 4)
        key = f"resnet_cifar:{depth}:{name}"
    cfg = cifar_preprocess()
    return ClassifierBackbone(
        spec,
        key,
        model,
        model.fc,
        cfg,
        Preprocess(cfg),
        device=device,
        precision=precision,
        layer=layer,
        provenance=prov,
    )
