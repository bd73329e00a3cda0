"""Large-learning-rate study (methods spec section 11): the 11.2 metrics against hand-computed
values (the spec's faithfulness tests), and a tiny study end to end."""

import json
import math

import numpy as np
import pytest

from embedkit.errors import EmbedkitError
from embedkit.studies.lr import metrics as L
from embedkit.studies.lr import pipeline, pruning
from embedkit.tables import STD_RULE

# -- compressibility ---------------------------------------------------------------------------


def test_comp_is_one_for_a_one_sparse_vector():
    w = np.zeros(20)
    w[7] = -3.0
    for kappa in (0.05, 0.1, 0.2, 1.0):  # every kappa >= 1/d keeps the one entry
        assert L.compressibility(w, kappa) == pytest.approx(1.0)


@pytest.mark.parametrize("d,kappa", [(10, 0.1), (10, 0.2), (20, 0.05), (40, 0.1)])
def test_comp_of_a_constant_vector(d, kappa):
    # keeping kappa*d of d equal entries leaves sqrt((1 - kappa) d) c of the norm sqrt(d) c
    assert L.compressibility(np.full(d, 0.7), kappa) == pytest.approx(1 - math.sqrt(1 - kappa))


def test_comp_by_hand_and_kept_count():
    # keep |-4| of [3, -4, 0, 0]: 1 - ||(3, 0, 0)|| / ||(3, -4)|| = 1 - 3/5
    assert L.compressibility([3.0, -4.0, 0.0, 0.0], 0.25) == pytest.approx(0.4)
    # advcomp's rule d - floor((1 - kappa) d): 5 entries, kappa 0.2 -> keep 1; kappa 0.3 -> keep 2
    assert L.n_kept(0.2, 5) == 1 and L.n_kept(0.3, 5) == 2
    rows = L.compressibility(np.array([[3.0, -4.0], [1.0, 1.0]]), 0.5)
    assert rows == pytest.approx([0.4, 1 - 1 / math.sqrt(2)])
    assert np.isnan(L.compressibility(np.zeros(4), 0.5))
    with pytest.raises(EmbedkitError):
        L.compressibility([1.0, 2.0], 0.0)


def test_network_comp_concatenates_matrices_only():
    W = np.array([[3.0, -4.0]])
    bias = np.array([100.0])  # ndim 1: excluded, or the answer would change
    assert L.network_compressibility([W, bias], 0.5) == pytest.approx(0.4)
    kernel = np.zeros((2, 1, 2, 2))
    kernel[0, 0] = [[3, 0], [0, -4]]
    kernel[1, 0] = [[1, 1], [0, 0]]
    # layer level: one row per output channel, then the mean
    assert L.layer_compressibility(kernel, 0.25) == pytest.approx(
        (0.4 + (1 - 1 / math.sqrt(2))) / 2
    )


def test_pq_index():
    assert L.pq_index([0.0, 0.0, 5.0, 0.0]) == pytest.approx(1 - 4**-0.5)
    assert L.pq_index(np.full(9, 2.0)) == pytest.approx(0.0)
    assert L.pq_index(np.array([[1.0, 0.0], [1.0, 1.0]])) == pytest.approx([1 - 2**-0.5, 0.0])


# -- activations -------------------------------------------------------------------------------


def test_activation_sparsity_on_a_hand_built_relu_input():
    pre = np.array([[-1.0, 2.0, 0.5], [0.0, -3.0, -0.1]])
    assert L.activation_sparsity(np.maximum(pre, 0)) == pytest.approx(4 / 6)
    # per-sample comp: row 1 keeps 1 of 3 (|2| of (0, 2, .5)); row 2 is all zero and is skipped
    assert L.activation_compressibility(np.maximum(pre, 0), 0.2) == pytest.approx(
        1 - 0.5 / math.sqrt(4.25)
    )


