"""Config objects (issue 12): `extract`, `train_erm` and `fit_grid` take their settings as one
dataclass or as keyword arguments of the same names, with the same result; an unknown keyword
or a bad value is one clear error; the CLI builds the config objects from its flags.

Real data at a tiny size: colored_digits (scikit-learn's bundled digit images), a small_cnn
trained for two steps, and that checkpoint extracted."""

import h5py
import numpy as np
import pytest
import torch

from embedkit import data
from embedkit.backbones.train_backbone import TrainConfig, train_erm
from embedkit.cli import main
from embedkit.errors import EmbedkitError
from embedkit.extract import ExtractConfig, extract
from embedkit.heads.trainer import LoopConfig, fit_grid, lr_wd_grid

TINY = {"n_train": 96, "n_val": 32, "n_test": 32}
TRAIN = {"width": 4, "steps": 2, "batch_size": 32, "lr": 0.05, "seed": 3}
EXTRACT = {"batch_size": 16, "workers": 0, "device": "cpu", "part_rows": 64}


@pytest.fixture(scope="module")
def tiny():
    return data.create("colored_digits", **TINY)


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """The same two-step run as keywords and as a TrainConfig."""
    d = tmp_path_factory.mktemp("erm")
    by_kw = train_erm(tiny, out=d / "kw.pt", log=None, **TRAIN)
    by_cfg = train_erm(tiny, TrainConfig(**TRAIN), out=d / "cfg.pt", log=None)
    return by_kw, by_cfg


def _feats(path, key):
    with h5py.File(path, "r") as f:
        g = f["embeddings"][key]
        return g["feats"][()], g["logits"][()], f["samples"]["uid"][()]


def test_train_erm_config_and_keywords_give_identical_weights(trained):
    a, b = (torch.load(p, weights_only=True) for p in trained)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    # The checkpoint records every setting; they rebuild the same config.
    assert a["train"]["config"] == b["train"]["config"]
    assert TrainConfig(**a["train"]["config"]) == TrainConfig(**TRAIN)
    assert a["train"]["lr"] == 0.05 and a["train"]["total_steps"] == 2  # the old keys stay


def test_extract_config_and_keywords_give_identical_caches(tiny, trained, tmp_path):
    spec = f"checkpoint:{trained[0]}"
    by_kw = extract(tiny, spec, tmp_path / "kw.h5", log=lambda m: None, **EXTRACT)
    by_cfg = extract(tiny, spec, tmp_path / "cfg.h5", ExtractConfig(**EXTRACT), log=print)
    # a config with keyword overrides: the keywords win
    mixed = extract(
        tiny,
        spec,
        tmp_path / "mixed.h5",
        ExtractConfig(batch_size=4, workers=0, part_rows=8),
        batch_size=16,
        part_rows=64,
        device="cpu",
        log=lambda m: None,
    )
    assert by_kw.key == by_cfg.key == mixed.key
    assert by_kw.n_parts == by_cfg.n_parts == mixed.n_parts
    ref = _feats(by_kw.path, by_kw.key)
    for res in (by_cfg, mixed):
        for x, y in zip(ref, _feats(res.path, res.key), strict=True):
            assert np.array_equal(x, y)


def test_fit_grid_loop_config_and_keywords_give_identical_heads(tiny):
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(64, 5)).astype(np.float32)
    y = (Z[:, 0] + 0.3 * rng.normal(size=64) > 0).astype(np.int64)
    loop = {"steps": 7, "eval_every": 7, "batch_size": 16, "init_seed": 1, "sampler_seed": 2}
    a = fit_grid(Z, y, lr_wd_grid((0.1, 1.0), (0.0,)), threads=1, **loop)
    b = fit_grid(Z, y, lr_wd_grid((0.1, 1.0), (0.0,)), LoopConfig(threads=1, **loop))
    c = fit_grid(Z, y, lr_wd_grid((0.1, 1.0), (0.0,)), LoopConfig(steps=1, threads=1), **loop)
    for other in (b, c):
        for ha, hb in zip(a.final, other.final, strict=True):
            for k in ha.arrays:
                assert np.array_equal(ha.arrays[k], hb.arrays[k]), k
        assert other.info["steps"] == 7


