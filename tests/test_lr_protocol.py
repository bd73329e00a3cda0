"""The three-arm LR protocol (methods spec 11.3) end to end on a tiny Double-MNIST config: jobs,
divergence kept, per-job rows merged into one table and figure per arm, claims tested, and the
SLURM path (one job at a time, then --merge) giving the same tables."""

import json

import pytest

from embedkit.studies.lr import protocol as P
from embedkit.tables import STD_RULE
from tests.conftest import DATA, need_data


def _no_nan(c):
    raise AssertionError(f"non-standard JSON constant {c}")


# A tiny quick config (also used by tests/test_notebooks.py for notebook 04).
TINY = {
    "datasets": {
        "double_mnist": {
            "dataset": "double_mnist",
            "options": {"n_train": 300, "n_val": 60, "n_test": 200},
        }
    },
    "series": [
        {
            "arch": "mlp:2x32",
            "optimizer": "sgd",
            "momentum": 0.0,
            "lrs": [0.03, 0.3, 1e4],
            "comparator_lr": 0.03,
        }
    ],
    "train": {"steps": 20, "batch_size": 32, "checkpoint_steps": [10]},
    "comparators": {"l1": [1e-4]},
    "heads": {"lrs": [0.01, 0.1, 1.0], "steps": 20, "eval_every": 10, "hidden": 16},
    "n_attribution": 50,
    "n_eff_bcr": 100,
    "dfr_seeds": [],
    "sparsities": [0.5, 0.9],
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    need_data("mnist")
    out = tmp_path_factory.mktemp("protocol")
    config = P.with_overrides("quick", TINY)
    return config, out, P.run_protocol(config, out, root=DATA, log=None)


def test_quick_config_is_the_issue_budget():
    q = P.get_config("quick")
    assert q["datasets"]["double_mnist"]["options"]["n_train"] == 4000 and len(q["seeds"]) == 2
    assert len(q["series"][0]["lrs"]) == 4 and set(q["series"][0]["lrs"]) <= set(P.SGD_GRID)
    full = P.get_config("full")
    assert {s["optimizer"] for s in full["series"]} == {"sgd", "adam"}
    assert {s["arch"] for s in full["series"]} == {"mlp:5x2000", "small_cnn", "resnet18"}
    assert all(set(s["lrs"]) in (set(P.SGD_GRID), set(P.ADAM_GRID)) for s in full["series"])
    with pytest.raises(Exception, match="override 'bogus'"):
        P.with_overrides("quick", {"bogus": 1})


def test_jobs_tables_and_claims(tiny):
    config, out, res = tiny
    jobs = P.jobs(config)
    assert [j["arm"] for j in jobs] == ["B"] * 6 + ["C"] * 2 and len({j["name"] for j in jobs}) == 8
    assert not res["missing"] and len(res["rows"]) == 8
    diverged = [r for r in res["rows"] if r["status"] == "diverged"]
    assert sorted(r["lr"] for r in diverged) == [1e4, 1e4]  # recorded, never dropped
    ok = [r for r in res["rows"] if r["status"] == "ok"]
    for r in ok:
        for key in (
            "erm_wga",
            "bestval_wga",
            "erm_acc_bc",
            "erm_bbc",
            "eff_bcr",
            "net_comp_0.1",
            "prune_max_sparsity",
            "act_sparsity",
            "csep",
            "bsep",
            "core_util",
            "erm_spur_align",
        ):
            assert 0.0 <= r[key] <= 1.0 or key == "csep", (key, r[key])
        assert r["bestval_step"] in (10, 20)
    b = res["tables"]["B"]["double_mnist / mlp2x32-sgd-m0"]
    assert [line["lr"] for line in b] == [0.03, 0.3, 1e4] and b[2]["diverged"] == 2
    c = res["tables"]["C"]["double_mnist / mlp2x32-sgd-m0"]
    assert [line["config"] for line in c] == ["lr=0.03 (no comparator)", "l1=0.0001"]
    assert set(res["tables"]["A"]) == {
        "double_mnist / linear-m0.9-wd0 heads",
        "double_mnist / mlp-m0.9-wd0 heads",
    }
    for arm in "ABC":
        assert (out / f"arm{arm}.png").is_file() and (out / f"arm{arm}.csv").is_file()
    hyp = res["hypotheses"]["B double_mnist / mlp2x32-sgd-m0"]
    primary = {r["claim"] for r in hyp if r["primary"]}
    assert primary == {
        "robustness",
        "compressibility",
        "core_features",
        "class_separation",
        "activation_sparsity",
        "mechanism",
    }
    assert all("vs_comparators" in r for r in hyp)
    # one finished LR only: no trend can be claimed
    assert all(r["trend"]["verdict"] == "inconclusive" for r in hyp)
    md = (out / "lr_protocol.md").read_text()
    assert (
        "net_comp_0.1" in md
        and "WGA@90%" in md
        and "core util (attr)" in md
        and "| 10000 | 2 | 2 |" in md
    )
    assert md.count(STD_RULE) == 4  # every metric table (A: 2, B, C) names the std rule
    for j in jobs:  # rows and the report are standard JSON (NaN -> null, through jsonsafe)
        json.loads((out / "runs" / j["name"] / "row.json").read_text(), parse_constant=_no_nan)
    json.loads((out / "lr_protocol.json").read_text(), parse_constant=_no_nan)
    # the checkpoint records what the backbone saw
    import torch

    ck = torch.load(out / "runs" / jobs[0]["name"] / "model.pt", weights_only=True)
    assert ck["trained_on"]["split"] == "train" and len(ck["trained_on"]["rows"]) == 300


def test_slurm_path_one_job_then_merge(tiny, tmp_path):
    config, out, res = tiny
    for k in (0, 1):  # two array tasks
        P.run_protocol(config, tmp_path, job=k, root=DATA, log=None)
    part = P.run_protocol(config, tmp_path, merge_only=True, root=DATA, log=None)
    assert len(part["rows"]) == 2 and len(part["missing"]) == 6 and "missing:" in part["report"]
    assert (
        json.loads((tmp_path / "runs" / P.jobs(config)[0]["name"] / "row.json").read_text())[
            "erm_wga"
        ]
        == res["rows"][0]["erm_wga"]
    )  # same seed, same run
    with pytest.raises(Exception, match="--job 99"):
        P.run_protocol(config, tmp_path, job=99, root=DATA, log=None)


def test_cli_lists_jobs_and_refuses_a_bad_job(tmp_path, capsys):
    from embedkit.cli import main

    assert main(["lr-study", "--quick", "--list-jobs", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 24 and lines[0] == "0\tB_double_mnist_mlp5x256-sgd-m0_lr0.01_s0"
    assert main(["lr-study", "--protocol", "quick", "--job", "24", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--job 24: this protocol has jobs 0..23" in err[0]
