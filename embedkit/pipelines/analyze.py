"""`embedkit analyze`: open a cache, build the text tower when asked, compute the analysis
(embedkit.analysis.summary), draw its figures (embedkit.pipelines.figures) and write
`summary.json`, `figures.json` and, with `store`, the arrays under /derived in the cache.

`summary.json` and `analysis.npz` together hold everything the figures draw, so
`load_analysis(folder, cache)` gives back the analysis of the same cache without recomputing it
(`embedkit report --analysis FOLDER` draws it beside the tables)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from embedkit.analysis.edits import Edit
from embedkit.analysis.maps import Map2D
from embedkit.analysis.summary import CacheAnalysis, analyze_splits
from embedkit.cache import Cache, write_derived
from embedkit.errors import EmbedkitError
from embedkit.jsonsafe import write_json
from embedkit.pipelines.figures import analysis_figures, thumbnail_source

SUMMARY = "summary.json"
ARRAYS = "analysis.npz"
EDIT_FIELDS = ("before", "after", "y", "a", "rows")


def analyze_cache(
    cache,
    backbone: str | None = None,
    *,
    split: str = "train",
    eval_split: str | None = "test",
    **options,
) -> CacheAnalysis:
    """The analysis of one backbone of `cache` (a path or an open embedkit.cache.Cache): its
    `split` analysed, `eval_split` (or None) for the errors; `options` as analyze_splits takes."""
    cache = cache if isinstance(cache, Cache) else Cache.open(cache)
    tr = cache.split(split, backbone)
    ev = cache.split(eval_split, backbone) if eval_split else None
    return analyze_splits(tr, ev, dataset=cache.dataset, source=str(cache.path), **options)


def run_analysis(
    cache_path,
    out,
    *,
    backbone: str | None = None,
    split: str = "train",
    eval_split: str | None = "test",
    k: int = 10,
    metric: str = "cosine",
    max_queries: int = 20_000,
    george: bool = True,
    george_params: dict | None = None,
    text_backbone: str | None = None,
    allow_random_init: bool = False,
    prompt_sets=None,
    root=None,
    map_method: str = "pca",
    store: bool = False,
    figures: bool = True,
    seed: int = 0,
    log=print,
) -> dict:
    """Everything `embedkit analyze` does: the analysis of one backbone of a cache, written to
    `out/summary.json` with its figures (and `figures.json`), optionally stored under
    /derived/analysis_<key> in the cache. Returns the summary."""
    cache = Cache.open(cache_path)
    encoder = None
    if text_backbone:
        from embedkit import backbones

        encoder = backbones.create(text_backbone, allow_random_init=allow_random_init)
    res = analyze_cache(
        cache,
        backbone,
        split=split,
        eval_split=eval_split,
        k=k,
        metric=metric,
        max_queries=max_queries,
        george=george,
        george_params=george_params,
        text_encoder=encoder,
        prompt_sets=prompt_sets,
        seed=seed,
    )
    res.summary["cache_fingerprint"] = cache.fingerprint(res.split.backbone)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    made = []
    if figures:
        thumbs, why = thumbnail_source(cache, root)
        figs = analysis_figures(
            res, cache, out, thumbs=thumbs, thumbs_reason=why, map_method=map_method
        )
        figs.write_manifest({"cache": str(cache.path)})
        made = [p.name for p in figs.paths]
        res.summary["figures"] = made
        res.summary["skipped_figures"] = figs.skipped
    if res.map is not None:
        res.summary["map_2d"] = res.map.info()
    write_json(out / SUMMARY, res.summary)
    save_arrays(out, res)
    if store:
        _store(cache, res, split=split, k=k, metric=metric, seed=seed)
    _log_summary(res.summary, k, split, eval_split, cache.path, log)
    log(f"wrote {out / SUMMARY}, {out / ARRAYS}" + (f" and {len(made)} figures" if made else ""))
    return res.summary


def _store(cache, res: CacheAnalysis, **settings) -> None:
    arrays = {"rows": res.split.rows}
    if res.centroids is not None:
        arrays["centroids"] = res.centroids
    for kind, v in res.directions.items():
        arrays[f"{kind}_direction"] = v
    if res.inferred is not None:
        arrays["inferred_a"] = res.inferred.a
    write_derived(cache.path, f"analysis_{res.split.backbone.replace(':', '_')}", arrays, settings)


def _log_summary(s: dict, k, split, eval_split, path, log) -> None:
    log(f"analysed {s['n_rows']} {split} rows of {s['backbone']} ({s['dim']}-d) in {path}")
    if "purity" in s:
        o = s["purity"]["overall"]
        log(
            f"  {k}-NN purity: same group {o['same_group']:.3f}, same class {o['same_class']:.3f}, "
            f"same attribute {o['same_attr']:.3f}"
        )
    if s.get("errors", {}).get("worst_group") is not None:
        e = s["errors"]
        log(
            f"  worst group on {eval_split}: {e['worst_group']} ({e['n_errors']} errors, "
            f"{e['predictions']})"
        )
    if "clusters" in s and "agreement" in s["clusters"]:
        a = s["clusters"]["agreement"]
        log(
            f"  per-class k-means: k = {s['clusters']['k_per_class']}, ARI {a['ari']:.3f}, "
            f"purity {a['purity']:.3f}"
        )
    for note in s.get("notes", []):
        log(f"  note: {note}")


def save_arrays(out, res: CacheAnalysis) -> Path:
    """`analysis.npz`: the arrays of `res` that summary.json leaves out (directions, neighbour
    indices and scores, the edits), under flat keys `load_analysis` reads back. The inferred
    clusters are not kept (no figure draws them; `--store` writes their labels to the cache).
    The 2-D map drawn (if any) is kept as `map.xy` and `map.index` (positions in the split), its
    method and seed in summary.json's `map_2d`."""
    arrays = {"pred": res.pred, "centroids": res.centroids, "distances": res.distances}
    if res.map is not None:
        arrays |= {"map.xy": res.map.xy, "map.index": res.map.index}
    arrays |= {f"direction.{k}": v for k, v in res.directions.items()}
    for part, d in (("errors", res.errors), ("retrieval", res.retrieval)):
        arrays |= {f"{part}.{k}": v for k, v in d.items() if isinstance(v, np.ndarray)}
    for name, e in res.edits.items():
        arrays |= {f"edit.{name}.{f}": getattr(e, f) for f in EDIT_FIELDS}
        # names as 0-d unicode arrays: read back without pickle
        arrays |= {f"edit.{name}.name": np.array(e.name), f"edit.{name}.source": np.array(e.source)}
    path = Path(out) / ARRAYS
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def _saved_map(arrays: dict, info: dict | None, split, folder) -> Map2D | None:
    """The 2-D map saved with an analysis, or None for a folder written before maps were kept
    (the map is then computed when drawn)."""
    if info is None or "map.xy" not in arrays or "map.index" not in arrays:
        return None
    index = arrays["map.index"].astype(np.int64)
    if len(index) and (index.min() < 0 or index.max() >= len(split)):
        raise EmbedkitError(
            f"{folder}: the saved 2-D map names rows outside the {len(split)} of split "
            f"{split.name!r}"
        )
    return Map2D(arrays["map.xy"], index, split.g[index], info["method"], info.get("seed", 0))


