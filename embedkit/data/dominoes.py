"""MNIST-CIFAR dominoes as in the DFR paper: an MNIST digit on top (the spurious half) stacked
on a CIFAR-10 image below (the core half), 64x32 RGB (height x width).

Sources (the shared data folder): `<root>/mnist/*.gz` and `<root>/cifar10/{train,test}.tar`.
Class y = CIFAR class (automobile, truck by default), attribute a = MNIST digit (0, 1), digit k
aligned with class k. P(a = y) is 0.95 in train and balanced (0.5) in val and test; classes are
balanced. Every source image is used once; train and val draw from the official train files,
test from the official test files, so a backbone pretrained on CIFAR-10 train never sees a test
image's core half. The digit (28x28) is centred on a black 32x32 square and repeated over the
three channels.
"""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.schema import SPLITS

from .base import ArrayDataset, Option, parse_list, realised_correlation
from .cifar10 import cifar_folder, decode_members, read_classes, tar_members
from .mnist import load_mnist
from .spurious import (
    Pool,
    correlation_options,
    donor_row,
    draw_groups,
    group_table,
    pad_to,
    resolve_correlations,
)


class Dominoes(ArrayDataset):
    name = "dominoes"
    description = (
        "MNIST-CIFAR dominoes (DFR paper): MNIST 0/1 on top (spurious) over CIFAR-10 "
        "automobile/truck (core), P(a=y) 0.95 in train, balanced val/test; 64x32 RGB"
    )
    OPTIONS = {
        "core_classes": Option(
            "automobile,truck", str, "CIFAR-10 classes (the labels), comma-separated"
        ),
        "digits": Option(
            "0,1", str, "MNIST digits (the attribute), one per class, digit k aligned with class k"
        ),
        **correlation_options((0.95, None, None)),
        "n_train": Option(8000, int, "rows in train"),
        "n_val": Option(2000, int, "rows in val"),
        "n_test": Option(1960, int, "rows in test (1960 uses every MNIST test zero once)"),
        "seed": Option(0, int, "seed of the pairing and the draws"),
    }

    def _setup(self):
        o = self.options
        folder = cifar_folder(self.root)
        classes = parse_list(self.name, "core_classes", o["core_classes"], read_classes(folder))
        digits = [
            int(d)
            for d in parse_list(self.name, "digits", o["digits"], [str(d) for d in range(10)])
        ]
        if len(digits) != len(classes):
            raise EmbedkitError(
                f"dataset dominoes: {len(classes)} core classes need as many digits, got {digits}"
            )
        rho = resolve_correlations(self.name, o, len(classes))
        rng = np.random.default_rng(o["seed"])
        images, uid, split, ys, as_ = [], [], [], [], []
        for tar, part, names in (("train", "train", ("train", "val")), ("test", "t10k", ("test",))):
            members = tar_members(folder, tar, read_classes(folder))
            core = [Pool(members[c], rng, f"CIFAR-10 {tar} images of {c}") for c in classes]
            x, lab = load_mnist(self.root, part)
            spur = [
                Pool(np.flatnonzero(lab == d), rng, f"MNIST {part} images of digit {d}")
                for d in digits
            ]
            for name in names:
                n = o[f"n_{name}"]
                if n < 0:
                    raise EmbedkitError(f"dataset dominoes: n_{name}={n} must be >= 0")
                table = group_table(n, np.ones(len(classes)), rho[name])
                y, a, cores, spurs = draw_groups(table, core, spur, rng)
                bottom = decode_members(folder, tar, list(cores))
                top = np.repeat(pad_to(x[spurs.astype(np.int64)], 32)[..., None], 3, axis=3)
                images.append(np.concatenate([top, bottom], axis=1))
                uid += [f"{tar}/{c}+mnist-{part}-{int(i):05d}" for c, i in zip(cores, spurs)]
                split.append(np.full(n, SPLITS.index(name), np.uint8))
                ys.append(y)
                as_.append(a)
        self.images = np.concatenate(images) if images else np.zeros((0, 64, 32, 3), np.uint8)
        y, a, split = np.concatenate(ys), np.concatenate(as_), np.concatenate(split)
        self._finish(
            uid,
            split,
            y,
            a,
            classes,
            [f"digit{d}" for d in digits],
            seed=o["seed"],
            correlation=realised_correlation(y, a, split),
            target_correlation=rho,
            image_size=[64, 32],
            spurious_rows=[0, 32],
            layout="MNIST digit on top (spurious), CIFAR-10 image below (core)",
        )

    def _render(self, i, a):
        """Row i's CIFAR half under the digit half of a same-split row with attribute a."""
        j = donor_row(self._samples, i, a)
        return np.concatenate([self.images[j, :32], self.images[i, 32:]])
