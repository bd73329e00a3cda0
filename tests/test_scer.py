"""SCER (methods spec section 7): the faithfulness tests (i)-(vii), directions from group means,
the regulariser's gradient in each variant, the stored directions, and the real-cache margin."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedkit import heads, metrics
from embedkit.geometry.directions import Sigma, group_means, mean_difference_directions
from embedkit.schema import Split
from embedkit.errors import EmbedkitError
from embedkit.heads.groupdro import GroupDROLoss
from embedkit.heads.monitor import Monitor
from embedkit.heads.scer import (
    ProjectionModel,
    SCERLoss,
    a0_code,
    a0_orientation_free,
    beta_star,
    code_terms,
    ll_terms,
)
from embedkit.heads.trainer import StepContext
from embedkit.data.synthetic import planted_arrays

SIZES = {"train": 800, "val": 400, "test": 400}
FAST = dict(steps=300, eval_every=50, threads=1)


def splits(dim=16, seed=0, sizes=SIZES, **kw):
    arr = planted_arrays(sizes, dim, seed=seed, **kw)
    tr = arr["split"] == 0
    counts = np.bincount(arr["y"][tr] * 2 + arr["a"][tr], minlength=4)
    out = []
    for code, name in enumerate(("train", "val", "test")):
        m = arr["split"] == code
        out.append(
            Split(
                name=name,
                Z=arr["Z"][m],
                y=arr["y"][m],
                a=arr["a"][m],
                ids=np.flatnonzero(m).astype(str),
                rows=np.flatnonzero(m),
                class_names=["c0", "c1"],
                attr_names=["t0", "t1"],
                train_group_counts=counts,
            )
        )
    return out


def _batch(rng, B=40, D=6, groups=(0, 1, 2, 3)):
    g = np.resize(np.asarray(groups), B)
    y, a = g // 2, g % 2
    z = rng.normal(size=(B, D)) + 1.5 * np.eye(D)[0] * y[:, None] + 2.0 * np.eye(D)[1] * a[:, None]
    return z, y, a


def _ctx(losses, g, params, z):
    K = losses.shape[0]
    gt = torch.as_tensor(g).expand(K, -1)
    return StepContext(
        losses=losses,
        weights=None,
        batch={"g": gt},
        params=params,
        init={},
        aux={"z": z},
        logits=None,
        step=1,
    )


# ---- (vi) a0 ------------------------------------------------------------------------------------


def test_a0_code_and_orientation_free():
    n = np.array([[30, 5], [7, 20]])
    assert a0_code(n) == pytest.approx((30 + 20) / (2 * 62))
    # The code's compute_a0 written out: 1/2 [P(a=1|y=1) P(y=1) + P(a=0|y=0) P(y=0)].
    p1, p0 = (7 + 20) / 62, (30 + 5) / 62
    assert a0_code(n) == pytest.approx(0.5 * (20 / 27 * p1 + 30 / 35 * p0))
    assert round(a0_orientation_free([[3498, 184], [56, 1057]]), 5) == 0.47497
    # Orientation-free equals the code formula on train counts when the majorities are (0,0), (1,1)
    # ...
    assert a0_orientation_free(n) == pytest.approx(a0_code(n))
    # ... and does not change when the attribute labels are swapped (the code's formula does).
    assert a0_orientation_free(n[:, ::-1]) == pytest.approx(a0_orientation_free(n))
    with pytest.raises(EmbedkitError):
        a0_code(np.ones((3, 2)))


# ---- (iii) beta*
# ----------------------------------------------------------------------------------


def test_beta_star_equals_inverse_and_sherman_morrison(rng):
    z, y, a = _batch(rng, B=30, D=50)  # B < D: the factored (Woodbury) path
    S = Sigma.code_shrunk(z)
    mu, n = group_means(z, y, a, 2, 2)
    d = mean_difference_directions(mu, n, "abs", normalize=True)
    a0 = 0.3
    beta = beta_star(S, d.spurious, d.core, a0)
    M = S.dense()
    np.testing.assert_allclose(
        beta, np.linalg.inv(M + a0 * np.outer(d.spurious, d.spurious)) @ d.core, atol=1e-8
    )
    # The released code: Sherman-Morrison on an explicit Sigma^{-1}.
    Si = np.linalg.inv(M)
    num = a0 * (d.core @ Si @ d.spurious)
    den = 1.0 + a0 * (d.spurious @ Si @ d.spurious)
    np.testing.assert_allclose(beta, Si @ d.core - Si @ d.spurious * (num / den), atol=1e-8)


# ---- (ii) bounds
# ----------------------------------------------------------------------------------


def test_code_loss_is_bounded_on_random_inputs(rng):
    lam_sp, lam_c = 0.7, 1.3
    for trial in range(20):
        z, y, a = _batch(rng, B=24, D=int(rng.integers(3, 40)))
        z = z * rng.uniform(0.01, 100)
        for mode in ("abs", "signed"):
            s, r = code_terms(z, y, a, 2, 2, rng.uniform(0, 0.5), mode)
            assert abs(s) <= 1 + 1e-9 and abs(r) <= 1 + 1e-9
            L = lam_sp * abs(s) - lam_c * r
            assert -lam_c - 1e-9 <= L <= lam_sp + 1e-9


# ---- (iv) code mode without a trainable map, and the regulariser's gradient per variant
# ------------


def test_code_loss_without_projection_gives_the_head_no_gradient(rng):
    z, y, a = _batch(rng)
    x = torch.tensor(z, dtype=torch.float32)
    W = torch.randn(1, 2, 6, requires_grad=True)
    b = torch.zeros(1, 2, requires_grad=True)
    g = torch.as_tensor(y * 2 + a)

    def total(with_emb):
        losses = F.cross_entropy((x @ W[0].T + b[0]), torch.as_tensor(y), reduction="none")[None]
        cfg = [
            {
                "eta": 0.01,
                "lambda_sp": 1.0 if with_emb else 0.0,
                "lambda_core": 1.0 if with_emb else 0.0,
            }
        ]
        loss = SCERLoss(
            cfg,
            2,
            2,
            np.array([[10, 10], [10, 10]]),
            variant="proj",
            direction_mode="abs",
            sigma_mode="code_shrunk",
            sigma_ridge=0.01,
            a0=0.4,
        )
        return loss(_ctx(losses, g, {"W": W, "b": b}, x[None]))

    g_with = torch.autograd.grad(total(True).sum(), [W, b])
    g_without = torch.autograd.grad(total(False).sum(), [W, b])
    for u, v in zip(g_with, g_without):
        assert torch.equal(u, v)  # dL_emb/d(W, b) = 0 exactly
    s, r = code_terms(x, y, a, 2, 2, 0.4)
    assert not s.requires_grad and not r.requires_grad


def test_regulariser_gradient_is_nonzero_where_it_should_learn(rng):
    z, y, a = _batch(rng, B=48, D=8)
    x = torch.tensor(z, dtype=torch.float32)
    # proj: the code loss on z = phi(x) reaches the projection (its zero-initialised last layer).
    model = ProjectionModel(8, 2, "mlp", hidden=16)
    p = {
        k: v[None].clone().requires_grad_()
        for k, v in model.init_params(torch.Generator().manual_seed(0)).items()
    }
    logits, aux = model.forward(p, x)
    assert torch.equal(aux["z"][0], x)  # starts exactly at the frozen features
    s, r = code_terms(aux["z"][0], y, a, 2, 2, 0.4)
    grads = torch.autograd.grad(abs(s) - r, [p["P2"], p["c2"]])
    assert all(gr.abs().sum() > 0 for gr in grads)
    # ll: the head-weight loss reaches W.
    mu, n = group_means(x.double(), y, a, 2, 2)
    d = mean_difference_directions(mu, n, "signed", normalize=True)
    W = torch.randn(1, 2, 8, dtype=torch.float64, requires_grad=True)
    sp, core = ll_terms(
        W, torch.stack([-d.core, d.core]), d.spurious[None], Sigma.code_shrunk(x.double())
    )
    (gW,) = torch.autograd.grad((sp - core).sum(), [W])
    assert gW.abs().sum() > 0
    # ... and it is the binary formula with w = W_1 - W_0 (scale-invariant in w).
    w, sp, core = W[0, 1].detach() - W[0, 0].detach(), sp.detach(), core.detach()
    S = Sigma.code_shrunk(x.double())
    assert float(core) == pytest.approx(float((w @ d.core) / S.norm(w)), rel=1e-10)
    assert float(sp) == pytest.approx(float(abs(w @ d.spurious) / S.norm(w)), rel=1e-10)


# ---- (vii) missing group
# --------------------------------------------------------------------------


def test_missing_group_batch_reuses_a_detached_regulariser(rng):
    model = ProjectionModel(6, 2, "mlp", hidden=8)
    p = {
        k: v[None].clone().requires_grad_()
        for k, v in model.init_params(torch.Generator().manual_seed(1)).items()
    }
    counts = np.array([[5, 5], [5, 5]])
    loss = SCERLoss(
        [{"eta": 0.01, "lambda_sp": 1.0, "lambda_core": 1.0}],
        2,
        2,
        counts,
        variant="proj",
        direction_mode="abs",
        sigma_mode="code_shrunk",
        sigma_ridge=0.01,
        a0=0.4,
    )

    def ctx(groups):
        z, y, a = _batch(rng, B=24, D=6, groups=groups)
        logits, aux = model.forward(p, torch.tensor(z, dtype=torch.float32))
        losses = F.cross_entropy(logits[0], torch.as_tensor(y), reduction="none")[None]
        return _ctx(losses, torch.as_tensor(y * 2 + a), p, aux["z"])

    full = loss(ctx((0, 1, 2, 3)))
    assert full.requires_grad and loss.active == 1
    prev = loss.prev.clone()
    c = ctx((0, 1, 2))  # group (1,1) missing
    ref = GroupDROLoss([0.01], 4, counts.reshape(-1))
    ref.q = loss.dro.q.clone()
    L_dro = ref(c)
    total = loss(c)
    assert loss.active == 1 and loss.steps == 2
    assert torch.equal(total, L_dro + prev)  # the previous L_emb as a constant
    assert torch.equal(loss.prev, prev)
    g_total = torch.autograd.grad(total.sum(), [p["P2"], p["W"]], retain_graph=True)
    g_dro = torch.autograd.grad(L_dro.sum(), [p["P2"], p["W"]])
    assert all(torch.equal(u, v) for u, v in zip(g_total, g_dro))


# ---- (i) lambda = 0 is GroupDRO bit for bit
# -----------------------------------------------------------


def test_lambda_zero_is_groupdro_bit_for_bit():
    train, val, test = splits()
    common = dict(steps=120, eval_every=40, batch_size=64, wd_grid=(1e-4,), threads=1)
    gd = heads.create(
        "groupdro", seed=3, eta_grid=(0.01,), lr_grid=(1e-2, 1e-1), sampler="group", **common
    )
    sc = heads.create(
        "scer_ll", seed=3, eta_grid=0.01, lambda_sp=0, lambda_core=0, lr_grid=(1e-2, 1e-1), **common
    )
    gd, sc = (
        gd.fit(train, val, Monitor({"test": test})),
        sc.fit(train, val, Monitor({"test": test})),
    )
    assert np.array_equal(gd.coef_, sc.coef_) and np.array_equal(gd.intercept_, sc.intercept_)
    assert [r["val"]["worst_group_acc"] for r in gd.history_] == [
        r["val"]["worst_group_acc"] for r in sc.history_
    ]
    assert [r["q"] for r in gd.history_] == [r["q"] for r in sc.history_]


# ---- (v) planted spurious axis: SCER beats ERM; stored directions
# ------------------------------------


@pytest.mark.parametrize("name", ["scer", "scer_ll"])
def test_scer_beats_erm_on_planted_spurious_axis(name):
    train, val, test = splits(dim=16, core=0.6, spurious=2.0, noise=1.0)
    erm = heads.create("erm", seed=0, steps=300, eval_every=50, threads=1).fit(
        train, val, Monitor({"test": test})
    )
    head = heads.create(name, seed=0, **FAST).fit(train, val, Monitor({"test": test}))
    wga = lambda h: metrics.evaluate_split(h.decision_function(test.Z), test)["worst_group_acc"]
    assert wga(head) >= wga(erm) + 0.1, (wga(erm), wga(head))
    assert head.selected_["rule"] == "val_wga"
    info = head.info_["directions"]
    assert info["space"] == ("z" if name == "scer" else "x")
    assert set(head.artifacts_) >= {"delta_core", "delta_spur"}
    # the core direction is found along the planted core axis (spurious stronger than core: |s|
    # small)
    assert info["cor_core"] > 0.3 and info["cor_spur_abs"] < info["cor_core"]


def test_stored_directions_are_the_closed_form_from_train_group_means():
    train, val, test = splits(dim=8)
    h = heads.create("scer_ll", seed=0, steps=60, eval_every=30, threads=1).fit(
        train, val, Monitor({"test": test})
    )
    Z, y, a = train.Z.astype(np.float64), train.y, train.a
    m = {(i, j): Z[(y == i) & (a == j)].mean(0) for i in (0, 1) for j in (0, 1)}
    close = dict(rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        h.artifacts_["delta_spur"], 0.5 * (m[0, 1] - m[0, 0] + m[1, 1] - m[1, 0]), **close
    )
    np.testing.assert_allclose(
        h.artifacts_["delta_core"], 0.5 * (m[1, 0] - m[0, 0] + m[1, 1] - m[0, 1]), **close
    )
    w = h.coef_[1] - h.coef_[0]
    S = Sigma.code_shrunk(train.Z.astype(np.float64)).dense()
    dc = h.artifacts_["delta_core"].astype(np.float64)
    cor = w @ dc / np.sqrt(w @ S @ w) / np.sqrt(dc @ S @ dc)
    assert h.info_["directions"]["cor_core"] == pytest.approx(cor, abs=1e-4)


def test_projection_variant_starts_at_the_frozen_features_and_search_is_seed_independent():
    train, val, test = splits(dim=8)
    h0 = heads.create("scer", seed=0, steps=1, eval_every=1, threads=1, lr_grid=(0.0,)).fit(
        train, val, Monitor({"test": test})
    )
    np.testing.assert_allclose(h0.state_.project(val.Z), val.Z, atol=1e-6)
    a = heads.create("scer_ll", seed=0, search=4).grid()
    b = heads.create("scer_ll", seed=7, search=4).grid()
    assert (
        a == b
        and len(a) == 4
        and all(1e-4 <= c["lr"] <= 1e-2 and 0 <= c["lambda_sp"] <= 1 for c in a)
    )
    with pytest.raises(EmbedkitError, match="variant"):
        heads.create("scer", variant="deep")
    with pytest.raises(EmbedkitError, match="attributes"):
        heads.create("scer", seed=0, **FAST).fit(train.hide_attrs(np.zeros(len(train), bool)), val)


# ---- real data
# ------------------------------------------------------------------------------------------

# Measured on the real ResNet-20 caches, test WGA for seeds 0/1/2 (defaults, threads=1):
#   waterbirds_like  erm 0.391/0.357/0.413  scer 0.776/0.674/0.653  scer_ll 0.734/0.766/0.753
#   colored_mnist    erm 0.032/0.016/0.007  scer 0.550/0.471/0.545  scer_ll 0.531/0.449/0.529
# i.e. margins 0.24-0.41 (waterbirds_like) and 0.43-0.54 (colored_mnist); asserted for seed 0 with
# slack.
REAL_MARGIN = {"colored_mnist": 0.25, "waterbirds_like": 0.20}
_ERM_WGA = {}


def real_splits(request, dataset):
    try:
        real_cache = request.getfixturevalue("real_cache")
    except pytest.FixtureLookupError:
        pytest.skip("the real_cache fixture (tests/conftest.py) is not available yet")
    from embedkit.cache import Cache

    cache = Cache.open(real_cache(dataset))
    return cache.split("train"), cache.split("val"), cache.split("test")


def wga_on(head, test):
    return metrics.evaluate_split(head.decision_function(test.Z), test)["worst_group_acc"]


@pytest.mark.parametrize("dataset", ["colored_mnist", "waterbirds_like"])
@pytest.mark.parametrize("name", ["scer", "scer_ll"])
def test_scer_beats_erm_on_real_cache(request, dataset, name):
    train, val, test = real_splits(request, dataset)
    if dataset not in _ERM_WGA:
        _ERM_WGA[dataset] = wga_on(heads.create("erm", seed=0).fit(train, val), test)
    wga = wga_on(heads.create(name, seed=0).fit(train, val), test)
    assert wga >= _ERM_WGA[dataset] + REAL_MARGIN[dataset], (_ERM_WGA[dataset], wga)


@pytest.mark.parametrize(
    "kw",
    [
        dict(sigma_mode="within_ridge"),
        dict(a0_mode="code", direction_mode="signed"),
        dict(proj="linear", search=2),
    ],
)
def test_options_run_and_same_seed_is_bitwise_identical(kw):
    train, val, test = splits(dim=8)
    fit = lambda: heads.create("scer", seed=1, steps=40, eval_every=20, **kw).fit(train, val)
    a, b = fit(), fit()
    assert np.array_equal(a.decision_function(test.Z), b.decision_function(test.Z))
    assert a.info_["reg_active_frac"][0] > 0.9


def test_defaults_match_the_released_random_search_configuration():
    # Spec 7.4: h = 512; spec 7.2/7.5: batch-count a0 with group-balanced batches on 2 x 2 groups.
    h = heads.create("scer")
    assert (
        h.params["hidden"] == 512
        and h.params["sampler"] == "group"
        and h.params["a0_mode"] == "auto"
    )
