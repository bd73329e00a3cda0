"""Low-dimensional views of an embedding, the coordinates embedkit.viz.embedding draws: 2-D maps
(PCA, or UMAP when installed) for `scatter_2d` and projections on directions for
`projection_histograms`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedkit.analysis.groups import stratified_subsample
from embedkit.errors import EmbedkitError

MAP_METHODS = ("pca", "umap", "auto")


def _umap():
    try:
        import umap
    except ImportError:
        return None
    return umap


def embed_2d(Z, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, str]:
    """(coordinates [N, 2], method used). `auto` = UMAP when umap-learn is installed, else PCA."""
    if method not in MAP_METHODS:
        raise EmbedkitError(f"unknown 2-D map {method!r}: choose from {', '.join(MAP_METHODS)}")
    umap = _umap()
    if method == "umap" and umap is None:
        raise EmbedkitError(
            "2-D map 'umap' needs umap-learn (pip install umap-learn); the default is 'pca'"
        )
    Z = np.asarray(Z, np.float32)
    if method in ("umap", "auto") and umap is not None:
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(Z), "umap"
    from sklearn.decomposition import PCA

    if Z.shape[1] < 2 or len(Z) < 2:
        raise EmbedkitError(f"a 2-D map needs at least 2 rows and 2 dimensions, got {Z.shape}")
    return PCA(n_components=2, random_state=seed).fit_transform(Z), "pca"


@dataclass
class Map2D:
    """A 2-D map of some rows of a split: what `scatter_2d` draws and `embedkit analyze` saves,
    so that a saved analysis is drawn with the very coordinates it was made with."""

    xy: np.ndarray  # [n, 2] coordinates
    index: np.ndarray  # [n] positions of the mapped rows in the split (not cache rows)
    g: np.ndarray  # [n] their groups
    method: str  # the method used (pca or umap)
    seed: int

    def info(self) -> dict:
        return {"method": self.method, "seed": int(self.seed), "n_points": len(self.index)}


def map_2d(Z, g, method: str = "pca", max_points: int = 5000, seed: int = 0) -> Map2D:
    """The map of at most `max_points` rows, subsampled group by group so that minority groups
    stay visible."""
    g = np.asarray(g)
    idx = stratified_subsample(g, max_points, seed)
    XY, used = embed_2d(np.asarray(Z)[idx], method, seed)
    return Map2D(XY, np.asarray(idx), g[idx], used, seed)


def projections(Z, directions: dict) -> dict[str, np.ndarray]:
    """{name: <z, v/||v||> for every row z of Z} for each direction v (float64, so a long
    direction and a short one give the same numbers)."""
    Z = np.asarray(Z, np.float32)
    out = {}
    for name, v in directions.items():
        v = np.asarray(v, np.float64)
        out[name] = Z @ (v / max(np.linalg.norm(v), 1e-12))
    return out
