"""The dataset interface every adapter implements, and option handling.

An adapter turns files on disk (or a seeded construction) into one `Samples` table (uid, split,
y, a) plus `load(i)`, the RGB image of row i. Groups are g = y * n_attrs + a. Options are declared
per adapter (`OPTIONS`), validated once, and recorded in `meta` with the seed and the realised
correlation per split, so a cache says exactly which variant of a benchmark it holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from embedkit.errors import EmbedkitError
from embedkit.schema import SPLITS, Samples

from .images import ImageReadError, open_image

THUMBNAIL_SIZE = 96


@dataclass(frozen=True)
class Option:
    default: Any
    kind: type  # int, float, str or bool
    help: str

    def parse(self, dataset: str, name: str, value):
        """Coerce a Python or CLI (JSON-parsed) value; one error naming the option otherwise."""
        kind = self.kind
        if value is None and self.default is None:  # None is a value only where it is the default
            return None
        try:
            if kind is bool:
                if isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    return value.lower() in ("true", "1", "yes")
                if value not in (0, 1, True, False):
                    raise ValueError
                return bool(value)
            if kind is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError
                return int(value) if not isinstance(value, str) else int(value.strip())
            if kind is float:
                return float(value)
            if isinstance(value, (list, tuple)):  # `--dataset-opt core_classes=[7,9]`
                return ",".join(str(v) for v in value)
            return str(value)
        except (TypeError, ValueError):
            raise EmbedkitError(
                f"dataset {dataset}: option {name}={value!r} is not a valid {kind.__name__}"
            ) from None


def resolve_options(dataset: str, declared: dict[str, Option], given: dict) -> dict:
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise EmbedkitError(
            f"dataset {dataset}: unknown option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)} (options: {', '.join(declared) or 'none'})"
        )
    out = {}
    for name, opt in declared.items():
        out[name] = opt.parse(dataset, name, given[name]) if name in given else opt.default
    return out


def check_fraction(dataset: str, name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise EmbedkitError(f"dataset {dataset}: option {name}={value} must lie in [0, 1]")
    return value


def parse_list(dataset: str, option: str, value, allowed: list[str], minimum: int = 2) -> list[str]:
    """A comma-separated option of distinct names from `allowed`, at least `minimum` of them."""
    items = [v.strip() for v in str(value).split(",") if v.strip()]
    if (
        len(items) < minimum
        or len(set(items)) != len(items)
        or any(v not in allowed for v in items)
    ):
        raise EmbedkitError(
            f"dataset {dataset}: option {option}={value!r}: give {minimum} or more distinct "
            f"values from {', '.join(allowed)}"
        )
    return items


class ImageDataset:
    """Rows of `samples()` with an RGB image each. Subclasses set `name`, `description`,
    `OPTIONS`, build `self._samples` in `_setup()` and implement `load(i)`.

    Instances are picklable; adapters that read files open them lazily per process.
    """

    name = ""
    description = ""
    OPTIONS: dict[str, Option] = {}

    def __init__(self, root=None, **options):
        self.root = root
        self.options = resolve_options(self.name, self.OPTIONS, options)
        self.meta: dict = {"options": dict(self.options)}
        self._samples: Samples | None = None
        self._setup()

    def _setup(self) -> None:
        raise NotImplementedError

    def _finish(
        self,
        uid,
        split,
        y,
        a,
        class_names,
        attr_names,
        eval_groups=None,
        eval_group_names=(),
        **meta,
    ) -> None:
        """Store the sample table; record the group definition and the realised P(a = y) per split
        where classes and attributes are aligned (the synthetic benchmarks, Waterbirds).
        `eval_groups` [N, G_eval] are optional overlapping evaluation groups (CivilComments)."""
        self.meta.update(meta)
        self.meta.setdefault("group_definition", "g = y * n_attrs + a")
        self._samples = Samples(
            uid=uid,
            split=split,
            y=y,
            a=a,
            class_names=class_names,
            attr_names=attr_names,
            dataset=self.name,
            meta=self.meta,
            eval_groups=eval_groups,
            eval_group_names=list(eval_group_names),
        )

    # -- the contract -------------------------------------------------------------------------
    def samples(self) -> Samples:
        return self._samples

    @property
    def class_names(self) -> list[str]:
        return self._samples.class_names

    @property
    def attr_names(self) -> list[str]:
        return self._samples.attr_names

    def __len__(self) -> int:
        return len(self._samples)

    def load(self, i: int) -> Image.Image:
        raise NotImplementedError

    def thumbnail(self, i: int, size: int = THUMBNAIL_SIZE) -> Image.Image:
        im = self.load(i).copy()
        im.thumbnail((size, size))
        return im

    def try_load(self, i: int, strict: bool = False) -> tuple[Image.Image | None, str | None]:
        """(image, None), or (None, reason) for an unreadable image; `strict` raises instead.
        The one place that decides between flagging a row invalid and stopping."""
        try:
            return self.load(i), None
        except ImageReadError as e:
            if strict:
                raise
            return None, str(e)

    def scan(self, strict: bool = False) -> tuple[np.ndarray, list[str]]:
        """Read every image once: the valid mask and the reason for each unreadable row."""
        valid = np.ones(len(self), bool)
        reasons = []
        for i in range(len(self)):
            _, why = self.try_load(i, strict)
            if why is not None:
                valid[i] = False
                reasons.append(why)
        return valid, reasons

    # -- description ----------------------------------------------------------------------------
    def group_counts(self) -> dict[str, np.ndarray]:
        s = self._samples
        n_groups = len(s.class_names) * len(s.attr_names)
        out = {}
        for code, split in enumerate(SPLITS):
            g = s.g[s.split == code]
            out[split] = np.bincount(g[g >= 0], minlength=n_groups)
        return out

    def summary(self) -> str:
        """Options, then the group-count table per split (the same layout as `embedkit info`)."""
        s = self._samples
        counts = self.group_counts()
        names = s.group_names()
        width = max([len(n) for n in names] + [len("P(a = y)")])
        opts = ", ".join(f"{k}={v}" for k, v in self.options.items())
        lines = [
            f"dataset: {self.name}   rows: {len(s)}",
            f"options: {opts or '(none)'}",
            f"classes: {', '.join(s.class_names)}",
            f"attributes: {', '.join(s.attr_names)}",
            f"groups: {self.meta['group_definition']}",
            "",
            f"{'group':<{width}}  " + "  ".join(f"{sp:>7}" for sp in SPLITS),
        ]
        for gi, name in enumerate(names):
            lines.append(f"{name:<{width}}  " + "  ".join(f"{counts[sp][gi]:>7}" for sp in SPLITS))
        unknown = [int(((s.split == c) & (s.a < 0)).sum()) for c in range(len(SPLITS))]
        if any(unknown):
            lines.append(f"{'unknown a':<{width}}  " + "  ".join(f"{u:>7}" for u in unknown))
        lines.append(
            f"{'total':<{width}}  "
            + "  ".join(f"{int((s.split == c).sum()):>7}" for c in range(len(SPLITS)))
        )
        if s.eval_groups is not None:
            w = max(len(n) for n in s.eval_group_names)
            lines += [
                "",
                f"overlapping evaluation groups: {self.meta.get('eval_group_definition', '')}",
                f"{'eval group':<{w}}  " + "  ".join(f"{sp:>7}" for sp in SPLITS),
            ]
            for j, name in enumerate(s.eval_group_names):
                lines.append(
                    f"{name:<{w}}  "
                    + "  ".join(
                        f"{int(s.eval_groups[s.split == c, j].sum()):>7}"
                        for c in range(len(SPLITS))
                    )
                )
        corr = self.meta.get("correlation")
        if corr:
            lines.append(
                f"{'P(a = y)':<{width}}  "
                + "  ".join(
                    f"{corr[sp]:>7.3f}" if corr.get(sp) is not None else f"{'-':>7}"
                    for sp in SPLITS
                )
            )
        return "\n".join(lines)

    def __repr__(self):
        return f"<{type(self).__name__} {self.name!r}: {len(self)} rows>"


def realised_correlation(y: np.ndarray, a: np.ndarray, split: np.ndarray) -> dict:
    """P(a = y) per split: the strength of the spurious correlation actually built (None when a
    split is empty)."""
    out = {}
    for code, name in enumerate(SPLITS):
        m = split == code
        out[name] = round(float((a[m] == y[m]).mean()), 6) if m.any() else None
    return out


class ArrayDataset(ImageDataset):
    """A dataset held in memory as uint8 images [N, H, W, 3] (the seeded benchmarks).

    The benchmarks own their construction, so they also render true counterfactuals:
    `counterfactual(i, a)` is row i with only its spurious part changed to attribute value a
    (methods spec 10.3, P4 pairs)."""

    images: np.ndarray

    def load(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])

    def counterfactual(self, i: int, a: int) -> Image.Image:
        s = self._samples
        if not 0 <= a < len(s.attr_names):
            raise EmbedkitError(
                f"dataset {self.name}: attribute {a} out of range 0..{len(s.attr_names) - 1}"
            )
        if a == s.a[i]:
            return self.load(i)
        return Image.fromarray(self._render(i, a))

    def _render(self, i: int, a: int) -> np.ndarray:
        raise NotImplementedError


class FileDataset(ImageDataset):
    """A dataset of image files on disk (`self.paths[i]` for row i), decoded on each `load`."""

    paths: list

    def folder(self, what: str) -> Path:
        """The `root` folder, which these adapters require."""
        if self.root in (None, ""):
            raise EmbedkitError(f"dataset {self.name}: needs --root, the folder holding {what}")
        root = Path(self.root)
        if not root.is_dir():
            raise EmbedkitError(f"{root}: no such folder (dataset {self.name})")
        return root

    def load(self, i: int) -> Image.Image:
        return open_image(self.paths[i])
