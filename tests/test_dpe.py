"""DPE (embedkit/heads/dpe.py): IsoMax+ distances and the diversity penalty by hand, the two
protocols and the leak guard, the published `dpe` package on the same arrays, and the margin over
ERM on real caches. `run_package` is the reference bench/heads.py times against."""

import tempfile

import numpy as np
import pytest
import torch

from embedkit import heads, metrics, runs
from embedkit.heads.dpe import (
    DiversityObjective,
    PrototypeModel,
    cov_reg_schedule,
    prototype_distances,
)
from embedkit.heads.trainer import StepContext
from embedkit.selection import SelectionLeakError
from embedkit.data.synthetic import planted_cache


def run_package(val, test, seed: int, num_stages: int = 15, group_balanced: bool = True):
    """The published package (`pip install dpe`, v0.2.0) on a cache's val and test arrays with its
    own protocol and defaults; returns its ensemble's mean test probabilities [N, C]."""
    import pandas as pd
    from dpe import DPE

    with tempfile.TemporaryDirectory() as d:
        np.save(f"{d}/feats_val.npy", np.asarray(val.Z, np.float32))
        np.save(f"{d}/feats_test.npy", np.asarray(test.Z, np.float32))
        rows = [(f"v{i}", 1, int(y), int(a)) for i, (y, a) in enumerate(zip(val.y, val.a))] + [
            (f"t{i}", 2, int(y), int(a)) for i, (y, a) in enumerate(zip(test.y, test.a))
        ]
        pd.DataFrame(rows, columns=["filename", "split", "y", "a"]).to_csv(
            f"{d}/metadata.csv", index=False
        )
        model = DPE(
            data_dir=d,
            metadata_path=f"{d}/metadata.csv",
            num_stages=num_stages,
            device="cpu",
            seed=seed,
            train_attr=group_balanced,
            emb_dim=val.Z.shape[1],
        )
        model.fit()
        return model.predict_proba("test").numpy()


def test_isomax_distances_and_training_logits(rng):
    Z, P = rng.normal(size=(7, 5)), rng.normal(size=(3, 5))
    d = prototype_distances(Z, P, np.array([-2.0]))
    by_hand = np.array(
        [
            [2.0 * np.linalg.norm(z / np.linalg.norm(z) - p / np.linalg.norm(p)) for p in P]
            for z in Z
        ]
    )
    np.testing.assert_allclose(d, by_hand, rtol=1e-10)
    model = PrototypeModel(5, 3, entropic=30.0)
    params = {
        "P": torch.as_tensor(P[None], dtype=torch.float64),
        "s": torch.tensor([[-2.0]], dtype=torch.float64),
    }
    logits, _ = model.forward(params, torch.as_tensor(Z))
    np.testing.assert_allclose(logits[0].numpy(), -30.0 * by_hand, rtol=1e-8)


def test_diversity_penalty_and_its_schedule(rng):
    C, D = 2, 6
    prev = [rng.normal(size=(C, D)) for _ in range(3)]
    P = rng.normal(size=(C, D))
    obj = DiversityObjective(prev, cov_reg=5.0, wd_weight=10.0)
    losses = torch.tensor([[0.5, 1.5]], dtype=torch.float64)
    ctx = StepContext(
        losses=losses,
        weights=None,
        batch={},
        params={"P": torch.as_tensor(P[None])},
        init={},
        aux={},
        logits=None,
        step=1,
    )
    n_pro = len(prev) + 1
    cov = abs(np.mean([sum(P[c] @ q[c] for q in prev) / (D - 1) / n_pro for c in range(C)]))
    expected = 1.0 + 10.0 * np.mean((P**2).sum(1)) + 5.0 * cov
    np.testing.assert_allclose(obj(ctx).item(), expected, rtol=1e-10)
    # the package's cov_reg_scheduler_inv(5e4, S, alpha=0.05)
    assert [cov_reg_schedule(5e4, 0.05, m) for m in (1, 2, 3, 4)] == [
        5e4,
        5e4,
        5e4 / 1.05,
        5e4 / 1.1,
    ]


