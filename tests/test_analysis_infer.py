"""Group inference without labels (methods spec section 14; embedkit/analysis/infer.py): EIIL
against a plain implementation of its objective, JTT's error set, and `embedkit fit --groups`."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedkit import heads, runs
from embedkit.analysis.infer import (
    eiil_environments,
    eiil_objective,
    infer_eiil,
    infer_groups,
    infer_jtt,
    scale_derivative,
)
from embedkit.cli import main
from embedkit.heads.jtt import error_set
from embedkit.data.synthetic import planted_cache


def plain_eiil(logits, y, u0, steps, lr=1e-3):
    """EIIL as the reference loop writes it: the per-row loss at scale s, the two environment risks,
    the gradient penalty through s by autograd at every step, Adam on the environment logits."""
    L = torch.as_tensor(np.asarray(logits, np.float64))
    yt = torch.as_tensor(np.asarray(y, np.int64))
    env_w = torch.as_tensor(u0).clone().requires_grad_()
    opt = torch.optim.Adam([env_w], lr=lr)
    for _ in range(steps):
        scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        loss = F.cross_entropy(L * scale, yt, reduction="none")
        g1 = torch.autograd.grad((loss * env_w.sigmoid()).mean(), [scale], create_graph=True)[0]
        g2 = torch.autograd.grad((loss * (1 - env_w.sigmoid())).mean(), [scale], create_graph=True)[
            0
        ]
        npenalty = -0.5 * (g1**2 + g2**2)
        opt.zero_grad()
        npenalty.backward()
        opt.step()
    return env_w.sigmoid().detach().numpy()


@pytest.mark.parametrize("C", [2, 3])
def test_scale_derivative_is_the_autograd_derivative(rng, C):  # spec 14.4 (a)
    L, y = rng.normal(size=(20, C)) * 3, rng.integers(0, C, 20)
    s = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    loss = F.cross_entropy(torch.as_tensor(L) * s, torch.as_tensor(y), reduction="none")
    auto = np.array(
        [torch.autograd.grad(loss[i], [s], retain_graph=True)[0].item() for i in range(20)]
    )
    np.testing.assert_allclose(scale_derivative(L, y), auto, rtol=1e-10, atol=1e-12)


def test_eiil_objective_is_symmetric_under_relabelling(rng):  # spec 14.4 (b)
    q, dl = rng.random(30), rng.normal(size=30)
    assert eiil_objective(q, dl) == pytest.approx(eiil_objective(1 - q, dl), rel=1e-12)


@pytest.mark.parametrize("C", [2, 3])
def test_eiil_assignment_equals_the_plain_objective_loop(rng, C):
    n = 60
    y = rng.integers(0, C, n)
    L = rng.normal(size=(n, C)) * 2
    L[np.arange(n), y] += 2.0  # a confident reference model that is wrong on some rows
    seed = 11
    u0 = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q_plain = plain_eiil(L, y, u0, steps=150, lr=2e-2)
    q = eiil_environments(L, y, steps=150, lr=2e-2, seed=seed)
    np.testing.assert_allclose(q, q_plain, rtol=1e-7, atol=1e-9)
    assert np.array_equal(
        infer_eiil(L, y, steps=150, lr=2e-2, seed=seed), (q_plain > 0.5).astype(int)
    )


def test_jtt_pseudo_attribute_is_the_error_set(rng):  # spec 14.4 (f)
    L, y = rng.normal(size=(50, 3)), rng.integers(0, 3, 50)
    a = infer_jtt(L, y)
    assert set(np.flatnonzero(a)) == {i for i in range(50) if L[i].argmax() != y[i]}
    # ... and it is the `jtt` head's error set of its selected identification head
    from tests.test_llr import make_split

    Z = rng.normal(size=(120, 4)) + rng.integers(0, 2, 120)[:, None]
    yy = (Z[:, 0] + 0.5 * rng.normal(size=120) > 0.5).astype(int)
    train, val = (
        make_split("train", Z[:80], yy[:80], yy[:80]),
        make_split("val", Z[80:], yy[80:], yy[80:], 80),
    )
    h = heads.create("jtt", seed=0, T_grid=(2,), lambda_up_grid=(5,), steps=50).fit(train, val)
    L1 = train.Z @ h.artifacts_["stage1_coef"].T + h.artifacts_["stage1_intercept"]
    assert np.array_equal(
        train.rows[np.flatnonzero(infer_jtt(L1, train.y))], h.artifacts_["error_set_rows"]
    )
    assert np.array_equal(np.flatnonzero(infer_jtt(L1, train.y)), error_set(L1, train.y))


@pytest.fixture(scope="module")
def cache_path(tmp_path_factory):
    return planted_cache(
        tmp_path_factory.mktemp("infer") / "p.h5",
        {"train": 400, "val": 200, "test": 200},
        16,
        seed=0,
    )[0]


@pytest.mark.parametrize("method", ["jtt", "eiil", "george"])
def test_inferred_groups_replace_the_attributes_and_record_their_quality(cache_path, method):
    from embedkit.cache import Cache

    c = Cache.open(cache_path)
    train, val = c.split("train"), c.split("val")
    pg = infer_groups(method, train, val, seed=0, eiil_steps=200)
    t = pg.apply(train, "train")
    assert t.attr_names == pg.attr_names and np.array_equal(t.a, pg.a["train"]) and (t.a >= 0).all()
    q = pg.record()["quality"]["train"]
    assert set(q) >= {"ari", "purity", "n"} and q["n"] == len(train)


def test_fit_with_inferred_groups_marks_the_record_and_table(cache_path, tmp_path, capsys):
    out = tmp_path / "runs"
    assert (
        main(
            [
                "fit",
                "--cache",
                str(cache_path),
                "--method",
                "groupdro",
                "--groups",
                "jtt",
                "--param",
                "steps=100",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    d = runs.run_dir(out, "groupdro", {"steps": 100}, 0, groups="jtt")
    rec = json.loads((d / "record.json").read_text())
    assert rec["groups"]["method"] == "jtt" and rec["regime"] == "R3"
    assert rec["groups"]["quality"]["train"]["ari"] is not None
    assert "groups_jtt" in rec["run_id"]
    assert "groups=jtt (inferred)" in (out / "results.md").read_text()


def test_sweep_with_inferred_groups(cache_path, tmp_path):
    out = tmp_path / "sw"
    assert (
        main(
            [
                "sweep",
                "--cache",
                str(cache_path),
                "--methods",
                "rw_group",
                "--seeds",
                "0",
                "--groups",
                "george",
                "--param",
                "rw_group.steps=50",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rec = json.loads(next(out.rglob("record.json")).read_text())
    assert rec["groups"]["method"] == "george" and rec["run_id"].startswith("rw_group-")
    assert "groups_george" in rec["run_id"]
