"""A Waterbirds-style composite from real images: a Fashion-MNIST item (the core object) blended
onto a CIFAR-10 scene (the spurious background), 32x32 RGB.

Sources: Fashion-MNIST from the Debian package `dataset-fashion-mnist`
(/usr/share/datasets/fashion-mnist, or $EMBEDKIT_FASHION_MNIST, or the `fashion_root` option) and
`<root>/cifar10/{train,test}.tar` from the shared data folder.

Label y: the first or second class of a Fashion-MNIST pair (default Sneaker vs Ankle boot), the
analogue of landbird vs waterbird. Attribute a: the background, land-like (CIFAR deer, horse,
frog) or water-like (ship, airplane); class 0 is aligned with land, class 1 with water, as in
Waterbirds. The item's intensity is its alpha mask: pixel = alpha * item + (1 - alpha) * scene
with alpha = item / 255, the 28x28 item centred on the 32x32 scene.

Group sizes mimic Waterbirds: class 1 is the minority class (`class1_fraction` 0.23 in every
split), P(a = y) = 0.95 within each class in train (Waterbirds train 3,498 / 184 / 56 / 1,057 is
reproduced as 3,507 / 185 / 55 / 1,048 by the defaults), and val and test are balanced over the
background within each class. Every source image is used once; train and val draw from the
official train files of both sources, test from the official test files.
"""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.schema import SPLITS

from .base import ArrayDataset, Option, check_fraction, parse_list, realised_correlation
from .cifar10 import cifar_folder, decode_members, read_classes, tar_members
from .mnist import FASHION_CLASSES, load_fashion
from .spurious import (
    Pool,
    correlation_options,
    donor_row,
    draw_groups,
    group_table,
    pad_to,
    resolve_correlations,
)


def blend(item: np.ndarray, scene: np.ndarray) -> np.ndarray:
    """uint8 [N, 32, 32] items over uint8 [N, 32, 32, 3] scenes, the item intensity as alpha."""
    fg = item.astype(np.float32)[..., None]
    alpha = fg / 255.0
    return np.rint(alpha * fg + (1.0 - alpha) * scene.astype(np.float32)).astype(np.uint8)


def _slug(name: str) -> str:
    return name.lower().replace("/", "_").replace(" ", "_")


