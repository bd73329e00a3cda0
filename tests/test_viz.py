"""Every figure renders to a non-empty PNG of the expected size, from plain arrays and images as
well as from a small cache, and `pipelines.report.report_figures` / `embedkit analyze` make what
the available pieces allow and note the rest.

The image cache is `colored_digits` (scikit-learn's bundled digits, no files needed) embedded by a
fixed random projection of the pixels, so thumbnails come through the dataset adapter recorded in
the cache, as for any extracted cache.
"""

import json

import numpy as np
import pytest
from PIL import Image

from embedkit.analysis.edits import Edit
from embedkit.analysis.maps import map_2d, projections
from embedkit.cache import Cache, write_cache
from embedkit.data.thumbnails import ThumbnailSource
from embedkit.pipelines.figures import decoded_edit_figure, pictures
from embedkit.pipelines.report import report_figures
from embedkit.runs import collect
from embedkit.viz import accuracy, embedding, grids
from embedkit.viz import edits as edit_figs


def png_size(path):
    assert path.exists() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    from embedkit import data

    ds = data.create("colored_digits")
    s = ds.samples()
    X = np.stack([np.asarray(ds.load(i), np.float32).ravel() / 255 for i in range(len(s))])
    R = np.random.default_rng(0).normal(size=(X.shape[1], 48)).astype(np.float32) / np.sqrt(
        X.shape[1]
    )
    path = tmp_path_factory.mktemp("viz") / "digits.h5"
    write_cache(path, s, "pixels_rp48", X @ R)
    return Cache.open(path)


def fake_records(tmp_path, cache_path, methods=("erm", "dfr", "hsfm"), seeds=(0, 1, 2)):
    """Run records in embedkit.runs' layout: OUT/<run>/seed<k>/record.json (+ artifacts.npz)."""
    rng = np.random.default_rng(0)
    names = Cache.open(cache_path).group_names
    for m in methods:
        for s in seeds:
            d = tmp_path / "runs" / m / f"seed{s}"
            d.mkdir(parents=True)
            per = {n: {"acc": float(rng.uniform(0.5, 1.0)), "n": 100} for n in names}
            rec = {
                "method": m,
                "params": {},
                "seed": s,
                "run_id": f"{m}/seed{s}",
                "flags": {},
                "cache": {
                    "path": str(cache_path),
                    "backbone_key": "pixels_rp48",
                    "fingerprint": "",
                },
                "metrics": {
                    "test": {
                        "worst_group_acc": min(v["acc"] for v in per.values()),
                        "per_group": per,
                    }
                },
            }
            (d / "record.json").write_text(json.dumps(rec))
            (d / "done").touch()
    return tmp_path / "runs"


def test_group_accuracy_bars(tmp_path, digits_cache):
    runs = fake_records(tmp_path, digits_cache.path)
    recs = collect(runs)
    methods, groups, acc = accuracy.per_group_table(recs)
    assert methods == ["dfr", "erm", "hsfm"] and acc.shape == (3, 4, 3)
    expect = [
        json.loads((runs / "erm" / f"seed{s}" / "record.json").read_text())["metrics"]["test"][
            "per_group"
        ]
        for s in range(3)
    ]
    np.testing.assert_allclose(acc[1, 0], [e["0-4|red"]["acc"] for e in expect])
    assert png_size(accuracy.group_accuracy_bars(recs, tmp_path / "bars.png")) == (1000, 500)
    # a run selected on test (oracle) stays out unless asked for, as in the results table
    assert accuracy.run_label(recs[0]) == "dfr"
    recs[0]["flags"] = {"oracle": True}  # dfr seed 0
    acc = accuracy.per_group_table(recs)[2]
    assert np.isfinite(acc[0]).sum(axis=1).tolist() == [2, 2, 2, 2]  # dfr keeps its 2 other seeds
    assert np.isfinite(accuracy.per_group_table(recs, include_flagged=True)[2][0]).all()


