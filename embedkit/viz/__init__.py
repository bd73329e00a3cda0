"""Figures (matplotlib on an Agg canvas, PNG): per-group accuracy bars over seeds, 2-D maps by
group,
centroid-distance heat maps, per-group projection histograms, nearest-neighbour and retrieval image
grids, and CLIP views of feature edits (text probe, decoded edits).

`report_figures(run_or_runs_dir, out_dir, cache=None)` makes every figure that the available pieces
allow and is what `embedkit report` calls.
"""

from embedkit.viz.report import analysis_figures, report_figures

__all__ = ["report_figures", "analysis_figures"]
