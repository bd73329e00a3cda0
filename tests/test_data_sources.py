"""The real offline sources: MNIST idx parsing against the data README, CIFAR-10 straight from
the tars, Fashion-MNIST from the Debian package."""

import gzip
import multiprocessing as mp
import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from embedkit import data
from embedkit.data.mnist import MNIST_MD5, load_fashion, read_idx
from embedkit.errors import EmbedkitError
from tests.conftest import DATA, need_data, need_fashion

# From ../shared/data/README.md ("Details per dataset: mnist").
README_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
README_TRAIN_CLASS_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_mnist_idx_matches_readme_counts_and_checksums():
    folder = need_data("mnist")
    assert MNIST_MD5 == README_MD5
    shapes = {}
    for name, md5 in README_MD5.items():
        arr = read_idx(folder / f"{name}.gz", md5=md5)  # raises on a checksum mismatch
        shapes[name] = arr.shape
    assert shapes == {
        "train-images-idx3-ubyte": (60000, 28, 28),
        "train-labels-idx1-ubyte": (60000,),
        "t10k-images-idx3-ubyte": (10000, 28, 28),
        "t10k-labels-idx1-ubyte": (10000,),
    }
    labels = read_idx(folder / "train-labels-idx1-ubyte.gz")
    assert np.bincount(labels).tolist() == README_TRAIN_CLASS_COUNTS
    # A wrong expected checksum is caught.
    with pytest.raises(EmbedkitError, match="MD5"):
        read_idx(folder / "t10k-labels-idx1-ubyte.gz", md5="0" * 32)


def test_mnist_adapter_rows_and_images():
    need_data("mnist")
    ds = data.create("mnist", root=DATA, n_val=5000)
    s = ds.samples()
    assert np.bincount(s.split).tolist() == [55000, 5000, 10000]
    assert np.bincount(s.y[s.split < 2]).tolist() == README_TRAIN_CLASS_COUNTS
    im = ds.load(0)
    assert im.mode == "RGB" and im.size == (28, 28)


def test_idx_header_checks(tmp_path):
    good = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in good.shape)
    p = tmp_path / "x-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(header + good.tobytes()))
    assert np.array_equal(read_idx(p), good)
    p.write_bytes(gzip.compress(header + good.tobytes()[:-1]))
    with pytest.raises(EmbedkitError, match="promises"):
        read_idx(p)
    p.write_bytes(gzip.compress(bytes([0, 0, 9, 3]) + header[4:] + good.tobytes()))
    with pytest.raises(EmbedkitError, match="magic"):
        read_idx(p)
    p.write_bytes(b"not gzip at all")
    with pytest.raises(EmbedkitError, match="gzip"):
        read_idx(p)


@pytest.fixture(scope="module")
def cifar_small():
    need_data("cifar10", "test.tar")
    return data.create("cifar10", root=DATA, max_per_class=3, val_per_class=2)


def test_cifar10_reads_members_straight_from_the_tars(cifar_small):
    folder = need_data("cifar10")
    s = cifar_small.samples()
    assert np.bincount(s.split).tolist() == [30, 20, 30]
    assert cifar_small.class_names[0] == "airplane" and cifar_small.class_names[9] == "truck"
    assert cifar_small.attr_names == ["all"] and (s.a == 0).all()
    # Val is the highest-numbered files of each class in train.tar; test comes from test.tar.
    assert s.uid[s.split == 1][:2].tolist() == [
        "train/airplane/4998.jpg",
        "train/airplane/4999.jpg",
    ]
    assert s.uid[s.split == 2][0] == "test/airplane/0000.jpg"
    with tarfile.open(folder / "test.tar") as tf:
        for i in np.flatnonzero(s.split == 2)[[0, -1]]:
            member = s.uid[i].split("/", 1)[1]
            ref = np.asarray(Image.open(tf.extractfile(member)).convert("RGB"))
            assert np.array_equal(np.asarray(cifar_small.load(i)), ref)
            assert s.y[i] == cifar_small.class_names.index(member.split("/")[0])


def _load_in_child(ds, rows):
    return [np.asarray(ds.load(i)).tobytes() for i in rows]


def test_cifar10_is_picklable_and_reads_in_forked_workers(cifar_small):
    rows = list(range(0, len(cifar_small), 7))
    ref = [np.asarray(cifar_small.load(i)).tobytes() for i in rows]  # opens the parent's descriptor
    clone = pickle.loads(pickle.dumps(cifar_small))
    assert [np.asarray(clone.load(i)).tobytes() for i in rows] == ref
    with mp.get_context("fork").Pool(2) as pool:
        parts = pool.starmap(_load_in_child, [(cifar_small, rows[0::2]), (cifar_small, rows[1::2])])
    assert parts[0] == ref[0::2] and parts[1] == ref[1::2]


def test_fashion_mnist_from_the_debian_package():
    folder = need_fashion()
    x, y = load_fashion(folder, "t10k")
    assert x.shape == (10000, 28, 28) and np.bincount(y).tolist() == [1000] * 10
    with pytest.raises(EmbedkitError, match="dataset-fashion-mnist"):
        load_fashion(folder / "missing", "t10k")


def test_missing_shared_folder_names_the_file(tmp_path):
    with pytest.raises(
        EmbedkitError, match=r"mnist/train-images-idx3-ubyte.gz: no such file.*EMBEDKIT_DATA"
    ):
        data.create("mnist", root=tmp_path)
    with pytest.raises(EmbedkitError, match=r"cifar10/classes.txt: no such file"):
        data.create("cifar10", root=tmp_path)
