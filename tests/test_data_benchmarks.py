"""The seeded offline benchmarks: split sizes, group counts and realised correlation follow the
options; the same seed rebuilds identical arrays, another seed does not."""

import numpy as np
import pytest

from embedkit import data
from embedkit.schema import SPLITS
from embedkit.data.mnist import load_mnist
from embedkit.errors import EmbedkitError
from tests.conftest import DATA, need_data, need_fashion


def half_up(x):
    return int(np.floor(x + 0.5 + 1e-9))


def check_aligned_counts(ds, rho):
    """Within each class y of each split, exactly round(rho * n_y) rows have a = y."""
    s = ds.samples()
    for code, split in enumerate(SPLITS):
        m = s.split == code
        for c in range(len(ds.class_names)):
            in_class = m & (s.y == c)
            assert (s.a[in_class] == c).sum() == half_up(rho[split] * in_class.sum()), (split, c)
        n = m.sum()
        realised = ds.meta["correlation"][split]
        assert realised == pytest.approx((s.a[m] == s.y[m]).mean())
        assert abs(realised - rho[split]) <= len(ds.class_names) / (2 * n) + 1e-12


def check_seeds(name, **opts):
    a, b, c = (data.create(name, root=DATA, seed=seed, **opts) for seed in (3, 3, 4))
    assert np.array_equal(a.images, b.images) and a.samples().same_rows(b.samples())
    assert not np.array_equal(a.images, c.images)
    assert not a.samples().same_rows(c.samples())


# -- colored_digits (no files) -------------------------------------------------------------------


