"""The `subpopbench` adapter on SubpopBench's metadata files, with real CUB photos as the images.

The metadata files are written as SubpopBench's download.py writes them: Waterbirds'
`id,filename,split,y,a` with filenames relative to the image root, and MetaShift's
`filename,y,a,split` with absolute paths. The photos are real CUB-200 files from the shared data
folder; y is their real waterbird flag, a (the background) is assigned here because the photos carry
none.
"""

import csv
import json
import pickle
import tarfile

import numpy as np
import pytest

from embedkit import data
from embedkit.cli import main
from embedkit.errors import EmbedkitError
from tests.conftest import need_data

N = 8


def cub_photos(dest, n=N):
    """Extract the first n CUB photos; returns their rows of cub_photos.csv."""
    tar = need_data("cub_photos", "cub_photos.tar")
    with open(need_data("cub_photos", "cub_photos.csv")) as f:
        rows = list(csv.DictReader(f))
    # spread over species so both bird types appear
    pick = [rows[i] for i in np.linspace(0, len(rows) - 1, n).astype(int)]
    with tarfile.open(tar) as t:
        for r in pick:
            member = t.getmember(r["file"])
            (dest / r["file"]).parent.mkdir(parents=True, exist_ok=True)
            (dest / r["file"]).write_bytes(t.extractfile(member).read())
    return pick