def test_map_heatmap_and_histograms(tmp_path, digits_cache):
    tr = digits_cache.split("train")
    m = map_2d(tr.Z, tr.g, "pca", max_points=300)
    XY, g, used = m.xy, m.g, m.method
    np.testing.assert_array_equal(g, tr.g[m.index])  # the groups are the mapped rows' own
    assert XY.shape == (300, 2) and used == "pca"
    p, info = embedding.scatter_2d(XY, g, tr.group_names, tmp_path / "map.png", method=used)
    assert png_size(p) == (800, 700) and info == {"method": "pca", "n_points": 300}
    D = np.array([[0, 0.3, np.nan], [0.3, 0, np.nan], [np.nan, np.nan, np.nan]])
    assert png_size(embedding.centroid_heatmap(D, ["a", "b", "c"], tmp_path / "heat.png")) == (
        700,
        600,
    )
    dirs = {"spurious": np.ones(48), "core": np.arange(48.0), "text": -np.ones(48)}
    proj = projections(tr.Z, dirs)
    # <z, v/|v|>: a direction's length does not matter, its sign flips the values
    np.testing.assert_allclose(proj["spurious"], tr.Z.astype(np.float64).sum(1) / np.sqrt(48))
    np.testing.assert_allclose(proj["text"], -proj["spurious"])
    p = embedding.projection_histograms(proj, tr.g, tr.group_names, tmp_path / "h.png")
    assert png_size(p) == (1500, 420)


def test_stratified_map_sample_keeps_small_groups():
    from embedkit.analysis.groups import stratified_subsample

    g = np.repeat([0, 1, 2], [1000, 5, 50])
    idx = stratified_subsample(g, 100, seed=0)
    counts = np.bincount(g[idx])
    assert len(idx) == 100 and counts[1] == 5 and counts[2] == 47 and counts[0] == 48


def test_image_grids_through_the_dataset_adapter(tmp_path, digits_cache):
    thumbs = ThumbnailSource.from_cache(digits_cache)
    assert thumbs.n_missing == 0 and thumbs(0).mode == "RGB"
    caption = lambda r: f"row {r}"  # noqa: E731
    nb = np.array([[1, 2, 3], [4, 5, 6]])
    cells = pictures(thumbs, caption, nb)
    assert len(cells) == 2 and cells[1][2][1] == "row 6" and cells[1][2][0].mode == "RGB"
    assert pictures(thumbs, caption, [-1]) == [(None, "?")]  # an unknown row: a "no image" cell
    q = pictures(thumbs, caption, [0, 7])
    p = grids.neighbour_grid(q, cells, tmp_path / "nn.png", scores=np.ones((2, 3)))
    assert png_size(p) == grids.grid_size(2, 4)
    items = pictures(thumbs, caption, [0, -1])
    p = grids.retrieval_grid(items, cells, cells[::-1], tmp_path / "ret.png")
    assert png_size(p) == grids.grid_size(2, 7)


def test_unreachable_images_say_why(tmp_path):
    from embedkit.data.synthetic import planted_cache
    from embedkit.errors import EmbedkitError

    path, _ = planted_cache(tmp_path / "p.h5", {"train": 50, "val": 10, "test": 10}, dim=4)
    with pytest.raises(EmbedkitError, match="planted"):
        ThumbnailSource.from_cache(Cache.open(path))


def test_text_probe_bars_and_decoded_edit_grid(tmp_path):
    probe = {
        "edit": "e",
        "prompt_set": "s",
        "n_items": 2,
        "ranked": [
            {
                "prompt": f"p{i}",
                "tag": "water" if i % 2 else "land",
                "cos_delta": 0.1 * i - 1,
                "shift": 0.01 * i,
            }
            for i in range(30)
        ],
        "by_tag": {
            "water": {"cos_delta": 0.2, "shift": 0.1},
            "land": {"cos_delta": -0.2, "shift": -0.1},
        },
    }
    assert png_size(edit_figs.text_probe_bars(probe, tmp_path / "tp.png")) == (900, 520)
    assert png_size(edit_figs.text_probe_bars(probe, tmp_path / "tp2.png", value="shift")) == (
        900,
        520,
    )
    # Fake decoder (section 8.1 step 5): an embedding becomes a flat image of its first coordinates.
    calls = []

    def decode(e, seed):
        calls.append(seed)
        v = np.clip(np.abs(e[0, :3]) * 80 + 20 * seed, 0, 255).astype(np.uint8)
        return [Image.fromarray(np.tile(v, (16, 16, 1)))]

    edit = Edit(
        "hsfm",
        np.ones((3, 4)),
        np.full((3, 4), 2.0),
        y=np.array([0, 1, 1]),
        rows=np.array([-1, -1, -1]),
    )
    p = decoded_edit_figure(edit, decode, tmp_path / "dec.png", seeds=(0, 1))
    assert png_size(p) == grids.grid_size(3, 5) and calls == [0, 0, 1, 1] * 3


