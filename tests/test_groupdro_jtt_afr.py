"""GroupDRO (methods spec section 4), JTT (section 5) and AFR (section 6): each method's update,
error set and weights against its formula, and the spec's faithfulness tests."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedkit import heads
from embedkit.errors import EmbedkitError
from embedkit.heads.afr import AFRHead, L2Pull, afr_weights, effective_sample_size
from embedkit.heads.groupdro import GroupDROLoss
from embedkit.heads.jtt import error_set, upweights
from embedkit.heads.monitor import Monitor
from embedkit.heads.trainer import StepContext, Variant, draw_indices, fit_grid, sampler_cdf
from embedkit.metrics import evaluate_split
from tests.test_trainer import assert_reports_match, planted_splits

FAST = dict(steps=300, eval_every=50)


def _ctx(losses, g, weights=None):
    losses = torch.as_tensor(losses, dtype=torch.float64)
    return StepContext(
        losses=losses,
        weights=weights,
        batch={"g": torch.as_tensor(g)},
        params={},
        init={},
        aux={},
        logits=None,
        step=1,
    )


# -- GroupDRO ------------------------------------------------------------------------------------


def test_gdro_q_after_one_step_by_hand_with_an_absent_group():
    loss = GroupDROLoss([0.1], 3)
    L = loss(_ctx([[1.0, 2.0, 3.0, 4.0]], [[0, 0, 2, 2]]))  # group 1 absent from the batch
    lg = [1.5, 0.0, 3.5]
    e = [math.exp(0.1 * v) for v in lg]  # q0 = 1/3 cancels in the ratio
    q = [v / sum(e) for v in e]
    np.testing.assert_allclose(loss.q[0].numpy(), q, rtol=1e-12)
    assert float(L[0]) == pytest.approx(sum(a * b for a, b in zip(q, lg)), rel=1e-12)
    assert loss.q[0, 1] < 1 / 3  # absent: keeps exp(0), loses mass


def test_gdro_eta_zero_keeps_q_uniform_and_averages_group_means():
    loss = GroupDROLoss([0.0], 3)
    for _ in range(3):
        L = loss(_ctx([[1.0, 2.0, 6.0, 4.0, 5.0]], [[0, 0, 1, 2, 2]]))
    np.testing.assert_allclose(loss.q[0].numpy(), [1 / 3] * 3, rtol=1e-12)
    assert float(L[0]) == pytest.approx((1.5 + 6.0 + 4.5) / 3, rel=1e-12)


def test_gdro_equal_group_losses_leave_q_unchanged():
    loss = GroupDROLoss([0.5], 3)
    loss(_ctx([[3.0, 0.0, 0.0]], [[0, 1, 2]]))  # makes q non-uniform
    before = loss.q.clone()
    loss(_ctx([[2.0, 2.0, 2.0, 2.0]], [[0, 1, 2, 2]]))
    np.testing.assert_allclose(loss.q.numpy(), before.numpy(), rtol=1e-12)


def test_gdro_gradient_is_q_weighted_group_gradients_with_q_frozen():
    rng = np.random.default_rng(0)
    X, y, g = (
        torch.as_tensor(rng.normal(size=(12, 4))),
        torch.as_tensor(rng.integers(0, 2, 12)),
        rng.integers(0, 3, 12),
    )
    W = torch.zeros(1, 2, 4, dtype=torch.float64, requires_grad=True)
    W.data.normal_(generator=torch.Generator().manual_seed(0))
    loss = GroupDROLoss([0.7], 3)
    per = F.cross_entropy((X @ W[0].T), y, reduction="none")[None]
    (grad,) = torch.autograd.grad(loss(_ctx(per, g[None])).sum(), W)
    q = loss.q[0]
    expected = sum(
        q[k] * torch.autograd.grad(F.cross_entropy(X[g == k] @ W[0].T, y[g == k]), W)[0]
        for k in range(3)
        if (g == k).any()
    )
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-14)


def test_gdro_adjustment_only_when_every_c_is_positive():
    counts = np.array([100, 25, 4])
    on = GroupDROLoss([1.0], 3, counts, adj=[1.0, 2.0, 3.0])
    np.testing.assert_allclose(on.shift.numpy(), [0.1, 0.4, 1.5])
    off = GroupDROLoss([1.0], 3, counts, adj=[1.0, 0.0, 3.0])
    assert not off.shift.any()
    L = on(_ctx([[1.0, 1.0, 1.0]], [[0, 1, 2]]))
    e = np.exp([1.1, 1.4, 2.5])
    q = e / e.sum()
    np.testing.assert_allclose(on.q[0].numpy(), q, rtol=1e-12)
    assert float(L[0]) == pytest.approx(
        float(q @ np.array([1.1, 1.4, 2.5])), rel=1e-12
    )  # carries the shift


def test_gdro_trainer_run_matches_a_plain_reference_loop():
    tr, _, _ = planted_splits({"train": 200, "val": 100, "test": 100}, dim=6)
    Z, y, g = tr.Z.astype(np.float64), tr.y, tr.g
    W0, b0 = np.zeros((2, 6)), np.zeros(2)
    steps, B, eta, lr, wd = 25, 16, 0.2, 0.1, 1e-3
    res = fit_grid(
        Z,
        y,
        [{"lr": lr, "wd": wd}],
        steps=steps,
        eval_every=steps,
        batch_size=B,
        init=(W0, b0),
        objective=GroupDROLoss([eta], 4),
        row_data={"g": g},
        sampler_seed=3,
        dtype="float64",
    )
    lin = torch.nn.Linear(6, 2).double()
    torch.nn.init.zeros_(lin.weight), torch.nn.init.zeros_(lin.bias)
    opt = torch.optim.SGD(
        [{"params": [lin.weight], "weight_decay": wd}, {"params": [lin.bias]}], lr=lr, momentum=0.9
    )
    q = torch.full((4,), 0.25, dtype=torch.float64)
    for idx in draw_indices(
        sampler_cdf(np.ones(len(y))), np.random.default_rng(3).random((steps, B))
    ):
        opt.zero_grad()
        per = F.cross_entropy(
            lin(torch.as_tensor(Z[idx])), torch.as_tensor(y[idx]), reduction="none"
        )
        gb = torch.as_tensor(g[idx])
        lg = torch.stack([per[gb == k].sum() / max(1, int((gb == k).sum())) for k in range(4)])
        q = q * torch.exp(eta * lg.detach())
        q = q / q.sum()
        (q * lg).sum().backward()
        opt.step()
    np.testing.assert_allclose(res.final[0].arrays["coef"], lin.weight.detach().numpy(), atol=1e-11)


def test_groupdro_head_records_q_and_refuses_hidden_train_attributes():
    # Source of the default: every official group_DRO run passes --reweight_groups.
    assert heads.create("groupdro").params["sampler"] == "group"
    tr, va, te = planted_splits()
    h = heads.create("groupdro", seed=0, eta_grid=[0.1], **FAST).fit(tr, va, Monitor({"test": te}))
    assert h.info_["grid_size"] == 3 * 4
    for r in h.history_:
        assert len(r["q"]) == 4 and sum(r["q"]) == pytest.approx(1.0)
    with pytest.raises(EmbedkitError, match="attributes on every train row"):
        heads.create("groupdro").fit(tr.hide_attrs(np.arange(len(tr)) > 5), va)


# -- JTT -----------------------------------------------------------------------------------------


def test_jtt_error_set_is_exactly_the_stage1_misclassifications():
    tr, va, te = planted_splits()
    h = heads.create("jtt", seed=1, T_grid=[2], lambda_up_grid=[20], **FAST).fit(
        tr, va, Monitor({"test": te})
    )
    W, b = h.artifacts_["stage1_coef"], h.artifacts_["stage1_intercept"]
    wrong = (tr.Z @ W.T + b).argmax(1) != tr.y
    assert np.array_equal(h.artifacts_["error_set_rows"], tr.rows[wrong]) and wrong.any()
    # The stage-1 head is an ERM head trained for T * ceil(N / B) steps on the infer stream's seeds.
    s_init, s_sampler = h.info_["stage1"]["seeds"].values()
    ref = fit_grid(
        tr.Z,
        tr.y,
        [{"lr": 1e-2, "wd": 0.1}],
        steps=2 * math.ceil(len(tr) / 128),
        eval_every=10_000,
        init_seed=s_init,
        sampler_seed=s_sampler,
    )
    assert np.array_equal(ref.final[0].arrays["coef"], W)
    np.testing.assert_array_equal(error_set(tr.Z @ W.T + b, tr.y), np.flatnonzero(wrong))
    stats = h.info_["error_sets"][0]
    assert (
        stats["size"] == wrong.sum()
        and sum(v["in_E"] for v in stats["per_group"].values()) == wrong.sum()
    )


def test_jtt_with_lambda_up_one_is_erm_with_the_same_seeds():
    tr, va, te = planted_splits()
    jtt = heads.create("jtt", seed=5, T_grid=[2], lambda_up_grid=[1], count="paper", **FAST).fit(
        tr, va, Monitor({"test": te})
    )
    erm = heads.create("erm", seed=5, **FAST).fit(tr, va, Monitor({"test": te}))
    assert jtt.coef_.tobytes() == erm.coef_.tobytes()
    assert [r["val"] for r in jtt.history_] == [r["val"] for r in erm.history_]


def test_jtt_weighted_full_batch_gradient_equals_the_duplicated_dataset():
    rng = np.random.default_rng(0)
    Z, y = rng.normal(size=(40, 5)), rng.integers(0, 3, 40)
    E = np.array([1, 7, 8, 30])
    W0, b0 = rng.normal(size=(3, 5)), rng.normal(size=3)
    one = dict(steps=1, eval_every=1, batch_size=None, momentum=0.0, init=(W0, b0), dtype="float64")
    weighted = fit_grid(
        Z, y, [{"lr": 1.0, "wd": 0.0}], variants=[Variant(weights=upweights(40, E, 3))], **one
    )
    dup = np.concatenate([np.arange(40), E, E])  # each error row counted 3 times
    explicit = fit_grid(Z[dup], y[dup], [{"lr": 1.0, "wd": 0.0}], **one)
    np.testing.assert_allclose(
        weighted.final[0].arrays["coef"], explicit.final[0].arrays["coef"], atol=1e-13
    )


def test_jtt_default_count_is_the_official_codes_lambda_up_plus_one():
    # anniesch/jtt builds stage 2 as train + lambda_up extra copies of E: lambda_up + 1 in all.
    assert heads.create("jtt").params["count"] == "official"
    tr, va, te = planted_splits()
    off = heads.create("jtt", seed=5, T_grid=[2], lambda_up_grid=[4], **FAST).fit(
        tr, va, Monitor({"test": te})
    )
    lit = heads.create("jtt", seed=5, T_grid=[2], lambda_up_grid=[5], count="paper", **FAST).fit(
        tr, va, Monitor({"test": te})
    )
    assert off.coef_.tobytes() == lit.coef_.tobytes() and off.info_["count"] == "official"
    with pytest.raises(EmbedkitError, match="count"):
        heads.create("jtt", count="twice", **FAST)


def test_jtt_sampler_upweights_the_error_set_in_expectation():
    E = np.arange(10)
    draws = draw_indices(
        sampler_cdf(upweights(1000, E, 50)), np.random.default_rng(0).random(100_000)
    )
    p = 10 * 50 / (10 * 50 + 990)
    assert abs(np.isin(draws, E).mean() - p) < 4 * math.sqrt(p * (1 - p) / 1e5)


def test_jtt_warns_on_a_tiny_error_set_and_dedupes_identical_sets():
    tr, va, te = planted_splits(dim=8, noise=0.05)  # separable, stage 1 unregularised: E = {}
    with pytest.warns(UserWarning, match="error set"):
        h = heads.create(
            "jtt",
            seed=0,
            T_grid=[10, 20],
            lambda_up_grid=[5],
            stage1_wd_grid=[0.0],
            stage1_lr=0.1,
            **FAST,
        ).fit(tr, va, Monitor({"test": te}))
    assert all(s["size"] == 0 for s in h.info_["error_sets"])
    assert h.info_["n_variants"] == 1 and h.info_["duplicate_error_sets"][0]["same_as"]["T"] == 10


def test_jtt_stored_id_needs_logits_and_an_explicit_flag():
    tr, va, te = planted_splits()
    with pytest.raises(EmbedkitError, match="logits"):
        heads.create("jtt", id="stored").fit(tr, va, Monitor({"test": te}))
    assert "logits" in heads.create("jtt", id="stored").unmet(tr, va)


# -- AFR -----------------------------------------------------------------------------------------


def test_afr_weights_by_hand():
    p, y = np.array([0.9, 0.2, 0.5, 0.99]), np.array([0, 0, 0, 1])
    wt = np.exp(-2.0 * p) * np.array([1, 1, 1, 3 / 1])  # n_0 / n_1 = 3 / 1
    np.testing.assert_allclose(afr_weights(p, y, 2.0), wt / wt.sum(), rtol=1e-12)
    np.testing.assert_allclose(
        afr_weights(p, y, 2.0, class_balance=False), np.exp(-2 * p) / np.exp(-2 * p).sum()
    )
    np.testing.assert_allclose(afr_weights(p, y, 0.0, class_balance=False), [0.25] * 4, rtol=1e-12)
    assert effective_sample_size([0.25] * 4) == pytest.approx(4.0)


def _notebook_form(Z, y, w, W0, b0, lam, lr, steps):
    """AFR notebook parameterisation: logits = (W0 z + b0) + (W_r z + b_r), W_r, b_r
    zero-initialised,
    penalty lam (|W_r|^2 + |b_r|^2), full batch, gradient-norm clipping at 1, plain SGD."""
    Zt, yt, wt = torch.as_tensor(Z), torch.as_tensor(y), torch.as_tensor(w)
    Wr = torch.zeros_like(torch.as_tensor(W0), requires_grad=True)
    br = torch.zeros_like(torch.as_tensor(b0), requires_grad=True)
    base = Zt @ torch.as_tensor(W0).T + torch.as_tensor(b0)
    opt = torch.optim.SGD([Wr, br], lr=lr)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        L = (wt * F.cross_entropy(base + Zt @ Wr.T + br, yt, reduction="none")).sum() + lam * (
            Wr.pow(2).sum() + br.pow(2).sum()
        )
        L.backward()
        torch.nn.utils.clip_grad_norm_([Wr, br], 1.0)
        opt.step()
        out.append(W0 + Wr.detach().numpy())
    return out


def test_afr_script_form_equals_zero_init_notebook_form():
    rng = np.random.default_rng(0)
    Z, y = rng.normal(size=(50, 6)) * 3, rng.integers(0, 2, 50)
    W0, b0 = rng.normal(size=(2, 6)), rng.normal(size=2)
    w = afr_weights(rng.uniform(size=50), y, 5.0)
    res = fit_grid(
        Z,
        y,
        [{"lr": 0.05, "wd": 0.0, "lam": 0.2}],
        variants=[Variant(weights=w)],
        objective=L2Pull([0.2]),
        init=(W0, b0),
        batch_size=None,
        momentum=0.0,
        clip_norm=1.0,
        steps=30,
        eval_every=30,
        snapshot_steps=range(1, 31),
        dtype="float64",
    )
    ref = _notebook_form(Z, y, w, W0, b0, 0.2, 0.05, 30)
    for step in (1, 2, 10, 30):
        np.testing.assert_allclose(
            res.snapshots[step][0].arrays["coef"], ref[step - 1], rtol=0, atol=1e-10
        )


def test_afr_update_norm_after_clipping_is_at_most_one():
    rng = np.random.default_rng(1)
    Z, y = rng.normal(size=(30, 4)) * 50, rng.integers(0, 2, 30)  # raw gradient norm >> 1
    W0, b0 = np.zeros((2, 4)), np.zeros(2)
    kw = dict(
        init=(W0, b0),
        batch_size=None,
        momentum=0.0,
        clip_norm=1.0,
        steps=1,
        eval_every=1,
        dtype="float64",
    )
    big = fit_grid(Z, y, [{"lr": 1.0, "wd": 0.0}], **kw).final[0].arrays
    assert np.sqrt((big["coef"] ** 2).sum() + (big["intercept"] ** 2).sum()) == pytest.approx(
        1.0, abs=1e-5
    )
    small = (
        fit_grid(Z / 1e4, y, [{"lr": 1.0, "wd": 0.0}], **kw).final[0].arrays
    )  # below 1: left as is
    lin = torch.nn.Linear(4, 2).double()
    torch.nn.init.zeros_(lin.weight), torch.nn.init.zeros_(lin.bias)
    F.cross_entropy(lin(torch.as_tensor(Z / 1e4)), torch.as_tensor(y)).backward()
    np.testing.assert_allclose(small["coef"], -lin.weight.grad.numpy(), atol=1e-12)


def test_afr_large_lambda_stays_near_the_stage1_head_and_holdout_is_disjoint():
    tr, va, te = planted_splits()
    kw = dict(gamma_grid=[8.0], epochs=60, eval_every=20, steps=100)
    pulled = heads.create("afr", seed=0, lam_grid=[1e6], **kw).fit(tr, va, Monitor({"test": te}))
    free = heads.create("afr", seed=0, lam_grid=[0.0], **kw).fit(tr, va, Monitor({"test": te}))

    def moved(h):
        return np.sqrt(
            ((h.coef_ - h.artifacts_["stage1_coef"]) ** 2).sum()
            + ((h.intercept_ - h.artifacts_["stage1_intercept"]) ** 2).sum()
        )

    assert (
        moved(pulled) <= 1e-2 * 1.01 < 10 * 1e-2 < moved(free)
    )  # one clipped step of lr 1e-2 at most
    fit_rows, hold_rows = (
        pulled.artifacts_["train_fit_rows"],
        pulled.artifacts_["train_holdout_rows"],
    )
    assert len(np.intersect1d(fit_rows, hold_rows)) == 0 and len(fit_rows) + len(hold_rows) == len(
        tr
    )
    assert len(hold_rows) == round(0.2 * len(tr)) and np.array_equal(
        hold_rows, free.artifacts_["train_holdout_rows"]
    )
    assert pulled.info_["stage1"]["selected"]["rule"] == "val_mean"  # stage 1 reads no group label


def test_afr_holdout_weights_follow_the_stage1_confidence():
    tr, va, te = planted_splits()
    h = heads.create(
        "afr", seed=0, gamma_grid=[6.0], lam_grid=[0.1], epochs=20, eval_every=10, steps=100
    ).fit(tr, va, Monitor({"test": te}))
    hold = np.isin(tr.rows, h.artifacts_["train_holdout_rows"])
    logits = tr.Z[hold] @ h.artifacts_["stage1_coef"].T + h.artifacts_["stage1_intercept"]
    p = torch.softmax(torch.as_tensor(logits, dtype=torch.float64), 1).numpy()[
        np.arange(hold.sum()), tr.y[hold]
    ]
    np.testing.assert_allclose(
        h.artifacts_["holdout_weights"], afr_weights(p, tr.y[hold], 6.0), rtol=1e-5
    )
    assert h.info_["ess"]["6.0"] == pytest.approx(
        effective_sample_size(afr_weights(p, tr.y[hold], 6.0))
    )


def test_afr_paper_grid_sizes():
    assert len(AFRHead(grid="waterbirds").configs()) == 132
    assert len(AFRHead(grid="celeba").configs()) == 30
    assert (
        AFRHead(grid="celeba").afr_grid()["lr"] == 2e-2
        and AFRHead(grid="celeba").afr_grid()["epochs"] == 1000
    )
    assert AFRHead(grid="waterbirds").afr_grid()["epochs"] == 500
    fast = AFRHead().configs()
    paper = AFRHead(grid="waterbirds").configs()
    assert len(fast) == 12 and all(
        any(c["gamma"] == pytest.approx(p["gamma"]) and c["lam"] == p["lam"] for p in paper)
        for c in fast
    )


def test_afr_stored_stage1_needs_the_explicit_flag():
    tr, va, te = planted_splits()
    tr.erm_head = (np.zeros((2, tr.Z.shape[1]), np.float32), np.zeros(2, np.float32))
    with pytest.raises(EmbedkitError, match="allow_seen_rows"):
        heads.create("afr", stage1="stored").fit(tr, va, Monitor({"test": te}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = heads.create(
            "afr",
            stage1="stored",
            allow_seen_rows=True,
            gamma_grid=[4.0],
            lam_grid=[0.0],
            epochs=10,
            eval_every=5,
        ).fit(tr, va, Monitor({"test": te}))
    assert np.array_equal(h.artifacts_["stage1_coef"], tr.erm_head[0])


def test_jtt_and_afr_select_on_val_and_reproduce_their_record():
    tr, va, te = planted_splits()
    for h in (
        heads.create("jtt", seed=0, T_grid=[2], lambda_up_grid=[5, 20], **FAST),
        heads.create(
            "afr", seed=0, gamma_grid=[4.0, 12.0], lam_grid=[0.0, 0.2], epochs=100, steps=100
        ),
    ):
        h.fit(tr, va, Monitor({"test": te}))
        s = h.selected_
        rec = next(
            r for r in h.history_ if (r["config_id"], r["step"]) == (s["config_id"], s["step"])
        )
        assert_reports_match(evaluate_split(h.decision_function(va.Z), va), rec["val"])
        assert s["score"] == max(r["val"]["worst_group_acc"] for r in h.history_)


def test_afr_defaults_follow_the_official_protocol_and_select_the_step_size_on_val():
    h = AFRHead()
    assert h.params["eval_every"] == 1  # train_embeddings.py selects over every epoch
    assert 1.0 in h.params["lr_scale_grid"]  # the paper's lr is one candidate
    assert h.afr_grid()["lr"] == 1e-2 and h.afr_grid()["epochs"] == 500
    tr, va, te = planted_splits()
    h = heads.create(
        "afr", seed=0, gamma_grid=[4.0], lam_grid=[0.0], epochs=20, lr_scale_grid=[1.0, 100.0]
    ).fit(tr, va)
    lrs = sorted({r["config"]["lr"] for r in h.history_})
    assert lrs == pytest.approx([1e-2, 1.0]) and sorted({r["step"] for r in h.history_}) == list(
        range(1, 21)
    )
    with pytest.raises(EmbedkitError, match="lr_scale_grid"):
        heads.create("afr", lr_scale_grid=[0.0], epochs=2).fit(tr, va)


@pytest.mark.parametrize("method", ["afr", "jtt"])
def test_afr_and_jtt_refuse_rows_the_backbone_saw_unless_overridden(method):
    """Issue 11: held-out rows the backbone was trained on make both methods ERM; refuse in one
    line, or, with allow_seen_rows=True, run and flag the override in the record's info."""
    import dataclasses

    tr, va, te = planted_splits()
    seen = dataclasses.replace(tr, seen=np.ones(len(tr), bool), seen_known=True)
    fast = (
        dict(gamma_grid=[4.0], lam_grid=[0.0], epochs=5, lr_scale_grid=[1.0])
        if method == "afr"
        else dict(T_grid=[2], lambda_up_grid=[5], **FAST)
    )
    with pytest.raises(EmbedkitError, match="seen by backbone.*allow_seen_rows"):
        heads.create(method, seed=0, **fast).fit(seen, va)
    assert "allow_seen_rows" in heads.create(method, seed=0, **fast).unmet(seen, va)
    h = heads.create(method, seed=0, allow_seen_rows=True, **fast).fit(seen, va)
    assert h.info_["seen_override"]["n_seen"] > 0
    assert heads.create(method, seed=0, allow_seen_rows=True, **fast).unmet(seen, va) is None
    # Unknown (no record) or unseen rows run as before.
    assert heads.create(method, seed=0, **fast).unmet(tr, va) is None
    heads.create(method, seed=0, **fast).fit(tr, va)
