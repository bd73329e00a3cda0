"""The shared SGD head trainer (methods spec 0.3, 0.4): each vectorised config against a plain
PyTorch reference loop, sampling, standardisation, determinism, snapshots and selection state."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedkit.schema import Split
from embedkit.errors import EmbedkitError
from embedkit.heads.monitor import Monitor
from embedkit.heads.trainer import (
    LinearModel,
    MLPModel,
    Standardizer,
    Variant,
    draw_indices,
    fit_grid,
    lr_wd_grid,
    sampler_cdf,
)
from embedkit.metrics import evaluate_split
from embedkit.data.synthetic import planted_arrays


def planted_splits(sizes=None, dim=16, seed=0, **kw):
    """(train, val, test) Splits of embedkit.data.synthetic's planted cache, in memory."""
    arr = planted_arrays(sizes or {"train": 800, "val": 400, "test": 400}, dim, seed=seed, **kw)
    out = []
    for code, name in enumerate(("train", "val", "test")):
        idx = np.flatnonzero(arr["split"] == code)
        out.append(
            Split(
                name=name,
                Z=arr["Z"][idx],
                y=arr["y"][idx],
                a=arr["a"][idx],
                ids=np.array([f"r{i}" for i in idx]),
                rows=idx.astype(np.int64),
                class_names=["landbird", "waterbird"],
                attr_names=["land", "water"],
            )
        )
    for s in out:
        s.train_group_counts = out[0].group_counts()
    return tuple(out)


def assert_reports_match(a: dict, b: dict):
    """Two metric reports of the same predictions: counts and accuracies equal exactly; scores of
    the probabilities (NLL, Brier, ECE, AUROC) to float32 rounding, since batched and per-head
    matmuls round differently."""
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], float) and k not in (
            "mean_acc",
            "worst_group_acc",
            "worst_class_acc",
            "weighted_mean_acc",
            "group_balanced_acc",
            "balanced_class_acc",
        ):
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k
        else:
            assert a[k] == b[k], k


def _data(n=60, d=5, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(n, d)),
        rng.integers(0, c, n),
        rng.normal(size=(c, d)) * 0.1,
        rng.normal(size=c) * 0.1,
    )


def _reference_sgd(Z, y, W0, b0, lr, wd, batches, momentum=0.9, weights=None):
    """torch.optim.SGD on nn.Linear in float64: weight decay on the weight only."""
    lin = torch.nn.Linear(Z.shape[1], W0.shape[0]).double()
    with torch.no_grad():
        lin.weight.copy_(torch.as_tensor(W0))
        lin.bias.copy_(torch.as_tensor(b0))
    opt = torch.optim.SGD(
        [{"params": [lin.weight], "weight_decay": wd}, {"params": [lin.bias], "weight_decay": 0.0}],
        lr=lr,
        momentum=momentum,
    )
    Zt, yt = torch.as_tensor(Z), torch.as_tensor(y)
    w = None if weights is None else torch.as_tensor(weights / weights.mean())
    for idx in batches:
        opt.zero_grad()
        loss = F.cross_entropy(lin(Zt[idx]), yt[idx], reduction="none")
        (loss.mean() if w is None else (w[idx] * loss).mean()).backward()
        opt.step()
    return lin.weight.detach().numpy(), lin.bias.detach().numpy()


def test_every_config_matches_a_plain_sgd_loop():
    Z, y, W0, b0 = _data()
    grid = lr_wd_grid((0.05, 0.2), (0.0, 0.1))
    steps, B, seed = 30, 8, 5
    res = fit_grid(
        Z,
        y,
        grid,
        steps=steps,
        eval_every=steps,
        batch_size=B,
        init=(W0, b0),
        sampler_seed=seed,
        dtype="float64",
    )
    # The sampler stream: uniforms in draw order, rows by inverse CDF (uniform P here).
    batches = draw_indices(
        sampler_cdf(np.ones(len(y))), np.random.default_rng(seed).random((steps, B))
    )
    for k, cfg in enumerate(grid):
        W, b = _reference_sgd(Z, y, W0, b0, cfg["lr"], cfg["wd"], batches)
        np.testing.assert_allclose(res.final[k].arrays["coef"], W, rtol=0, atol=1e-12)
        np.testing.assert_allclose(res.final[k].arrays["intercept"], b, rtol=0, atol=1e-12)