def test_class_separation_by_hand():
    Z = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    y = np.array([0, 0, 1])
    # d_w = mean(0.5, 0); d_b = mean over (0,0), (0,1), (1,0), (1,1) = mean(0.5, 0.5, 0.5, 0)
    out = L.class_separation(Z, y)
    assert out["d_w"] == pytest.approx(0.25) and out["d_b"] == pytest.approx(0.375)
    assert out["sep"] == pytest.approx(1 / 3)
    # |Z| is used: a sign flip changes nothing
    assert L.class_separation(-Z, y)["sep"] == pytest.approx(1 / 3)


def test_csep_is_one_for_collapsed_classes_and_near_zero_for_random_labels():
    rng = np.random.default_rng(0)
    dirs = np.eye(3, 8)
    y = rng.integers(0, 3, 300)
    collapsed = dirs[y] * rng.uniform(0.5, 2.0, (300, 1))
    assert L.class_separation(collapsed, y, 3)["sep"] == pytest.approx(1.0)
    Z = np.maximum(rng.normal(size=(3000, 16)), 0) + 1e-3
    assert abs(L.class_separation(Z, rng.integers(0, 3, 3000), 3)["sep"]) < 0.01
    Z[:5] = 0  # rows without a direction are left out and counted
    assert L.class_separation(Z, rng.integers(0, 3, 3000), 3)["n_zero_rows"] == 5


def test_selectivity_by_hand():
    Z = np.array([[3.0, 1.0], [1.0, 1.0], [1.0, 1.0]])  # neuron 0 prefers class 0; neuron 1 none
    assert L.selectivity(Z, [0, 1, 2], 3) == pytest.approx((3 - 1) / (3 + 1), rel=1e-5)


# -- bias-aware accuracies -----------------------------------------------------------------------


def test_bbc_on_a_hand_made_confusion_table():
    y = [0, 0, 1, 1, 2, 2]
    b = [0, 1, 1, 0, 0, 2]
    pred = [0, 1, 1, 2, 0, 1]
    out = L.bias_accuracies(y, pred, b)
    # aligned rows 0, 2, 5 -> 2 of 3 right; conflicting rows 1, 3, 4 all wrong, 1 and 4 predict b
    assert out == pytest.approx({"acc_ba": 2 / 3, "acc_bc": 0.0, "bbc": 2 / 3})


def test_eff_bcr_and_confidence():
    logits = np.array([[0.0, 0.0], [0.0, math.log(3.0)]])
    # NLLs ln 2 and ln 4; row 2 conflicts (y=0, b=1): ln 4 / (ln 2 + ln 4) = 2/3
    assert L.eff_bcr(logits, [0, 0], [0, 1]) == pytest.approx(2 / 3)
    conf = L.confidence(logits)
    assert conf["max_softmax"] == pytest.approx((0.5 + 0.75) / 2)
    assert conf["logit_norm"] == pytest.approx(math.log(3.0) / 2)


def test_spurious_alignment_by_hand():
    from embedkit.schema import Split

    y = np.array([0, 0, 1, 1, 0, 1])
    a = np.array([0, 1, 0, 1, 1, 0])
    Z = np.stack([3.0 * a + 0.5, 2.0 * y], axis=1)  # the attribute moves e1, the class e2
    split = Split(
        name="val",
        Z=Z,
        y=y,
        a=a,
        ids=np.arange(6),
        rows=np.arange(6),
        class_names=["c0", "c1"],
        attr_names=["a0", "a1"],
    )
    assert L.spurious_alignment([[0.0, -1.0], [0.0, 1.0]], split) == pytest.approx(
        0.0
    )  # reads the class
    assert L.spurious_alignment([[-1.0, 0.0], [1.0, 0.0]], split) == pytest.approx(
        1.0
    )  # reads the colour
    # a common row added to both classes changes no prediction and no alignment
    assert (
        L.spurious_alignment([[5.0, 2.0], [6.0, 3.0]], split)
        == pytest.approx(L.spurious_alignment([[-0.5, -0.5], [0.5, 0.5]], split))
        == pytest.approx(1 / math.sqrt(2))
    )


# -- pruning -----------------------------------------------------------------------------------


