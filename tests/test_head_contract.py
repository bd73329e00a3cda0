"""The head contract (issue 11, part 1): a conformance test over every registered head, fitted on a
real cache, plus the typed parameters, the monitor and the one-line errors.

For every head: `fit` takes no test split; the head keeps no test array; `selected_["split"]` names
the rows its selection read (`selection_rows_`), and the selected record was computed on exactly
those rows; the final head scores `selected_["score"]` on them and its test metrics equal the
monitor's at the selected (config, step) -- unless it is refit after selection (DFR), which it
says (`refit`), and then the refit's inputs are checked instead; a bad value of any declared
parameter fails in the constructor with one line naming the parameter.

Accuracies of the final head and of the record are compared to one row of the smallest group:
the trainer scores its K stacked heads with batched torch matmuls, the final head is one numpy
head, and the two may round a logit on a decision boundary differently (BLAS-dependent).
"""

import inspect
import json

import numpy as np
import pytest

from embedkit import heads, runs
from embedkit.schema import Split
from embedkit.cli import main
from embedkit.errors import EmbedkitError
from embedkit.heads.monitor import Monitor
from embedkit.heads.params import Param
from embedkit.metrics import evaluate_split
from embedkit.data.synthetic import planted_cache

SGD = dict(steps=60, eval_every=20, lr_grid=(0.01, 0.1), wd_grid=(1e-4,))
# Small budgets per head (by registered name, else by module); the contract does not depend on them.
FAST = {
    "erm": SGD,
    "erm_native": {},
    "balancing": SGD,
    "dfr": dict(n_refits=2),
    "groupdro": {**SGD, "eta_grid": (0.01,)},
    "jtt": {**SGD, "T_grid": (1,), "lambda_up_grid": (5.0,)},
    "afr": {
        **SGD,
        "gamma_grid": (4.0,),
        "lam_grid": (0.1,),
        "epochs": 20,
        "eval_every": 5,
        "lr_scale_grid": (1.0, 10.0),
    },
    "scer": dict(steps=40, eval_every=20, hidden=16, lr_grid=(0.01,)),
    "scer_ll": dict(steps=40, eval_every=20, lambda_sp=1.0, lambda_core=1.0, lr_grid=(0.01,)),
    "hsfm": dict(epochs=3, T=3, K_H=2, K_hard=16, n_s=8),
    "gerne": dict(steps=60, eval_every=20, beta=(0.0, 1.0), lr_grid=(0.1,), wd_grid=(1e-4,)),
    "gerne_expected": dict(steps=20, eval_every=10, beta=(1.0,), lr_grid=(0.1,), wd_grid=(1e-4,)),
    "ipg": dict(
        steps=60, eval_every=20, lr_grid=(0.1,), wd_grid=(1e-4,), eps=(0.05,), lam=(1.0, 10.0)
    ),
    "llr": SGD,
    "dpe": dict(num_stages=2, epochs=3),
    "selfllr": dict(
        steps=30,
        lr_grid=(0.01,),
        num_data_grid=(20, 100),
        stage1_steps=60,
        dropout_grid=(0.5,),
        early_fracs=(0.5,),
    ),
}
# Heads the real ResNet-20 caches cannot serve (no text-tower prompts; the stored head is the
# CIFAR-10 classifier, not a task head): they run on the planted cache with text and an ERM head.
SYNTHETIC = {"erm_native", "zeroshot", "clip_zs", "textproj", "orth_proj", "orth_cali", "roboshot"}


def fast_params(name: str) -> dict:
    module = heads._REGISTRY[name][0]
    return dict(FAST.get(name, FAST.get(module, {})))


@pytest.fixture(scope="module")
def real_splits(real_cache):
    # waterbirds_like: every head scores well above 0 there and most select before their last step,
    # so "the reported head is the selected one" is not trivially true.
    return runs.load_splits(real_cache("waterbirds_like"))