def load_analysis(folder, cache) -> CacheAnalysis:
    """The analysis `run_analysis` wrote to `folder` (summary.json + analysis.npz), on the splits
    of `cache` it was computed from. An analysis of another cache (its content fingerprint
    differs) or of a backbone the cache lacks is refused: its arrays would not fit the rows."""
    folder = Path(folder)
    cache = cache if isinstance(cache, Cache) else Cache.open(cache)
    files = folder / SUMMARY, folder / ARRAYS
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise EmbedkitError(
            f"{folder}: not an analysis folder ({', '.join(missing)} missing); "
            "write one with `embedkit analyze --out`"
        )
    try:
        s = json.loads(files[0].read_text(encoding="utf-8"))
    except ValueError as e:
        raise EmbedkitError(f"{files[0]}: not JSON ({e})") from None
    backbone = s.get("backbone")
    if backbone not in cache.backbones():
        raise EmbedkitError(
            f"{folder}: an analysis of backbone {backbone!r}, which {cache.path} does not hold"
        )
    if s.get("cache_fingerprint") != cache.fingerprint(backbone):
        raise EmbedkitError(
            f"{folder}: an analysis of another cache than {cache.path} (content fingerprint "
            f"{s.get('cache_fingerprint')!r} != {cache.fingerprint(backbone)!r}); rerun "
            "`embedkit analyze` on it"
        )
    with np.load(files[1]) as z:
        arrays = {k: z[k] for k in z.files}
    tr = cache.split(s["split"], backbone)
    ev = cache.split(s["eval_split"], backbone) if s.get("eval_split") else None

    def part(prefix):
        return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}

    edits = {}
    for key in arrays:
        if key.startswith("edit.") and key.endswith(".before"):
            name = key[len("edit.") : -len(".before")]
            fields = part(f"edit.{name}.")
            text = {f: str(fields.pop(f)) for f in ("name", "source")}
            edits[name] = Edit(**text, **fields)
    return CacheAnalysis(
        map=_saved_map(arrays, s.get("map_2d"), tr, folder),
        summary=s,
        split=tr,
        eval_split=ev if ev is not None and len(ev) else None,
        pred=arrays.get("pred"),
        centroids=arrays.get("centroids"),
        distances=arrays.get("distances"),
        directions=part("direction."),
        errors={**s.get("errors", {}), **part("errors.")},
        edits=edits,
        text_probes=s.get("text_probes", []),
        retrieval={**s.get("retrieval", {}), **part("retrieval.")},
        notes=s.get("notes", []),
    )