def test_loss_weights_and_per_variant_samplers_match_reference_loops():
    Z, y, W0, b0 = _data(seed=1)
    rng = np.random.default_rng(2)
    w = rng.uniform(0.2, 3.0, len(y))
    s1, s2 = rng.uniform(0.1, 1.0, len(y)), np.where(y == 0, 5.0, 1.0)
    grid = lr_wd_grid((0.1,), (0.0, 0.05))
    steps, B, seed = 20, 6, 9
    variants = [
        Variant({"v": 0}, weights=w),
        Variant({"v": 1}, sampler=s1),
        Variant({"v": 2}, sampler=s2),
    ]
    res = fit_grid(
        Z,
        y,
        grid,
        variants=variants,
        steps=steps,
        eval_every=steps,
        batch_size=B,
        init=(W0, b0),
        sampler_seed=seed,
        dtype="float64",
    )
    assert [c["v"] for c in res.configs] == [0, 0, 1, 1, 2, 2]
    u = np.random.default_rng(seed).random((steps, B))  # common random numbers for all variants
    refs = [(np.ones(len(y)), w), (s1, None), (s2, None)]
    for k, cfg in enumerate(res.configs):
        sampler, weights = refs[cfg["v"]]
        W, b = _reference_sgd(
            Z,
            y,
            W0,
            b0,
            cfg["lr"],
            cfg["wd"],
            draw_indices(sampler_cdf(sampler), u),
            weights=weights,
        )
        np.testing.assert_allclose(res.final[k].arrays["coef"], W, rtol=0, atol=1e-12)


def test_mlp_head_matches_a_plain_sequential_loop():
    Z, y, _, _ = _data(seed=3)
    H, steps, B = 7, 15, 10
    net = MLPModel(Z.shape[1], 3, H)
    p0 = net.init_params(torch.Generator().manual_seed(4))
    res = fit_grid(
        Z,
        y,
        [{"lr": 0.1, "wd": 0.01}],
        model="mlp",
        hidden=H,
        init_seed=4,
        steps=steps,
        eval_every=steps,
        batch_size=B,
        sampler_seed=1,
        dtype="float64",
    )
    seq = torch.nn.Sequential(
        torch.nn.Linear(Z.shape[1], H), torch.nn.ReLU(), torch.nn.Linear(H, 3)
    ).double()
    with torch.no_grad():
        for mod, (w, b) in zip((seq[0], seq[2]), (("W1", "b1"), ("W2", "b2"))):
            mod.weight.copy_(p0[w])
            mod.bias.copy_(p0[b])
    opt = torch.optim.SGD(
        [
            {"params": [seq[0].weight, seq[2].weight], "weight_decay": 0.01},
            {"params": [seq[0].bias, seq[2].bias], "weight_decay": 0.0},
        ],
        lr=0.1,
        momentum=0.9,
    )
    for idx in draw_indices(
        sampler_cdf(np.ones(len(y))), np.random.default_rng(1).random((steps, B))
    ):
        opt.zero_grad()
        F.cross_entropy(seq(torch.as_tensor(Z[idx])), torch.as_tensor(y[idx])).backward()
        opt.step()
    np.testing.assert_allclose(
        res.final[0].arrays["W2"], seq[2].weight.detach().numpy(), atol=1e-12
    )
    np.testing.assert_allclose(
        res.final[0].logits(Z), seq(torch.as_tensor(Z)).detach().numpy(), atol=1e-10
    )