@pytest.fixture(scope="module")
def text_splits(tmp_path_factory):
    path = planted_cache(
        tmp_path_factory.mktemp("contract") / "planted.h5",
        {"train": 300, "val": 240, "test": 240},
        16,
        seed=0,
        erm_head=True,
        text=True,
    )[0]
    return runs.load_splits(path)


def group_min(split) -> int:
    c = split.group_counts()
    return int(c[c > 0].min())


def assert_acc_close(a: dict, b: dict, split):
    """Accuracies of two reports of (nearly) the same logits agree to one row of the smallest
    group."""
    tol = 1.0 / group_min(split) + 1e-12
    for key in ("worst_group_acc", "mean_acc", "group_balanced_acc"):
        if a.get(key) is not None or b.get(key) is not None:
            assert abs(a[key] - b[key]) <= tol, (key, a[key], b[key])


def held_arrays(obj, depth=0):
    """Every value reachable from a head's attributes (two levels of dicts, lists and tuples)."""
    items = (
        list(vars(obj).values())
        if depth == 0
        else (
            list(obj.values())
            if isinstance(obj, dict)
            else list(obj)
            if isinstance(obj, (list, tuple))
            else []
        )
    )
    for v in items:
        yield v
        if depth < 2 and isinstance(v, (dict, list, tuple)):
            yield from held_arrays(v, depth + 1)


@pytest.mark.parametrize("name", heads.names())
def test_head_conformance(name, real_splits, text_splits):
    cls, preset = heads._cls(name)
    # No fit accepts a test split.
    assert list(inspect.signature(cls.fit).parameters) == ["self", "train", "val", "monitor"]
    assert "test" not in inspect.signature(cls._fit).parameters

    cache, train, val, test = text_splits if name in SYNTHETIC else real_splits
    head = heads.create(name, seed=0, **fast_params(name))
    assert runs.unmet_needs(head, train, val, "R1") is None
    head.fit(train, val, Monitor({"test": test}))

    # The head holds no test array and no monitor after fitting.
    for v in held_arrays(head):
        assert not isinstance(v, Monitor)
        assert not (isinstance(v, Split) and v.name == "test")
        if isinstance(v, np.ndarray) and v.size:
            assert not np.shares_memory(v, test.Z), "a head attribute holds the test features"

    sel, hist = head.selected_, head.history_
    final_test = evaluate_split(head.decision_function(test.Z), test)
    rows = np.asarray(head.selection_rows_, np.int64)
    if sel["rule"] is None:  # fits nothing: one record, nothing read for selection
        assert sel["split"] is None and len(rows) == 0 and len(hist) == 1
        assert_acc_close(final_test, hist[0]["test"], test)
        return

    # selected_.split names the rows the selection read.
    pos = {int(r): i for i, r in enumerate(val.rows)}
    assert len(rows) and all(int(r) in pos for r in rows), "selection read rows outside val"
    sub = val.subset(np.array([pos[int(r)] for r in rows]))
    labelled = np.sort(val.rows[val.g >= 0])
    if np.array_equal(rows, np.sort(val.rows)):
        assert sel["split"] == "val"
    elif np.array_equal(rows, labelled):
        assert sel["split"] == "val[labelled]"
    else:
        assert sel["split"].startswith("val[") and sel["split"].endswith("]"), sel["split"]
    if sel.get("ensemble"):
        # An ensemble of per-stage selections (DPE): no single record; its own score on the rows.
        mine = evaluate_split(head.decision_function(sub.Z), sub)
        assert mine[sel["metric"]] == pytest.approx(sel["score"], abs=1e-12)
        assert all(r["val"]["n"] == len(sub) and r["test"]["n"] == len(test) for r in hist)
        return
    rec = next(r for r in hist if (r["config_id"], r["step"]) == (sel["config_id"], sel["step"]))
    assert rec["val"]["n"] == len(sub) and rec["val"][sel["metric"]] == sel["score"]
    assert rec["test"] is not None and rec["test"]["n"] == len(test)

    if not sel["refit"]:
        # The reported head is the selected head: its score on the selection rows and its test
        # metrics are the selected record's.
        mine = evaluate_split(head.decision_function(sub.Z), sub)
        assert abs(mine[sel["metric"]] - sel["score"]) <= 1.0 / group_min(sub) + 1e-12
        assert_acc_close(final_test, rec["test"], test)
    else:
        # Refit after selection (DFR): the refits used the selected C on the variant's own rows.
        assert (
            head.info_["C"] == sel["config"]["C"]
            and head.info_["n_refits"] == FAST["dfr"]["n_refits"]
        )
        source = val.rows if head.params["variant"] == "val" else train.rows
        refit_rows = head.artifacts_["refit_rows"]
        assert refit_rows.shape[0] == FAST["dfr"]["n_refits"] and np.isin(refit_rows, source).all()
        assert not np.isin(refit_rows, test.rows).any()
        assert np.allclose(head.artifacts_["coefs"].mean(axis=0), head.coef_std_)


