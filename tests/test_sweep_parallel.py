"""Sweeps beyond one process (issue 12): `--jobs 2` and `--shard 0/2` + `--shard 1/2` write the
same records, histories and arrays as a serial sweep with the same thread count; a `--param` for a
method that is not run is refused; the tables and the figures count the same runs."""

import json

import numpy as np
import pytest

from embedkit import runs
from embedkit.cli import main
from embedkit.pipelines.report import write_report
from embedkit.errors import EmbedkitError
from embedkit.viz import accuracy

METHODS = ["erm", "dfr", "rw_group", "zeroshot"]  # torch SGD, scikit-learn, a reweighting, a skip
SEEDS = [0, 1]
PARAMS = {"dfr": {"n_refits": 3}}
TIMINGS = {"fit_seconds", "created_at", "seconds"}  # wall-clock fields, at any depth


def untimed(x):
    if isinstance(x, dict):
        return {k: untimed(v) for k, v in x.items() if k not in TIMINGS}
    return [untimed(v) for v in x] if isinstance(x, list) else x


def run_files(root):
    """{run id: (record without timings, history text, arrays)} for every run under `root`."""
    out = {}
    for p in sorted(root.rglob("record.json")):
        rec = untimed(json.loads(p.read_text()))
        with np.load(p.parent / "artifacts.npz") as z:
            arrays = {k: z[k] for k in z.files}
        out[rec["run_id"]] = (rec, (p.parent / "history.jsonl").read_text(), arrays)
    for p in sorted(root.rglob("skipped.json")):
        rec = json.loads(p.read_text())
        out[rec["run_id"]] = (rec, None, {})
    return out


def assert_same_runs(a, b):
    assert sorted(a) == sorted(b)
    for rid in a:
        (ra, ha, xa), (rb, hb, xb) = a[rid], b[rid]
        assert ra == rb, rid
        assert ha == hb, rid
        assert sorted(xa) == sorted(xb), rid
        for k in xa:
            assert np.array_equal(xa[k], xb[k]), (rid, k)  # the same kernels: bit for bit


@pytest.fixture(scope="module")
def serial(real_cache, tmp_path_factory):
    cache = real_cache("colored_mnist")
    out = tmp_path_factory.mktemp("sweeps") / "serial"
    entries = runs.sweep(cache, METHODS, SEEDS, out, params=PARAMS, threads=1, log=lambda s: None)
    return cache, out, entries


def test_jobs_2_equals_serial(serial, tmp_path, capsys):
    cache, out, entries = serial
    assert [e.get("status", "ok") for e in entries] == ["ok"] * 6 + ["skipped"] * 2
    assert all(e["threads"] == 1 for e in entries if "metrics" in e)
    par = tmp_path / "jobs2"
    args = ["sweep", "--cache", str(cache), "--methods", ",".join(METHODS), "--seeds", "0,1"]
    args += ["--param", "dfr.n_refits=3", "--jobs", "2", "--threads", "1", "--out", str(par)]
    assert main(args) == 0
    assert_same_runs(run_files(out), run_files(par))
    assert (par / "results.md").read_text() != "" and "erm" in capsys.readouterr().out


def test_shards_together_equal_serial(serial, tmp_path):
    cache, out, _ = serial
    shared = tmp_path / "shards"  # one --out on a shared filesystem, as in a SLURM array
    parts = [
        runs.sweep(
            cache,
            METHODS,
            SEEDS,
            shared,
            params=PARAMS,
            threads=1,
            shard=f"{i}/2",
            log=lambda s: None,
        )
        for i in range(2)
    ]
    ids = [{e["run_id"] for e in p} for p in parts]
    assert ids[0] and ids[1] and not ids[0] & ids[1]  # disjoint slices that cover the plan
    assert not (shared / "results.md").exists()  # a shard leaves the table to `embedkit report`
    assert_same_runs(run_files(out), run_files(shared))
    assert main(["report", str(shared), "--out", str(tmp_path / "report")]) == 0
    tables = [runs.results_table(runs.collect(d)) for d in (out, shared)]
    assert [untimed_row(r) for r in tables[0]] == [untimed_row(r) for r in tables[1]]
    assert (tmp_path / "report" / "results.md").exists()


def untimed_row(row):
    return {k: v for k, v in row.items() if k != "fit_seconds_mean"}


def test_bad_shard_and_jobs_are_one_line(serial, tmp_path, capsys):
    cache = str(serial[0])
    for flag, value in (("--shard", "2/2"), ("--shard", "x"), ("--jobs", "0")):
        args = ["sweep", "--cache", cache, "--methods", "dfr", flag, value, "--out", str(tmp_path)]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and flag in err[0], err


def test_param_for_a_method_not_run_is_refused(serial, tmp_path, capsys):
    cache = str(serial[0])
    with pytest.raises(EmbedkitError, match="'jtt' is not being run"):
        runs.sweep(cache, ["dfr"], [0], tmp_path, params={"jtt": {"lambda_up": 5}})
    args = ["sweep", "--cache", cache, "--methods", "dfr,erm", "--param", "jtt.lambda_up=5"]
    assert main(args + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "jtt.lambda_up" in err[0] and "dfr, erm" in err[0]
    args = ["fit", "--cache", cache, "--method", "dfr", "--param", "erm.lr=0.1"]
    assert main(args + ["--out", str(tmp_path)]) == 2
    assert "'erm' is not being run" in capsys.readouterr().err
    assert not list(tmp_path.rglob("record.json"))  # refused before any fit


def test_tables_and_figures_count_the_same_runs(serial, tmp_path):
    """One loader: a run whose `done` marker is missing (interrupted while writing) is in neither
    the table nor the figure; every finished run is in both."""
    import shutil

    _, out, _ = serial
    copy = tmp_path / "runs"
    shutil.copytree(out, copy)
    (copy / "erm" / "seed1" / "done").unlink()
    recs = [e for e in runs.collect(copy) if "metrics" in e]
    table = {r["run"]: r["n_seeds"] for r in runs.results_table(runs.collect(copy)) if r["n_seeds"]}
    names, _, acc = accuracy.per_group_table(recs)
    figure = dict(zip(names, np.isfinite(acc).any(axis=1).sum(axis=1).tolist(), strict=True))
    assert table == figure and table["erm"] == 1
    rep = write_report(copy, tmp_path / "report")
    assert {r["run"]: r["n_seeds"] for r in rep["rows"] if r["n_seeds"]} == figure
