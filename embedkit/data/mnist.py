"""MNIST and Fashion-MNIST from the gzip'd idx files.

Layout:

    <root>/mnist/train-images-idx3-ubyte.gz   60,000 x 28 x 28     (the shared data folder)
    <root>/mnist/train-labels-idx1-ubyte.gz
    <root>/mnist/t10k-images-idx3-ubyte.gz    10,000 x 28 x 28
    <root>/mnist/t10k-labels-idx1-ubyte.gz
    /usr/share/datasets/fashion-mnist/        the same four names (Debian dataset-fashion-mnist)

The idx header is checked (magic 0x0000 08 NDIM, big-endian sizes, exact payload length), images and
labels must agree in count and labels lie in 0..9. MNIST is additionally verified against the
published MD5 of each decompressed file (the gz wrappers differ between copies, the content does
not).

`mnist`: class = digit, one dummy attribute. Split: t10k is test; the last `n_val` rows of the
official train file are val (the classic 55,000 / 5,000 cut), the rest train.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from embedkit.errors import EmbedkitError

from .base import ImageDataset, Option
from .paths import FASHION_HINT, SHARED_HINT, fashion_root, require_file, shared_data_root

# MD5 of the decompressed official files (published with MNIST; checked in the data README).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
PARTS = {"train": 60000, "t10k": 10000}
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def read_idx(path, md5: str | None = None) -> np.ndarray:
    """Parse one idx file (gzip'd when the name ends in .gz) into a read-only uint8 array."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise EmbedkitError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as e:
        raise EmbedkitError(f"{path}: not a readable gzip file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise EmbedkitError(f"{path}: not an unsigned-byte idx file (bad magic number)")
    ndim = raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise EmbedkitError(f"{path}: truncated idx header")
    dims = tuple(int.from_bytes(raw[4 + 4 * k : 8 + 4 * k], "big") for k in range(ndim))
    if len(raw) != start + int(np.prod(dims)):
        raise EmbedkitError(
            f"{path}: idx header promises {dims} = {int(np.prod(dims))} bytes, "
            f"the file holds {len(raw) - start}"
        )
    if md5 is not None and hashlib.md5(raw).hexdigest() != md5:
        raise EmbedkitError(
            f"{path}: decompressed content has MD5 {hashlib.md5(raw).hexdigest()}, "
            f"expected {md5} (a corrupt or different file)"
        )
    return np.frombuffer(raw, np.uint8, offset=start).reshape(dims)


@functools.lru_cache(maxsize=8)
def _pair(folder: str, part: str, verify: bool, stamp: tuple) -> tuple[np.ndarray, np.ndarray]:
    base = Path(folder)
    x = read_idx(
        base / f"{part}-images-idx3-ubyte.gz",
        MNIST_MD5[f"{part}-images-idx3-ubyte"] if verify else None,
    )
    y = read_idx(
        base / f"{part}-labels-idx1-ubyte.gz",
        MNIST_MD5[f"{part}-labels-idx1-ubyte"] if verify else None,
    )
    if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1:
        raise EmbedkitError(
            f"{base}: {part} images have shape {x.shape}, labels {y.shape}; "
            "expected [N, 28, 28] and [N]"
        )
    if len(x) != len(y) or len(x) != PARTS[part]:
        raise EmbedkitError(
            f"{base}: {part} has {len(x)} images and {len(y)} labels, "
            f"expected {PARTS[part]} of each"
        )
    if y.max() > 9:
        raise EmbedkitError(
            f"{base}/{part}-labels-idx1-ubyte.gz: label {y.max()} out of range 0..9"
        )
    return x, y


def _load(folder: Path, part: str, verify: bool, hint: str):
    files = [
        require_file(folder / f"{part}-{kind}-idx{n}-ubyte.gz", hint)
        for kind, n in (("images", 3), ("labels", 1))
    ]
    stamp = tuple((os.stat(f).st_size, os.stat(f).st_mtime) for f in files)
    return _pair(str(folder), part, verify, stamp)


def load_mnist(root, part: str, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels uint8 [N]) of MNIST `part` ('train' or 't10k');
    parsed once per process."""
    return _load(shared_data_root(root) / "mnist", part, verify, SHARED_HINT)


def load_fashion(folder, part: str) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST `part` ('train' or 't10k') from the Debian package folder."""
    return _load(fashion_root(folder), part, False, FASHION_HINT)


class Mnist(ImageDataset):
    name = "mnist"
    description = (
        "MNIST digits from the shared idx files (class = digit, one dummy attribute), 28x28"
    )
    OPTIONS = {
        "n_val": Option(5000, int, "the last n_val rows of the official train file form val"),
        "verify": Option(True, bool, "check the MD5 of each decompressed file"),
    }

    def _setup(self):
        n_val = self.options["n_val"]
        if not 0 <= n_val <= PARTS["train"]:
            raise EmbedkitError(f"dataset mnist: n_val={n_val} must lie in 0..60000")
        (xtr, ytr), (xte, yte) = (load_mnist(self.root, p, self.options["verify"]) for p in PARTS)
        self.images = np.concatenate([xtr, xte])
        n_train = PARTS["train"] - n_val
        split = np.concatenate([np.zeros(n_train), np.ones(n_val), np.full(len(xte), 2)]).astype(
            np.uint8
        )
        uid = [f"train-{i:05d}" for i in range(len(xtr))] + [
            f"t10k-{i:05d}" for i in range(len(xte))
        ]
        self._finish(
            uid,
            split,
            np.concatenate([ytr, yte]),
            np.zeros(len(split), np.int64),
            [str(d) for d in range(10)],
            ["all"],
            source=str(shared_data_root(self.root) / "mnist"),
        )

    def load(self, i):
        return Image.fromarray(self.images[i]).convert("RGB")
