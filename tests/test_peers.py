"""Peer formats in and out: SubpopBench/DPE feature folders, clip-retrieval, DFR's npz, `.pt` files.

Fixtures are written in each tool's published layout (file names, column names, dtypes):
  * DPE reads `feats_{val,test}.npy` (np.save of float32) beside SubpopBench's
    `metadata_<dataset>.csv` (pandas to_csv of id, filename, split, y, a); row i of feats_<split> is
    the i-th metadata row of that split.
  * clip-retrieval's writer saves `img_emb/img_emb_<k>.npy` (float16) and
    `metadata/metadata_<k>.parquet` (image_path, caption, then the json metadata fields).
  * DFR's imagenet_extract_embeddings.py saves `<dataset>_<model>_<split>_embeddings.npz` with
    `embeddings` (float32) and `labels` (int64); the follow-up's dfr_evaluate_spurious.py
    --save_embeddings (spurious_feature_learning) saves embeddings_{test,val}, y_, g_, p_ in one
    npz.
"""

import csv
import subprocess
import sys

import numpy as np
import pytest

from embedkit.cache import Cache

from embedkit.schema import SPLITS
from embedkit.errors import EmbedkitError
from tests.conftest import ROOT, need_data


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "embedkit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def one_line_error(res, *needles):
    assert res.returncode == 2, (res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def cli_error(capsys, *args, needles=()):
    """In-process `embedkit ...` (no interpreter start-up): exit 2 and one stderr line holding
    `needles`."""
    from embedkit.cli import main

    capsys.readouterr()
    assert main([str(a) for a in args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    for n in needles:
        assert n in lines[0], lines[0]


def real_waterbirds():
    """The 256 real CLIP-RN50 Waterbirds embeddings with their real labels and places, given
    train/val/test by position (the stored rows are all from Waterbirds' train split)."""
    z = np.load(need_data("waterbirds", "clip_rn50_train256.npz"))
    n = len(z["y"])
    split = np.repeat([0, 1, 2], [n - 96, 48, 48])
    return dict(
        Z=z["embeddings"],
        y=z["y"],
        a=z["place"],
        split=split,
        ids=z["img_filename"].astype(str),
        img_id=z["img_id"],
    )


def write_dpe_folder(folder, w, splits=SPLITS, metadata_name="metadata_waterbirds.csv"):
    """SubpopBench's generate_metadata_waterbirds columns and DPE's per-split np.save."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / metadata_name, "w", newline="") as f:
        out = csv.writer(f, lineterminator="\n")
        out.writerow(["id", "filename", "split", "y", "a"])
        for i in range(len(w["y"])):
            out.writerow(
                [
                    int(w["img_id"][i]),
                    w["ids"][i],
                    int(w["split"][i]),
                    int(w["y"][i]),
                    int(w["a"][i]),
                ]
            )
    for code, name in enumerate(SPLITS):
        if name in splits:
            np.save(folder / f"feats_{name}.npy", w["Z"][w["split"] == code].astype(np.float32))
    return folder


def dpe_rows(folder, metadata, split_code):
    """What dpe.datasets.SubpopDataset does: metadata rows of one split in file order, features by
    their per-split index."""
    with open(folder / metadata) as f:
        rows = [r for r in csv.DictReader(f) if int(r["split"]) == split_code]
    feats = np.load(folder / f"feats_{SPLITS[split_code]}.npy", allow_pickle=False)
    return rows, feats


# -- SubpopBench / DPE ------------------------------------------------------------------------


def test_dpe_folder_import_keeps_rows_labels_and_features(tmp_path):
    from embedkit.interop.peers import import_subpopbench

    w = real_waterbirds()
    folder = write_dpe_folder(tmp_path / "dpe", w)
    import_subpopbench(
        folder,
        tmp_path / "c.h5",
        class_names=["landbird", "waterbird"],
        attr_names=["land", "water"],
        log=lambda m: None,
    )
    c = Cache.open(tmp_path / "c.h5")
    assert c.dataset == "waterbirds" and c.class_names == ["landbird", "waterbird"]
    for code, name in enumerate(SPLITS):
        m = w["split"] == code
        sp = c.split(name)
        assert sp.ids.tolist() == w["ids"][m].tolist()
        assert np.array_equal(sp.y, w["y"][m]) and np.array_equal(sp.a, w["a"][m])
        assert sp.Z.tobytes() == w["Z"][m].tobytes()


def test_dpe_ships_only_val_and_test(tmp_path):
    from embedkit.interop.peers import import_subpopbench

    w = real_waterbirds()
    folder = write_dpe_folder(tmp_path / "dpe", w, splits=("val", "test"))
    said = []
    import_subpopbench(folder, tmp_path / "c.h5", log=said.append)
    c = Cache.open(tmp_path / "c.h5")
    assert c.info()["splits"]["train"]["rows"] == 0 and c.info()["splits"]["val"]["rows"] == 48
    assert any("feats_train" in s and "160 train rows" in s for s in said)


def test_subpopbench_export_round_trip_and_dpe_reads_it(tmp_path):
    from embedkit.interop.arrays import import_arrays
    from embedkit.interop.peers import export_subpopbench, import_subpopbench

    w = real_waterbirds()
    import_arrays(
        tmp_path / "a.h5",
        w["Z"].astype(np.float16),
        w["y"],
        w["split"],
        a=w["a"],
        ids=w["ids"],
        class_names=["landbird", "waterbird"],
        attr_names=["land", "water"],
        dataset="waterbirds",
        dtype="float16",
        key="clip",
    )
    out = export_subpopbench(tmp_path / "a.h5", tmp_path / "export", log=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == [
        "embedkit_export.json",
        "feats_test.npy",
        "feats_train.npy",
        "feats_val.npy",
        "metadata_waterbirds.csv",
    ]
    with open(out / "metadata_waterbirds.csv") as f:
        assert f.readline().strip() == "id,filename,split,y,a"
    a = Cache.open(tmp_path / "a.h5")
    for code, name in enumerate(SPLITS):  # the peer's own reading of the folder
        rows, feats = dpe_rows(out, "metadata_waterbirds.csv", code)
        sp = a.split(name, dtype=None)
        assert feats.dtype == np.float16 and feats.tobytes() == sp.Z.tobytes()
        assert [r["filename"] for r in rows] == sp.ids.tolist()
        assert [int(r["y"]) for r in rows] == sp.y.tolist() and [
            int(r["a"]) for r in rows
        ] == sp.a.tolist()
    import_subpopbench(out, tmp_path / "b.h5", log=lambda m: None)
    (out / "metadata_other.csv").write_text("id,filename,split,y,a\n")
    with pytest.raises(
        EmbedkitError,
        match=r"export: already holds metadata_other.csv; export to a new or empty folder",
    ):
        export_subpopbench(tmp_path / "a.h5", out, log=lambda m: None)
    b = Cache.open(tmp_path / "b.h5")
    assert (b.dataset, b.class_names, b.attr_names) == (
        "waterbirds",
        ["landbird", "waterbird"],
        ["land", "water"],
    )
    assert b.info()["backbones"]["imported"]["dtype"] == "float16"
    assert b.fingerprint() == a.fingerprint()  # SHA-256 over sample rows and feature bytes
    for name in SPLITS:
        x, y = a.split(name, dtype=None), b.split(name, dtype=None)
        assert x.Z.tobytes() == y.Z.tobytes() and np.array_equal(x.ids, y.ids)
        assert np.array_equal(x.y, y.y) and np.array_equal(x.a, y.a)


def test_seen_rows_travel_through_the_subpopbench_layout(tmp_path, capsys):
    """A cache that records which rows its backbone trained on exports them as an extra `seen`
    column (dpe reads columns by name) and imports them back; --seen works with --from too."""
    from embedkit.interop.arrays import import_arrays
    from embedkit.interop.peers import export_subpopbench, import_subpopbench

    w = real_waterbirds()
    seen = w["split"] == 0
    import_arrays(tmp_path / "a.h5", w["Z"], w["y"], w["split"], a=w["a"], ids=w["ids"], seen=seen)
    out = export_subpopbench(tmp_path / "a.h5", tmp_path / "export", log=lambda m: None)
    rows, _ = dpe_rows(out, "metadata_imported.csv", 0)
    assert list(rows[0]) == ["id", "filename", "split", "y", "a", "seen"] and rows[0]["seen"] == "1"
    import_subpopbench(out, tmp_path / "b.h5", log=lambda m: None)
    a, b = Cache.open(tmp_path / "a.h5"), Cache.open(tmp_path / "b.h5")
    assert np.array_equal(a.seen(), b.seen()) and a.fingerprint() == b.fingerprint()
    np.save(tmp_path / "seen.npy", seen)
    cli_error(
        capsys,
        "import",
        "--from",
        "subpopbench",
        out,
        "--out",
        tmp_path / "c.h5",
        "--seen",
        tmp_path / "seen.npy",
        needles=("metadata_imported.csv: has a 'seen' column and --seen was given",),
    )
    folder = write_dpe_folder(tmp_path / "dpe", w)
    from embedkit.cli import main

    assert (
        main(
            [
                "import",
                "--from",
                "subpopbench",
                str(folder),
                "--out",
                str(tmp_path / "d.h5"),
                "--seen",
                str(tmp_path / "seen.npy"),
            ]
        )
        == 0
    )
    assert np.array_equal(Cache.open(tmp_path / "d.h5").seen(), seen)


def test_subpopbench_metadata_other_splits_and_pandas_cells(tmp_path):
    """Breeds' zero-shot split 3 is left out (or used as test); MIMICNotes' bool a and pandas'
    integral floats read as integers; ImageNetBG's split names work."""
    from embedkit.data.subpopbench import read_metadata

    p = tmp_path / "metadata_living17.csv"
    p.write_text(
        "filename,y,split,a\n/in/train/n1/x1.JPEG,0,0,0\n/in/train/n1/x2.JPEG,1,1,0\n"
        "/in/val/n1/x3.JPEG,1.0,2,False\n/in/val/n2/x4.JPEG,0,3,True\n"
    )
    m = read_metadata(p)
    assert m.split.tolist() == [0, 1, 2] and m.y.tolist() == [0, 1, 1] and m.a.tolist() == [0, 0, 0]
    assert m.other_splits == {"3": 1}
    m = read_metadata(p, test_split="3")
    assert m.filename == ["/in/train/n1/x1.JPEG", "/in/train/n1/x2.JPEG", "/in/val/n2/x4.JPEG"]
    assert (
        m.split.tolist() == [0, 1, 2] and m.a.tolist() == [0, 0, 1] and m.other_splits == {"2": 1}
    )
    q = tmp_path / "metadata.csv"
    q.write_text(
        "split,filename,y,a\ntrain,a.JPEG,0,0\nval,b.JPEG,1,0\ntest,c.JPEG,1,0\nmixed_rand,d.JPEG,0,0\n"
    )
    assert read_metadata(q).split.tolist() == [0, 1, 2] and read_metadata(q).other_splits == {
        "mixed_rand": 1
    }
    assert read_metadata(q, "mixed_rand").filename == ["a.JPEG", "b.JPEG", "d.JPEG"]


def test_pt_feature_files_plain_tensors_only(tmp_path):
    import torch

    from embedkit.interop.arrays import load_array
    from embedkit.interop.peers import import_subpopbench

    w = real_waterbirds()
    folder = write_dpe_folder(tmp_path / "dpe", w, splits=("train", "val"))
    torch.save(torch.from_numpy(w["Z"][w["split"] == 2]), folder / "feats_test.pt")
    import_subpopbench(folder, tmp_path / "c.h5", log=lambda m: None)
    assert (
        Cache.open(tmp_path / "c.h5").split("test").Z.tobytes() == w["Z"][w["split"] == 2].tobytes()
    )

    torch.save({"feats": torch.ones(3, 2, dtype=torch.bfloat16)}, tmp_path / "d.pt")
    assert load_array(tmp_path / "d.pt").dtype == np.float32
    torch.save({"feats": torch.ones(3, 2), "note": "made by hand"}, tmp_path / "mixed.pt")
    with pytest.raises(EmbedkitError, match=r"mixed.pt: entry 'note' is a str, not a dense tensor"):
        load_array(tmp_path / "mixed.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(EmbedkitError, match=r"list.pt: the saved object is a list"):
        load_array(tmp_path / "list.pt")


class NotATensor:
    def __init__(self):
        self.data = [1.0, 2.0]


def test_pt_holding_an_object_is_refused_by_the_cli(tmp_path, capsys):
    """In-process CLI (torch is already imported): exit 2 and one stderr line naming the file."""
    import torch

    from embedkit.cli import main

    w = real_waterbirds()
    folder = write_dpe_folder(tmp_path / "dpe", w, splits=("train", "val"))
    torch.save({"feats": NotATensor()}, folder / "feats_test.pt")
    capsys.readouterr()
    assert (
        main(["import", "--from", "subpopbench", str(folder), "--out", str(tmp_path / "c.h5")]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "feats_test.pt: not a plain-tensor .pt file" in err[0]
        and "weights_only=True" in err[0]
        and "NotATensor object" in err[0]
    )
    assert not (tmp_path / "c.h5").exists()
    np.save(tmp_path / "y.npy", np.zeros(4, np.int64))
    np.save(tmp_path / "s.npy", np.zeros(4, np.int64))
    torch.save(NotATensor(), tmp_path / "x.pt")
    assert (
        main(
            [
                "import",
                "--embeddings",
                str(tmp_path / "x.pt"),
                "--labels",
                str(tmp_path / "y.npy"),
                "--splits",
                str(tmp_path / "s.npy"),
                "--out",
                str(tmp_path / "d.h5"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x.pt: not a plain-tensor .pt file" in err[0]


def test_subpopbench_bad_inputs_name_the_file(tmp_path):
    w = real_waterbirds()
    folder = write_dpe_folder(tmp_path / "dpe", w)
    np.save(folder / "feats_val.npy", w["Z"][w["split"] == 1][:-1])
    one_line_error(
        run_cli("import", "--from", "subpopbench", folder, "--out", tmp_path / "c.h5"),
        "feats_val.npy: 47 rows",
        "metadata_waterbirds.csv has 48 rows with split val",
    )
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metadata_x.csv").write_text("id,filename,split,y\n0,a.jpg,0,1\n")
    np.save(bad / "feats_train.npy", np.zeros((1, 2), np.float32))
    one_line_error(
        run_cli("import", "--from", "subpopbench", bad, "--out", tmp_path / "c.h5"),
        "metadata_x.csv",
        "missing column 'a'",
    )
    (bad / "metadata_x.csv").write_text("id,filename,split,y,a\n0,a.jpg,0,one,1\n")
    one_line_error(
        run_cli("import", "--from", "subpopbench", bad, "--out", tmp_path / "c.h5"),
        "metadata_x.csv, line 2",
        "y 'one' is not an integer",
    )
    (bad / "metadata_y.csv").write_text("id,filename,split,y,a\n")
    one_line_error(
        run_cli("import", "--from", "subpopbench", bad, "--out", tmp_path / "c.h5"),
        "2 metadata*.csv files",
        "--metadata",
    )
    one_line_error(
        run_cli(
            "import", "--from", "subpopbench", tmp_path / "nowhere", "--out", tmp_path / "c.h5"
        ),
        "nowhere: no such folder",
    )


# -- clip-retrieval ------------------------------------------------------------------------------


def write_clip_retrieval(folder, w, parts=(0, 1)):
    """clip-retrieval's OutputSink: one img_emb_<k>.npy (float16) and metadata_<k>.parquet per
    part."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (folder / "img_emb").mkdir(parents=True)
    (folder / "metadata").mkdir()
    bounds = np.linspace(0, len(w["y"]), len(parts) + 1).astype(int)
    names = np.array(["train", "val", "test"])
    for k, lo, hi in zip(parts, bounds[:-1], bounds[1:]):
        np.save(folder / "img_emb" / f"img_emb_{k}.npy", w["Z"][lo:hi].astype(np.float16))
        pq.write_table(
            pa.table(
                {
                    "image_path": [f"/data/waterbirds/{f}" for f in w["ids"][lo:hi]],
                    "caption": [
                        f"a photo of a {'waterbird' if v else 'landbird'}" for v in w["y"][lo:hi]
                    ],
                    "label": pa.array(w["y"][lo:hi], pa.int64()),
                    "place": [["land", "water"][v] for v in w["a"][lo:hi]],
                    "split": names[w["split"][lo:hi]].tolist(),
                }
            ),
            folder / "metadata" / f"metadata_{k}.parquet",
        )
    return folder


def test_clip_retrieval_round_trip(tmp_path):
    w = real_waterbirds()
    folder = write_clip_retrieval(tmp_path / "cr", w)
    res = run_cli(
        "import",
        "--from",
        "clip-retrieval",
        folder,
        "--out",
        tmp_path / "c.h5",
        "--label-col",
        "label",
        "--attr-col",
        "place",
        "--split-col",
        "split",
        "--name",
        "clip_rn50",
        "--class-names",
        "landbird,waterbird",
    )
    assert res.returncode == 0, res.stderr
    c = Cache.open(tmp_path / "c.h5")
    assert (
        c.attr_names == ["land", "water"]
        and c.info()["backbones"]["clip_rn50"]["dtype"] == "float16"
    )
    for code, name in enumerate(SPLITS):
        m = w["split"] == code
        sp = c.split(name, dtype=None)
        assert sp.Z.tobytes() == w["Z"][m].astype(np.float16).tobytes()
        assert sp.ids.tolist() == [f"/data/waterbirds/{f}" for f in w["ids"][m]]
        assert np.array_equal(sp.y, w["y"][m]) and np.array_equal(sp.a, w["a"][m])


def test_clip_retrieval_one_split_and_zero_padded_parts(tmp_path):
    from embedkit.interop.peers import import_clip_retrieval

    w = real_waterbirds()
    folder = write_clip_retrieval(tmp_path / "cr", w, parts=(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10))
    for p in list((folder / "img_emb").iterdir()) + list((folder / "metadata").iterdir()):
        stem, k = p.stem.rsplit("_", 1)
        p.rename(p.with_name(f"{stem}_{int(k):02d}{p.suffix}"))  # 11 partitions: two digits
    import_clip_retrieval(folder, tmp_path / "c.h5", label_col="label", split="test")
    sp = Cache.open(tmp_path / "c.h5").split("test", dtype=None)
    assert sp.Z.tobytes() == w["Z"].astype(np.float16).tobytes() and (sp.a == -1).all()


def test_clip_retrieval_pandas_cells(tmp_path):
    """pandas writes an int column with a gap as float64 with NaN, and bools as bool."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from embedkit.interop.peers import import_clip_retrieval

    (tmp_path / "img_emb").mkdir()
    (tmp_path / "metadata").mkdir()
    np.save(tmp_path / "img_emb" / "img_emb_0.npy", np.arange(8, dtype=np.float16).reshape(4, 2))
    pq.write_table(
        pa.table(
            {
                "image_path": ["a", "b", "c", "d"],
                "y": [1.0, 0.0, 1.0, 0.0],
                "spurious": [True, False, None, True],
                "split": [0, 1, 2, 2],
            }
        ),
        tmp_path / "metadata" / "metadata_0.parquet",
    )
    import_clip_retrieval(
        tmp_path, tmp_path / "c.h5", label_col="y", attr_col="spurious", split_col="split"
    )
    test = Cache.open(tmp_path / "c.h5").split("test")
    assert (
        test.y.tolist() == [1, 0] and test.a.tolist() == [-1, 1] and test.ids.tolist() == ["c", "d"]
    )


def test_clip_retrieval_bad_inputs(tmp_path, capsys):
    w = real_waterbirds()
    folder = write_clip_retrieval(tmp_path / "cr", w)
    base = (
        "import",
        "--from",
        "clip-retrieval",
        folder,
        "--out",
        tmp_path / "c.h5",
        "--split-col",
        "split",
    )
    cli_error(
        capsys,
        *base,
        "--label-col",
        "species",
        needles=(
            "metadata_0.parquet",
            "missing column 'species'",
            "found: image_path, caption, label, place, split",
        ),
    )
    cli_error(
        capsys,
        *base,
        "--label-col",
        "label",
        "--attr-col",
        "place",
        "--attr-names",
        "water",
        needles=("metadata_0.parquet, row 24", "unknown place 'land'"),
    )
    cli_error(
        capsys,
        *base,
        "--label-col",
        "label",
        "--id-col",
        "caption",
        needles=("metadata_0.parquet, row 1", "duplicate caption", "--id-col"),
    )
    np.save(folder / "img_emb" / "img_emb_1.npy", w["Z"][:5].astype(np.float16))
    cli_error(
        capsys,
        *base,
        "--label-col",
        "label",
        needles=("metadata_1.parquet: 128 rows", "img_emb_1.npy has 5", "row-aligned"),
    )
    (folder / "metadata" / "metadata_1.parquet").unlink()
    cli_error(
        capsys, *base, "--label-col", "label", needles=("img_emb_1.npy", "no matching metadata_1")
    )
    (folder / "img_emb" / "img_emb_1.npy").unlink()
    (folder / "metadata" / "metadata_0.parquet").write_bytes(b"not parquet")
    cli_error(
        capsys,
        *base,
        "--label-col",
        "label",
        needles=("metadata_0.parquet: unreadable as parquet",),
    )


# -- DFR -------------------------------------------------------------------------------------------


def test_dfr_npz_per_split(tmp_path):
    from embedkit.interop.peers import import_dfr

    w = real_waterbirds()
    files = []
    for code, name in enumerate(("train", "val")):
        m = w["split"] == code
        f = tmp_path / f"waterbirds_resnet50_{name}_embeddings.npz"
        np.savez(f, embeddings=w["Z"][m], labels=w["y"][m])
        files.append(f)
    import_dfr(files, tmp_path / "c.h5", class_names=["landbird", "waterbird"])
    c = Cache.open(tmp_path / "c.h5")
    tr = c.split("train")
    assert tr.Z.tobytes() == w["Z"][w["split"] == 0].tobytes() and np.array_equal(
        tr.y, w["y"][w["split"] == 0]
    )
    assert (tr.a == -1).all() and tr.ids[0] == "waterbirds_resnet50_train_embeddings:0"
    assert c.info()["splits"]["val"]["rows"] == 48
    res = run_cli(
        "import", "--from", "dfr", files[1], "--split", "test", "--out", tmp_path / "d.h5"
    )
    assert res.returncode == 0, res.stderr
    assert Cache.open(tmp_path / "d.h5").info()["splits"]["test"]["rows"] == 48


def test_dfr_follow_up_save_embeddings_file(tmp_path):
    from embedkit.interop.peers import import_dfr

    w = real_waterbirds()
    arrays = {}
    for code, name in ((2, "test"), (1, "val")):  # the order dfr_evaluate_spurious.py writes
        m = w["split"] == code
        arrays.update(
            {
                f"embeddings_{name}": w["Z"][m],
                f"y_{name}": w["y"][m],
                f"g_{name}": w["y"][m] * 2 + w["a"][m],
                f"p_{name}": w["a"][m],
            }
        )
    np.savez(
        tmp_path / "dfr_test.npz",
        **{
            k: arrays[k]
            for k in (
                "embeddings_test",
                "embeddings_val",
                "y_test",
                "y_val",
                "g_test",
                "g_val",
                "p_test",
                "p_val",
            )
        },
    )
    said = []
    import_dfr([tmp_path / "dfr_test.npz"], tmp_path / "c.h5", log=said.append)
    c = Cache.open(tmp_path / "c.h5")
    assert not said and c.info()["splits"]["train"]["rows"] == 0
    for code, name in ((1, "val"), (2, "test")):
        m = w["split"] == code
        sp = c.split(name)
        assert sp.Z.tobytes() == w["Z"][m].tobytes() and np.array_equal(sp.a, w["a"][m])
        assert np.array_equal(sp.g, w["y"][m] * 2 + w["a"][m]) and sp.ids[1] == f"{name}:1"
    arrays["g_val"] = np.zeros_like(arrays["g_val"])
    np.savez(tmp_path / "odd.npz", **arrays)
    import_dfr([tmp_path / "odd.npz"], tmp_path / "d.h5", log=said.append)
    assert len(said) == 1 and "rows whose g differs from y * 2 + p" in said[0]
    del arrays["y_val"]
    np.savez(tmp_path / "bad.npz", **arrays)
    one_line_error(
        run_cli("import", "--from", "dfr", tmp_path / "bad.npz", "--out", tmp_path / "e.h5"),
        "bad.npz: has 'embeddings_val' but no 'y_val'",
    )


def test_dfr_bad_inputs(tmp_path):
    np.savez(
        tmp_path / "imagenet_vitb16_val_embeddings.npz",
        embeddings=np.zeros((3, 2), np.float32),
        y=np.zeros(3, np.int64),
    )
    one_line_error(
        run_cli(
            "import",
            "--from",
            "dfr",
            tmp_path / "imagenet_vitb16_val_embeddings.npz",
            "--out",
            tmp_path / "c.h5",
        ),
        "imagenet_vitb16_val_embeddings.npz",
        "missing array 'labels'",
    )
    np.savez(
        tmp_path / "feats.npz",
        embeddings=np.zeros((3, 2), np.float32),
        labels=np.zeros(3, np.int64),
    )
    one_line_error(
        run_cli("import", "--from", "dfr", tmp_path / "feats.npz", "--out", tmp_path / "c.h5"),
        "feats.npz: no split in the file name",
        "--split",
    )
    np.savez(
        tmp_path / "o_train_embeddings.npz",
        embeddings=np.array([None, 1], object),
        labels=np.zeros(2),
    )
    one_line_error(
        run_cli(
            "import",
            "--from",
            "dfr",
            tmp_path / "o_train_embeddings.npz",
            "--out",
            tmp_path / "c.h5",
        ),
        "o_train_embeddings.npz",
        "pickled",
    )
