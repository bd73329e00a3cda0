"""The LR study's backbones in `train-erm` (methods spec 11.4): MLP 5 x 2000 ReLU and torchvision
ResNet-18 with their documented parameter counts, one training step each on Double-MNIST, SGD and
Adam, iteration budgets with early checkpoints, the rows a backbone saw, and divergence."""

import math

import numpy as np
import pytest
import torch

from embedkit.backbones.train_backbone import TrainingDiverged, load_checkpoint, n_parameters, step_path, train_erm
from tests.conftest import DATA, need_data


@pytest.fixture(scope="module")
def dmnist():
    need_data("mnist")
    from embedkit import data

    return data.create("double_mnist", root=DATA, n_train=48, n_val=16, n_test=20)


def test_mlp_5x2000_parameter_count_and_one_step(dmnist, tmp_path):
    from embedkit.backbones.mlp import build_mlp

    m = build_mlp(10, input_shape=[3, 28, 56])  # the documented count in mlp.py
    assert (
        n_parameters(m)
        == 4704 * 2000 + 2000 + 4 * (2000 * 2000 + 2000) + 2000 * 10 + 10
        == 25_438_010
    )
    assert n_parameters(build_mlp(10, input_shape=[3, 28, 56], width=256)) == 1_470_218
    out = train_erm(
        dmnist,
        arch="mlp:5x2000",
        steps=1,
        batch_size=16,
        lr=0.1,
        momentum=0.0,
        out=tmp_path / "m.pt",
        log=None,
    )
    model, ck = load_checkpoint(out)
    assert ck["train"]["n_parameters"] == 25_438_010 and ck["train"]["steps"] == 1
    assert ck["arch_kwargs"] == {
        "input_shape": [3, 28, 56],
        "depth": 5,
        "width": 2000,
        "dropout": 0.0,
    }
    # the step moved the weights away from the seeded init
    torch.manual_seed(0)
    assert not torch.equal(build_mlp(10, input_shape=[3, 28, 56]).fc.weight, model.fc.weight)
    # the rows it saw: the train split, by row id of the sample table
    s = dmnist.samples()
    assert ck["trained_on"]["split"] == "train"
    assert ck["trained_on"]["rows"].tolist() == np.flatnonzero(s.split == 0).tolist()


def test_resnet18_parameter_count_one_step_and_local_weights(dmnist, tmp_path):
    import torchvision

    from embedkit.backbones.resnet18 import build_resnet18, init_resnet18

    assert n_parameters(build_resnet18(10)) == 11_181_642
    assert n_parameters(torchvision.models.resnet18(num_classes=1000)) == 11_689_512
    torch.manual_seed(1)
    imagenet_like = torchvision.models.resnet18(num_classes=1000)
    wfile = tmp_path / "resnet18-local.pth"
    torch.save(imagenet_like.state_dict(), wfile)
    m = build_resnet18(10)
    info = init_resnet18(m, wfile)
    assert info["new_fc"] and torch.equal(m.conv1.weight, imagenet_like.conv1.weight)
    assert m.fc.weight.shape == (10, 512)
    out = train_erm(
        dmnist,
        arch=f"resnet18:{wfile}",
        steps=1,
        batch_size=16,
        lr=0.01,
        out=tmp_path / "r.pt",
        log=None,
    )
    model, ck = load_checkpoint(out)
    assert ck["train"]["init"]["path"] == str(wfile) and ck["train"]["n_parameters"] == 11_181_642
    x = torch.zeros(2, 3, 28, 56)
    assert model(x).shape == (2, 10)


def test_steps_checkpoints_adam_l1_and_extraction(dmnist, tmp_path):
    from embedkit.cache import Cache
    from embedkit.extract import extract

    out = train_erm(
        dmnist,
        arch="mlp:2x32",
        steps=7,
        checkpoint_steps=[2, 5, 99],
        batch_size=20,
        lr=1e-3,
        optimizer="adam",
        l1=1e-4,
        dropout=0.2,
        out=tmp_path / "a.pt",
        log=None,
    )
    _, ck = load_checkpoint(out)
    t = ck["train"]
    assert (
        t["optimizer"] == "adam"
        and t["momentum"] is None
        and t["l1"] == 1e-4
        and t["total_steps"] == 7
    )
    assert [h["step"] for h in t["history"]] == [2, 5, 7] and t["checkpoint_steps"] == [2, 5]
    # 48 rows in batches of 20: three steps per pass, so step 7 is in the third pass
    assert t["history"][-1]["epoch"] == 3
    early, ck2 = load_checkpoint(step_path(out, 2))
    assert ck2["train"]["steps"] == 2 and len(ck2["train"]["history"]) == 1
    res = extract(dmnist, f"checkpoint:{out}", tmp_path / "c.h5", workers=0, log=None)
    test = Cache.open(tmp_path / "c.h5").split("test", backbone=res.key)
    assert test.Z.shape == (20, 32) and (test.Z >= 0).all()  # post-ReLU, dropout off in eval


def test_divergence_is_an_error_the_study_records(dmnist, tmp_path):
    with pytest.raises(TrainingDiverged) as e:
        train_erm(
            dmnist,
            arch="mlp:2x32",
            steps=20,
            batch_size=16,
            lr=1e6,
            out=tmp_path / "d.pt",
            log=None,
        )
    assert e.value.step < 20 and not math.isfinite(e.value.loss)
    assert not (tmp_path / "d.pt").exists()
