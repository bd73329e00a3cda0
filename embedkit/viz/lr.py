"""The LR study's figure: metrics against the learning rate on a log axis, one panel per metric
(or group of metrics), drawn from the numbers it is given (embedkit.studies.lr.tables builds
them from the study's summaries). Drawn without pyplot (viz.canvas), so a notebook's inline
backend is left alone.

A panel is a dict:
- `title`: str;
- `curves`: [{`label`, `lr`, `mean`, `std`}], arrays of one length; NaN = nothing to draw, a
  NaN std draws no error bar;
- `levels` (optional): [{`label`, `value`, `color`}], dashed horizontal lines (a comparator's
  mean at the same budget, read against the LR curve).
"""

from __future__ import annotations

import numpy as np

from embedkit.viz.canvas import new_figure, save


def _floats(values) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], np.float64)


def lr_figure(
    panels: list[dict],
    path,
    title: str = "",
    *,
    max_cols: int = 3,
    panel_px: tuple[int, int] = (462, 352),
    legend: str = "every",
) -> None:
    """Draw `panels` in a grid of at most `max_cols` columns, each `panel_px` pixels, and save
    a PNG at `path`. `legend`: 'every' panel or only the 'first'."""
    cols = min(max_cols, max(1, len(panels)))
    rows = -(-len(panels) // cols) or 1
    fig = new_figure(int(panel_px[0] * cols), int(panel_px[1] * rows))
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for k, (ax, panel) in enumerate(zip(axes.ravel(), panels)):
        for c in panel["curves"]:
            ax.errorbar(
                _floats(c["lr"]),
                _floats(c["mean"]),
                yerr=np.nan_to_num(_floats(c["std"])),
                marker="o",
                capsize=3,
                label=c["label"],
            )
        for line in panel.get("levels", ()):
            ax.axhline(line["value"], color=line.get("color"), ls="--", lw=1, label=line["label"])
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(panel["title"], fontsize=9)
        ax.grid(alpha=0.3)
        if legend == "every" or k == 0:
            ax.legend(fontsize=8 if legend == "every" else 6)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    # fixed margins: tight_layout costs seconds per panel grid on a loaded CPU
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.9, wspace=0.3, hspace=0.45)
    save(fig, path)
