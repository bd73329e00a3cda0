"""Run records, sweeps, the results table, the report and the fit/sweep/report/heads commands."""

import json

import numpy as np
import pytest

from embedkit import heads, metrics, runs
from embedkit.cli import main
from embedkit.pipelines.report import write_report
from embedkit.errors import SelectionLeakError
from embedkit.heads.base import Head
from embedkit.selection import label_budget_mask, select
from embedkit.data.synthetic import planted_cache

SIZES = {"train": 300, "val": 240, "test": 240}


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs_cache")
    return planted_cache(d / "planted.h5", SIZES, 16, seed=0)[0]


@pytest.fixture(scope="module")
def text_cache_path(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs_text_cache")
    return planted_cache(d / "planted_text.h5", SIZES, 16, seed=0, text=True)[0]


def test_record_schema_and_files(cache_path, tmp_path):
    rec = runs.fit_record(cache_path, "dfr", {"n_refits": 5}, 1, tmp_path)
    d = runs.run_dir(tmp_path, "dfr", {"n_refits": 5}, 1)
    assert d.name == "seed1" and d.parent.name == f"dfr-{runs.params_tag({'n_refits': 5})}"
    for f in ("record.json", "history.jsonl", "artifacts.npz", "done"):
        assert (d / f).exists()
    assert json.loads((d / "record.json").read_text()) == rec
    # DESIGN section 3
    assert rec["method"] == "dfr" and rec["seed"] == 1 and rec["params"]["n_refits"] == 5
    assert (
        set(rec["cache"]) >= {"path", "backbone_key", "fingerprint"} and rec["cache"]["fingerprint"]
    )
    assert rec["selection"]["rule"] == "val_wga" and rec["selection"]["split"] == "val[select]"
    # DFR refits after selection (20, here 5, averaged refits) and says so; the rows read are val's
    # tuning half.
    assert rec["selection"]["refit"] is True and rec["selection"]["rows"]["n"] == SIZES["val"] // 2
    assert rec["selection"]["config"]["C"] in heads.create("dfr").params["C_grid"]
    assert rec["fit_seconds"] > 0
    test = rec["metrics"]["test"]
    for key in (
        "worst_group_acc",
        "mean_acc",
        "weighted_mean_acc",
        "group_balanced_acc",
        "per_group",
    ):
        assert test[key] is not None
    # metrics spec section 6
    assert set(rec["seeds"]) == {"init", "sampler", "subsample", "pairs", "infer"}
    assert (
        rec["label_budget"] == 1.0
        and rec["regime"] == "R1"
        and rec["val_used_for_training"] is True
    )
    assert rec["mean_kinds"] == {
        "plain": "mean_acc",
        "trainw": "weighted_mean_acc",
        "gba": "group_balanced_acc",
    }
    assert set(rec["flags"]) >= {
        "oracle",
        "selected_on_fit_data",
        "partial_groups",
        "reconstructed",
    }
    art = np.load(d / "artifacts.npz")
    for role in ("fit", "tune", "select", "report"):
        assert rec["rows"][role]["sha256"] == runs.rows_sha(art[f"rows_{role}"])
        assert rec["rows"][role]["n"] == len(art[f"rows_{role}"])
    assert art["artifact_coefs"].shape[0] == 5 and art["coef"].shape == (2, 16)
    hist = runs.load_history(d)
    assert len(hist) == rec["history"]["n"] == 7
    # selection is re-applicable post hoc from the stored history
    assert select(hist, "val_wga", tie="larger_C")["config"] == rec["selection"]["config"]


def test_test_metrics_computed_after_fit_without_test_history(cache_path, tmp_path, monkeypatch):
    seen = {}
    real = heads.create

    def spy(name, seed=0, **params):
        h = real(name, seed=seed, **params)
        fit = h.fit

        def fit_spy(train, val, monitor=None):
            seen["monitor"] = monitor
            return fit(train, val, monitor)

        h.fit = fit_spy
        return h

    monkeypatch.setattr(heads, "create", spy)
    rec = runs.fit_record(cache_path, "dfr", {"n_refits": 2}, 0, tmp_path, test_history=False)
    assert not seen["monitor"] and rec["metrics"]["test"]["worst_group_acc"] is not None
    assert all(
        h["test"] is None
        for h in runs.load_history(runs.run_dir(tmp_path, "dfr", {"n_refits": 2}, 0))
    )


class LeakyHead(Head):
    """Fits on val and selects on val (the HSFM-default / SubpopBench-DFR pattern)."""

    name = "leaky"

    def _fit(self, train, val, monitor):
        self.coef_, self.intercept_ = np.zeros((2, train.Z.shape[1])), np.zeros(2)
        rec = {
            "config_id": 0,
            "config": {},
            "step": 0,
            "val": metrics.evaluate_split(self.decision_function(val.Z), val),
            "test": None,
        }
        self.history_ = [rec]
        self.selected_ = select(self.history_, "val_wga")
        self.rows_ = {"fit": val.rows, "tune": np.zeros(0, np.int64), "select": val.rows}


def test_guard_refuses_selection_on_fitted_rows_then_tags(cache_path, tmp_path, monkeypatch):
    monkeypatch.setattr(heads, "create", lambda name, seed=0, **p: LeakyHead(seed=seed))
    with pytest.raises(SelectionLeakError, match="fitted on"):
        runs.fit_record(cache_path, "leaky", {}, 0, tmp_path)
    rec = runs.fit_record(cache_path, "leaky", {}, 0, tmp_path, allow_overlap=True)
    assert rec["flags"]["selected_on_fit_data"] is True
    rows = runs.results_table(runs.collect(tmp_path))
    assert rows[0]["status"] == "flagged" and "selected_on_fit_data" in rows[0]["notes"]
    assert runs.results_table(runs.collect(tmp_path), include_flagged=True)[0]["n_seeds"] == 1


def test_label_budget_same_rows_and_regime(cache_path, tmp_path):
    rec = runs.fit_record(cache_path, "dfr", {"n_refits": 2}, 3, tmp_path, label_budget=0.5)
    art = np.load(runs.run_dir(tmp_path, "dfr", {"n_refits": 2}, 3, 0.5) / "artifacts.npz")
    val_rows = np.arange(SIZES["train"], SIZES["train"] + SIZES["val"])
    visible = set(val_rows[label_budget_mask(SIZES["val"], 0.5, 3)])
    used = set(art["artifact_refit_rows"].ravel()) | set(art["artifact_tune_fit_rows"])
    assert used <= visible and rec["label_budget"] == 0.5 and rec["regime"] == "R1"
    assert rec["run_id"].startswith("dfr-") and "budget0.5" in rec["run_id"]
    with pytest.raises(runs.UnmetNeeds, match="R3"):
        runs.fit_record(cache_path, "dfr", {}, 0, tmp_path, label_budget=0.0)


def test_sweep_skips_finished_and_records_unmet_needs(cache_path, tmp_path):
    log = []
    entries = runs.sweep(
        cache_path,
        ["dfr", "zeroshot", "orth_proj"],
        [0, 1],
        tmp_path,
        params={"dfr": {"n_refits": 3}},
        log=log.append,
    )
    # every planned run ends in its own record or skip entry (so shards and workers agree)
    assert [e.get("status", "ok") for e in entries] == ["ok", "ok"] + ["skipped"] * 4
    table = (tmp_path / "results.md").read_text()
    assert "needs text-tower prompt embeddings" in table and "skipped" in table
    d = runs.run_dir(tmp_path, "dfr", {"n_refits": 3}, 0)
    stamp = (d / "record.json").stat().st_mtime_ns
    log.clear()
    runs.sweep(
        cache_path, ["dfr"], [0, 1], tmp_path, params={"dfr": {"n_refits": 3}}, log=log.append
    )
    assert (
        all("done before" in line for line in log)
        and (d / "record.json").stat().st_mtime_ns == stamp
    )
    rows = {r["method"]: r for r in runs.results_table(runs.collect(tmp_path))}
    recs = [runs.load_record(runs.run_dir(tmp_path, "dfr", {"n_refits": 3}, s)) for s in (0, 1)]
    s = metrics.seed_summary([r["metrics"]["test"]["worst_group_acc"] for r in recs])
    assert rows["dfr"]["test_wga_mean"] == pytest.approx(s["mean"]) and rows["dfr"][
        "test_wga_std"
    ] == pytest.approx(s["std"])
    assert (
        rows["dfr"]["rule"] == "val_wga"
        and rows["dfr"]["split"] == "val[select]"
        and rows["dfr"]["n_seeds"] == 2
    )


def test_sweep_records_missing_head_module(cache_path, tmp_path, monkeypatch):
    monkeypatch.setattr(
        heads,
        "create",
        lambda name, seed=0, **p: (_ for _ in ()).throw(
            ModuleNotFoundError("No module named 'embedkit.heads.nothing'")
        ),
    )
    entries = runs.sweep(cache_path, ["nothing"], [0], tmp_path, log=lambda s: None)
    assert entries[0]["status"] == "unavailable" and "nothing" in entries[0]["reason"]


def test_report_tables_and_bar_chart(text_cache_path, tmp_path):
    runs.sweep(
        text_cache_path,
        ["dfr", "zeroshot", "orth_proj"],
        [0, 1],
        tmp_path / "runs",
        params={"dfr": {"n_refits": 2}},
        log=lambda s: None,
    )
    rep = write_report(tmp_path / "runs", tmp_path / "report")
    png = tmp_path / "report" / "group_accuracy.png"
    assert png.exists() and png.stat().st_size > 5000
    from PIL import Image

    w, h = Image.open(png).size
    assert w >= 600 and h >= 300
    md = (tmp_path / "report" / "results.md").read_text()
    assert "mean (plain)" in md and "mean (trainw)" in md and "ddof = 1" in md
    assert "none (no selection)" in md  # zero-shot selects nothing
    per_seed = (tmp_path / "report" / "results_per_seed.csv").read_text().splitlines()
    assert len(per_seed) == 1 + 6 and "config" in per_seed[0]
    assert {r["method"] for r in rep["rows"]} == {"dfr", "zeroshot", "orth_proj"}


def test_cli_fit_sweep_report_heads(cache_path, tmp_path, capsys):
    out = str(tmp_path / "runs")
    assert (
        main(
            [
                "fit",
                "--cache",
                str(cache_path),
                "--method",
                "dfr",
                "--param",
                "n_refits=2",
                "--seeds",
                "0,1",
                "--out",
                out,
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert text.count("dfr seed") == 2 and "by val_wga on val[select]" in text
    assert (
        main(
            [
                "fit",
                "--cache",
                str(cache_path),
                "--method",
                "dfr",
                "--param",
                "n_refits=2",
                "--out",
                out,
            ]
        )
        == 0
    )
    assert "done before" in capsys.readouterr().out
    assert (
        main(
            [
                "sweep",
                "--cache",
                str(cache_path),
                "--methods",
                "dfr_train,zeroshot",
                "--seeds",
                "0",
                "--param",
                "dfr_train.n_refits=2",
                "--out",
                out,
            ]
        )
        == 0
    )
    assert "skipped" in capsys.readouterr().out
    assert main(["report", out, "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "group_accuracy.png").exists()
    capsys.readouterr()
    assert main(["heads"]) == 0
    assert "dfr_train" in capsys.readouterr().out


def test_cli_bad_input_one_line(cache_path, tmp_path, capsys):
    assert (
        main(
            [
                "fit",
                "--cache",
                str(cache_path),
                "--method",
                "dfr",
                "--param",
                "oops",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("embedkit fit: error: --param 'oops'")
    assert (
        main(
            [
                "fit",
                "--cache",
                str(cache_path),
                "--method",
                "dfr",
                "--param",
                "bogus=1",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "unknown parameter" in capsys.readouterr().err
    assert (
        main(["sweep", "--cache", str(cache_path), "--param", "n_refits=2", "--out", str(tmp_path)])
        == 2
    )
    assert "METHOD.KEY=VALUE" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2


def test_regime_needs_are_minimal_labels(cache_path):
    """A method for R2 (attributes on val only) also runs when train attributes are visible (R1);
    an R1 method does not run when only val attributes are visible."""
    _, train, val, _ = runs.load_splits(cache_path)
    hidden_train = train.hide_attrs(np.zeros(len(train), bool))

    class R2Only(Head):
        regimes = ("R2",)

    class R1Only(Head):
        regimes = ("R1",)

    assert runs.unmet_needs(R2Only(), train, val, "R1") is None
    assert "R2" in runs.unmet_needs(R2Only(), train, val, "R3")
    assert "R1" in runs.unmet_needs(R1Only(), hidden_train, val, "R2")


def test_runs_folder_refuses_another_caches_runs(cache_path, tmp_path):
    other = planted_cache(tmp_path / "other.h5", SIZES, 16, seed=5)[0]
    runs.sweep(
        cache_path,
        ["dfr"],
        [0],
        tmp_path / "r",
        params={"dfr": {"n_refits": 2}},
        log=lambda s: None,
    )
    from embedkit.errors import EmbedkitError

    with pytest.raises(EmbedkitError, match="another cache"):
        runs.sweep(
            other, ["dfr"], [0], tmp_path / "r", params={"dfr": {"n_refits": 2}}, log=lambda s: None
        )
    rec = runs.fit_record(cache_path, "dfr", {"n_refits": 2}, 0, tmp_path / "r", val_reserved=0.2)
    assert (
        rec["run_id"].endswith("-reserved0.2/seed0") and rec["metrics"]["val_reserved"]["n"] == 48
    )
    art = np.load(
        runs.run_dir(tmp_path / "r", "dfr", {"n_refits": 2}, 0, 1.0, 0.2) / "artifacts.npz"
    )
    assert (
        len(art["rows_reserved"]) == 48
        and len(np.intersect1d(art["rows_fit"], art["rows_reserved"])) == 0
    )
