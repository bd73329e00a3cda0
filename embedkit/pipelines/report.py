"""`embedkit report`: tables and figures from a run or sweep folder, nothing refitted. The
records come from `embedkit.runs.collect` once and feed both the tables and the per-group accuracy
figure, so they count the same runs; the cache named in the records is opened and analysed once
for its figures, or an analysis already made is drawn as it is: a `CacheAnalysis`, or the folder
`embedkit analyze` wrote for the same cache (read back by `analyze.load_analysis`)."""

from __future__ import annotations

from pathlib import Path

from embedkit import runs
from embedkit.analysis.summary import CacheAnalysis
from embedkit.cache import Cache
from embedkit.errors import EmbedkitError
from embedkit.pipelines.analyze import analyze_cache, load_analysis
from embedkit.pipelines.figures import Figures, analysis_figures, hsfm_figures, thumbnail_source
from embedkit.viz import accuracy


def open_record_cache(cache, records, root):
    """The cache given, else the first record's cache that exists (absolute path, or the path
    relative to the runs folder, for a runs folder moved together with its cache)."""
    if cache is not None:
        return cache if isinstance(cache, Cache) else Cache.open(cache)
    for r in records:
        c = r.get("cache") or {}
        for p in (c.get("path"), c.get("path_rel") and Path(root) / c["path_rel"]):
            if p and Path(p).exists():
                return Cache.open(p)
    return None


def record_backbone(records, cache) -> str | None:
    """The backbone key of the first record whose backbone the cache holds (None: the cache's
    only one is meant)."""
    keys = ((r.get("cache") or {}).get("backbone_key") for r in records)
    return next((k for k in keys if k in cache.backbones()), None)


def given_analysis(analysis, cache, backbone) -> CacheAnalysis:
    """A CacheAnalysis as it is, or an analyze folder read back for `cache`; asked for by name,
    so one that does not fit the cache or the records' backbone is an error, not a skip."""
    if not isinstance(analysis, CacheAnalysis):
        analysis = load_analysis(analysis, cache)
    if backbone is not None and analysis.split.backbone != backbone:
        raise EmbedkitError(
            f"the analysis given is of backbone {analysis.split.backbone!r}, the run records' "
            f"of {backbone!r}"
        )
    return analysis


def report_figures(
    root,
    out_dir,
    records: list[dict],
    *,
    cache=None,
    analysis=None,
    include_flagged=False,
    image_root=None,
) -> list[Path]:
    """The figures `embedkit report` adds to its tables: per-group accuracy bars over seeds from
    `records` (runs.collect), the cache's analysis figures (map, centroid distances, projections,
    text probe, error neighbours, retrieval) and HSFM's edit views. `analysis`: a CacheAnalysis, or
    the output folder of `embedkit analyze` on the same cache, to draw instead of computing one (a
    folder that does not fit the cache is an error). `image_root`: the dataset folder for the
    thumbnails (`--root`; None: the one recorded in the cache). Missing pieces are skipped with
    a note in `figures.json`; returns the PNG paths made."""
    figs = Figures(out_dir)
    records = [r for r in records if "metrics" in r]
    if records:
        figs.make(
            "group_accuracy.png",
            accuracy.group_accuracy_bars,
            records,
            include_flagged=include_flagged,
        )
    else:
        figs.skip("group_accuracy.png", f"no run records under {root}")
    try:
        c = open_record_cache(cache, records, root)
    except EmbedkitError as e:
        c = None
        figs.skip("analysis figures", str(e))
    if c is None:
        figs.skip(
            "analysis figures", "no cache given and none of the run records' cache paths exists"
        )
        figs.write_manifest()
        return figs.paths
    backbone = record_backbone(records, c)
    if analysis is not None:
        analysis = given_analysis(analysis, c, backbone)
    thumbs, why = thumbnail_source(c, image_root)
    unsaved_map = analysis is not None and analysis.map is None
    try:
        res = analysis if analysis is not None else analyze_cache(c, backbone, george=False)
        analysis_figures(res, c, out_dir, thumbs=thumbs, thumbs_reason=why, figs=figs)
    except EmbedkitError as e:
        figs.skip("analysis figures", str(e))
    if unsaved_map and "map_2d" in figs.facts:
        # an analysis folder written before maps were kept (or with --no-figures)
        figs.facts["map_2d"]["origin"] = "recomputed: the analysis given has no saved 2-D map"
    hsfm_figures(records, c, figs, thumbs, why, backbone)
    figs.write_manifest({"cache": str(c.path)})
    return figs.paths


def write_report(
    root, out_dir, include_flagged: bool = False, *, cache=None, analysis=None, image_root=None
) -> dict:
    """results.csv, results.md, results_per_seed.csv and the figures, from the finished runs
    under `root` (every shard's, when several sweeps shared the folder); `analysis` as
    `report_figures` takes it, and `image_root` (the dataset folder for thumbnails) too."""
    entries = runs.collect(root)
    if not entries:
        raise EmbedkitError(
            f"{root}: no run records under it (record.json of a finished run); "
            "point it at the --out of `embedkit fit` or `embedkit sweep`"
        )
    if analysis is not None and not isinstance(analysis, CacheAnalysis):
        # checked before anything is written: a misfit folder stops the report, tables included
        c = open_record_cache(cache, entries, root)
        if c is None:
            raise EmbedkitError(
                f"--analysis {analysis}: none of the run records' cache paths exists, so the "
                "analysis cannot be checked against its cache"
            )
        analysis, cache = given_analysis(analysis, c, record_backbone(entries, c)), c
    out = Path(out_dir)
    rows = runs.write_results(root, out, include_flagged, entries=entries)
    files = [out / f for f in runs.TABLE_FILES]
    files += report_figures(
        root,
        out,
        entries,
        cache=cache,
        analysis=analysis,
        include_flagged=include_flagged,
        image_root=image_root,
    )
    return {"rows": rows, "files": [str(f) for f in files]}