class WaterbirdsLike(ArrayDataset):
    name = "waterbirds_like"
    description = (
        "Waterbirds-style composite: Fashion-MNIST item (core) alpha-blended onto a CIFAR-10 "
        "scene, land {deer, horse, frog} vs water {ship, airplane}; 95% train correlation"
    )
    OPTIONS = {
        "core_classes": Option(
            "Sneaker,Ankle boot",
            str,
            "two Fashion-MNIST classes (names or indices): class 0, class 1",
        ),
        "land_classes": Option(
            "deer,horse,frog", str, "CIFAR-10 classes used as land-like scenes (a = 0)"
        ),
        "water_classes": Option(
            "ship,airplane", str, "CIFAR-10 classes used as water-like scenes (a = 1)"
        ),
        **correlation_options((0.95, None, None)),
        "class1_fraction": Option(
            0.23, float, "share of class 1 (the waterbird analogue) in every split"
        ),
        "n_train": Option(4795, int, "rows in train (Waterbirds: 4,795)"),
        "n_val": Option(1199, int, "rows in val (Waterbirds: 1,199)"),
        "n_test": Option(
            1298, int, "rows in test (at most 1,000 class-0 items exist in Fashion-MNIST test)"
        ),
        "seed": Option(0, int, "seed of the draws"),
        "fashion_root": Option(
            None,
            str,
            "Fashion-MNIST folder (default $EMBEDKIT_FASHION_MNIST or "
            "/usr/share/datasets/fashion-mnist)",
        ),
    }

    def _core_classes(self) -> list[int]:
        value = self.options["core_classes"]
        names = {str(i): i for i in range(10)} | {
            n.lower(): i for i, n in enumerate(FASHION_CLASSES)
        }
        items = [v.strip().lower() for v in str(value).split(",") if v.strip()]
        if (
            len(items) != 2
            or any(v not in names for v in items)
            or names[items[0]] == names[items[1]]
        ):
            raise EmbedkitError(
                f"dataset waterbirds_like: option core_classes={value!r}: give two distinct "
                f"Fashion-MNIST classes ({', '.join(FASHION_CLASSES)} or 0-9)"
            )
        return [names[v] for v in items]

    def _setup(self):
        o = self.options
        folder = cifar_folder(self.root)
        core_ids = self._core_classes()
        cifar = read_classes(folder)
        scene_classes = [
            parse_list(self.name, k, o[k], cifar, minimum=1)
            for k in ("land_classes", "water_classes")
        ]
        if set(scene_classes[0]) & set(scene_classes[1]):
            raise EmbedkitError(
                "dataset waterbirds_like: land_classes and water_classes must not share a class"
            )
        frac = check_fraction(self.name, "class1_fraction", o["class1_fraction"])
        rho = resolve_correlations(self.name, o, 2)
        rng = np.random.default_rng(o["seed"])
        item_parts, scene_parts, uid, split, ys, as_, bg_counts = [], [], [], [], [], [], {}
        for tar, part, names in (("train", "train", ("train", "val")), ("test", "t10k", ("test",))):
            x, lab = load_fashion(o["fashion_root"], part)
            core = [
                Pool(
                    np.flatnonzero(lab == k),
                    rng,
                    f"Fashion-MNIST {part} items of {FASHION_CLASSES[k]}",
                )
                for k in core_ids
            ]
            members = tar_members(folder, tar, cifar)
            spur = [
                Pool(
                    np.concatenate([members[c] for c in group]),
                    rng,
                    f"CIFAR-10 {tar} scenes of {'/'.join(group)}",
                )
                for group in scene_classes
            ]
            for name in names:
                n = o[f"n_{name}"]
                if n < 0:
                    raise EmbedkitError(f"dataset waterbirds_like: n_{name}={n} must be >= 0")
                table = group_table(n, [1.0 - frac, frac], rho[name])
                y, a, item_ids, bgs = draw_groups(table, core, spur, rng)
                item_ids = item_ids.astype(np.int64)
                item_parts.append(pad_to(x[item_ids], 32))
                scene_parts.append(decode_members(folder, tar, list(bgs)))
                uid += [f"fashion-{part}-{i:05d}+{tar}/{b}" for i, b in zip(item_ids, bgs)]
                split.append(np.full(n, SPLITS.index(name), np.uint8))
                ys.append(y)
                as_.append(a)
                bg_counts[name] = {
                    c: int(sum(b.startswith(c + "/") for b in bgs))
                    for c in scene_classes[0] + scene_classes[1]
                }
        # Items and scenes are kept apart as well, to render counterfactuals.
        self.items, self.scenes = np.concatenate(item_parts), np.concatenate(scene_parts)
        self.images = blend(self.items, self.scenes)
        y, a, split = np.concatenate(ys), np.concatenate(as_), np.concatenate(split)
        self._finish(
            uid,
            split,
            y,
            a,
            [_slug(FASHION_CLASSES[k]) for k in core_ids],
            ["land", "water"],
            seed=o["seed"],
            correlation=realised_correlation(y, a, split),
            target_correlation=rho,
            background_classes=bg_counts,
            image_size=[32, 32],
            layout="Fashion-MNIST item (core, alpha = intensity) over a CIFAR-10 scene (spurious)",
        )

    def _render(self, i, a):
        """Row i's item blended onto the scene of a same-split row with attribute a."""
        j = donor_row(self._samples, i, a)
        return blend(self.items[i : i + 1], self.scenes[j : j + 1])[0]