def test_colored_digits_defaults():
    ds = data.create("colored_digits")
    s = ds.samples()
    assert np.bincount(s.split).tolist() == [1000, 400, 397]
    assert ds.images.shape == (1797, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.class_names == ["0-4", "5-9"] and ds.attr_names == ["red", "green"]
    assert ds.meta["target_correlation"] == {"train": 0.9, "val": 0.5, "test": 0.5}
    check_aligned_counts(ds, ds.meta["target_correlation"])
    im = ds.load(5)
    assert im.mode == "RGB" and im.size == (32, 32)
    # The colour is the attribute: red rows have no green, green rows no red.
    px = ds.images.reshape(len(ds), -1, 3).max(axis=1)
    assert (px[s.a == 0, 1] == 0).all() and (px[s.a == 1, 0] == 0).all()
    assert (px[s.a == 0, 0] > 0).all() and (px[s.a == 1, 1] > 0).all()


def test_colored_digits_options_and_seeds():
    ds = data.create(
        "colored_digits",
        n_train=300,
        n_val=100,
        n_test=100,
        train_corr=0.75,
        test_corr=0.2,
        classes="binary",
    )
    assert np.bincount(ds.samples().split).tolist() == [300, 100, 100]
    check_aligned_counts(ds, {"train": 0.75, "val": 0.5, "test": 0.2})
    check_seeds("colored_digits", n_train=200, n_val=50, n_test=50)
    ten = data.create("colored_digits", classes="digits", n_train=500, n_val=200, n_test=200)
    assert len(ten.class_names) == len(ten.attr_names) == 10
    check_aligned_counts(ten, {"train": 0.9, "val": 0.1, "test": 0.1})
    with pytest.raises(EmbedkitError, match="must not exceed the 1797"):
        data.create("colored_digits", n_train=1500, n_val=400)
    with pytest.raises(EmbedkitError, match=r"train_corr=1.5 must lie in \[0, 1\]"):
        data.create("colored_digits", train_corr=1.5)


# -- colored_mnist -------------------------------------------------------------------------------


def test_colored_mnist_follows_the_subpopbench_convention():
    need_data("mnist")
    ds = data.create("colored_mnist", root=DATA, n_train=3000, n_val=1000, n_test=2000)
    s = ds.samples()
    assert np.bincount(s.split).tolist() == [3000, 1000, 2000]
    assert ds.meta["target_correlation"] == {"train": 0.8, "val": 0.5, "test": 0.1}
    check_aligned_counts(ds, ds.meta["target_correlation"])
    # Rows come from SubpopBench's ranges of the MNIST train file; 25 % of each class's labels
    # are flipped before colouring (checked against the true digits).
    x, digits = load_mnist(DATA, "train")
    idx = np.array([int(u.rsplit("-", 1)[1]) for u in s.uid])
    for code, (lo, hi) in enumerate(((0, 30000), (30000, 40000), (40000, 60000))):
        assert ((idx[s.split == code] >= lo) & (idx[s.split == code] < hi)).all()
    clean = (digits[idx] >= 5).astype(int)
    for code, split in enumerate(SPLITS):
        m = s.split == code
        expected = sum(half_up(0.25 * (m & (clean == c)).sum()) for c in (0, 1))
        assert (s.y[m] != clean[m]).sum() == expected == ds.meta["label_noise_flipped"][split]
    # The image is the MNIST digit centred on 32x32, painted in its colour.
    i = 0
    channel = s.a[i]  # red = channel 0, green = channel 1
    assert np.array_equal(ds.images[i, 2:30, 2:30, channel], x[idx[i]])


def test_colored_mnist_seeds():
    need_data("mnist")
    check_seeds("colored_mnist", n_train=500, n_val=200, n_test=200)


# -- composites: dominoes and waterbirds_like ----------------------------------------------------


def expected_table(n, class1_fraction, rho):
    """2x2 group counts: classes split n by class1_fraction, then round(rho * n_y) aligned."""
    n0 = half_up(n * (1 - class1_fraction))
    out = []
    for y, n_y in enumerate((n0, n - n0)):
        aligned = half_up(rho * n_y)
        out.append([aligned, n_y - aligned] if y == 0 else [n_y - aligned, aligned])
    return np.array(out)


def check_tables(ds, sizes, class1_fraction, rho):
    counts = ds.group_counts()
    for split, n in zip(SPLITS, sizes):
        assert (
            counts[split].reshape(2, 2).tolist()
            == expected_table(n, class1_fraction, rho[split]).tolist()
        ), split
    check_aligned_counts(ds, rho)


def check_sources_used_once(ds):
    s = ds.samples()
    core, spur = zip(*(u.split("+") for u in s.uid))
    assert len(set(core)) == len(set(spur)) == len(s)
    test = s.split == 2
    assert all(("test/" in u and ("t10k" in u)) for u in s.uid[test])
    assert not any(("test/" in u or "t10k" in u) for u in s.uid[~test])


@pytest.fixture(scope="module")
def dominoes_small():
    need_data("cifar10", "train.tar")
    need_data("mnist")
    return data.create("dominoes", root=DATA, n_train=400, n_val=100, n_test=80, seed=1)


def test_dominoes_groups_and_correlation(dominoes_small):
    ds = dominoes_small
    assert ds.class_names == ["automobile", "truck"] and ds.attr_names == ["digit0", "digit1"]
    assert np.bincount(ds.samples().split).tolist() == [400, 100, 80]
    check_tables(ds, (400, 100, 80), 0.5, {"train": 0.95, "val": 0.5, "test": 0.5})
    check_sources_used_once(ds)


def test_dominoes_image_is_the_mnist_digit_over_the_cifar_image(dominoes_small):
    import tarfile

    from PIL import Image

    ds = dominoes_small
    s = ds.samples()
    assert ds.images.shape[1:] == (64, 32, 3) and ds.load(0).size == (32, 64)
    x, digits = load_mnist(DATA, "t10k")
    i = int(np.flatnonzero(s.split == 2)[0])
    cifar_uid, mnist_uid = s.uid[i].split("+")
    idx = int(mnist_uid.rsplit("-", 1)[1])
    assert digits[idx] == int(ds.attr_names[s.a[i]][-1])
    assert np.array_equal(ds.images[i, 2:30, 2:30, 0], x[idx])
    assert (ds.images[i, :32, :, 0] == ds.images[i, :32, :, 2]).all()
    with tarfile.open(need_data("cifar10", "test.tar")) as tf:
        member = cifar_uid.split("/", 1)[1]
        ref = np.asarray(Image.open(tf.extractfile(member)).convert("RGB"))
    assert np.array_equal(ds.images[i, 32:], ref)
    assert member.split("/")[0] == ds.class_names[s.y[i]]


def test_dominoes_seeds_and_limits():
    need_data("cifar10", "train.tar")
    need_data("mnist")
    check_seeds("dominoes", n_train=60, n_val=20, n_test=20, train_corr=0.9)
    with pytest.raises(EmbedkitError, match="not enough MNIST t10k images of digit 0"):
        data.create("dominoes", root=DATA, n_train=10, n_val=10, n_test=2000)


@pytest.fixture(scope="module")
def waterbirds_like_small():
    need_data("cifar10", "train.tar")
    need_fashion()
    return data.create("waterbirds_like", root=DATA, n_train=400, n_val=120, n_test=100)


def test_waterbirds_like_groups_and_correlation(waterbirds_like_small):
    ds = waterbirds_like_small
    assert ds.class_names == ["sneaker", "ankle_boot"] and ds.attr_names == ["land", "water"]
    check_tables(ds, (400, 120, 100), 0.23, {"train": 0.95, "val": 0.5, "test": 0.5})
    check_sources_used_once(ds)
    # Backgrounds come from the option's CIFAR classes: land rows on deer/horse/frog, water on
    # ship/airplane.
    s = ds.samples()
    scene = np.array([u.split("+")[1].split("/")[1] for u in s.uid])
    assert set(scene[s.a == 0]) <= {"deer", "horse", "frog"} and set(scene[s.a == 1]) <= {
        "ship",
        "airplane",
    }


def test_waterbirds_like_default_train_groups_mimic_waterbirds():
    # Waterbirds train (Sagawa et al.): 3,498 / 184 / 56 / 1,057. The defaults reproduce the shape.
    assert expected_table(4795, 0.23, 0.95).ravel().tolist() == [3507, 185, 55, 1048]
    opts = data.dataset_class("waterbirds_like").OPTIONS
    assert (
        opts["n_train"].default,
        opts["class1_fraction"].default,
        opts["train_corr"].default,
    ) == (4795, 0.23, 0.95)


def test_waterbirds_like_pixels_are_the_alpha_blend(waterbirds_like_small):
    import tarfile

    from PIL import Image

    from embedkit.data.mnist import load_fashion

    ds = waterbirds_like_small
    s = ds.samples()
    i = int(np.flatnonzero(s.split == 2)[0])
    item_uid, scene_uid = s.uid[i].split("+")
    x, lab = load_fashion(need_fashion(), "t10k")
    item = x[int(item_uid.rsplit("-", 1)[1])].astype(np.float64)
    assert lab[int(item_uid.rsplit("-", 1)[1])] == (7, 9)[s.y[i]]  # Sneaker, Ankle boot
    with tarfile.open(need_data("cifar10", "test.tar")) as tf:
        scene = np.asarray(
            Image.open(tf.extractfile(scene_uid.split("/", 1)[1])).convert("RGB")
        ).astype(np.float64)
    alpha = item / 255
    ref = scene.copy()
    ref[2:30, 2:30] = (
        alpha[..., None] * item[..., None] + (1 - alpha[..., None]) * scene[2:30, 2:30]
    )
    assert np.abs(ds.images[i].astype(np.float64) - ref).max() <= 0.5 + 1e-9


def test_waterbirds_like_seeds_and_missing_fashion(tmp_path):
    need_data("cifar10", "train.tar")
    need_fashion()
    check_seeds("waterbirds_like", n_train=60, n_val=20, n_test=20)
    with pytest.raises(
        EmbedkitError,
        match=r"idx3-ubyte.gz: no such file.*apt-get install -y dataset-fashion-mnist",
    ):
        data.create(
            "waterbirds_like",
            root=DATA,
            n_train=10,
            n_val=10,
            n_test=10,
            fashion_root=str(tmp_path),
        )
    with pytest.raises(EmbedkitError, match="core_classes"):
        data.create("waterbirds_like", root=DATA, core_classes="Sneaker")


# -- counterfactuals (P4 pairs): only the spurious part changes ---------------------------------


def test_colored_counterfactual_changes_only_the_colour():
    cd = data.create("colored_digits", n_train=50, n_val=20, n_test=20)
    s = cd.samples()
    twin = np.asarray(cd.counterfactual(0, 1 - s.a[0]))
    assert np.array_equal(twin.max(axis=2), cd.images[0].max(axis=2))  # same strokes
    assert twin[..., s.a[0]].max() == 0 and twin[..., 1 - s.a[0]].max() > 0  # other colour
    assert np.array_equal(np.asarray(cd.counterfactual(0, s.a[0])), cd.images[0])


def test_composite_counterfactuals_change_only_the_spurious_part(
    dominoes_small, waterbirds_like_small
):
    s = dominoes_small.samples()
    i = int(np.flatnonzero(s.split == 2)[0])
    twin = np.asarray(dominoes_small.counterfactual(i, 1 - s.a[i]))
    assert np.array_equal(twin[32:], dominoes_small.images[i, 32:])  # the CIFAR half is kept
    donors = dominoes_small.images[(s.split == 2) & (s.a == 1 - s.a[i]), :32]
    assert any(np.array_equal(twin[:32], d) for d in donors)  # a digit of the other value

    ds = waterbirds_like_small
    s = ds.samples()
    i = int(np.flatnonzero(s.split == 0)[0])
    twin = np.asarray(ds.counterfactual(i, 1 - s.a[i]))
    opaque = ds.items[i] == 255  # alpha 1: the item's own pixels survive any scene
    assert opaque.any() and np.array_equal(twin[opaque], ds.images[i][opaque])
    assert not np.array_equal(twin, ds.images[i])
    with pytest.raises(EmbedkitError, match="attribute 2 out of range"):
        ds.counterfactual(i, 2)
