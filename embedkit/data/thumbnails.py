"""Images for the cache's rows: `ThumbnailSource.from_cache` rebuilds the dataset adapter recorded
in the cache (its name and options through `embedkit.data.create`) and maps a cache row to its small
RGB image, for the image grids of embedkit.viz.grids. When the images cannot be reached,
`from_cache` raises an EmbedkitError that says why, and callers skip the grid with that message."""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError


class ThumbnailSource:
    """row (in the cache file) -> small RGB PIL image, through the dataset adapter."""

    def __init__(self, dataset, cache_uids, what: str = ""):
        self.dataset = dataset
        self.what = what
        index = {str(u): i for i, u in enumerate(dataset.samples().uid)}
        self._pos = np.array([index.get(str(u), -1) for u in cache_uids], np.int64)
        missing = int((self._pos < 0).sum())
        if missing == len(self._pos):
            raise EmbedkitError(
                f"{what}: none of the cache's sample ids are rows of the dataset adapter "
                "(the images were made with other options?)"
            )
        self.n_missing = missing

    @classmethod
    def from_cache(cls, cache, root=None) -> ThumbnailSource:
        """Rebuild the dataset adapter named in the cache with its recorded options."""
        name = cache.dataset
        if not name or name == "imported":
            raise EmbedkitError(
                f"{cache.path}: imported embeddings carry no dataset adapter, so no images to show"
            )
        from embedkit import data

        meta = cache.samples().meta or {}
        options = dict(meta.get("options") or {})
        root = root if root is not None else meta.get("root")
        try:
            ds = data.create(name, root=root, **options)
        except EmbedkitError as e:
            raise EmbedkitError(
                f"images of dataset {name!r} not reachable ({e}); pass --root"
            ) from None
        except TypeError as e:
            raise EmbedkitError(
                f"images of dataset {name!r} not reachable: recorded options {options} "
                f"do not fit the adapter ({e})"
            ) from None
        return cls(ds, cache.samples().uid, what=f"{cache.path} ({name})")

    def __call__(self, row: int):
        i = int(self._pos[int(row)])
        if i < 0:
            raise EmbedkitError(f"{self.what}: cache row {row} is not a row of the dataset adapter")
        img = (
            self.dataset.thumbnail(i)
            if hasattr(self.dataset, "thumbnail")
            else self.dataset.load(i)
        )
        return img