@pytest.fixture
def small_cache(tmp_path):
    path, _ = planted_cache(
        tmp_path / "p.h5",
        {"train": 200, "val": 400, "test": 200},
        dim=16,
        seed=3,
        groups={"train": (40, 10, 10, 40), "val": (1, 1, 1, 1), "test": (1, 1, 1, 1)},
    )
    return path


FAST = {"num_stages": 3, "epochs": 4}


def test_split_protocol_is_leak_free_and_package_protocol_needs_the_overlap_flag(
    small_cache, tmp_path
):
    rec = runs.fit_record(small_cache, "dpe", FAST, 0, tmp_path / "a")
    assert rec["selection"]["split"] == "val[select]" and not rec["flags"]["selected_on_fit_data"]
    assert len(rec["info"]["stages"]) == 3 and rec["info"]["balance"] == "group"
    with pytest.raises(SelectionLeakError):
        runs.fit_record(small_cache, "dpe", {**FAST, "protocol": "package"}, 0, tmp_path / "b")
    rec = runs.fit_record(
        small_cache, "dpe", {**FAST, "protocol": "package"}, 0, tmp_path / "c", allow_overlap=True
    )
    assert rec["flags"]["selected_on_fit_data"]


def test_without_val_attributes_stages_are_class_balanced(small_cache, tmp_path):
    rec = runs.fit_record(small_cache, "dpe", FAST, 0, tmp_path / "r", label_budget=0.0)
    assert rec["regime"] == "R3" and rec["info"]["balance"] == "class"
    assert rec["selection"]["rule"] == "val_worst_class"


# Package vs embedkit with the package's protocol (group-balanced stages on all of val, epochs
# chosen on all of val), num_stages=3, waterbirds_like through ResNet-20, test WGA over seeds 0-4:
#   package  0.707 0.696 0.630 0.663 0.731  (mean 0.685, sd 0.040)
#   embedkit 0.598 0.674 0.598 0.641 0.652  (mean 0.633, sd 0.034)
# (num_stages=15, seeds 0-2: package 0.630 0.663 0.587, embedkit 0.620 0.652 0.675.) One package
# seed against the embedkit mean over five seeds; tolerance 3 x the package's seed sd.
PACKAGE_TOL = 0.12


def test_dpe_matches_the_published_package_on_a_real_cache(real_cache):
    pytest.importorskip(
        "dpe", reason="the published `dpe` package is not installed (pip install dpe netcal pandas)"
    )
    pytest.importorskip(
        "netcal", reason="dpe's eval_helpers import netcal (pip install netcal --no-deps)"
    )
    from embedkit.cache import Cache

    cache = Cache.open(real_cache("waterbirds_like"))
    train, val, test = cache.split("train"), cache.split("val"), cache.split("test")
    wga = lambda logits: metrics.evaluate_split(logits, test)["worst_group_acc"]
    torch.set_num_threads(1)
    ours = np.mean(
        [
            wga(
                heads.create("dpe", seed=s, protocol="package", num_stages=3)
                .fit(train, val)
                .decision_function(test.Z)
            )
            for s in range(5)
        ]
    )
    theirs = wga(np.log(run_package(val, test, seed=0, num_stages=3)))
    assert abs(ours - theirs) <= PACKAGE_TOL, (ours, theirs)


# Measured (default split protocol, 15 stages; test WGA seeds 0/1/2): colored_mnist ERM
# .032/.016/.007, DPE .235/.373/.371; waterbirds_like ERM .391/.357/.413, DPE .643/.641/.652;
# dominoes ERM .835/.850/.840, DPE .870/.865/.880. Seed-0 margins 0.20, 0.25, 0.035; asserted with
# slack.
MARGINS = {"colored_mnist": 0.10, "waterbirds_like": 0.15, "dominoes": 0.015}


@pytest.mark.parametrize("name", list(MARGINS))
def test_dpe_beats_erm_on_real_caches(real_cache, name):
    from embedkit.cache import Cache

    cache = Cache.open(real_cache(name))
    train, val, test = cache.split("train"), cache.split("val"), cache.split("test")
    wga = lambda h: metrics.evaluate_split(h.decision_function(test.Z), test)["worst_group_acc"]
    erm = wga(heads.create("erm", seed=0).fit(train, val))
    assert wga(heads.create("dpe", seed=0).fit(train, val)) >= erm + MARGINS[name]
