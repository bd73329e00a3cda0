"""Where the offline data lives.

The shared data folder (MNIST, CIFAR-10 tars, Waterbirds metadata) is the `root` argument, else
$EMBEDKIT_DATA, else `../shared/data` relative to the current directory. Fashion-MNIST comes from
the Debian package `dataset-fashion-mnist`: the `fashion_root` option, else
$EMBEDKIT_FASHION_MNIST, else /usr/share/datasets/fashion-mnist.
"""

from __future__ import annotations

import os
from pathlib import Path

from embedkit.errors import EmbedkitError

FASHION_DEFAULT = Path("/usr/share/datasets/fashion-mnist")


def shared_data_root(root=None) -> Path:
    if root not in (None, ""):
        return Path(root)
    env = os.environ.get("EMBEDKIT_DATA")
    if env:
        return Path(env)
    return Path.cwd() / ".." / "shared" / "data"


def fashion_root(folder=None) -> Path:
    if folder not in (None, ""):
        return Path(folder)
    return Path(os.environ.get("EMBEDKIT_FASHION_MNIST") or FASHION_DEFAULT)


def require_file(path: Path, hint: str) -> Path:
    """The path if it is a file, else one error naming it and how to provide it."""
    if not path.is_file():
        raise EmbedkitError(f"{path}: no such file ({hint})")
    return path


SHARED_HINT = "pass --root or set EMBEDKIT_DATA to the shared data folder"
FASHION_HINT = (
    "Fashion-MNIST comes from the Debian package dataset-fashion-mnist: "
    "apt-get install -y dataset-fashion-mnist, or set EMBEDKIT_FASHION_MNIST or the fashion_root "
    "option"
)
