"""Figures without pyplot: every figure is a `matplotlib.figure.Figure` on an Agg canvas, so nothing
here touches the global backend of a notebook or needs a display, and every PNG has exactly the
pixel size asked for (no tight bounding box)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100


def new_figure(width_px: int, height_px: int) -> Figure:
    fig = Figure(figsize=(width_px / DPI, height_px / DPI), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def group_colors(n: int) -> list:
    """One distinct colour per group (tab10 up to 10 groups, tab20 up to 20, then a hue wheel)."""
    import matplotlib

    name = "tab10" if n <= 10 else "tab20" if n <= 20 else "hsv"
    cmap = matplotlib.colormaps[name]
    if name == "hsv":
        return [cmap(i / n) for i in range(n)]
    return [cmap(i) for i in range(n)]


def image_array(img, size: int) -> np.ndarray:
    """A PIL image as an RGB array resized to size x size (grids show every cell at one size)."""
    from PIL import Image

    return np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR))
