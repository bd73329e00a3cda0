"""The `csv` adapter finds the common column names itself and says which it picked.

Manifests use the headers real files have: Waterbirds' own metadata.csv header (img_id,
img_filename, y, split, place, place_filename) over real CUB photos, and a label / spurious / fold
manifest over real MNIST digits.
"""

import csv
import gzip
import tarfile

import numpy as np
import pytest
from PIL import Image

from embedkit import data
from embedkit.errors import EmbedkitError
from tests.conftest import need_data


def cub_root(tmp_path, n=6):
    with open(need_data("cub_photos", "cub_photos.csv")) as f:
        rows = list(csv.DictReader(f))[:n]
    with tarfile.open(need_data("cub_photos", "cub_photos.tar")) as t:
        for r in rows:
            (tmp_path / r["file"]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / r["file"]).write_bytes(t.extractfile(r["file"]).read())
    return rows


def mnist_root(tmp_path, n=12):
    """n real MNIST test digits as PNGs; label = digit parity, spurious = a made-up stroke flag."""
    with gzip.open(need_data("mnist", "t10k-images-idx3-ubyte.gz")) as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:n]
    with gzip.open(need_data("mnist", "t10k-labels-idx1-ubyte.gz")) as f:
        digits = np.frombuffer(f.read(), np.uint8, offset=8)[:n]
    (tmp_path / "png").mkdir()
    lines = ["file,Label,spurious,fold"]
    for i, (im, d) in enumerate(zip(images, digits)):
        Image.fromarray(im).save(tmp_path / "png" / f"{i}.png")
        lines.append(
            f"png/{i}.png,{['even', 'odd'][d % 2]},{int(im.mean() > 30)},{['train', 'val', 'test'][i % 3]}"
        )
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    return digits


def test_waterbirds_header_is_recognised(tmp_path):
    rows = cub_root(tmp_path)
    with open(tmp_path / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["img_id", "img_filename", "y", "split", "place", "place_filename"])
        for i, r in enumerate(rows):
            w.writerow(
                [i + 1, r["file"], r["y_waterbird"], i % 3, (i + 1) % 2, "/o/ocean/00004600.jpg"]
            )
    ds = data.create("csv", root=tmp_path, manifest="metadata.csv")
    assert ds.meta["columns"] == {
        "path": "img_filename",
        "label": "y",
        "attr": "place",
        "split": "split",
    }
    assert ds.meta["columns_detected"] == ["path", "label", "attr", "split"]
    s = ds.samples()
    assert s.y.tolist() == [int(r["y_waterbird"]) for r in rows] and s.a.tolist() == [
        1,
        0,
        1,
        0,
        1,
        0,
    ]
    assert ds.load(0).size == (int(rows[0]["width"]), int(rows[0]["height"]))
    assert (
        "columns path=img_filename, label=y, attr=place, split=split (auto-detected: path, label, attr, split)"
        in ds.summary()
    )


def test_mnist_manifest_with_other_common_names_and_the_extract_log(tmp_path):
    from embedkit.cache import Cache
    from embedkit.extract import extract

    digits = mnist_root(tmp_path)
    ds = data.create("csv", root=tmp_path)
    assert ds.meta["columns"] == {
        "path": "file",
        "label": "Label",
        "attr": "spurious",
        "split": "fold",
    }
    assert ds.class_names == ["even", "odd"] and ds.samples().y.tolist() == (digits % 2).tolist()
    said = []
    ckpt = need_data("weights", "resnet_cifar", "resnet20-12fca82f.th")
    extract(
        "csv",
        f"resnet_cifar:20:{ckpt}",
        tmp_path / "c.h5",
        root=tmp_path,
        workers=0,
        batch_size=12,
        device="cpu",
        log=said.append,
    )
    assert any(
        m.startswith("dataset csv: columns path=file, label=Label, attr=spurious, split=fold")
        for m in said
    )
    meta = Cache.open(tmp_path / "c.h5").info()["dataset_meta"]  # the pick travels in the cache
    assert meta["columns"]["attr"] == "spurious" and meta["columns_detected"] == [
        "path",
        "label",
        "attr",
        "split",
    ]


def test_no_attribute_column_means_unknown_and_explicit_names_win(tmp_path):
    (tmp_path / "manifest.csv").write_text("path,label,split\nx/1.png,2,train\nx/2.png,0,test\n")
    ds = data.create("csv", root=tmp_path)
    assert (ds.samples().a == -1).all() and ds.meta["columns"]["attr"] is None
    assert "attr=(none: a = -1)" in ds.meta["note"]
    (tmp_path / "manifest.csv").write_text("path,y,label,split\nx/1.png,1,2,train\n")
    with pytest.raises(
        EmbedkitError,
        match=r"manifest.csv: columns 'y' and 'label' could each be the label; "
        r"name one with --dataset-opt label_col=COLUMN",
    ):
        data.create("csv", root=tmp_path)
    ds = data.create("csv", root=tmp_path, label_col="label")
    assert ds.samples().y.tolist() == [2] and ds.meta["columns_detected"] == [
        "path",
        "attr",
        "split",
    ]
    (tmp_path / "manifest.csv").write_text("image_id,species,split\nx/1.png,1,train\n")
    with pytest.raises(
        EmbedkitError,
        match=r"manifest.csv: no path column \(looked for path, filename.*found: "
        r"image_id, species, split\)",
    ):
        data.create("csv", root=tmp_path)
    with pytest.raises(EmbedkitError, match=r"manifest.csv: no label column"):
        data.create("csv", root=tmp_path, path_col="image_id")
