"""CelebA in the published layout (or the Kaggle `.csv` variant):

    <root>/img_align_celeba/000001.jpg ...       (a nested img_align_celeba/img_align_celeba/
                                                 also works)
    <root>/list_attr_celeba.txt                  line 1: image count; line 2: the 40
                                                 attribute names;
                                                 then "<file> v1 ... v40" with v in {-1, 1}
    <root>/list_eval_partition.txt               "<file> <0|1|2>" (train / val / test)
    or list_attr_celeba.csv (image_id, 40 attribute columns) and list_eval_partition.csv
    (image_id, partition)

y = the `target` attribute (default Blond_Hair), a = the `spurious` attribute (default Male),
each 1 where the file says 1 and 0 where it says -1. uid = the image file name.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedkit.errors import EmbedkitError

from .base import FileDataset, Option
from .tables import Table, read_csv, sha256_file


def read_spaced(path: Path, attr_header: bool) -> Table:
    """The whitespace-separated .txt lists. With `attr_header`, line 1 is the row count and line 2
    the attribute names (the header gets a leading 'image_id')."""
    if not path.is_file():
        raise EmbedkitError(f"{path}: no such metadata file")
    lines = path.read_text(encoding="utf-8").splitlines()
    start = 0
    if attr_header:
        if len(lines) < 2:
            raise EmbedkitError(f"{path}: expected a count line and an attribute-name line")
        try:
            count = int(lines[0].strip())
        except ValueError:
            raise EmbedkitError(
                f"{path}, line 1: expected the image count, found {lines[0][:40]!r}"
            ) from None
        header = ["image_id"] + lines[1].split()
        start = 2
    else:
        header = ["image_id", "partition"]
    rows, numbers = [], []
    for k in range(start, len(lines)):
        fields = lines[k].split()
        if not fields:
            continue
        if len(fields) != len(header):
            raise EmbedkitError(
                f"{path}, line {k + 1}: {len(fields)} fields, expected {len(header)}"
            )
        rows.append(fields)
        numbers.append(k + 1)
    if attr_header and count != len(rows):
        raise EmbedkitError(f"{path}, line 1: announces {count} images, the file lists {len(rows)}")
    return Table(path, header, rows, numbers)


def _pick(root: Path, stem: str) -> Path:
    for suffix in (".txt", ".csv"):
        if (root / f"{stem}{suffix}").is_file():
            return root / f"{stem}{suffix}"
    raise EmbedkitError(f"{root / (stem + '.txt')}: no such file (nor {stem}.csv)")


class CelebA(FileDataset):
    name = "celeba"
    description = (
        "CelebA (img_align_celeba/ + list_attr_celeba + list_eval_partition, .txt or .csv); "
        "target and spurious attributes as options"
    )
    OPTIONS = {
        "target": Option("Blond_Hair", str, "attribute that is the label y"),
        "spurious": Option("Male", str, "attribute that is the spurious attribute a"),
    }

    def _setup(self):
        root = self.folder("img_align_celeba/, list_attr_celeba and list_eval_partition")
        attr_path, part_path = _pick(root, "list_attr_celeba"), _pick(root, "list_eval_partition")
        attrs = (
            read_spaced(attr_path, True)
            if attr_path.suffix == ".txt"
            else read_csv(attr_path, ["image_id"])
        )
        parts = (
            read_spaced(part_path, False)
            if part_path.suffix == ".txt"
            else read_csv(part_path, ["image_id", "partition"])
        )
        target, spurious = self.options["target"], self.options["spurious"]
        for name in (target, spurious):
            if name not in attrs.header[1:]:
                raise EmbedkitError(
                    f"{attr_path}: no attribute {name!r} (attributes: "
                    f"{', '.join(attrs.header[1:])})"
                )
        if target == spurious:
            raise EmbedkitError("dataset celeba: target and spurious must be different attributes")
        files = attrs.column("image_id")
        attrs.check_unique(files, "image")
        y = (attrs.ints(target, (-1, 1)) + 1) // 2
        a = (attrs.ints(spurious, (-1, 1)) + 1) // 2
        part_files = parts.column("image_id")
        parts.check_unique(part_files, "image")
        part_of = dict(zip(part_files, parts.ints("partition", (0, 1, 2), what="partition")))
        missing = [i for i, f in enumerate(files) if f not in part_of]
        if missing:
            raise attrs.error(
                missing[0], f"image {files[missing[0]]!r} has no line in {part_path.name}"
            )
        if len(part_of) != len(files):
            extra = next(i for i, f in enumerate(part_files) if f not in set(files))
            raise parts.error(extra, f"image {part_files[extra]!r} is not in {attr_path.name}")
        images = root / "img_align_celeba"
        if (images / "img_align_celeba").is_dir():  # the Kaggle archive nests the folder
            images = images / "img_align_celeba"
        self.paths = [images / f for f in files]
        self._finish(
            files,
            np.array([part_of[f] for f in files], np.uint8),
            y,
            a,
            [f"not_{target}", target],
            [f"not_{spurious}", spurious],
            metadata_sha256={p.name: sha256_file(p) for p in (attr_path, part_path)},
        )