def test_pytorch_default_init_bounds_and_shared_init():
    p = LinearModel(100, 3).init_params(torch.Generator().manual_seed(0))
    assert p["W"].abs().max() <= 0.1 and p["W"].abs().max() > 0.09  # U(-1/sqrt(D), 1/sqrt(D))
    Z, y, _, _ = _data()
    res = fit_grid(Z, y, lr_wd_grid((0.0,), (0.0, 0.1)), steps=1, eval_every=1, init_seed=3)
    np.testing.assert_array_equal(
        res.final[0].arrays["coef"], res.final[1].arrays["coef"]
    )  # lr 0: the init


def test_standardisation_maps_a_stored_head_exactly():
    rng = np.random.default_rng(0)
    Z = rng.normal(3.0, 2.0, size=(50, 4)) * np.array([1, 10, 0.1, 1])
    Z[:, 3] = 7.0  # a constant feature: sigma := 1
    std = Standardizer.fit(Z)
    W0, b0 = rng.normal(size=(2, 4)), rng.normal(size=2)
    W1, b1 = std.map_head(W0, b0)
    np.testing.assert_allclose(std.transform(Z) @ W1.T + b1, Z @ W0.T + b0, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(std.unmap_head(W1, b1)[0], W0, atol=1e-12)
    # lr = 0 from a stored head with standardize=True gives back the head on raw features.
    y = rng.integers(0, 2, 50)
    res = fit_grid(
        Z,
        y,
        [{"lr": 0.0, "wd": 0.0}],
        steps=2,
        eval_every=2,
        standardize=True,
        init=(W0, b0),
        dtype="float64",
    )
    np.testing.assert_allclose(res.final[0].arrays["coef"], W0, atol=1e-6)
    np.testing.assert_allclose(res.final[0].logits(Z), Z @ W0.T + b0, atol=1e-5)


def test_standardised_training_fits_mu_sigma_on_the_fitting_rows_only():
    tr, va, te = planted_splits()
    res = fit_grid(
        tr.Z * 50 + 10,
        tr.y,
        lr_wd_grid((0.1,), (0.0,)),
        steps=100,
        eval_every=100,
        standardize=True,
    )
    # Exported on raw features: applying it to (raw) train rows gives the trained accuracy.
    acc = (res.final[0].logits(tr.Z * 50 + 10).argmax(1) == tr.y).mean()
    assert acc > 0.9


def test_same_seed_and_threads_give_bitwise_identical_heads_and_seeds_matter():
    tr, va, te = planted_splits()
    kw = dict(steps=60, eval_every=30, val=va, rule="val_wga", threads=1)
    a = fit_grid(tr.Z, tr.y, lr_wd_grid(), init_seed=1, sampler_seed=2, **kw)
    b = fit_grid(tr.Z, tr.y, lr_wd_grid(), init_seed=1, sampler_seed=2, **kw)
    c = fit_grid(tr.Z, tr.y, lr_wd_grid(), init_seed=1, sampler_seed=3, **kw)
    for x, z in zip(a.final, b.final):
        assert x.arrays["coef"].tobytes() == z.arrays["coef"].tobytes()
    assert a.history == b.history
    assert not np.array_equal(a.final[4].arrays["coef"], c.final[4].arrays["coef"])
    assert a.info["threads"] == 1 and a.info["deterministic"]
    assert not torch.are_deterministic_algorithms_enabled()  # the global flag is restored


def test_records_selection_and_the_kept_head_agree():
    tr, va, te = planted_splits()
    res = fit_grid(
        tr.Z,
        tr.y,
        lr_wd_grid(),
        val=va,
        monitor=Monitor({"test": te}),
        rule="val_wga",
        steps=200,
        eval_every=50,
    )
    assert len(res.history) == 9 * 4
    assert {r["step"] for r in res.history} == {50, 100, 150, 200}
    rec = res.history[0]
    assert set(rec) >= {"config_id", "config", "step", "val", "test"}
    assert rec["val"]["n"] == len(va) and rec["test"]["n"] == len(te)
    sel = res.selected
    assert sel["score"] == max(r["val"]["worst_group_acc"] for r in res.history)
    # The kept head reproduces the selected record's metrics exactly.
    assert_reports_match(
        evaluate_split(res.state.logits(va.Z), va),
        next(
            r["val"]
            for r in res.history
            if (r["config_id"], r["step"]) == (sel["config_id"], sel["step"])
        ),
    )


def test_snapshots_equal_shorter_runs():
    tr, _, _ = planted_splits()
    grid = lr_wd_grid((0.01, 0.1), (0.0,))
    long = fit_grid(
        tr.Z, tr.y, grid, steps=40, eval_every=40, snapshot_steps=[13, 40], sampler_seed=7
    )
    short = fit_grid(tr.Z, tr.y, grid, steps=13, eval_every=13, sampler_seed=7)
    for k in range(2):
        assert (
            long.snapshots[13][k].arrays["coef"].tobytes()
            == short.final[k].arrays["coef"].tobytes()
        )
        assert (
            long.snapshots[40][k].arrays["coef"].tobytes() == long.final[k].arrays["coef"].tobytes()
        )


def test_objective_hook_sees_the_batch_and_replaces_the_loss():
    Z, y, W0, b0 = _data()
    g = np.arange(len(y)) % 4
    seen = []

    def objective(ctx):
        seen.append((ctx.step, ctx.batch["g"].shape, ctx.losses.shape))
        assert torch.equal(
            ctx.init["W"], torch.as_tensor(W0, dtype=torch.float64).expand(2, -1, -1)
        )
        return 0.0 * ctx.losses.sum(dim=1)  # no gradient: nothing moves (wd = 0)

    res = fit_grid(
        Z,
        y,
        lr_wd_grid((0.1, 1.0), (0.0,)),
        steps=3,
        eval_every=3,
        batch_size=5,
        init=(W0, b0),
        objective=objective,
        row_data={"g": g},
        dtype="float64",
    )
    assert seen == [(s, (2, 5), (2, 5)) for s in (1, 2, 3)]
    np.testing.assert_array_equal(res.final[1].arrays["coef"], W0)


def test_full_batch_uses_every_row_each_step():
    Z, y, W0, b0 = _data()
    res = fit_grid(
        Z,
        y,
        [{"lr": 0.5, "wd": 0.0}],
        steps=4,
        eval_every=4,
        batch_size=None,
        momentum=0.0,
        init=(W0, b0),
        dtype="float64",
    )
    W, b = _reference_sgd(Z, y, W0, b0, 0.5, 0.0, [np.arange(len(y))] * 4, momentum=0.0)
    np.testing.assert_allclose(res.final[0].arrays["coef"], W, atol=1e-12)


@pytest.mark.parametrize(
    "bad",
    [
        dict(grid=[]),
        dict(grid=[{"lr": 0.1}]),
        dict(y=np.zeros(3, np.int64)),
        dict(steps=0),
        dict(variants=[Variant(sampler=np.ones(5))]),
        dict(batch_size=None, variants=[Variant(sampler=np.ones(60))]),
        dict(variants=[Variant(weights=-np.ones(60))]),
        dict(init=(np.zeros((2, 2)), np.zeros(2))),
    ],
)
def test_bad_input_is_refused_with_one_line(bad):
    Z, y, _, _ = _data()
    kw = dict(grid=lr_wd_grid(), y=y, steps=2, eval_every=1)
    kw.update(bad)
    with pytest.raises(EmbedkitError) as e:
        fit_grid(Z, kw.pop("y"), kw.pop("grid"), **kw)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_gpu_matches_cpu_metrics():
    tr, va, te = planted_splits()
    kw = dict(val=va, rule="val_wga", steps=100, eval_every=50, init_seed=0, sampler_seed=0)
    cpu = fit_grid(tr.Z, tr.y, lr_wd_grid(), device="cpu", **kw)
    gpu = fit_grid(tr.Z, tr.y, lr_wd_grid(), device="cuda", **kw)
    assert gpu.info["device"].startswith("cuda") and "tf32_matmul" in gpu.info
    for a, b in zip(cpu.history, gpu.history):
        assert abs(a["val"]["mean_acc"] - b["val"]["mean_acc"]) <= 0.02
