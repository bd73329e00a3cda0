"""Coloured digits: the digit is the core feature, its colour the spurious attribute.

`colored_mnist` follows the ColoredMNIST convention of the SCER paper's benchmark (SubpopBench
CMNIST, itself the IRM construction) that the IPG paper also evaluates on: binary label (digit < 5
is class 0), labels flipped with probability `label_noise` (0.25), then the colour drawn from the
(noisy) label with P(colour = label) = rho: 0.8 in train, balanced in val (rho = 1/n_classes), 0.1
(reversed) in test; train / val / test are MNIST train rows [0, 30k) / [30k, 40k) / [40k, 60k).
Differences from the papers, on purpose: counts are exact per class instead of Bernoulli draws (see
`spurious`), and images are 32x32 RGB (28x28 centred on black, the stroke painted in its colour)
instead of 2x28x28 or 3x224x224.

`colored_digits` colours scikit-learn's bundled 8x8 handwritten digits (1,797 images, no files
needed) the same way, upscaled x4 to 32x32. It is the embedded default the demo uses, so its
defaults favour a small, clean benchmark: no label noise, rho = 0.9 in train and balanced val and
test.

With `classes=digits` the label is the digit itself (10 classes) and 10 colours are used (the
LfF / GERNE style Colored MNIST); colour k is aligned with digit k, and "balanced" means
rho = 1/10 (so colored_mnist's test default 0.1 is balanced there, not reversed).
"""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.schema import SPLITS

from .base import ArrayDataset, Option, check_fraction, realised_correlation
from .mnist import load_mnist
from .spurious import (
    assign_attributes,
    correlation_options,
    flip_labels,
    pad_to,
    resolve_correlations,
)

PALETTE = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
    "orange": (255, 128, 0),
    "purple": (128, 0, 255),
    "pink": (255, 128, 192),
    "teal": (0, 160, 128),
}
CLASSES = {"binary": ["0-4", "5-9"], "digits": [str(d) for d in range(10)]}


