"""torchvision's ResNet-18 as a trainable backbone for `embedkit train-erm` (methods spec 11.4:
"ResNet-18 (torchvision; random init or local ImageNet weights)").

The unmodified ImageNet architecture (7x7 stride-2 stem, max-pool, four stages, global average
pool, fc); on 28 x 56 Double-MNIST the last stage is 1 x 2. The embedding is fc's input, the
512-d pooled output of the last (post-ReLU) block. 11,181,642 parameters with 10 classes
(11,689,512 with ImageNet's 1000). Local weights: `init_resnet18(model, path)` loads a torchvision
state dict file (e.g. `resnet18-f37072fd.pth`), drawing a new fc when the class count differs;
the trained checkpoint then holds every weight, so extraction never needs that file again.
"""

from __future__ import annotations

import torchvision

from .base import load_strict, load_weights_file, state_dict_of


def resnet18_config() -> dict:
    """The architecture is fixed (torchvision's); it takes no options."""
    return {}


def build_resnet18(num_classes: int):
    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


def init_resnet18(model, path) -> dict:
    """Load local torchvision ResNet-18 weights into `model` (fc kept from `model` when its shape
    differs). Returns what was loaded, for the checkpoint's record."""
    spec = f"resnet18:{path}"
    sd = state_dict_of(load_weights_file(path, spec), path, spec)
    own = model.state_dict()
    new_fc = any(k.startswith("fc.") and k in sd and sd[k].shape != own[k].shape for k in own)
    if new_fc:
        sd = {
            **{k: v for k, v in sd.items() if not k.startswith("fc.")},
            **{k: v for k, v in own.items() if k.startswith("fc.")},
        }
    load_strict(model, sd, path, spec, "torchvision resnet18")
    return {"path": str(path), "new_fc": new_fc}
