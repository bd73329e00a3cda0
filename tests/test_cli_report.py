"""`embedkit report` on a folder without finished run records: one line on stderr, exit 2 (issue
11)."""

from embedkit.cli import main


def test_report_on_a_folder_without_records_is_one_line_and_exit_2(tmp_path, capsys):
    runs = tmp_path / "runs"
    (runs / "dfr" / "seed0").mkdir(parents=True)
    (runs / "dfr" / "seed0" / "record.json").write_text("{}")  # unfinished: no `done` marker
    assert main(["report", str(runs), "--out", str(tmp_path / "rep")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert str(runs) in err and "no run records" in err
    assert not (tmp_path / "rep" / "results.md").exists()
    assert main(["report", str(tmp_path / "absent"), "--out", str(tmp_path / "rep")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_report_draws_the_analysis_folder_given_and_refuses_a_misfit(tmp_path, capsys):
    """`embedkit report --analysis DIR` draws `embedkit analyze`'s folder for the records' cache;
    an analysis of another cache is one line on stderr and exit 2."""
    import json

    from embedkit.data.synthetic import planted_cache

    sizes = {"train": 300, "val": 100, "test": 100}
    cache = planted_cache(tmp_path / "c.h5", sizes, 8, seed=0)[0]
    other = planted_cache(tmp_path / "o.h5", sizes, 8, seed=1)[0]
    runs, an, an_other = tmp_path / "runs", tmp_path / "an", tmp_path / "an_other"
    sweep = ["sweep", "--cache", str(cache), "--methods", "erm", "--seeds", "0"]
    assert main([*sweep, "--out", str(runs)]) == 0
    for c, out in ((cache, an), (other, an_other)):
        args = ["analyze", "--cache", str(c), "--out", str(out), "--no-clusters", "--no-figures"]
        assert main(args) == 0
    capsys.readouterr()
    assert main(["report", str(runs), "--out", str(tmp_path / "rep"), "--analysis", str(an)]) == 0
    made = json.loads((tmp_path / "rep" / "figures.json").read_text())["figures"]
    assert {"group_accuracy.png", "centroid_distance.png", "projections.png"} <= set(made)
    capsys.readouterr()
    bad = ["report", str(runs), "--out", str(tmp_path / "rep2"), "--analysis", str(an_other)]
    assert main(bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another cache" in err[0] and str(an_other) in err[0]
    assert not (tmp_path / "rep2").exists()  # refused before any table was written


def _real_runs(tmp_path, real_cache):
    """A one-run ERM sweep on a copy of the real colored_mnist cache (real MNIST images)."""
    import shutil

    cache = tmp_path / "cm.h5"
    shutil.copy(real_cache("colored_mnist"), cache)
    runs = tmp_path / "runs"
    sweep = ["sweep", "--cache", str(cache), "--methods", "erm", "--seeds", "0"]
    assert main([*sweep, "--out", str(runs)]) == 0
    return cache, runs


def test_report_root_draws_thumbnails_and_a_bad_root_is_a_note_naming_it(
    tmp_path, capsys, real_cache
):
    """`report --root` is analyze's flag: the images there feed the thumbnail grids; a folder
    without the dataset skips those grids with a note naming it (as `analyze --root` does)."""
    import json

    from tests.conftest import DATA

    cache, runs = _real_runs(tmp_path, real_cache)
    rep = tmp_path / "rep"
    assert main(["report", str(runs), "--out", str(rep), "--root", str(DATA)]) == 0
    made = json.loads((rep / "figures.json").read_text())["figures"]
    assert "error_neighbours.png" in made
    bad, rep2 = tmp_path / "nowhere", tmp_path / "rep2"
    assert main(["report", str(runs), "--out", str(rep2), "--root", str(bad)]) == 0
    man = json.loads((rep2 / "figures.json").read_text())
    assert "error_neighbours.png" not in man["figures"]
    notes = [s["reason"] for s in man["skipped"] if s["figure"] == "error_neighbours.png"]
    assert notes and str(bad) in notes[0]
    capsys.readouterr()
    missing = ["report", str(runs), "--out", str(tmp_path / "rep3")]
    assert main([*missing, "--cache", str(tmp_path / "absent.h5")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "absent.h5" in err[0] and "--cache" in err[0]


def test_report_draws_the_saved_2d_map_and_recomputes_an_old_folders(tmp_path, monkeypatch):
    """`analyze` saves the 2-D map it drew; `report --analysis` draws those coordinates without
    calling map_2d. A folder from before maps were kept still draws (recomputed, and said so)."""
    import json

    import numpy as np

    from embedkit.data.synthetic import planted_cache
    from embedkit.pipelines import figures
    from embedkit.viz import embedding

    sizes = {"train": 300, "val": 100, "test": 100}
    cache = planted_cache(tmp_path / "c.h5", sizes, 8, seed=0)[0]
    runs, an = tmp_path / "runs", tmp_path / "an"
    sweep = ["sweep", "--cache", str(cache), "--methods", "erm", "--seeds", "0"]
    assert main([*sweep, "--out", str(runs)]) == 0
    assert main(["analyze", "--cache", str(cache), "--out", str(an), "--no-clusters"]) == 0
    with np.load(an / "analysis.npz") as z:
        saved_xy, saved_index = z["map.xy"], z["map.index"]
    assert json.loads((an / "summary.json").read_text())["map_2d"]["method"] == "pca"
    real_map, real_scatter, drawn = figures.map_2d, embedding.scatter_2d, []

    def forbidden(*a, **k):
        raise AssertionError("map_2d called for a saved analysis")

    def scatter(XY, g, *a, **k):
        drawn.append((np.array(XY), np.array(g)))
        return real_scatter(XY, g, *a, **k)

    monkeypatch.setattr(figures, "map_2d", forbidden)
    monkeypatch.setattr(embedding, "scatter_2d", scatter)
    rep = tmp_path / "rep"
    assert main(["report", str(runs), "--out", str(rep), "--analysis", str(an)]) == 0
    man = json.loads((rep / "figures.json").read_text())
    assert "scatter_train.png" in man["figures"] and (rep / "scatter_train.png").exists()
    assert man["map_2d"]["origin"] == "saved"
    np.testing.assert_array_equal(drawn[-1][0], saved_xy)
    assert len(drawn[-1][1]) == len(saved_index)
    # the old format: no map in analysis.npz nor in summary.json
    with np.load(an / "analysis.npz") as z:
        old = {k: z[k] for k in z.files if not k.startswith("map.")}
    np.savez(an / "analysis.npz", **old)
    s = json.loads((an / "summary.json").read_text())
    s.pop("map_2d")
    (an / "summary.json").write_text(json.dumps(s))
    monkeypatch.setattr(figures, "map_2d", real_map)
    rep2 = tmp_path / "rep2"
    assert main(["report", str(runs), "--out", str(rep2), "--analysis", str(an)]) == 0
    man = json.loads((rep2 / "figures.json").read_text())
    assert "scatter_train.png" in man["figures"]
    assert man["map_2d"]["origin"].startswith("recomputed")
    np.testing.assert_allclose(np.abs(drawn[-1][0]), np.abs(saved_xy), rtol=1e-4, atol=1e-4)