def colorize(gray: np.ndarray, a: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Paint [N, H, W] intensities in colour colors[a[i]]: pixel = intensity * rgb / 255."""
    rgb = colors[a].astype(np.uint16)[:, None, None, :]
    return ((gray[..., None].astype(np.uint16) * rgb + 127) // 255).astype(np.uint8)


class _Colored(ArrayDataset):
    """Shared construction; subclasses supply the grey 32x32 digits of each split."""

    def _digits(self, rng) -> list[tuple[np.ndarray, np.ndarray, list[str]]]:
        """Per split: (grey uint8 [n, 32, 32], digit labels [n], uids)."""
        raise NotImplementedError

    def _setup(self):
        o = self.options
        if o["classes"] not in CLASSES:
            raise EmbedkitError(
                f"dataset {self.name}: option classes={o['classes']!r}: choose binary or digits"
            )
        check_fraction(self.name, "label_noise", o["label_noise"])
        class_names = CLASSES[o["classes"]]
        n_classes = len(class_names)
        rho = resolve_correlations(self.name, o, n_classes)
        colors = list(PALETTE)[:n_classes]
        rng = np.random.default_rng(o["seed"])
        self.colors = np.array([PALETTE[c] for c in colors])
        grays, uid, split, ys, a_all, flipped = [], [], [], [], [], {}
        for code, (gray, digit, ids) in enumerate(self._digits(rng)):
            name = SPLITS[code]
            y = (
                (digit >= 5).astype(np.int64)
                if o["classes"] == "binary"
                else digit.astype(np.int64)
            )
            flips = flip_labels(y, o["label_noise"], n_classes, rng)
            a = assign_attributes(y, rho[name], n_classes, rng)
            grays.append(gray)
            uid += ids
            split.append(np.full(len(y), code, np.uint8))
            ys.append(y)
            a_all.append(a)
            flipped[name] = int(flips.sum())
        y, a, split = np.concatenate(ys), np.concatenate(a_all), np.concatenate(split)
        self.gray = np.concatenate(grays)
        self.images = colorize(self.gray, a, self.colors)
        self._finish(
            uid,
            split,
            y,
            a,
            class_names,
            colors,
            seed=o["seed"],
            correlation=realised_correlation(y, a, split),
            target_correlation=rho,
            label_noise_flipped=flipped,
            image_size=[32, 32],
        )

    def _render(self, i, a):
        """The same digit in colour a."""
        return colorize(self.gray[i : i + 1], np.array([a]), self.colors)[0]


def _size_options(sizes) -> dict:
    return {f"n_{s}": Option(n, int, f"rows in {s}") for s, n in zip(SPLITS, sizes)}


class ColoredMnist(_Colored):
    name = "colored_mnist"
    description = (
        "ColoredMNIST (SubpopBench/IRM style): binary digit label, colour spurious, "
        "P(a=y) 0.8/0.5/0.1, label noise 0.25; 32x32 RGB"
    )
    # SubpopBench's index ranges of the MNIST train file for train / val / test.
    RANGES = ((0, 30000), (30000, 40000), (40000, 60000))
    OPTIONS = {
        "classes": Option(
            "binary", str, "binary (digit < 5 vs >= 5) or digits (10 classes, 10 colours)"
        ),
        **correlation_options((0.8, None, 0.1)),
        "label_noise": Option(0.25, float, "fraction of labels flipped per class before colouring"),
        **_size_options([hi - lo for lo, hi in RANGES]),
        "seed": Option(0, int, "seed of the subset, the label flips and the colours"),
    }

    def _digits(self, rng):
        x, d = load_mnist(self.root, "train")
        out = []
        for (lo, hi), split in zip(self.RANGES, SPLITS):
            n = self.options[f"n_{split}"]
            if not 0 <= n <= hi - lo:
                raise EmbedkitError(
                    f"dataset colored_mnist: n_{split}={n} must lie in 0..{hi - lo} "
                    f"(MNIST train rows [{lo}, {hi}))"
                )
            idx = (
                np.sort(rng.choice(np.arange(lo, hi), n, replace=False))
                if n < hi - lo
                else np.arange(lo, hi)
            )
            out.append((pad_to(x[idx], 32), d[idx], [f"mnist-train-{i:05d}" for i in idx]))
        return out


class ColoredDigits(_Colored):
    name = "colored_digits"
    description = (
        "scikit-learn's bundled 8x8 digits coloured like colored_mnist (no files needed; "
        "the demo's default), 32x32 RGB"
    )
    OPTIONS = {
        "classes": Option(
            "binary", str, "binary (digit < 5 vs >= 5) or digits (10 classes, 10 colours)"
        ),
        **correlation_options((0.9, None, None)),
        "label_noise": Option(0.0, float, "fraction of labels flipped per class before colouring"),
        **_size_options((1000, 400, 397)),
        "seed": Option(0, int, "seed of the split assignment, the label flips and the colours"),
    }

    def _digits(self, rng):
        from sklearn.datasets import load_digits

        bunch = load_digits()
        sizes = [self.options[f"n_{s}"] for s in SPLITS]
        if min(sizes) < 0 or sum(sizes) > len(bunch.target):
            raise EmbedkitError(
                f"dataset colored_digits: n_train + n_val + n_test = {sum(sizes)} must "
                f"not exceed the {len(bunch.target)} bundled digits"
            )
        # 0..16 intensities to 0..255, each pixel repeated 4x4 (8x8 -> 32x32).
        gray = (
            np.round(bunch.images * (255 / 16)).astype(np.uint8).repeat(4, axis=1).repeat(4, axis=2)
        )
        order = rng.permutation(len(gray))
        out, start = [], 0
        for n in sizes:
            idx = np.sort(order[start : start + n])
            start += n
            out.append((gray[idx], bunch.target[idx], [f"digits-{i:04d}" for i in idx]))
        return out
