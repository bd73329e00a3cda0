"""Waterbirds in the Group-DRO / DFR folder layout (`waterbird_complete95_forest2water2/`):

    <root>/metadata.csv                 img_id, img_filename, y, split, place, place_filename
    <root>/<NNN.Species>/<file>.jpg     the images, at the `img_filename` paths

y: 0 landbird, 1 waterbird. a = place: 0 land, 1 water background. split: 0 train, 1 val,
2 test. uid = img_filename. Only `img_filename, y, split, place` are required; a missing column,
a value out of range or a repeated filename is an error naming the file and line.
"""

from __future__ import annotations

from .base import FileDataset, Option, realised_correlation
from .tables import read_csv, sha256_file


class Waterbirds(FileDataset):
    name = "waterbirds"
    description = (
        "Waterbirds (Group-DRO/DFR folder: metadata.csv + images); y bird type, a background place"
    )
    OPTIONS = {"metadata": Option("metadata.csv", str, "metadata file, relative to --root")}

    def _setup(self):
        root = self.folder("metadata.csv and the NNN.Species image folders")
        table = read_csv(root / self.options["metadata"], ["img_filename", "y", "split", "place"])
        files = table.column("img_filename")
        table.check_unique(files, "img_filename")
        y = table.ints("y", (0, 1), what="label y")
        split = table.ints("split", (0, 1, 2), what="split value")
        a = table.ints("place", (0, 1), what="place")
        self.paths = [root / f for f in files]
        self._finish(
            files,
            split,
            y,
            a,
            ["landbird", "waterbird"],
            ["land", "water"],
            correlation=realised_correlation(y, a, split),
            metadata_sha256=sha256_file(table.path),
        )
