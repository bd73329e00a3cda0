"""Figures (matplotlib on an Agg canvas, PNG) drawn from the arrays and records they are given:
per-group accuracy bars over seeds (accuracy), 2-D maps by group, centroid-distance heat maps and
per-group projection histograms (embedding), nearest-neighbour and retrieval image grids (grids),
CLIP views of feature edits (edits) and the learning-rate study's panels (lr).

Nothing here opens a cache, loads records or computes an analysis: embedkit.pipelines does, and
`embedkit.pipelines.report.report_figures` makes every figure of `embedkit report`.
"""