def test_report_figures_with_hsfm_edits(tmp_path, digits_cache):
    runs = fake_records(tmp_path, digits_cache.path)
    tr = digits_cache.split("train")
    idx = np.array([0, 1, 2, 3, 10, 11, 12, 13])
    rng = np.random.default_rng(0)
    np.savez(
        runs / "hsfm" / "seed0" / "artifacts.npz",
        artifact_support_before=tr.Z[idx],  # runs' prefix
        artifact_support_after=tr.Z[idx] + rng.normal(scale=0.5, size=(8, 48)).astype(np.float32),
        artifact_support_y=tr.y[idx],
        artifact_support_rows=tr.rows[idx],
        coef=np.zeros((2, 48)),
    )
    out = tmp_path / "figs"
    paths = report_figures(runs, out, collect(runs))  # the cache path comes from the records
    names = {p.name for p in paths}
    assert {
        "group_accuracy.png",
        "scatter_train.png",
        "centroid_distance.png",
        "projections.png",
        "error_neighbours.png",
        "retrieval.png",
        "hsfm_retrieval.png",
    } <= names
    for p in paths:
        png_size(p)
    manifest = json.loads((out / "figures.json").read_text())
    skipped = {s["figure"]: s["reason"] for s in manifest["skipped"]}
    assert "no text embeddings" in skipped["hsfm_text_probe_*.png"]  # no CLIP text in this cache
    assert "text probe skipped" in skipped["text_probe_*.png"]


def test_report_figures_tolerate_missing_pieces(tmp_path):
    empty = tmp_path / "runs"
    empty.mkdir()
    assert report_figures(empty, tmp_path / "figs", collect(empty)) == []
    skipped = json.loads((tmp_path / "figs" / "figures.json").read_text())["skipped"]
    assert any("no run records" in s["reason"] for s in skipped)
    assert any("no cache given" in s["reason"] for s in skipped)


def test_analyze_command_writes_summary_and_figures(tmp_path, digits_cache, capsys):
    from embedkit.cli import main

    out = tmp_path / "an"
    assert (
        main(
            [
                "analyze",
                "--cache",
                str(digits_cache.path),
                "--out",
                str(out),
                "--cluster-k",
                "2-3",
                "--store",
            ]
        )
        == 0
    )
    s = json.loads((out / "summary.json").read_text())
    assert s["backbone"] == "pixels_rp48" and s["purity"]["index"]["kind"] == "flat"
    assert s["clusters"]["k_per_class"] and 0 <= s["clusters"]["agreement"]["ari"] <= 1
    assert "error_neighbours.png" in s["figures"] and "retrieval.png" in s["figures"]
    assert s["retrieval"]["other_attr_share_after"] >= s["retrieval"]["other_attr_share_before"]
    for name in s["figures"]:
        png_size(out / name)
    assert "10-NN purity" in capsys.readouterr().out
    stored = digits_cache.derived("analysis_pixels_rp48")
    tr = digits_cache.split("train")
    np.testing.assert_array_equal(stored["rows"], tr.rows)
    assert stored["centroids"].shape == (4, 48) and stored["inferred_a"].shape == (len(tr),)
    assert stored["spurious_direction"].shape == (48,) and stored["attrs"]["split"] == "train"