@pytest.mark.parametrize("name", heads.names())
def test_bad_parameter_values_fail_in_the_constructor_naming_the_parameter(name):
    cls, _ = heads._cls(name)
    assert cls.PARAMS or name == "erm_native"
    assert heads.create(name).params == {**cls.default_params(), **heads._REGISTRY[name][2]}
    for pname, p in cls.PARAMS.items():
        if p.kind in ("str", "any"):  # text is legal there (e.g. SELF's backbone keys)
            continue
        with pytest.raises(EmbedkitError) as e:
            heads.create(name, **{pname: "abc"})
        msg = str(e.value)
        assert f"parameter {pname}=abc: expects " in msg and "\n" not in msg
    with pytest.raises(EmbedkitError, match="unknown parameter"):
        heads.create(name, no_such_parameter=1)
    if name == "ipg":
        with pytest.raises(
            EmbedkitError, match=r"parameter pairs=abc: expects nn, mean_shift or a \(Zp, Zq\)"
        ):
            heads.create(name, pairs="abc")


def test_param_parse_and_check():
    floats = Param("floats", (0.1,), "h", low=0, open_low=True)
    assert (
        floats.check("x", "g", "1e-3,1e-2") == (1e-3, 1e-2) and floats.check("x", "g", 0.5) == 0.5
    )
    with pytest.raises(
        EmbedkitError, match=r"^x: parameter g=0: expects comma-separated numbers > 0$"
    ):
        floats.check("x", "g", "0")
    # A choice spelled "none" is a legal choice, not a missing value.
    mode = Param("choice", "none", "h", choices=("none", "loss"))
    assert mode.check("x", "m", "none") == "none" and mode.check("x", "m", "LOSS") == "loss"
    nullable = Param("int", None, "h", low=1)
    assert nullable.check("x", "n", "none") is None and nullable.check("x", "n", "3") == 3
    with pytest.raises(EmbedkitError, match="expects an integer >= 1 or none"):
        nullable.check("x", "n", 2.5)
    flag = Param("bool", False, "h")
    assert flag.check("x", "b", "true") is True
    with pytest.raises(EmbedkitError):
        flag.check("x", "b", 1)  # 1 is not a bool here
    batch = Param("int", 128, "h", low=1, extra=("full",), nullable=True)
    assert batch.check("x", "b", "full") == "full" and batch.check("x", "b", float("128")) == 128
    assert Param("float", 0.01, "h", low=0).check("x", "eps", "inf") == float("inf")


