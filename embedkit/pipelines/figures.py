"""The figures of `embedkit analyze` and the ones `embedkit report` adds to its tables: this
module opens what the figures need (the records' artifacts, the dataset's images), calls
embedkit.analysis for the numbers and embedkit.viz to draw them.

Every figure is optional: a piece that is missing (no run records, no cache, no attributes, no
text embeddings, no images, no HSFM run) is skipped with a note, and the notes are written to
`figures.json` in the output folder beside the list of figures made.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedkit.analysis import edits
from embedkit.analysis.maps import map_2d, projections
from embedkit.analysis.summary import resolve_prompt_sets
from embedkit.data.thumbnails import ThumbnailSource
from embedkit.errors import EmbedkitError
from embedkit.jsonsafe import write_json
from embedkit.viz import edits as edit_figs
from embedkit.viz import embedding, grids

MANIFEST = "figures.json"


class Figures:
    """Collects the figures made and the notes of those skipped; `write_manifest` writes both to
    `figures.json`."""

    def __init__(self, out_dir):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.paths: list[Path] = []
        self.skipped: list[dict] = []
        self.facts: dict = {}  # numbers behind the figures, for the manifest

    def make(self, name: str, fn, *args, **kwargs):
        try:
            p = fn(*args, out=self.out / name, **kwargs)
        except EmbedkitError as e:
            self.skip(name, str(e))
            return None
        p = p[0] if isinstance(p, tuple) else p
        self.paths.append(Path(p))
        return p

    def skip(self, name: str, why: str):
        self.skipped.append({"figure": name, "reason": why})

    def write_manifest(self, extra: dict | None = None) -> Path:
        # through the one JSON cleaner: the facts hold numpy values and NaN shares
        manifest = {"figures": [p.name for p in self.paths], "skipped": self.skipped}
        return write_json(self.out / MANIFEST, manifest | self.facts | (extra or {}))


def captioner(cache):
    """cache row -> short group label ('class|attr', or 'class|?' for unknown attributes)."""
    s = cache.samples()
    cls, att = s.class_names, s.attr_names
    return lambda row: f"{cls[s.y[row]]}|{att[s.a[row]] if s.a[row] >= 0 else '?'}"


def thumbnail_source(cache, root=None):
    """(callable row -> PIL image or None, reason it is None)."""
    try:
        return ThumbnailSource.from_cache(cache, root), None
    except EmbedkitError as e:
        return None, str(e)


def picture(thumbs, caption, row):
    """(image or None, caption) of one cache row; a row that is unknown (None or < 0) or whose
    image cannot be had gets None, so the grid draws a "no image" cell in its place."""
    if row is None or int(row) < 0:
        return None, "?"
    row = int(row)
    try:
        img = thumbs(row) if thumbs is not None else None
    except EmbedkitError:
        img = None
    return img, caption(row)


def pictures(thumbs, caption, rows):
    """`picture` of every row of `rows`, keeping its shape: a list for a 1-D array of rows, a
    list of lists for a 2-D one (neighbours per query)."""
    rows = np.asarray(rows)
    if rows.ndim == 1:
        return [picture(thumbs, caption, r) for r in rows]
    return [pictures(thumbs, caption, r) for r in rows]


def decoded_edit_figure(edit, decode, out, *, thumbs=None, caption=None, items=None, seeds=(0, 1)):
    """The decoded-edit grid of `edit` (an embedkit.analysis.edits.Edit): for each item, its
    original image (when `thumbs` and the item's cache row are known), then decode(h0) and
    decode(h*) with the same generator seed, per seed. `decode(embeds [n, D], seed)` returns PIL
    images (e.g. embedkit.backbones.unclip.unclip_decoder)."""
    items = np.arange(len(edit.before)) if items is None else np.asarray(items)
    originals, decoded = [], []
    for i in items:
        row = int(edit.rows[i]) if edit.rows is not None else -1
        label = f"y={int(edit.y[i])}" if edit.y is not None else f"item {int(i)}"
        if caption is not None and row >= 0:
            label = caption(row)
        originals.append((picture(thumbs, str, row)[0], label))
        decoded.append(
            [
                (
                    decode(edit.before[i : i + 1], int(s))[0],
                    decode(edit.after[i : i + 1], int(s))[0],
                )
                for s in seeds
            ]
        )
    return edit_figs.decoded_edit_grid(originals, decoded, out, name=edit.name, seeds=seeds)


def analysis_figures(
    res,
    cache,
    out_dir,
    *,
    thumbs=None,
    thumbs_reason: str = "",
    map_method: str = "pca",
    figs: Figures | None = None,
) -> Figures:
    """Figures of a `CacheAnalysis` (embedkit.analysis.summary.analyze_splits): the 2-D map, the
    centroid distances, the projections, the text probes and the image grids. The map is
    `res.map` when the analysis carries one (a saved analysis), else computed with `map_method`
    and kept in `res.map` for `save_arrays`; figures.json says which (`map_2d.origin`)."""
    figs = figs or Figures(out_dir)
    tr, ev = res.split, res.eval_split
    names = tr.group_names
    try:
        origin = "saved" if res.map is not None else "computed"
        if res.map is None:
            res.map = map_2d(tr.Z, tr.g, map_method)
        figs.facts["map_2d"] = res.map.info() | {"origin": origin}
        figs.make(
            f"scatter_{tr.name}.png",
            embedding.scatter_2d,
            res.map.xy,
            res.map.g,
            names,
            method=res.map.method,
            title=f"{tr.backbone}: {tr.name} rows coloured by group",
        )
    except EmbedkitError as e:
        figs.skip(f"scatter_{tr.name}.png", str(e))
    if res.distances is not None:
        figs.make(
            "centroid_distance.png",
            embedding.centroid_heatmap,
            res.distances,
            names,
            title=f"Group-centroid cosine distance ({tr.name})",
        )
    else:
        figs.skip("centroid_distance.png", "no rows with a known attribute")
    if res.directions:
        figs.make(
            "projections.png",
            embedding.projection_histograms,
            projections(
                tr.Z,
                {
                    "spurious direction (group means)": res.directions["spurious"],
                    "core direction (group means)": res.directions["core"],
                },
            ),
            tr.g,
            names,
        )
    else:
        figs.skip(
            "projections.png", "no spurious/core directions (need two attribute values per class)"
        )
    for probe in res.text_probes:
        figs.make(f"text_probe_{probe['prompt_set']}.png", edit_figs.text_probe_bars, probe)
    if not res.text_probes:
        figs.skip(
            "text_probe_*.png",
            next((n for n in res.notes if n.startswith("text probe")), "no text embeddings"),
        )
    caption = captioner(cache)
    err = res.errors
    if err.get("queries"):
        if thumbs is None:
            figs.skip("error_neighbours.png", thumbs_reason or "images not reachable")
        else:
            q_rows = ev.rows[np.asarray(err["queries"])]
            figs.make(
                "error_neighbours.png",
                grids.neighbour_grid,
                pictures(thumbs, caption, q_rows),
                pictures(thumbs, caption, tr.rows[err["neighbours"]]),
                scores=err["scores"],
                title=f"Worst group {err['worst_group']} ({ev.name}): misclassified rows and their "
                f"{tr.name} neighbours ({err['predictions']})",
            )
    else:
        figs.skip("error_neighbours.png", "no worst-group errors on the evaluation split")
    if res.retrieval:

        def share(when):
            return res.retrieval.get(f"other_attr_share_{when}", float("nan"))

        if thumbs is None:
            figs.skip("retrieval.png", thumbs_reason or "images not reachable")
        else:
            edit = res.edits["remove_spurious"]
            figs.make(
                "retrieval.png",
                grids.retrieval_grid,
                pictures(thumbs, caption, edit.rows),
                pictures(thumbs, caption, tr.rows[res.retrieval["before"]]),
                pictures(thumbs, caption, tr.rows[res.retrieval["after"]]),
                title=f"Nearest {tr.name} images before / after '{edit.name}' "
                f"(other-attribute share {share('before'):.2f} -> {share('after'):.2f})",
            )
    return figs


def find_artifacts(record: dict) -> Path | None:
    """The artifacts.npz beside a run record (embedkit.runs' run directory layout)."""
    p = Path(record["_path"]).parent / "artifacts.npz"
    return p if p.exists() else None


def hsfm_figures(
    records, cache, figs: Figures, thumbs, thumbs_reason: str, backbone: str | None
) -> None:
    """Text probe and retrieval views of the first HSFM run's support edits."""
    hsfm = [r for r in records if str(r.get("method", "")).startswith("hsfm")]
    if not hsfm:
        figs.skip("hsfm_*.png", "no HSFM run among the records")
        return
    art = next(((r, find_artifacts(r)) for r in hsfm if find_artifacts(r) is not None), None)
    if art is None:
        figs.skip(
            "hsfm_*.png", "the HSFM runs have no artifacts.npz with support_before/support_after"
        )
        return
    rec, path = art
    try:
        edit = edits.load_hsfm_edit(path, name=f"hsfm seed {rec.get('seed')}")
    except EmbedkitError as e:
        figs.skip("hsfm_*.png", str(e))
        return
    tr = cache.split("train", backbone)
    if edit.rows is not None:
        s = cache.samples()
        edit.a = s.a[edit.rows]
    try:
        embed = edits.TextEmbedder(None, tr.text)
        for ps in resolve_prompt_sets(cache.dataset, tr.class_names, tr.attr_names, tr.text, None):
            probe = edits.text_probe(edit, ps, embed(ps.prompts))
            figs.facts.setdefault("hsfm_text_probes", []).append(probe)
            figs.make(f"hsfm_text_probe_{ps.name}.png", edit_figs.text_probe_bars, probe)
    except EmbedkitError as e:
        figs.skip("hsfm_text_probe_*.png", str(e))
    if thumbs is None:
        figs.skip("hsfm_retrieval.png", thumbs_reason or "images not reachable")
        return
    caption = captioner(cache)
    items = edit.top_items(per_class=3, n_random=2, seed=0)
    sub = edits.Edit(
        edit.name,
        edit.before[items],
        edit.after[items],
        y=edit.y[items] if edit.y is not None else None,
        a=edit.a[items] if edit.a is not None else None,
        rows=edit.rows[items] if edit.rows is not None else None,
    )
    ret = edits.retrieval(sub, tr.Z, a_db=tr.a, y_db=tr.y, k=6)
    figs.facts["hsfm_retrieval"] = {k: v for k, v in ret.items() if not isinstance(v, np.ndarray)}
    shares = (
        f", other-attribute share {ret['other_attr_share_before']:.2f} -> "
        f"{ret['other_attr_share_after']:.2f}"
        if "other_attr_share_before" in ret
        else ""
    )
    figs.make(
        "hsfm_retrieval.png",
        grids.retrieval_grid,
        pictures(thumbs, caption, sub.rows if sub.rows is not None else [-1] * len(items)),
        pictures(thumbs, caption, tr.rows[ret["before"]]),
        pictures(thumbs, caption, tr.rows[ret["after"]]),
        title=f"HSFM support edits ({edit.name}): nearest train images before / after "
        f"(relative edit norm {ret['relative_edit_norm']:.2f}{shares})",
    )
