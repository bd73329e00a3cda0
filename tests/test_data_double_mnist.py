"""Double-MNIST (methods spec 11.4): exact group counts, pixels of both halves, and the source of
every test image, checked against the real MNIST files."""

import numpy as np
import pytest

from embedkit import data
from embedkit.errors import EmbedkitError
from tests.conftest import DATA, need_data


def build(**options):
    need_data("mnist")
    return data.create(
        "double_mnist", root=DATA, **{"n_train": 1000, "n_val": 200, "n_test": 500, **options}
    )


def test_exact_group_counts_for_a_given_rho():
    ds = build(train_corr=0.95, digits="0,1,2,3,4")
    counts = ds.group_counts()
    # train: 200 rows per class, round(0.95 * 200) = 190 aligned, the other 10 spread over the
    # 4 other spurious digits in the order y+1, y+2, ...: 3, 3, 2, 2
    train = counts["train"].reshape(5, 5)
    for y in range(5):
        expect = np.zeros(5, int)
        expect[y] = 190
        for j, m in zip(range(1, 5), (3, 3, 2, 2)):
            expect[(y + j) % 5] = m
        assert train[y].tolist() == expect.tolist()
    # val follows train by default; test is balanced (rho = 1/K): 100 rows per class, 20 per group
    assert counts["val"].reshape(5, 5).diagonal().tolist() == [38] * 5
    assert counts["test"].tolist() == [20] * 25
    assert ds.meta["correlation"] == {"train": 0.95, "val": 0.95, "test": 0.2}


@pytest.mark.parametrize("layout,intensity", [("core_left", 0.5), ("core_right", 0.25)])
def test_core_half_full_intensity_spurious_half_at_the_ratio(layout, intensity):
    from embedkit.data.mnist import load_mnist

    ds = build(layout=layout, intensity=intensity, n_train=200, n_val=20, n_test=100)
    s = ds.samples()
    assert ds.images.shape == (320, 28, 56, 3)
    assert (ds.images[..., 0] == ds.images[..., 1]).all() and (
        ds.images[..., 1] == ds.images[..., 2]
    ).all()
    files = {p: load_mnist(DATA, p) for p in ("train", "t10k")}
    core_cols, spur_cols = (
        (slice(0, 28), slice(28, 56)) if layout == "core_left" else (slice(28, 56), slice(0, 28))
    )
    assert ds.meta["spurious_columns"] == [spur_cols.start, spur_cols.stop]
    for i in range(len(s)):
        (cp, ci), (sp, si) = (part.split("-") for part in s.uid[i].split("+"))
        xc, lc = files[cp][0][int(ci)], files[cp][1][int(ci)]
        xs, ls = files[sp][0][int(si)], files[sp][1][int(si)]
        img = ds.images[i, :, :, 0]
        assert np.array_equal(img[:, core_cols], xc)  # full intensity
        assert np.array_equal(img[:, spur_cols], np.floor(xs * intensity + 0.5).astype(np.uint8))
        assert int(lc) == s.y[i] and int(ls) == s.a[i]  # digits k, k aligned
    bright = ds.images[:, :, core_cols, 0].max(axis=(1, 2)).mean()
    assert ds.images[:, :, spur_cols, 0].max(axis=(1, 2)).mean() == pytest.approx(
        intensity * bright, abs=2
    )


def test_no_test_image_comes_from_the_train_files():
    ds = build()
    s = ds.samples()
    test_uids = [u for u, sp in zip(s.uid, s.split) if sp == 2]
    assert test_uids and all(u.startswith("t10k-") and "+t10k-" in u for u in test_uids)
    others = [u for u, sp in zip(s.uid, s.split) if sp != 2]
    assert all(u.startswith("train-") and "+train-" in u for u in others)
    # every source image is used once over both halves of all rows
    halves = [h for u in s.uid for h in u.split("+")]
    assert len(set(halves)) == len(halves)


def test_seeded_options_and_errors():
    a, b, c = (
        build(n_train=100, n_test=50),
        build(n_train=100, n_test=50),
        build(n_train=100, n_test=50, seed=1),
    )
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    twin = np.asarray(a.counterfactual(0, (a.samples().a[0] + 1) % 10))
    assert np.array_equal(twin[:, :28], a.images[0, :, :28]) and not np.array_equal(
        twin, a.images[0]
    )
    with pytest.raises(EmbedkitError, match="layout='top'"):
        build(layout="top")
    with pytest.raises(EmbedkitError, match="not enough MNIST t10k images"):
        build(n_test=9000)
