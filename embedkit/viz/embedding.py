"""Pictures of the embedding space: a 2-D map coloured by group, the group-centroid distance
heat map, and per-group histograms of projections on directions (spurious, core, text, edit).
They draw the arrays they are given; the map's coordinates and the projections come from
embedkit.analysis.maps."""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.viz.canvas import group_colors, new_figure, save


def scatter_2d(
    XY,
    g,
    group_names,
    out,
    *,
    method: str = "pca",
    title: str = "",
    size=(800, 700),
):
    """Draw 2-D coordinates (embedkit.analysis.maps.map_2d) coloured by group (rows with g = -1
    in grey); `method` names the axes. Returns (path, info)."""
    XY, gs = np.asarray(XY), np.asarray(g)
    fig = new_figure(*size)
    ax = fig.add_axes([0.08, 0.08, 0.62, 0.84])
    colors = group_colors(len(group_names))
    if (gs < 0).any():
        m = gs < 0
        ax.scatter(
            XY[m, 0], XY[m, 1], s=4, c="0.7", label=f"unknown a (n={int(m.sum())})", linewidths=0
        )
    for gi, name in enumerate(group_names):
        m = gs == gi
        if m.any():
            ax.scatter(
                XY[m, 0],
                XY[m, 1],
                s=6,
                color=colors[gi],
                label=f"{name} (n={int(m.sum())})",
                linewidths=0,
                alpha=0.8,
            )
    ax.set_xlabel(f"{method.upper()} 1")
    ax.set_ylabel(f"{method.upper()} 2")
    ax.set_title(title or f"{method.upper()} of {len(XY)} rows, coloured by group", fontsize=10)
    ax.legend(
        loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, markerscale=2, frameon=False
    )
    return save(fig, out), {"method": method, "n_points": int(len(XY))}


def centroid_heatmap(
    D, group_names, out, *, title: str = "Group-centroid cosine distance", size=(700, 600)
):
    """Heat map of a [G, G] centroid distance matrix with the values written in the cells."""
    D = np.asarray(D, np.float64)
    fig = new_figure(*size)
    ax = fig.add_axes([0.22, 0.22, 0.6, 0.68])
    im = ax.imshow(np.ma.masked_invalid(D), cmap="viridis")
    G = len(group_names)
    ax.set_xticks(range(G))
    ax.set_yticks(range(G))
    ax.set_xticklabels(group_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticklabels(group_names, fontsize=8)
    if G <= 12:
        hi = np.nanmax(D) if np.isfinite(D).any() else 1.0
        for i in range(G):
            for j in range(G):
                if np.isfinite(D[i, j]):
                    ax.text(
                        j,
                        i,
                        f"{D[i, j]:.3f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if D[i, j] < 0.6 * hi else "black",
                    )
    ax.set_title(title, fontsize=10)
    cax = fig.add_axes([0.85, 0.22, 0.03, 0.68])
    fig.colorbar(im, cax=cax)
    return save(fig, out)


def projection_histograms(projections: dict, g, group_names, out, *, bins: int = 40, size=None):
    """One panel per direction: overlaid per-group histograms (density) of the rows' projections
    on it (`projections[name]`: one value per row, e.g. <z, v/||v||> from
    embedkit.analysis.maps.projections)."""
    if not projections:
        raise EmbedkitError("projection histograms need at least one direction")
    g = np.asarray(g)
    n = len(projections)
    size = size or (450 * n + 150, 420)
    fig = new_figure(*size)
    colors = group_colors(len(group_names))
    panel_w = 0.8 / n
    for p, (name, proj) in enumerate(projections.items()):
        proj = np.asarray(proj, np.float64)
        if proj.shape != g.shape:
            raise EmbedkitError(
                f"projection on {name!r}: {proj.shape[0]} values for {g.shape[0]} rows"
            )
        ax = fig.add_axes([0.06 + p * (panel_w + 0.02), 0.13, panel_w - 0.03, 0.75])
        edges = np.histogram_bin_edges(proj[g >= 0] if (g >= 0).any() else proj, bins=bins)
        for gi, gname in enumerate(group_names):
            m = g == gi
            if m.any():
                ax.hist(
                    proj[m],
                    bins=edges,
                    density=True,
                    histtype="step",
                    linewidth=1.4,
                    color=colors[gi],
                    label=f"{gname} (n={int(m.sum())})",
                )
        ax.set_title(f"projection on {name}", fontsize=10)
        ax.set_xlabel("<z, v/|v|>")
        if p == 0:
            ax.set_ylabel("density")
    fig.axes[-1].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    return save(fig, out)
