"""CIFAR-10 read straight from uncompressed tar files.

Layout (the shared data folder, see its README):

    <root>/cifar10/classes.txt     10 lines, line i = class i (airplane ... truck)
    <root>/cifar10/train.tar       members <class>/<NNNN>.jpg, 5,000 per class
    <root>/cifar10/test.tar        members <class>/<NNNN>.jpg, 1,000 per class

`cifar10`: class = CIFAR class, one dummy attribute ("all"). Split: test.tar is test; from
train.tar the `val_per_class` highest-numbered files of each class are val, the rest train.
Members are read with positioned reads (`os.pread`) from one file descriptor per process, opened
on first use, so DataLoader workers (forked or spawned) never share a file offset.
"""

from __future__ import annotations

import functools
import os
import tarfile
from pathlib import Path

import numpy as np

from embedkit.errors import EmbedkitError

from .base import ImageDataset, Option
from .images import open_image
from .paths import SHARED_HINT, require_file, shared_data_root

TARS = ("train", "test")


@functools.lru_cache(maxsize=8)
def _index(path: str, size: int, mtime: float) -> dict[str, tuple[int, int]]:
    try:
        with tarfile.open(path, "r:") as tf:
            return {m.name: (m.offset_data, m.size) for m in tf.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError) as e:
        raise EmbedkitError(f"{path}: not an uncompressed tar file ({e})") from None


def tar_index(path) -> dict[str, tuple[int, int]]:
    """{member name: (data offset, size)} of the regular files in an uncompressed tar; built once
    per process (a 50,000-member tar takes under a second)."""
    st = os.stat(path)
    return _index(str(path), st.st_size, st.st_mtime)


class TarReader:
    """Positioned reads of tar members; picklable (the descriptor is reopened per process)."""

    def __init__(self, path):
        self.path = Path(path)
        self.index = tar_index(self.path)
        self._fd = None
        self._pid = None

    def read(self, member: str) -> bytes:
        if self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        try:
            offset, size = self.index[member]
        except KeyError:
            raise EmbedkitError(f"{self.path}: no member {member!r}") from None
        return os.pread(self._fd, size, offset)

    def __getstate__(self):
        return {"path": self.path, "index": self.index, "_fd": None, "_pid": None}

    def __del__(self):
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)


def cifar_folder(root) -> Path:
    return shared_data_root(root) / "cifar10"


def read_classes(folder: Path) -> list[str]:
    path = require_file(folder / "classes.txt", SHARED_HINT)
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(names) != 10:
        raise EmbedkitError(f"{path}: expected 10 class names, found {len(names)}")
    return names


def tar_members(folder: Path, tar: str, classes: list[str]) -> dict[str, list[str]]:
    """{class: sorted member names} for one of the two tars; unknown folders are an error."""
    path = require_file(folder / f"{tar}.tar", SHARED_HINT)
    out = {c: [] for c in classes}
    for name in sorted(tar_index(path)):
        cls = name.split("/", 1)[0]
        if cls not in out:
            raise EmbedkitError(
                f"{path}: member {name!r} is not under a class folder of classes.txt"
            )
        out[cls].append(name)
    return out


def decode_members(folder: Path, tar: str, members: list[str]) -> np.ndarray:
    """uint8 [n, 32, 32, 3] images of the given members of `<tar>.tar`."""
    reader = TarReader(folder / f"{tar}.tar")
    out = np.empty((len(members), 32, 32, 3), np.uint8)
    for k, m in enumerate(members):
        im = open_image(reader.read(m), name=f"{reader.path}:{m}")
        if im.size != (32, 32):
            raise EmbedkitError(
                f"{reader.path}:{m}: expected a 32x32 image, found {im.size[0]}x{im.size[1]}"
            )
        out[k] = np.asarray(im)
    return out


class Cifar10(ImageDataset):
    name = "cifar10"
    description = (
        "CIFAR-10 from the shared tars (class = CIFAR class, one dummy attribute); val from "
        "train.tar"
    )
    OPTIONS = {
        "val_per_class": Option(
            500, int, "the highest-numbered files of each class in train.tar form val"
        ),
        "max_per_class": Option(
            0, int, "keep at most this many images per class and split (0 = all)"
        ),
    }

    def _setup(self):
        folder = cifar_folder(self.root)
        classes = read_classes(folder)
        val_n, cap = self.options["val_per_class"], self.options["max_per_class"]
        if val_n < 0 or cap < 0:
            raise EmbedkitError("dataset cifar10: val_per_class and max_per_class must be >= 0")
        self._readers = {t: TarReader(require_file(folder / f"{t}.tar", SHARED_HINT)) for t in TARS}
        uid, split, y, self._where = [], [], [], []
        for tar in TARS:
            for c, members in enumerate(tar_members(folder, tar, classes).values()):
                if tar == "train":
                    if val_n > len(members):
                        raise EmbedkitError(
                            f"dataset cifar10: val_per_class={val_n} but class "
                            f"{classes[c]} has {len(members)} train images"
                        )
                    parts = [
                        (0, members[: len(members) - val_n]),
                        (1, members[len(members) - val_n :]),
                    ]
                else:
                    parts = [(2, members)]
                for code, names in parts:
                    for m in names[: cap or None]:
                        uid.append(f"{tar}/{m}")
                        split.append(code)
                        y.append(c)
                        self._where.append((tar, m))
        self._finish(
            uid,
            np.asarray(split, np.uint8),
            y,
            np.zeros(len(y), np.int64),
            classes,
            ["all"],
            source={t: str(r.path) for t, r in self._readers.items()},
        )

    def load(self, i):
        tar, member = self._where[i]
        reader = self._readers[tar]
        return open_image(reader.read(member), name=f"{reader.path}:{member}")
