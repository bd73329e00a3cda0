"""`torchvision:MODEL[:CHECKPOINT]`: any classification model of `torchvision.models`.

CHECKPOINT is one of
  - absent or a weights tag of the model (`DEFAULT`, `IMAGENET1K_V2`, ...): torchvision's own
    weights, read from the torch hub cache, downloaded there on a machine with internet;
    preprocessing is the tag's published eval transform (resize, centre crop, mean/std);
  - a local file loaded with `torch.load(weights_only=True)`: a state dict, or a dict with
    `state_dict` and optionally `num_classes`, `preprocess` and `padding`. The converted Coral
    MobileNetV2 files (../shared/data/weights/README-mobilenet.md) are of this kind: their
    `preprocess` {'resize': 224, 'mean', 'std'} means the whole image resized to 224x224
    (bilinear, no crop) and `padding: 'tf_same'` means the stride-2 convolutions must pad like
    TensorFlow's SAME (see `use_tf_same_padding`). A file without `preprocess` gets the standard
    ImageNet eval transform (resize 256, centre crop 224, ImageNet mean/std);
  - `random`: untrained weights, only with --allow-random-init.

The embedding is the input of the model's last Linear layer (2048-d for resnet50, 1280-d for
mobilenet_v2); the logits and that Linear (the ERM head) are stored beside it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
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


def _tf_same_pad(conv: nn.Conv2d, args):
    """TensorFlow SAME padding for a strided conv: total = max((ceil(n/s) - 1) s + k_eff - n, 0)
    per axis, the odd pixel going to the bottom/right (torch pads symmetrically instead, which
    samples a grid shifted by one pixel on even inputs)."""
    x = args[0]

    def total(n: int, axis: int) -> int:
        k = (conv.kernel_size[axis] - 1) * conv.dilation[axis] + 1
        s = conv.stride[axis]
        return max((math.ceil(n / s) - 1) * s + k - n, 0)

    th, tw = total(x.shape[-2], 0), total(x.shape[-1], 1)
    return (F.pad(x, [tw // 2, tw - tw // 2, th // 2, th - th // 2]),)  # left, right, top, bottom


def use_tf_same_padding(model: nn.Module) -> int:
    """Switch every strided Conv2d to TF-SAME padding (state-dict keys unchanged); returns how
    many convolutions changed. Stride-1 convs keep torch's symmetric padding, which equals SAME
    for odd kernels."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.stride != (1, 1):
            m.padding = (0, 0)
            m.register_forward_pre_hook(_tf_same_pad)
            n += 1
    return n


def _last_linear(model: nn.Module, spec: str) -> tuple[str, nn.Linear]:
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise EmbedkitError(
            f"backbone {spec}: the model has no Linear classifier to take the embedding from"
        )
    return linears[-1]


def _tag_preprocess(weights) -> dict:
    t = weights.transforms()
    interp = getattr(t, "interpolation", None)
    return preprocess_config(
        size=list(t.crop_size),
        resize_mode="shortest",
        resize=t.resize_size[0],
        interpolation=getattr(interp, "value", "bilinear"),
        mean=t.mean,
        std=t.std,
    )


def _file_preprocess(obj: dict) -> dict:
    pp = obj.get("preprocess")
    if not isinstance(pp, dict):
        return preprocess_config(
            size=224, resize_mode="shortest", resize=256, mean=IMAGENET_MEAN, std=IMAGENET_STD
        )
    mean, std = pp.get("mean", IMAGENET_MEAN), pp.get("std", IMAGENET_STD)
    interp = pp.get("interpolation", "bilinear")
    if pp.get("crop"):
        return preprocess_config(
            size=pp["crop"],
            resize_mode="shortest",
            resize=pp.get("resize"),
            interpolation=interp,
            mean=mean,
            std=std,
        )
    return preprocess_config(
        size=pp.get("resize") or pp.get("size") or 224,
        resize_mode="squash",
        interpolation=interp,
        mean=mean,
        std=std,
    )


