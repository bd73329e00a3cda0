"""Double-MNIST (methods spec 11.4; the large-learning-rate paper's Fig. 1): two MNIST digits side
by side, 28 x 56 (height x width). The core digit (the label) is drawn at full intensity in one
half, the spurious digit dimmed (x `intensity`, default 0.5) in the other.

Sources (the shared data folder): `<root>/mnist/*.gz`. Class y = the core digit's class, attribute
a = the spurious digit's class, spurious digit k aligned with class k (class names are the core
digits, attribute names `spur<d>`). P(a = y) = rho with exact per-class counts (`spurious`):
`train_corr` (0.9; the paper's grid is {0.9, 0.95, 0.99}), `val_corr` (default: the same as train,
since val is 10 % of train as in the advcomp code), `test_corr` (default 1 / K, balanced). Every
source image is used at most once; train and val draw both halves from the official train file,
test only from the official t10k file.

Layout: `layout=core_left` (default: core left / bright, spurious right / dim) or `core_right`
(advcomp masks the right half and has a `doublemnist_lo_left` tag, so the side is a parameter).
Pixels: the core half is the MNIST image unchanged, the spurious half round(intensity * pixel)
(round half up); stored grey as RGB with three equal channels. `meta["spurious_columns"]` is
[start, stop) of the spurious half, the mask the attribution share of spec 11.2 reads.
"""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.schema import SPLITS

from .base import ArrayDataset, Option, check_fraction, parse_list, realised_correlation
from .mnist import load_mnist
from .spurious import Pool, donor_row, draw_groups, group_table

LAYOUTS = ("core_left", "core_right")


def dim(gray: np.ndarray, intensity: float) -> np.ndarray:
    """round(intensity * pixel), half up, as uint8 (intensity 1 leaves the image unchanged)."""
    return np.floor(gray.astype(np.float64) * intensity + 0.5).astype(np.uint8)


class DoubleMnist(ArrayDataset):
    name = "double_mnist"
    description = (
        "Double-MNIST (LR paper Fig. 1): core digit at full intensity beside a dimmed spurious "
        "digit, P(a=y) 0.9 in train and val, balanced test; 28x56"
    )
    OPTIONS = {
        "digits": Option(
            "0,1,2,3,4,5,6,7,8,9", str, "the K digit classes (labels and spurious digits)"
        ),
        "train_corr": Option(0.9, float, "P(a = y) in train (the paper's grid: 0.9, 0.95, 0.99)"),
        "val_corr": Option(
            None, float, "P(a = y) in val (default: train_corr; val is 10 % of train)"
        ),
        "test_corr": Option(None, float, "P(a = y) in test (default 1/K, balanced)"),
        "layout": Option("core_left", str, "core_left (default) or core_right"),
        "intensity": Option(
            0.5, float, "spurious-digit intensity relative to the core digit (0.5 = dimmed x0.5)"
        ),
        "n_train": Option(18000, int, "rows in train"),
        "n_val": Option(
            2000, int, "rows in val (drawn from the official train file, 10 % of train+val)"
        ),
        "n_test": Option(4000, int, "rows in test (from the official t10k file only)"),
        "seed": Option(0, int, "seed of the pairing and the draws"),
    }

    def _setup(self):
        o = self.options
        digits = [
            int(d)
            for d in parse_list(self.name, "digits", o["digits"], [str(d) for d in range(10)])
        ]
        k = len(digits)
        if o["layout"] not in LAYOUTS:
            raise EmbedkitError(
                f"dataset double_mnist: option layout={o['layout']!r}: choose "
                f"{' or '.join(LAYOUTS)}"
            )
        intensity = check_fraction(self.name, "intensity", o["intensity"])
        rho = {"train": check_fraction(self.name, "train_corr", o["train_corr"])}
        rho["val"] = (
            rho["train"]
            if o["val_corr"] is None
            else check_fraction(self.name, "val_corr", o["val_corr"])
        )
        rho["test"] = (
            1.0 / k
            if o["test_corr"] is None
            else check_fraction(self.name, "test_corr", o["test_corr"])
        )
        rng = np.random.default_rng(o["seed"])
        core_left = o["layout"] == "core_left"
        images, uid, split, ys, as_ = [], [], [], [], []
        for part, names in (("train", ("train", "val")), ("t10k", ("test",))):
            x, lab = load_mnist(self.root, part)
            # One pool per digit serves both halves, so no image appears twice in the dataset.
            pools = [
                Pool(np.flatnonzero(lab == d), rng, f"MNIST {part} images of digit {d}")
                for d in digits
            ]
            for name in names:
                n = o[f"n_{name}"]
                if n < 0:
                    raise EmbedkitError(f"dataset double_mnist: n_{name}={n} must be >= 0")
                table = group_table(n, np.ones(k), rho[name])
                y, a, cores, spurs = draw_groups(table, pools, pools, rng)
                core = x[cores.astype(np.int64)]
                spur = dim(x[spurs.astype(np.int64)], intensity)
                pair = np.concatenate([core, spur] if core_left else [spur, core], axis=2)
                images.append(np.repeat(pair[..., None], 3, axis=3))
                uid += [f"{part}-{int(c):05d}+{part}-{int(s):05d}" for c, s in zip(cores, spurs)]
                split.append(np.full(n, SPLITS.index(name), np.uint8))
                ys.append(y)
                as_.append(a)
        self.images = np.concatenate(images)
        self.spurious_columns = (28, 56) if core_left else (0, 28)
        y, a, split = np.concatenate(ys), np.concatenate(as_), np.concatenate(split)
        self._finish(
            uid,
            split,
            y,
            a,
            [str(d) for d in digits],
            [f"spur{d}" for d in digits],
            seed=o["seed"],
            correlation=realised_correlation(y, a, split),
            target_correlation=rho,
            image_size=[28, 56],
            spurious_columns=list(self.spurious_columns),
            intensity=intensity,
            layout=f"{o['layout']}: core digit x1.0, spurious digit x{intensity:g}",
            uid_format="<core part>-<index>+<spurious part>-<index> (MNIST file and row)",
        )

    def _render(self, i, a):
        """Row i with its spurious half taken from a same-split row whose attribute is a."""
        j = donor_row(self._samples, i, a)
        out = self.images[i].copy()
        lo, hi = self.spurious_columns
        out[:, lo:hi] = self.images[j, :, lo:hi]
        return out
