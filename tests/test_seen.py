"""Rows seen by the backbone (issue 11): train-erm names them, extract marks them, import takes
them, `Split.seen` and `embedkit info` show them, and heads can refuse held-out rows that were
seen."""

import subprocess
import sys

import numpy as np
import pytest

from embedkit.cache import Cache, merge, write_cache
from embedkit.errors import EmbedkitError
from embedkit.heads.heldout import check_unseen
from tests.test_cache import ROOT, make_samples


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "embedkit.cli", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def erm_cache(tmp_path_factory):
    """A small CNN trained by train-erm on the first 80 % of colored_digits' train split (AFR's
    protocol, --holdout 0.2), extracted on every split."""
    from embedkit.backbones.train_backbone import train_erm
    from embedkit.extract import extract

    d = tmp_path_factory.mktemp("seen")
    ckpt = train_erm("colored_digits", epochs=1, width=4, holdout=0.2, out=d / "erm.pt", log=None)
    extract(
        "colored_digits",
        f"checkpoint:{ckpt}",
        d / "c.h5",
        workers=0,
        device="cpu",
        log=lambda m: None,
    )
    return ckpt, d / "c.h5"


def test_extract_from_a_train_erm_checkpoint_marks_exactly_the_rows_it_trained_on(erm_cache):
    import torch

    from embedkit import data

    ckpt, path = erm_cache
    obj = torch.load(ckpt, weights_only=True)
    rec = obj["seen"]["colored_digits"]
    s = data.create("colored_digits").samples()
    trained = s.uid[s.split == 0][:800]  # the first 80 % of train, in dataset order
    assert sorted(rec["uids"]) == sorted(trained.tolist()) and rec["splits"] == ["train"]
    assert obj["train"]["n_train"] == 800 and obj["train"]["holdout"] == 0.2
    c = Cache.open(path)
    for name in ("train", "val", "test"):
        sp = c.split(name)
        assert sp.seen_known and sp.seen.dtype == bool
        assert sp.seen.tolist() == [u in set(trained) for u in sp.ids]
    assert c.seen_counts() == {"train": 800, "val": 0, "test": 0}
    tr = c.split("train")
    held_out = tr.subset(np.flatnonzero(~tr.seen))  # what AFR's official protocol reweights
    assert (
        len(held_out) == 200 and check_unseen("afr", held_out, "stage-2 reweighting rows") is None
    )
    with pytest.raises(EmbedkitError, match="800 of 1000"):
        check_unseen("jtt", tr, "error-set rows")


def test_info_shows_seen_counts_per_split(erm_cache, tmp_path):
    _, path = erm_cache
    out = cli("info", path)
    assert out.returncode == 0, out.stderr
    assert "seen in training: train 800/1000, val 0/400, test 0/397" in out.stdout
    s = make_samples()
    write_cache(tmp_path / "old.h5", s, "bb", np.zeros((len(s), 3), np.float32))
    out = cli("info", tmp_path / "old.h5")
    assert "seen in training: unknown" in out.stdout


def test_checkpoint_on_another_dataset_or_without_a_record_gives_unknown():
    from embedkit.backbones.checkpoint import seen_mask
    from embedkit.backbones.train_backbone import seen_record

    rec = seen_record("colored_digits", ["a", "b"], "train")
    mask, why = seen_mask(rec, "colored_digits", ["b", "c", "a"])
    assert mask.tolist() == [True, False, True] and "2 uid(s)" in why
    assert seen_mask(rec, "mnist", ["a"])[0] is None
    assert seen_mask(None, "colored_digits", ["a"])[0] is None
    # --init: rows of the init checkpoint on the same dataset are seen too; an init without a record
    # makes that dataset unknown
    both = seen_record("colored_digits", ["c"], "train", init_seen=rec)
    assert seen_mask(both, "colored_digits", ["a", "c", "d"])[0].tolist() == [True, True, False]
    old = seen_record(
        "colored_digits", ["c"], "train", init_seen={"colored_digits": {"unknown": True}}
    )
    assert seen_mask(old, "colored_digits", ["c"])[0] is None


def test_cache_without_the_record_reads_unknown(tmp_path):
    s = make_samples()
    write_cache(tmp_path / "c.h5", s, "bb", np.zeros((len(s), 3), np.float32))
    sp = Cache.open(tmp_path / "c.h5").split("train")
    assert (
        not sp.seen_known
        and sp.seen.dtype == bool
        and not sp.seen.any()
        and len(sp.seen) == len(sp)
    )
    assert Cache.open(tmp_path / "c.h5").info()["backbones"]["bb"]["seen"] is None