def test_analyze_command_bad_input_is_one_line(tmp_path, capsys):
    from embedkit.cli import main

    assert (
        main(["analyze", "--cache", str(tmp_path / "none.h5"), "--out", str(tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("embedkit analyze: error:") and "none.h5" in err[0]


def test_report_draws_a_given_analysis_without_recomputing(tmp_path, digits_cache, monkeypatch):
    """Plotting never recomputes: with an analysis given, the report only draws it."""
    from embedkit.analysis import summary
    from embedkit.pipelines import analyze

    runs = fake_records(tmp_path, digits_cache.path)
    res = analyze.analyze_cache(digits_cache, eval_split="test", george=False)

    def no_analysis(*a, **k):
        raise AssertionError("the report recomputed the analysis")

    monkeypatch.setattr(summary, "analyze_splits", no_analysis)
    monkeypatch.setattr(analyze, "analyze_splits", no_analysis)
    paths = report_figures(runs, tmp_path / "figs", collect(runs), analysis=res)
    assert {"group_accuracy.png", "centroid_distance.png", "projections.png"} <= {
        p.name for p in paths
    }


def test_viz_draws_plain_arrays_and_images(tmp_path):
    """viz draws what it is given: numpy arrays, PIL images and labels, with no cache, records or
    dataset behind them (the layering test keeps viz from importing those)."""
    rng = np.random.default_rng(0)
    names = ["a|x", "a|y", "b|x", "b|y"]
    XY, g = rng.normal(size=(200, 2)), rng.integers(-1, 4, size=200)
    p, info = embedding.scatter_2d(XY, g, names, tmp_path / "map.png", method="pca")
    assert png_size(p) == (800, 700) and info["n_points"] == 200
    D = np.abs(rng.normal(size=(4, 4)))
    assert png_size(embedding.centroid_heatmap(D, names, tmp_path / "heat.png")) == (700, 600)
    Z = rng.normal(size=(200, 8))
    p = embedding.projection_histograms({"v": Z @ np.ones(8)}, g, names, tmp_path / "h.png")
    assert png_size(p) == (600, 420)
    img = Image.fromarray(rng.integers(0, 255, size=(20, 20, 3), dtype=np.uint8))
    q = [(img, "q0"), (None, "q1")]
    nb = [[(img, "n0"), (None, "n1")], [(img, "n2"), (img, "n3")]]
    assert png_size(grids.neighbour_grid(q, nb, tmp_path / "nn.png")) == grids.grid_size(2, 3)
    assert png_size(grids.retrieval_grid(q, nb, nb, tmp_path / "r.png")) == grids.grid_size(2, 5)
    dec = [[(img, img)], [(None, img)]]
    p = edit_figs.decoded_edit_grid(q, dec, tmp_path / "d.png", name="e", seeds=(0,))
    assert png_size(p) == grids.grid_size(2, 3)
    recs = [
        {
            "method": m,
            "seed": s,
            "metrics": {"test": {"per_group": {n: {"acc": 0.5} for n in names}}},
        }
        for m in ("erm", "dfr")
        for s in (0, 1)
    ]
    assert png_size(accuracy.group_accuracy_bars(recs, tmp_path / "bars.png")) == (1000, 500)


def test_report_draws_a_saved_analysis_folder_as_computed(tmp_path, digits_cache, monkeypatch):
    """`embedkit analyze`'s folder (summary.json + analysis.npz) reads back as the analysis it
    wrote, and the report draws it without computing anything; another cache's is refused."""
    from embedkit.analysis import summary
    from embedkit.data.synthetic import planted_cache
    from embedkit.errors import EmbedkitError
    from embedkit.pipelines import analyze

    folder = tmp_path / "an"
    analyze.run_analysis(digits_cache.path, folder, george=False, log=lambda m: None)
    made = json.loads((folder / "figures.json").read_text())["figures"]
    fresh = analyze.analyze_cache(digits_cache, george=False)
    back = analyze.load_analysis(folder, digits_cache)
    np.testing.assert_allclose(back.distances, fresh.distances, atol=1e-6)
    for kind in ("spurious", "core"):
        np.testing.assert_allclose(back.directions[kind], fresh.directions[kind], atol=1e-6)
    np.testing.assert_array_equal(back.errors["neighbours"], fresh.errors["neighbours"])
    assert back.errors["queries"] == fresh.errors["queries"]
    for key in ("before", "after"):
        np.testing.assert_array_equal(back.retrieval[key], fresh.retrieval[key])
    e0, e1 = fresh.edits["remove_spurious"], back.edits["remove_spurious"]
    assert e1.name == e0.name and e1.source == e0.source
    np.testing.assert_array_equal(e1.rows, e0.rows)
    np.testing.assert_allclose(e1.after, e0.after, atol=1e-6)

    def no_analysis(*a, **k):
        raise AssertionError("the report recomputed the analysis")

    monkeypatch.setattr(summary, "analyze_splits", no_analysis)
    monkeypatch.setattr(analyze, "analyze_splits", no_analysis)
    runs = fake_records(tmp_path, digits_cache.path)
    paths = report_figures(runs, tmp_path / "figs", collect(runs), analysis=folder)
    assert set(made) <= {p.name for p in paths}
    other, _ = planted_cache(tmp_path / "p.h5", {"train": 50, "val": 10, "test": 10}, dim=4)
    with pytest.raises(EmbedkitError, match="does not hold"):
        analyze.load_analysis(folder, other)
    s = digits_cache.samples()  # same rows and backbone key, other features
    Z = np.random.default_rng(1).normal(size=(len(s.y), 48)).astype(np.float32)
    with pytest.raises(EmbedkitError, match="another cache"):
        analyze.load_analysis(folder, write_cache(tmp_path / "d2.h5", s, "pixels_rp48", Z))
    with pytest.raises(EmbedkitError, match="not an analysis folder"):
        analyze.load_analysis(tmp_path, digits_cache)
