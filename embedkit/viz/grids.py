"""Image grids: nearest neighbours of rows, retrieval before/after an edit, and decoded edits.

The grids draw what they are given: cache rows, captions and a callable row -> PIL image (for a
cache, `embedkit.data.thumbnails.ThumbnailSource.from_cache` rebuilds it from the dataset adapter
recorded in the cache). A row whose image cannot be had is drawn as a grey "no image" cell.
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


def _try(thumb, row):
    if thumb is None or row is None or row < 0:
        return None
    try:
        return thumb(int(row))
    except EmbedkitError:
        return None


def neighbour_grid(
    query_rows,
    neighbour_rows,
    thumb,
    caption,
    out,
    *,
    scores=None,
    title: str = "",
    cell: int = CELL,
):
    """One grid row per query: the query's image, then its neighbours (cache rows).
    `caption(row)` labels a cell (e.g. its group); scores are printed beside it when given."""
    cells = []
    for q, (qrow, nb) in enumerate(zip(query_rows, neighbour_rows)):
        row = [(_try(thumb, qrow), f"query: {caption(qrow)}")]
        for j, n in enumerate(nb):
            s = "" if scores is None else f" {scores[q][j]:.2f}"
            row.append((_try(thumb, n), f"{caption(n)}{s}"))
        cells.append(row)
    k = max(len(nb) for nb in neighbour_rows)
    return image_grid(
        cells, out, title=title, cell=cell, col_titles=["query"] + [f"nn {j + 1}" for j in range(k)]
    )


def retrieval_grid(
    item_rows, before, after, thumb, caption, out, *, title: str = "", cell: int = CELL
):
    """Per edited item: its own image, its nearest real images before the edit, then after."""
    k = before.shape[1]
    cells = []
    for i, row in enumerate(item_rows):
        r = [(_try(thumb, row), f"item: {caption(row) if row is not None and row >= 0 else '?'}")]
        r += [(_try(thumb, n), f"before: {caption(n)}") for n in before[i]]
        r += [(_try(thumb, n), f"after: {caption(n)}") for n in after[i]]
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