def test_monitor_is_the_only_way_test_enters(real_splits):
    _, train, val, test = real_splits
    with pytest.raises(EmbedkitError, match="Monitor"):
        heads.create("erm", **SGD).fit(train, val, test)  # the old fit(train, val, test)
    quiet = heads.create("erm", seed=0, **SGD).fit(train, val)
    loud = heads.create("erm", seed=0, **SGD).fit(train, val, Monitor({"test": test}))
    assert all(r["test"] is None for r in quiet.history_) and all(r["test"] for r in loud.history_)
    # Watching test changes nothing the head does.
    assert [r["val"] for r in quiet.history_] == [r["val"] for r in loud.history_]
    assert np.array_equal(quiet.coef_, loud.coef_) and quiet.selected_ == loud.selected_


def test_one_class_validation_split_is_one_error_line(real_splits, tmp_path, capsys):
    _, train, val, test = real_splits
    one = val.subset(np.flatnonzero(val.y == 0))
    for name in ("dfr", "erm", "hsfm"):
        with pytest.raises(EmbedkitError, match="validation split has only class"):
            heads.create(name).fit(train, one)
    # The CLI: one line, exit 2, on a cache whose val split holds one class.
    from embedkit.cache import write_cache
    from embedkit.schema import Samples

    parts = [(train, 0), (one, 1), (test, 2)]
    samples = Samples(
        uid=[f"r{i:06d}" for i in range(sum(len(s) for s, _ in parts))],
        split=np.concatenate([np.full(len(s), code) for s, code in parts]),
        y=np.concatenate([s.y for s, _ in parts]),
        a=np.concatenate([s.a for s, _ in parts]),
        class_names=train.class_names,
        attr_names=train.attr_names,
        dataset="one_class_val",
    )
    path = tmp_path / "one.h5"
    write_cache(
        path, samples, "k", np.concatenate([s.Z for s, _ in parts]), provenance={"library": "test"}
    )
    capsys.readouterr()
    assert (
        main(["fit", "--cache", str(path), "--method", "dfr", "--out", str(tmp_path / "runs")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert "validation split has only class" in err and len(err.splitlines()) == 1


def test_cli_bad_param_is_one_line_and_heads_name_prints_the_table(tmp_path, capsys, text_splits):
    cache = text_splits[0].path
    assert (
        main(
            [
                "fit",
                "--cache",
                str(cache),
                "--method",
                "scer",
                "--param",
                "lambda_sp=abc",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert (
        err
        == "embedkit fit: error: scer: parameter lambda_sp=abc: expects comma-separated numbers >= 0 or none"
    )
    assert not any(tmp_path.iterdir())  # nothing was written
    assert (
        main(
            [
                "sweep",
                "--cache",
                str(cache),
                "--methods",
                "dfr",
                "--param",
                "dfr.C_grid=abc",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 2
    )
    assert "dfr: parameter C_grid=abc" in capsys.readouterr().err
    assert main(["heads", "dfr"]) == 0
    out = capsys.readouterr().out
    assert (
        "C_grid" in out
        and "comma-separated numbers > 0" in out
        and "accepts" in out.splitlines()[2]
    )
    assert main(["heads", "gerne", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["mix_grid"]["kind"] == "floats" and rows["device"]["default"] == "cpu"


def test_same_name_same_meaning_across_heads():
    """One spelling per idea: the device default is the same in every head, `C_grid` is DFR's L1
    strength only (GERNE's mixing factor is `mix_grid`), and the GroupDRO step size is `eta_grid`
    in both heads that use it (HSFM's `eta` is its outer Adam lr)."""
    for name in heads.names():
        cls, _ = heads._cls(name)
        if "device" in cls.PARAMS:
            p = cls.PARAMS["device"]
            assert p.default == "cpu" and set(p.choices) == {"cpu", "auto", "cuda"}, name
        assert "c_grid" not in cls.PARAMS and (
            "C_grid" not in cls.PARAMS or cls.__name__ == "DFRHead"
        )
    assert (
        "eta_grid" in heads._cls("groupdro")[0].PARAMS
        and "eta_grid" in heads._cls("scer")[0].PARAMS
    )
    assert "eta" not in heads._cls("scer")[0].PARAMS