def test_import_seen_round_trip_and_wrong_length(tmp_path):
    rng = np.random.default_rng(0)
    n = 30
    Z = rng.standard_normal((n, 4)).astype(np.float32)
    seen = rng.random(n) < 0.4
    files = {
        "Z": Z,
        "y": rng.integers(0, 2, n),
        "a": rng.integers(0, 2, n),
        "s": rng.integers(0, 3, n),
        "ids": np.array([f"r{i}" for i in range(n)]),
        "seen": seen,
        "short": seen[:-1],
    }
    for k, v in files.items():
        np.save(tmp_path / f"{k}.npy", v)
    base = [
        "import",
        "--out",
        tmp_path / "c.h5",
        "--embeddings",
        tmp_path / "Z.npy",
        "--labels",
        tmp_path / "y.npy",
        "--attrs",
        tmp_path / "a.npy",
        "--splits",
        tmp_path / "s.npy",
        "--ids",
        tmp_path / "ids.npy",
    ]
    out = cli(*base, "--seen", tmp_path / "seen.npy")
    assert out.returncode == 0, out.stderr
    c = Cache.open(tmp_path / "c.h5")
    want = dict(zip(files["ids"], seen))
    for name in ("train", "val", "test"):
        sp = c.split(name)
        assert sp.seen_known and sp.seen.tolist() == [want[u] for u in sp.ids]
    # export carries it, and an .npz with a 'seen' array imports it back
    assert cli("export", tmp_path / "c.h5", "--out", tmp_path / "e.npz").returncode == 0
    assert cli("import", "--npz", tmp_path / "e.npz", "--out", tmp_path / "d.h5").returncode == 0
    assert np.array_equal(Cache.open(tmp_path / "d.h5").seen(), c.seen())
    bad = cli(*base[:2], tmp_path / "bad.h5", *base[3:], "--seen", tmp_path / "short.npy")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert (
        len(bad.stderr.strip().splitlines()) == 1
        and "short.npy" in bad.stderr
        and "30 rows" in bad.stderr
    )
    assert not (tmp_path / "bad.h5").exists()


def test_merge_keeps_seen_only_when_every_shard_has_it(tmp_path):
    s = make_samples(n=20)
    seen = np.arange(20) % 3 == 0
    for i, sl in enumerate((slice(0, 10), slice(10, 20))):
        write_cache(
            tmp_path / f"p{i}.h5",
            s.take(np.arange(20)[sl]),
            "bb",
            np.zeros((10, 2), np.float32),
            seen=seen[sl],
        )
    merged = Cache.open(merge([tmp_path / "p0.h5", tmp_path / "p1.h5"], tmp_path / "m.h5"))
    by_uid = dict(zip(s.uid, seen))
    assert merged.seen().tolist() == [by_uid[u] for u in merged.samples().uid]
    write_cache(tmp_path / "q1.h5", s.take(np.arange(10, 20)), "bb", np.zeros((10, 2), np.float32))
    assert (
        Cache.open(merge([tmp_path / "p0.h5", tmp_path / "q1.h5"], tmp_path / "n.h5")).seen()
        is None
    )


def test_check_unseen_refuses_in_one_line_and_the_override_is_an_entry(tmp_path):
    s = make_samples()
    seen = np.zeros(len(s), bool)
    seen[s.split == 0] = True
    write_cache(tmp_path / "c.h5", s, "bb", np.zeros((len(s), 3), np.float32), seen=seen)
    c = Cache.open(tmp_path / "c.h5")
    train, val = c.split("train"), c.split("val")
    with pytest.raises(EmbedkitError) as e:
        check_unseen("afr", train, "stage-2 reweighting rows")
    msg = str(e.value)
    assert (
        "\n" not in msg
        and msg.startswith(f"afr: {len(train)} of {len(train)} stage-2")
        and "allow_seen_rows" in msg
    )
    entry = check_unseen("jtt", train.subset(np.arange(3)), "error-set rows", allow=True)
    assert (
        entry["n_seen"] == 3
        and entry["n_rows"] == 3
        and entry["split"] == "train"
        and entry["backbone"] == "bb"
    )
    assert check_unseen("afr", val, "stage-2 reweighting rows") is None  # known and unseen
    held_out = train.subset(np.arange(0))
    assert check_unseen("afr", held_out, "stage-2 reweighting rows") is None
    write_cache(tmp_path / "u.h5", s, "bb", np.zeros((len(s), 3), np.float32))
    assert (
        check_unseen("afr", Cache.open(tmp_path / "u.h5").split("train"), "rows") is None
    )  # unknown


def test_seen_must_be_row_aligned_bools(tmp_path):
    s = make_samples()
    with pytest.raises(EmbedkitError, match="row-aligned"):
        write_cache(
            tmp_path / "c.h5", s, "bb", np.zeros((len(s), 3), np.float32), seen=np.zeros(3, bool)
        )
    with pytest.raises(EmbedkitError, match="booleans"):
        write_cache(
            tmp_path / "c.h5", s, "bb", np.zeros((len(s), 3), np.float32), seen=np.full(len(s), 0.5)
        )