def test_zero_pruning_leaves_the_network_unchanged_and_pruning_is_global():
    import torch

    from embedkit.backbones.small_cnn import build_small_cnn

    torch.manual_seed(0)
    model = build_small_cnn(2, width=4).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(pruning.prune_global(model, 0.0)(x), model(x))
        half = pruning.prune_global(model, 0.5)
    weights = [p for p in half.parameters() if p.ndim > 1]
    n = sum(p.numel() for p in weights)
    assert sum(int((p == 0).sum()) for p in weights) == round(0.5 * n)
    # the kept entries are the largest magnitudes over the whole network, not per layer
    kept = torch.cat([p.detach().abs().flatten() for p in weights])
    orig = torch.cat([p.detach().abs().flatten() for p in model.parameters() if p.ndim > 1])
    assert kept[kept > 0].min() >= orig[kept == 0].max()
    # biases and BatchNorm parameters are untouched; the original model too
    assert torch.equal(half.fc.bias, model.fc.bias) and not (orig == 0).any()


# -- end to end ----------------------------------------------------------------------------------

TINY = {"n_train": 160, "n_val": 80, "n_test": 80}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("lr_study")
    return out, pipeline.backbone_study(
        "colored_digits",
        [0.01, 0.1, 1e5],
        out,
        dataset_options=TINY,
        width=4,
        epochs=2,
        batch_size=32,
        arch_kwargs={"batchnorm": False},
        log=None,
    )


def test_backbone_study_end_to_end(study):
    from embedkit import metrics
    from embedkit.cache import Cache

    out, res = study
    for path in res["files"].values():
        assert (out / path.rsplit("/", 1)[-1]).is_file()
    rows = {r["lr"]: r for r in res["rows"]}
    assert rows[1e5]["status"] == "diverged"  # recorded, not dropped
    assert "| 100000 | 1 | 1 |" in res["table"]
    assert len([ln for ln in res["table"].splitlines() if ln.startswith("|")]) == 5
    assert STD_RULE in res["table"]  # the caption names the std rule

    def no_nan(c):
        raise AssertionError(f"non-standard JSON constant {c}")

    json.loads((out / "lr_study.json").read_text(), parse_constant=no_nan)  # through jsonsafe
    cache = Cache.open(out / "cache.h5")
    assert sorted(cache.backbones()) == ["checkpoint:lr0.01_seed0.pt", "checkpoint:lr0.1_seed0.pt"]
    for lr in (0.01, 0.1):
        r = rows[lr]
        assert r["status"] == "ok"
        assert cache.provenance(r["backbone"])["train_json"]["lr"] == lr  # provenance of each run
        test = cache.split("test", backbone=r["backbone"])
        rep = metrics.evaluate_split(test.logits, test)
        assert r["erm_wga"] == rep["worst_group_acc"] and r["erm_mean"] == rep["mean_acc"]
        assert r["act_sparsity"] == pytest.approx(float((test.Z == 0).mean()))
        assert r["csep"] == pytest.approx(L.class_separation(test.Z, test.y, 2)["sep"])
        for key in (
            "dfr_wga",
            "dfr_mean",
            "erm_spur_align",
            "dfr_spur_align",
            "net_comp_0.05",
            "net_comp_0.1",
            "net_comp_0.2",
            "layer_comp_0.1",
            "net_pqi",
            "eff_bcr",
            "erm_acc_bc",
            "erm_bbc",
            "bsep",
            "prune_max_sparsity",
            "prune_wga_0.9",
        ):
            assert 0.0 <= r[key] <= 1.0, key
        assert r["net_comp_0.05"] < r["net_comp_0.1"] < r["net_comp_0.2"]


