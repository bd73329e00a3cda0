"""The small ERM backbone trainer (methods spec 11.4, `embedkit train-erm`) on the real embedded
digits (colored_digits, scikit-learn's bundled images), at a tiny size."""

import numpy as np
import pytest
import torch

from embedkit import data
from embedkit.cli import main
from embedkit.backbones.train_backbone import TrainingDiverged, load_checkpoint, load_images, normalize, train_erm
from embedkit.errors import EmbedkitError

TINY = {"n_train": 160, "n_val": 40, "n_test": 40}


@pytest.fixture(scope="module")
def tiny():
    return data.create("colored_digits", **TINY)


def _train(ds, path, **kw):
    args = dict(width=4, epochs=2, batch_size=32, lr=0.02, seed=0, log=None)
    args.update(kw)
    return train_erm(ds, out=path, **args)


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tiny, tmp_path):
    a = torch.load(_train(tiny, tmp_path / "a.pt"), weights_only=True)
    b = torch.load(_train(tiny, tmp_path / "b.pt"), weights_only=True)
    c = torch.load(_train(tiny, tmp_path / "c.pt", seed=1), weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    curve = [(h["loss"], h["acc"]) for h in a["train"]["history"]]
    assert curve == [(h["loss"], h["acc"]) for h in b["train"]["history"]]
    assert not torch.equal(a["state_dict"]["fc.weight"], c["state_dict"]["fc.weight"])


def test_checkpoint_format_and_round_trip(tiny, tmp_path):
    path = _train(tiny, tmp_path / "m.pt")
    ckpt = torch.load(path, weights_only=True)  # plain types only: no pickle needed
    assert ckpt["format"] == "embedkit-backbone" and ckpt["format_version"] == 1
    assert ckpt["arch"] == "small_cnn" and ckpt["num_classes"] == 2
    assert ckpt["arch_kwargs"] == {"width": 4, "depth": 3, "hidden": 64, "batchnorm": True}
    assert ckpt["preprocess"]["size"] == 32 and len(ckpt["preprocess"]["mean"]) == 3
    t = ckpt["train"]
    assert (t["dataset"], t["lr"], t["epochs"], t["seed"], t["n_train"]) == (
        "colored_digits",
        0.02,
        2,
        0,
        160,
    )
    assert t["dataset_meta"]["options"]["n_train"] == 160 and t["steps"] == 2 * 5

    model, again = load_checkpoint(path)
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(model.state_dict()[k], v)
    # The preprocessing stored is what training used: the stats of the train images on [0, 1].
    rows = np.flatnonzero(tiny.samples().split == 0)
    imgs = load_images(tiny, rows)
    x = imgs.double() / 255
    assert ckpt["preprocess"]["mean"] == pytest.approx(x.mean(dim=(0, 2, 3)).tolist())
    sd = x.std(dim=(0, 2, 3))
    assert sd[2] == 0  # red and green digits: the blue channel is constant in train ...
    assert ckpt["preprocess"]["std"] == pytest.approx(
        [sd[0].item(), sd[1].item(), 1.0]
    )  # ... so std 1
    mean = torch.tensor(ckpt["preprocess"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ckpt["preprocess"]["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = model.forward_features(normalize(imgs[:8], mean, std))
        assert torch.allclose(model(normalize(imgs[:8], mean, std)), model.fc(feats))
    assert feats.shape == (8, 64) and (feats >= 0).all()  # post-ReLU embedding

    # The extractor's `checkpoint:PATH` backbone sees the same network and preprocessing.
    from embedkit import backbones

    bb = backbones.create(f"checkpoint:{path}", device="cpu")
    batch = torch.stack([bb.transform(tiny.load(int(i))) for i in rows[:8]])
    got, logits = bb.features(batch)
    np.testing.assert_allclose(np.asarray(got), feats.numpy(), rtol=1e-5, atol=1e-5)


def test_in_memory_images_match_load(tiny):
    rows = np.array([0, 5, 77])
    imgs = load_images(tiny, rows)
    for k, i in enumerate(rows):
        assert np.array_equal(imgs[k].permute(1, 2, 0).numpy(), np.asarray(tiny.load(int(i))))


def test_init_from_a_checkpoint_and_a_new_fc(tiny, tmp_path):
    first = _train(tiny, tmp_path / "first.pt", epochs=1)
    digits = data.create("colored_digits", classes="digits", n_train=100, n_val=20, n_test=20)
    second = _train(digits, tmp_path / "second.pt", epochs=1, init=first)
    ck = torch.load(second, weights_only=True)
    assert ck["num_classes"] == 10 and ck["train"]["init"]["new_fc"] is True
    # zero epochs is refused, so check the init itself: lr tiny -> conv weights barely move
    third = _train(tiny, tmp_path / "third.pt", epochs=1, lr=1e-12, momentum=0.0, init=first)
    w0 = torch.load(first, weights_only=True)["state_dict"]["conv.0.weight"]
    w1 = torch.load(third, weights_only=True)["state_dict"]["conv.0.weight"]
    assert torch.allclose(w0, w1, atol=1e-9)
    with pytest.raises(EmbedkitError, match="architecture"):
        _train(tiny, tmp_path / "bad.pt", width=8, init=first)


def test_divergence_is_raised_with_where_it_happened(tiny, tmp_path):
    with pytest.raises(TrainingDiverged) as e:
        _train(tiny, tmp_path / "nan.pt", lr=1e6, arch_kwargs={"batchnorm": False})
    assert e.value.lr == 1e6 and e.value.step >= 0
    assert not (tmp_path / "nan.pt").exists()


def test_resnet_cifar_arch(tiny, tmp_path):
    path = train_erm(
        tiny, arch="resnet_cifar:20", epochs=1, batch_size=80, out=tmp_path / "r.pt", log=None
    )
    model, ckpt = load_checkpoint(path)
    assert ckpt["arch"] == "resnet_cifar" and ckpt["arch_kwargs"] == {"depth": 20}
    assert model.fc.in_features == 64


def test_cli_train_erm_and_bad_flags(tmp_path, capsys):
    out = tmp_path / "cli.pt"
    rc = main(
        [
            "train-erm",
            "--dataset",
            "colored_digits",
            "--dataset-opt",
            "n_train=64",
            "--dataset-opt",
            "n_val=16",
            "--dataset-opt",
            "n_test=16",
            "--width",
            "4",
            "--epochs",
            "1",
            "--lr",
            "0.05",
            "--seed",
            "3",
            "--out",
            str(out),
        ]
    )
    assert rc == 0 and out.is_file()
    assert "epoch 1/1" in capsys.readouterr().out
    ck = torch.load(out, weights_only=True)
    assert ck["train"]["seed"] == 3 and ck["train"]["dataset_options"]["n_train"] == 64
    for bad, msg in (
        (["--arch", "vgg"], "--arch"),
        (["--arch", "resnet_cifar:20", "--width", "8"], "small_cnn only"),
        (["--lr", "0"], "lr > 0"),
        (["--dataset-opt", "bogus=1"], "bogus"),
    ):
        rc = main(
            ["train-erm", "--dataset", "colored_digits", "--out", str(tmp_path / "x.pt"), *bad]
        )
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, err
