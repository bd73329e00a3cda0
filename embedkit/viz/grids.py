"""Image grids: nearest neighbours of rows, retrieval before/after an edit, and decoded edits.

The grids draw what they are given: pictures, each a (PIL image or None, caption) pair; a None
image is drawn as a grey "no image" cell. Nothing here loads an image: for the rows of a cache,
`embedkit.pipelines.figures.pictures` looks them up through the dataset adapter recorded in the
cache (`embedkit.data.thumbnails.ThumbnailSource`).
"""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.viz.canvas import image_array, new_figure, save

CELL = 96  # pixels per image cell
CAPTION = 26  # pixels of caption under each cell
TITLE = 40  # pixels of title above the grid
GAP = 12  # pixels between cells


def grid_size(n_rows: int, n_cols: int, cell: int = CELL) -> tuple[int, int]:
    """Pixel size of an image grid with n_rows x n_cols cells."""
    return n_cols * (cell + GAP) + GAP, TITLE + n_rows * (cell + CAPTION + GAP)


def image_grid(
    cells: list[list[tuple]],
    out,
    *,
    title: str = "",
    col_titles: list[str] | None = None,
    cell: int = CELL,
):
    """Draw rows of (image or None, caption) cells; a missing image is a grey cell saying so.
    The cells are pasted into one mosaic (one image artist: fast for large grids)."""
    n_rows = len(cells)
    n_cols = max((len(r) for r in cells), default=0)
    if n_rows == 0 or n_cols == 0:
        raise EmbedkitError("an image grid needs at least one cell")
    W, H = grid_size(n_rows, n_cols, cell)
    mosaic = np.full((H, W, 3), 255, np.uint8)
    fig = new_figure(W, H)
    if title:
        fig.text(0.5, 1 - 14 / H, title, ha="center", va="center", fontsize=10)
    for r, row in enumerate(cells):
        y_top = TITLE + r * (cell + CAPTION + GAP)
        for c, (img, caption) in enumerate(row):
            x0 = GAP + c * (cell + GAP)
            if img is None:
                mosaic[y_top : y_top + cell, x0 : x0 + cell] = 217
                fig.text(
                    (x0 + cell / 2) / W,
                    1 - (y_top + cell / 2) / H,
                    "no image",
                    ha="center",
                    va="center",
                    fontsize=7,
                )
            else:
                mosaic[y_top : y_top + cell, x0 : x0 + cell] = image_array(img, cell)
            fig.text(
                (x0 + cell / 2) / W,
                1 - (y_top + cell + 3) / H,
                caption,
                ha="center",
                va="top",
                fontsize=6,
            )
            if r == 0 and col_titles and c < len(col_titles) and col_titles[c]:
                fig.text(
                    (x0 + cell / 2) / W,
                    1 - (y_top - 3) / H,
                    col_titles[c],
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
    ax = fig.add_axes([0, 0, 1, 1], zorder=-1)
    ax.imshow(mosaic, interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    return save(fig, out)


def neighbour_grid(queries, neighbours, out, *, scores=None, title: str = "", cell: int = CELL):
    """One grid row per query: the query's picture, then its neighbours' pictures. A picture is (PIL
    image or None, caption); `scores[q][j]` is printed after neighbour j's caption when given."""
    cells = []
    for q, ((img, cap), nb) in enumerate(zip(queries, neighbours)):
        row = [(img, f"query: {cap}")]
        for j, (n_img, n_cap) in enumerate(nb):
            s = "" if scores is None else f" {scores[q][j]:.2f}"
            row.append((n_img, f"{n_cap}{s}"))
        cells.append(row)
    k = max((len(nb) for nb in neighbours), default=0)
    return image_grid(
        cells, out, title=title, cell=cell, col_titles=["query"] + [f"nn {j + 1}" for j in range(k)]
    )


def retrieval_grid(items, before, after, out, *, title: str = "", cell: int = CELL):
    """Per edited item: its own picture, its nearest real pictures before the edit, then after
    (pictures as in `neighbour_grid`; `before[i]` and `after[i]` hold k each)."""
    k = max((len(b) for b in before), default=0)
    cells = []
    for (img, cap), b, a in zip(items, before, after):
        r = [(img, f"item: {cap}")]
        r += [(n_img, f"before: {n_cap}") for n_img, n_cap in b]
        r += [(n_img, f"after: {n_cap}") for n_img, n_cap in a]
        cells.append(r)
    return image_grid(
        cells,
        out,
        title=title,
        cell=cell,
        col_titles=["item"]
        + [f"before {j + 1}" for j in range(k)]
        + [f"after {j + 1}" for j in range(k)],
    )
