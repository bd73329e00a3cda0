"""The registry, the option handling, the `embedkit datasets` command and the contract every
adapter keeps (samples, load, thumbnail, meta, pickling, a cache round trip)."""

import json
import pickle

import numpy as np
import pytest

from embedkit import data
from embedkit.cache import Cache, write_cache
from embedkit.cli import main
from embedkit.errors import EmbedkitError
from tests.conftest import DATA, need_data, need_fashion

NAMES = [
    "waterbirds",
    "celeba",
    "csv",
    "cifar10",
    "mnist",
    "colored_mnist",
    "colored_digits",
    "dominoes",
    "double_mnist",
    "waterbirds_like",
    "subpopbench",
    "text_csv",
    "multinli",
    "civilcomments",
]


def test_available_lists_every_adapter_with_one_line():
    entries = data.available()
    assert list(entries) == NAMES
    assert all(line and "\n" not in line for line in entries.values())


def test_unknown_names_and_options_are_one_clear_error():
    with pytest.raises(
        EmbedkitError, match="unknown dataset 'nope'; choose from waterbirds, celeba"
    ):
        data.create("nope")
    with pytest.raises(
        EmbedkitError, match=r"dataset colored_digits: unknown option n_trian \(options: classes"
    ):
        data.create("colored_digits", n_trian=5)
    with pytest.raises(EmbedkitError, match=r"option n_train='many' is not a valid int"):
        data.create("colored_digits", n_train="many")
    with pytest.raises(EmbedkitError, match=r"option classes='three'"):
        data.create("colored_digits", classes="three")


def test_cli_lists_describes_and_fails_cleanly(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == NAMES
    assert main(["datasets", "colored_digits", "--options"]) == 0
    assert "train_corr" in capsys.readouterr().out
    assert (
        main(
            [
                "datasets",
                "colored_digits",
                "--dataset-opt",
                "n_train=100",
                "--dataset-opt",
                "n_val=50",
                "--dataset-opt",
                "n_test=50",
                "--dataset-opt",
                "train_corr=0.8",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "0-4|red" in out and "P(a = y)" in out and "0.800" in out
    assert main(["datasets", "colored_digits", "--dataset-opt", "bogus=1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "embedkit datasets: error: dataset colored_digits: unknown option "
        "bogus (options: classes, train_corr, val_corr, test_corr, "
        "label_noise, n_train, n_val, n_test, seed)"
    )


def small(name):
    """Small versions of the datasets that need no user folder (skip when the data is absent)."""
    if name == "colored_digits":
        return data.create(name, n_train=60, n_val=30, n_test=30)
    if name in ("cifar10",):
        need_data("cifar10", "test.tar")
        return data.create(name, root=DATA, max_per_class=2, val_per_class=1)
    need_data("mnist")
    if name == "mnist":
        return data.create(name, root=DATA)
    if name == "colored_mnist":
        return data.create(name, root=DATA, n_train=100, n_val=50, n_test=50)
    if name == "double_mnist":
        return data.create(name, root=DATA, n_train=100, n_val=20, n_test=50)
    need_data("cifar10", "test.tar")
    if name == "waterbirds_like":
        need_fashion()
    return data.create(name, root=DATA, n_train=40, n_val=20, n_test=20)


@pytest.mark.parametrize(
    "name",
    [
        "colored_digits",
        "cifar10",
        "mnist",
        "colored_mnist",
        "dominoes",
        "double_mnist",
        "waterbirds_like",
    ],
)
def test_adapter_contract(name, tmp_path):
    ds = small(name)
    s = ds.samples()
    assert len(ds) == len(s) and ds.class_names == s.class_names and ds.attr_names == s.attr_names
    assert s.dataset == name and len(set(s.uid)) == len(s)
    for i in (0, len(ds) - 1):
        im = ds.load(i)
        assert im.mode == "RGB"
        th = ds.thumbnail(i)
        assert th.mode == "RGB" and max(th.size) <= 96
    meta = json.loads(json.dumps(ds.meta))  # JSON-clean: the cache stores it
    assert meta["options"] == json.loads(json.dumps(ds.options))
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(np.asarray(clone.load(len(ds) - 1)), np.asarray(ds.load(len(ds) - 1)))
    # The sample table goes into a cache unchanged; `embedkit info` then shows the adapter's counts.
    path = tmp_path / "c.h5"
    write_cache(path, s, "fake", np.zeros((len(s), 2), np.float32))
    cache = Cache.open(path)
    for split, counts in ds.group_counts().items():
        assert cache.group_counts(split).tolist() == counts.tolist()
    assert cache.samples().meta == meta
