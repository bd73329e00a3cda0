"""`checkpoint:PATH`: a small backbone written by `embedkit train-erm`.

The file is `torch.save` of a plain dict (loadable with `weights_only=True`):

    {"format": "embedkit-backbone", "format_version": 1,
     "arch": "small_cnn" | "resnet_cifar" | "mlp" | "resnet18", "arch_kwargs": {...}, "num_classes":
     C,
     "state_dict": {...}, "preprocess": {"size": 32 | [H, W] | None, "mean": [...], "std": [...]},
     "train": {dataset, dataset_options, lr, epochs, seed, ...},
     "seen": {DATASET: {"splits", "n", "uids", "uids_sha256"[, "unknown"]}}}
     (embedkit.backbones.train_backbone.seen_record)

The architecture is rebuilt from `arch` and `arch_kwargs` by the builder of its module and loaded
strictly. Preprocessing: images are resized (bilinear, whole image) to `size` when it is given,
then normalised. The embedding is `forward_features` (the input of `fc`); the logits and `fc`
itself (the ERM head) are stored beside it, and `seen_mask` turns `seen` into the cache's
`/embeddings/<key>/seen` rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from embedkit.errors import EmbedkitError

from .base import ClassifierBackbone, load_strict, load_weights_file, sha256_file
from .preprocess import Preprocess, preprocess_config

FORMAT = "embedkit-backbone"
FORMAT_VERSION = 1


def _builders():
    """arch name -> builder(num_classes, **arch_kwargs): the one registry of trainable backbones
    (train-erm builds through it too)."""
    from .mlp import build_mlp
    from .resnet18 import build_resnet18
    from .resnet_cifar import build_resnet_cifar
    from .small_cnn import build_small_cnn

    return {
        "small_cnn": build_small_cnn,
        "resnet_cifar": build_resnet_cifar,
        "mlp": build_mlp,
        "resnet18": build_resnet18,
    }


def create(
    spec: str, args: list[str], *, device, allow_random_init, layer, precision
) -> ClassifierBackbone:
    path = ":".join(args)
    if not path:
        raise EmbedkitError(
            f"backbone {spec!r}: expected checkpoint:PATH (a file written by embedkit train-erm)"
        )
    obj = load_weights_file(path, spec)
    if obj.get("format") != FORMAT:
        raise EmbedkitError(
            f"backbone {spec}: {path} is not an embedkit-backbone checkpoint (no "
            f"format='{FORMAT}'); "
            "use resnet_cifar:DEPTH:PATH or torchvision:MODEL:PATH for other checkpoints"
        )
    if int(obj.get("format_version", 0)) > FORMAT_VERSION:
        raise EmbedkitError(
            f"backbone {spec}: {path} has format version {obj['format_version']} > "
            f"{FORMAT_VERSION}; upgrade embedkit"
        )
    builders = _builders()
    arch = obj.get("arch")
    if arch not in builders:
        raise EmbedkitError(
            f"backbone {spec}: {path} names architecture {arch!r}; known: {', '.join(builders)}"
        )
    kwargs = dict(obj.get("arch_kwargs") or {})
    try:
        model = builders[arch](num_classes=int(obj["num_classes"]), **kwargs)
    except (KeyError, TypeError) as e:
        raise EmbedkitError(
            f"backbone {spec}: {path}: cannot build {arch} from num_classes/arch_kwargs {kwargs} "
            f"({type(e).__name__}: {e})"
        ) from None
    load_strict(model, obj.get("state_dict") or {}, path, spec, f"{arch} {kwargs}")
    pp = obj.get("preprocess") or {}
    if "mean" not in pp or "std" not in pp:
        raise EmbedkitError(f"backbone {spec}: {path} records no preprocess mean/std")
    size = pp.get("size")
    cfg = preprocess_config(
        size=size,
        resize_mode="squash" if size else "none",
        interpolation="bilinear",
        mean=pp["mean"],
        std=pp["std"],
    )
    prov = {
        "library": "embedkit",
        "model_name": arch,
        "arch": arch,
        "arch_kwargs_json": kwargs,
        "weights_tag": os.path.basename(path),
        "weights_file": str(Path(path).resolve()),
        "weights_sha256": sha256_file(path),
        "random_init": False,
        "train_json": obj.get("train") or {},
    }
    bb = ClassifierBackbone(
        spec,
        f"checkpoint:{os.path.basename(path)}",
        model,
        model.fc,
        cfg,
        Preprocess(cfg),
        device=device,
        precision=precision,
        layer=layer,
        provenance=prov,
    )
    bb.seen_record = obj.get("seen")
    return bb


def seen_mask(record: dict | None, dataset: str, uids) -> tuple[np.ndarray | None, str]:
    """(which of `uids` of `dataset` the weights were trained on, or None when unknown; why).

    Unknown: a checkpoint from before the record, a dataset it does not list (its uids mean
    nothing here, yet it may share source images, as colored_mnist does with mnist), or an init
    checkpoint on this dataset whose rows nobody listed."""
    if record is None:
        return (
            None,
            "the checkpoint records no training rows (written before embedkit recorded them)",
        )
    entry = record.get(dataset)
    if entry is None:
        return (
            None,
            f"the checkpoint was trained on {', '.join(sorted(record)) or 'nothing listed'}, not "
            f"on {dataset}",
        )
    if entry.get("unknown"):
        return (
            None,
            f"it started from a checkpoint trained on rows of {dataset} that were not recorded",
        )
    mask = np.isin(np.asarray(uids).astype(str), np.asarray(entry["uids"], dtype=str))
    return (
        mask,
        f"{entry['n']} uid(s) of {dataset} ({', '.join(entry['splits'])}) from the checkpoint",
    )