def test_unknown_keyword_is_a_type_error_naming_it(tiny, tmp_path):
    with pytest.raises(TypeError, match="'batch_sise'"):
        extract(tiny, "unused", tmp_path / "x.h5", batch_sise=8)
    with pytest.raises(TypeError, match="'learning_rate'"):
        train_erm(tiny, out=tmp_path / "x.pt", learning_rate=0.1)
    with pytest.raises(TypeError, match="'step'"):
        fit_grid(np.zeros((4, 2)), np.array([0, 1, 0, 1]), lr_wd_grid((0.1,), (0.0,)), step=3)
    with pytest.raises(TypeError, match="must be a TrainConfig, not ExtractConfig"):
        train_erm(tiny, ExtractConfig(), out=tmp_path / "x.pt")
    assert not list(tmp_path.iterdir())  # refused before anything was written


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ExtractConfig(batch_size=0), "--batch-size and --part-rows must be positive"),
        (lambda: ExtractConfig(shard="2/2"), r"--shard 2/2: need n >= 1 and 0 <= i < n"),
        (lambda: ExtractConfig(shard="half"), r"--shard 'half': expected i/n"),
        (lambda: ExtractConfig(dtype="int8"), "--dtype 'int8': choose float16 or float32"),
        (lambda: ExtractConfig(precision="fp8"), "--precision 'fp8'"),
        (lambda: ExtractConfig(splits=["train", "dev"]), "unknown split 'dev'"),
        (lambda: TrainConfig(optimizer="rmsprop"), "--optimizer 'rmsprop': choose sgd or adam"),
        (lambda: TrainConfig(arch="vgg"), "--arch 'vgg': choose"),
        (lambda: TrainConfig(lr=0), "train_erm: need lr > 0"),
        (lambda: TrainConfig(epochs=2, save_early=[2]), "--save-early 2: epochs must lie in 1..1"),
        (lambda: LoopConfig(dtype="float16"), "trainer: dtype must be float32 or float64"),
        (lambda: LoopConfig(steps=0), r"trainer: steps \(0\) and eval_every"),
        (lambda: LoopConfig(model="tree"), "unknown head model 'tree'"),
    ],
)
def test_bad_value_is_one_clear_error(make, message):
    with pytest.raises(EmbedkitError, match=message) as e:
        make()
    assert "\n" not in str(e.value)


def test_keyword_overrides_are_validated_too(tiny, tmp_path):
    with pytest.raises(EmbedkitError, match="--batch-size and --part-rows must be positive"):
        extract(tiny, "unused", tmp_path / "x.h5", ExtractConfig(), batch_size=0)
    with pytest.raises(EmbedkitError, match="--warmup 1.5"):
        train_erm(tiny, TrainConfig(), out=tmp_path / "x.pt", warmup=1.5)


def test_configs_normalise_their_fields():
    c = ExtractConfig(splits="test", shard="1/4", dtype="fp16", prompts="waterbirds", wait=2)
    assert (c.splits, c.shard, c.dtype, c.prompts, c.wait) == (
        ("test",),
        (1, 4),
        "float16",
        ("waterbirds",),
        2.0,
    )
    t = TrainConfig(save_early=[3, 1, 3], checkpoint_steps=["5"], arch_kwargs=None)
    assert (t.save_early, t.checkpoint_steps, t.arch_kwargs) == ((1, 3), (5,), {})
    assert LoopConfig(snapshot_steps=[4, "8"], batch_size="16").snapshot_steps == (4, 8)


def test_cli_extract_builds_the_config(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake(dataset, backbone, out, config=None, **kw):
        seen.update(dataset=dataset, backbone=backbone, out=out, config=config, kw=kw)
        from embedkit.extract.extractor import ExtractResult

        return ExtractResult(None, "k", 0, 0)

    monkeypatch.setattr("embedkit.extract.extract", fake)
    argv = ["extract", "--dataset", "colored_digits", "--dataset-opt", "n_train=96"]
    argv += ["--backbone", "checkpoint:m.pt", "--out", str(tmp_path / "c.h5")]
    argv += ["--splits", "train,test", "--batch-size", "8", "--shard", "1/3", "--dtype", "float16"]
    argv += ["--backbone-opt", "pooling=cls", "--no-resume", "--strict", "--wait", "5"]
    assert main(argv) == 0
    cfg = seen["config"]
    assert isinstance(cfg, ExtractConfig)
    assert cfg == ExtractConfig(
        splits=("train", "test"),
        batch_size=8,
        shard=(1, 3),
        dtype="float16",
        backbone_options={"pooling": "cls"},
        resume=False,
        strict=True,
        wait=5.0,
    )
    assert seen["kw"] == {"root": None, "dataset_options": {"n_train": 96}}
    # A bad flag value: the config's one-line error, exit status 2, nothing called.
    seen.clear()
    assert main(argv[:-2] + ["--part-rows", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "embedkit extract: error: --batch-size and --part-rows must be positive"
    assert not seen


def test_cli_train_erm_builds_the_config(monkeypatch, tmp_path, capsys):
    seen = {}

    def fake(dataset, config=None, **kw):
        seen.update(dataset=dataset, config=config, kw=kw)

    monkeypatch.setattr("embedkit.backbones.train_backbone.train_erm", fake)
    argv = ["train-erm", "--dataset", "colored_digits", "--out", str(tmp_path / "m.pt")]
    argv += ["--lr", "0.1", "--steps", "5", "--checkpoint-steps", "2,4", "--no-batchnorm"]
    argv += ["--optimizer", "adam", "--threads", "0", "--holdout", "0.2"]
    assert main(argv) == 0
    assert seen["config"] == TrainConfig(
        lr=0.1,
        steps=5,
        checkpoint_steps=(2, 4),
        arch_kwargs={"batchnorm": False},
        optimizer="adam",
        threads=None,
        holdout=0.2,
    )
    assert seen["kw"]["out"] == str(tmp_path / "m.pt")
    assert main(argv + ["--warmup", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "embedkit train-erm: error: --warmup 1.0: a fraction of the steps in [0, 1)"