def waterbirds_layout(tmp_path):
    """<data>/waterbirds/waterbird_complete95_forest2water2/<NNN.Species>/*.jpg and
    <data>/waterbirds/metadata_waterbirds.csv, as SubpopBench's Waterbirds class reads them."""
    root = tmp_path / "waterbirds" / "waterbird_complete95_forest2water2"
    root.mkdir(parents=True)
    rows = cub_photos(root)
    split = [0, 0, 0, 0, 1, 1, 2, 2]
    with open(tmp_path / "waterbirds" / "metadata_waterbirds.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["id", "filename", "split", "y", "a"])
        for i, r in enumerate(rows):
            w.writerow([i + 1, r["file"], split[i], r["y_waterbird"], i % 2])
    return root, rows, split


def test_waterbirds_style_metadata_and_real_images(tmp_path):
    root, rows, split = waterbirds_layout(tmp_path)
    ds = data.create(
        "subpopbench",
        root=root,
        metadata="../metadata_waterbirds.csv",
        class_names="landbird,waterbird",
        attr_names="land,water",
    )
    s = ds.samples()
    assert s.uid.tolist() == [r["file"] for r in rows]
    assert s.y.tolist() == [int(r["y_waterbird"]) for r in rows] and s.a.tolist() == [
        i % 2 for i in range(N)
    ]
    assert s.split.tolist() == split and ds.class_names == ["landbird", "waterbird"]
    im = ds.load(3)
    assert im.mode == "RGB" and im.size == (int(rows[3]["width"]), int(rows[3]["height"]))
    assert ds.meta["subpopbench_dataset"] == "waterbirds" and ds.meta["other_splits"] == {}
    assert "landbird|land" in ds.summary()
    assert json.loads(json.dumps(ds.meta))["test_split"] == "2"  # JSON-clean: the cache stores it
    clone = pickle.loads(pickle.dumps(ds))
    assert np.array_equal(np.asarray(clone.load(7)), np.asarray(ds.load(7)))


def test_metashift_style_absolute_paths_and_extra_split(tmp_path):
    imgs = tmp_path / "MetaShift-Cat-Dog-indoor-outdoor"
    imgs.mkdir()
    rows = cub_photos(imgs)
    meta = tmp_path / "metashift"
    meta.mkdir()
    # MetaShift: DataFrame(filename, y, a) then a split column; pandas writes the PosixPath as text
    with open(meta / "metadata_metashift.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["filename", "y", "a", "split"])
        for i, r in enumerate(rows):
            w.writerow([str(imgs / r["file"]), r["y_waterbird"], i % 2, [0, 1, 2, 3][i % 4]])
    ds = data.create("subpopbench", root=meta)  # the one metadata*.csv in --root
    s = ds.samples()
    assert len(s) == 6 and ds.meta["other_splits"] == {"3": 2} and ds.class_names == ["0", "1"]
    assert ds.load(0).size == (int(rows[0]["width"]), int(rows[0]["height"]))
    ds = data.create("subpopbench", root=meta, test_split="3")
    assert ds.samples().split.tolist().count(2) == 2 and ds.meta["other_splits"] == {"2": 2}


def test_datasets_command_lists_the_adapter_with_its_layout(tmp_path, capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("subpopbench "))
    assert "metadata_<dataset>.csv (filename, split 0/1/2, y, a)" in line and "image root" in line
    root, _, _ = waterbirds_layout(tmp_path)
    assert (
        main(
            [
                "datasets",
                "subpopbench",
                "--root",
                str(root),
                "--dataset-opt",
                "metadata=../metadata_waterbirds.csv",
                "--check",
            ]
        )
        == 0
    )
    assert "unreadable images: 0 of 8" in capsys.readouterr().out


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    root, _, _ = waterbirds_layout(tmp_path)
    (tmp_path / "waterbirds" / "metadata_waterbirds.csv").write_text(
        "id,filename,split,y\n1,a.jpg,0,1\n"
    )
    capsys.readouterr()
    assert (
        main(
            [
                "datasets",
                "subpopbench",
                "--root",
                str(root),
                "--dataset-opt",
                "metadata=../metadata_waterbirds.csv",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metadata_waterbirds.csv: missing column 'a'" in err[0]
    (root / "manifest.csv").write_text("path,y,label,split\nx.jpg,1,1,train\n")
    assert main(["datasets", "csv", "--root", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "columns 'y' and 'label' could each be the label" in err[0]


def test_bad_metadata_names_file_and_line(tmp_path):
    root, _, _ = waterbirds_layout(tmp_path)
    with pytest.raises(EmbedkitError, match=r"no metadata\*.csv files here"):
        data.create("subpopbench", root=root)
    p = tmp_path / "waterbirds" / "metadata_waterbirds.csv"
    lines = p.read_text().splitlines()
    p.write_text("\n".join(lines + [lines[1].replace("1,", "9,", 1)]) + "\n")  # same filename twice
    with pytest.raises(
        EmbedkitError, match=r"metadata_waterbirds.csv, line 10: duplicate filename"
    ):
        data.create("subpopbench", root=root, metadata="../metadata_waterbirds.csv")
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(EmbedkitError, match=r"labels y go up to 1 but only 1 names were given"):
        data.create(
            "subpopbench", root=root, metadata="../metadata_waterbirds.csv", class_names="bird"
        )


def test_extract_then_export_for_peer_tools(tmp_path):
    """A SubpopBench dataset through a real backbone, exported in DPE's layout, imported back."""
    from embedkit.cache import Cache
    from embedkit.schema import SPLITS
    from embedkit.extract import extract
    from embedkit.interop.peers import export_subpopbench, import_subpopbench

    ckpt = need_data(
        "weights", "mobilenet_v2_inat_bird_coral.pt"
    )  # real bird weights, 224 px input
    root, rows, split = waterbirds_layout(tmp_path)
    extract(
        "subpopbench",
        f"torchvision:mobilenet_v2:{ckpt}",
        tmp_path / "c.h5",
        root=root,
        dataset_options={"metadata": "../metadata_waterbirds.csv"},
        workers=0,
        batch_size=4,
        device="cpu",
        log=lambda m: None,
    )
    out = export_subpopbench(tmp_path / "c.h5", tmp_path / "peer", log=lambda m: None)
    assert (out / "metadata_waterbirds.csv").exists()  # SubpopBench's name, from the adapter
    import_subpopbench(out, tmp_path / "back.h5", log=lambda m: None)
    a, b = Cache.open(tmp_path / "c.h5"), Cache.open(tmp_path / "back.h5")
    for name in SPLITS:
        x, y = a.split(name), b.split(name)
        assert x.Z.tobytes() == y.Z.tobytes() and x.ids.tolist() == y.ids.tolist()
        assert np.array_equal(x.y, y.y) and np.array_equal(x.a, y.a)