def test_head_study_on_a_fixed_cache(study, tmp_path):
    out, _ = study
    res = pipeline.head_study(
        out / "cache.h5",
        "0.01,1,1e38",
        tmp_path,
        backbone="checkpoint:lr0.1_seed0.pt",
        steps=60,
        eval_every=20,
        log=None,
    )
    rows = {r["lr"]: r for r in res["rows"]}
    assert rows[1e38]["status"] == "diverged"
    for lr in (0.01, 1.0):
        r = rows[lr]
        assert (
            r["best_step"] in (20, 40, 60) and 0 <= r["best_wga"] <= 1 and 0 <= r["final_wga"] <= 1
        )
        assert 0 < r["comp_0.1"] < 1 and "act_sparsity" not in r  # linear heads: csep on logits
        assert 0 <= r["spur_align"] <= 1
    mlp = pipeline.head_study(
        out / "cache.h5",
        [0.1],
        tmp_path / "mlp",
        backbone="checkpoint:lr0.1_seed0.pt",
        model="mlp",
        hidden=16,
        steps=20,
        eval_every=20,
        log=None,
    )
    assert (
        0 <= mlp["rows"][0]["act_sparsity"] <= 1 and (tmp_path / "mlp" / "lr_study.png").is_file()
    )


def test_cli_refuses_both_or_neither_mode(tmp_path, capsys):
    from embedkit.cli import main

    assert main(["lr-study", "--lrs", "0.1", "--out", str(tmp_path)]) == 2
    assert (
        main(
            [
                "lr-study",
                "--dataset",
                "colored_digits",
                "--cache",
                "x.h5",
                "--lrs",
                "0.1",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert (
        main(["lr-study", "--dataset", "colored_digits", "--lrs", "0.1,x", "--out", str(tmp_path)])
        == 2
    )
    err = capsys.readouterr().err
    assert "exactly one of --dataset" in err and "--lrs" in err


def test_prunable_sparsity_stops_at_the_first_change(monkeypatch):
    from embedkit import metrics

    accs = iter([0.40, 0.405, 0.395, 0.45, 0.40])  # unpruned, then 0.5, 0.7, 0.8, 0.9
    monkeypatch.setattr(
        "embedkit.backbones.train_backbone.predict_logits", lambda model, images, pp: None
    )
    monkeypatch.setattr(pruning, "prune_global", lambda model, s: model)
    monkeypatch.setattr(
        metrics,
        "evaluate_split",
        lambda logits, split: {"mean_acc": next(accs), "worst_group_acc": 0.0},
    )
    out = pruning.pruning_curve(None, None, {}, None, sparsities=(0.5, 0.7, 0.8, 0.9))
    assert (
        out["prune_max_sparsity"] == 0.7
        and out["prune_mean_0"] == 0.40
        and out["prune_mean_0.8"] == 0.45
    )


# -- core-feature utilisation (attribution share in the spurious region) -------------------------


def test_attribution_share_of_networks_that_read_one_half():
    import torch

    from embedkit.studies.lr.attribution import core_utilisation, spurious_mask

    mask = spurious_mask({"spurious_columns": [28, 56]}, 28, 56)
    assert mask[:, 28:].all() and not mask[:, :28].any()
    assert spurious_mask({"spurious_rows": [0, 32]}, 64, 32)[:32].all()
    images = torch.randint(1, 255, (6, 3, 28, 56), dtype=torch.uint8)
    pp = {"mean": [0.5] * 3, "std": [0.25] * 3}
    for reads_spurious, expect in ((False, 0.0), (True, 1.0)):
        lin = torch.nn.Linear(3 * 28 * 56, 2)
        with torch.no_grad():
            w = lin.weight.view(2, 3, 28, 56)
            w[..., 28:] = 0 if not reads_spurious else w[..., 28:]
            w[..., :28] = w[..., :28] if not reads_spurious else 0
        model = torch.nn.Sequential(torch.nn.Flatten(), lin)
        for method in ("input_x_gradient", "saliency"):
            out = core_utilisation(model, images, [0, 1, 0, 1, 0, 1], pp, mask, method)
            assert out["spur_share"] == pytest.approx(expect, abs=1e-6)
            assert out["core_util"] == pytest.approx(1 - expect, abs=1e-6)


def test_head_pruning_is_global_and_zero_pruning_changes_nothing():
    from embedkit.heads.trainer import HeadState

    rng = np.random.default_rng(0)
    state = HeadState(
        "mlp",
        {
            "W1": rng.normal(size=(6, 4)),
            "b1": rng.normal(size=6),
            "W2": rng.normal(size=(3, 6)) * 5,
            "b2": rng.normal(size=3),
        },
    )
    Z = rng.normal(size=(10, 4))
    assert np.allclose(pruning.prune_head(state, 0.0).logits(Z), state.logits(Z))
    half = pruning.prune_head(state, 0.5)
    zeros = int((half.arrays["W1"] == 0).sum() + (half.arrays["W2"] == 0).sum())
    assert zeros == 21  # half of the 42 weights, pooled over layers
    assert (half.arrays["W2"] == 0).sum() < (
        half.arrays["W1"] == 0
    ).sum()  # W2 is larger: kept more
    assert np.array_equal(half.arrays["b1"], state.arrays["b1"])


# -- tables and the figure -----------------------------------------------------------------------


def test_summary_std_is_ddof1_and_every_caption_names_it():
    from embedkit.studies.lr import tables as T

    rows = [{"lr": 0.1, "seed": s, "status": "ok", "m": v} for s, v in enumerate([0.7, 0.8, 0.9])]
    rows += [
        {"lr": 0.1, "seed": 3, "status": "ok", "m": float("nan")},  # not measured: left out
        {"lr": 0.1, "seed": 4, "status": "diverged"},  # counted, never averaged
        {"lr": 1.0, "seed": 0, "status": "ok", "m": 0.5},
    ]
    s = T.summarize(rows, "lr", ["m", "absent"])
    # sample std of (0.7, 0.8, 0.9) is 0.1 (ddof = 0 would give 0.0816)
    assert s[0]["m"] == pytest.approx(0.8) and s[0]["m_std"] == pytest.approx(0.1)
    assert (s[0]["m_n"], s[0]["runs"], s[0]["diverged"]) == (3, 5, 1)
    assert s[1]["m_std"] is None and s[1]["m_n"] == 1 and s[1]["absent"] is None
    md = T.table_markdown(s, "lr", [("m", "metric"), ("absent", "nobody")], title="t")
    assert md.startswith("### t") and STD_RULE in md and "nobody" not in md
    assert "| 0.1 | 5 | 1 | 0.800 ± 0.100 |" in md and "| 1 | 1 | 0 | 0.500 |" in md


def test_figure_panels_hold_the_measured_numbers_and_viz_draws_them(tmp_path):
    from PIL import Image

    from embedkit.studies.lr import tables as T
    from embedkit.viz.lr import lr_figure

    rows = [{"lr": lr, "seed": s, "status": "ok", "m": lr + s} for lr in (0.1, 1.0) for s in (0, 1)]
    comp = [{"config": "wd=0.1", "seed": s, "status": "ok", "m": 2.0} for s in (0, 1)]
    series = {"a": T.summarize(rows, "lr", ["m", "q"])}
    panels = T.figure_panels(
        series,
        [("m", [("m", None)]), ("q", [("q", None)])],
        {"a": T.summarize(comp, "config", ["m"])},
    )
    assert [p["title"] for p in panels] == ["m"]  # nothing measured for q: no panel
    (curve,) = panels[0]["curves"]
    assert curve["label"] == "a" and curve["lr"] == [0.1, 1.0]
    assert curve["mean"] == pytest.approx([0.6, 1.5]) and curve["std"] == pytest.approx(
        [math.sqrt(0.5)] * 2
    )
    assert panels[0]["levels"] == [{"label": "a: wd=0.1", "value": 2.0, "color": "C1"}]
    # viz takes plain numbers (None = not measured) and draws a PNG of the asked size
    panels.append(
        {
            "title": "b",
            "curves": [{"label": "x", "lr": [1, 2], "mean": [None, 1], "std": [None, None]}],
        }
    )
    lr_figure(panels, tmp_path / "f.png", "title", max_cols=3, panel_px=(200, 150))
    assert Image.open(tmp_path / "f.png").size == (400, 150)
