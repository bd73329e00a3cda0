"""Dataset adapters behind one registry.

    from embedkit import data
    ds = data.create("waterbirds", root="/data/waterbird_complete95_forest2water2")
    s = ds.samples()            # uid, split, y, a, class_names, attr_names (embedkit.cache.Samples)
    img = ds.load(0)            # RGB PIL image of row 0; ImageReadError if unreadable

`available()` lists every adapter with one line. Each adapter documents the folder layout it
expects in its module docstring; `OPTIONS` lists its options with defaults.
"""

from __future__ import annotations

import importlib

from embedkit.errors import EmbedkitError

from .base import ImageDataset, Option
from .images import ImageReadError, open_image

# name -> "module:Class" under embedkit.data
_REGISTRY = {
    "waterbirds": "waterbirds:Waterbirds",
    "celeba": "celeba:CelebA",
    "csv": "manifest:CsvDataset",
    "cifar10": "cifar10:Cifar10",
    "mnist": "mnist:Mnist",
    "colored_mnist": "colored:ColoredMnist",
    "colored_digits": "colored:ColoredDigits",
    "dominoes": "dominoes:Dominoes",
    "double_mnist": "double_mnist:DoubleMnist",
    "waterbirds_like": "waterbirds_like:WaterbirdsLike",
    "subpopbench": "subpopbench:SubpopBench",
    "text_csv": "text:TextCsv",
    "multinli": "multinli:MultiNli",
    "civilcomments": "civilcomments:CivilComments",
}

__all__ = [
    "create",
    "available",
    "dataset_class",
    "ImageDataset",
    "ImageReadError",
    "Option",
    "open_image",
]


def dataset_class(name: str) -> type[ImageDataset]:
    if name not in _REGISTRY:
        raise EmbedkitError(f"unknown dataset {name!r}; choose from {', '.join(_REGISTRY)}")
    module, cls = _REGISTRY[name].split(":")
    return getattr(importlib.import_module(f"embedkit.data.{module}"), cls)


def available() -> dict[str, str]:
    """{name: one-line description} for every adapter."""
    return {name: dataset_class(name).description for name in _REGISTRY}


def create(name: str, root=None, **options) -> ImageDataset:
    """Build dataset `name` from `root` (its folder; the offline benchmarks default to the shared
    data folder) with adapter options (see `dataset_class(name).OPTIONS`)."""
    return dataset_class(name)(root=root, **options)