def _cached_tag_file(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)


def create(
    spec: str, args: list[str], *, device, allow_random_init, layer, precision
) -> ClassifierBackbone:
    if not args[0]:
        raise EmbedkitError(
            f"backbone {spec!r}: expected torchvision:MODEL[:CHECKPOINT] (e.g. "
            "torchvision:resnet50, torchvision:mobilenet_v2:/path/weights.pt)"
        )
    name = args[0]
    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise EmbedkitError(
            f"backbone {spec}: torchvision has no classification model {name!r} "
            "(e.g. resnet18, resnet50, mobilenet_v2, vit_b_16; see "
            "torchvision.models.list_models())"
        )
    ckpt = ":".join(args[1:]) or "DEFAULT"
    enum = torchvision.models.get_model_weights(name)
    tags = {w.name: w for w in enum}
    prov = {
        "library": "torchvision",
        "model_name": name,
        "torchvision_version": str(torchvision.__version__),
    }
    sd, obj, n_classes = None, {}, 1000
    if ckpt == "DEFAULT" or ckpt in tags:
        weights = enum.DEFAULT if ckpt == "DEFAULT" else tags[ckpt]
        tag = str(weights).split(".")[-1]
        cfg = _tag_preprocess(weights)
        n_classes = len(weights.meta.get("categories") or []) or 1000
        path = _cached_tag_file(weights)
        if not path.is_file():
            try:
                weights.get_state_dict(progress=False, check_hash=True)
            except Exception as e:  # offline: urllib/URLError, hash mismatch
                if not allow_random_init:
                    raise EmbedkitError(
                        f"backbone {spec}: weights {tag} are not in the torch hub cache ({path}) "
                        f"and could not be downloaded ({type(e).__name__}); pass a local "
                        "CHECKPOINT file, or --allow-random-init to build it randomly initialised"
                    ) from None
        if path.is_file():
            sd = state_dict_of(load_weights_file(path, spec), path, spec)
            prov.update(weights_tag=tag, weights_file=str(path), weights_sha256=sha256_file(path))
    elif ckpt == "random":
        allow_random(spec, allow_random_init)
        cfg = _file_preprocess({})
    else:
        if not Path(ckpt).exists() and "/" not in ckpt and not Path(ckpt).suffix:
            raise EmbedkitError(
                f"backbone {spec}: {ckpt!r} is neither a weights tag of {name} "
                f"({', '.join(tags)}) nor a checkpoint file"
            )
        obj = load_weights_file(ckpt, spec)
        sd = state_dict_of(obj, ckpt, spec)
        cfg = _file_preprocess(obj)
        probe = torchvision.models.get_model(name, weights=None)
        head_name, _ = _last_linear(probe, spec)
        n_classes = int(
            obj.get("num_classes")
            or (sd[f"{head_name}.weight"].shape[0] if f"{head_name}.weight" in sd else 1000)
        )
        prov.update(
            weights_tag=os.path.basename(ckpt),
            weights_file=str(Path(ckpt).resolve()),
            weights_sha256=sha256_file(ckpt),
        )
        if "source" in obj and isinstance(obj["source"], str):
            prov["weights_source"] = obj["source"]
    model = torchvision.models.get_model(name, weights=None, num_classes=n_classes)
    if sd is not None:
        load_strict(model, sd, prov["weights_file"], spec, f"torchvision {name}")
        prov["random_init"] = False
        key = f"torchvision:{name}:{prov['weights_tag']}"
    else:
        prov.update(random_init=True, weights_tag="random-init", weights_sha256="")
        key = f"torchvision:{name}:random-init"
    if obj.get("padding") == "tf_same":
        use_tf_same_padding(model)
    prov["padding"] = obj.get("padding") or "torch"
    _, head = _last_linear(model, spec)
    return ClassifierBackbone(
        spec,
        key,
        model,
        head,
        cfg,
        Preprocess(cfg),
        device=device,
        precision=precision,
        layer=layer,
        provenance=prov,
    )
