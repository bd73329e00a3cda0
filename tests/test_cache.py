"""The HDF5 cache: round trips, shared samples, merge, bad input, interrupted writes."""

import os
import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from embedkit.cache import Cache, CacheWriter, merge, write_cache

from embedkit.schema import Samples
from embedkit.errors import EmbedkitError
from tests.conftest import need_data

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_samples(n=40, seed=0, **kw):
    rng = np.random.default_rng(seed)
    return Samples(
        uid=[f"img_{i:04d}" for i in range(n)],
        split=rng.integers(0, 3, n),
        y=rng.integers(0, 2, n),
        a=rng.integers(0, 2, n),
        class_names=["land", "water"],
        attr_names=["bg_land", "bg_water"],
        dataset="toy",
        **kw,
    )


def by_uid(split):
    order = np.argsort(split.ids.astype(str))
    return split.Z[order], split.ids.astype(str)[order]


def test_float32_round_trip_is_bit_exact(tmp_path):
    s = make_samples()
    Z = np.random.default_rng(1).standard_normal((40, 16)).astype(np.float32)
    write_cache(tmp_path / "c.h5", s, "bb", Z)
    c = Cache.open(tmp_path / "c.h5")
    for name, code in (("train", 0), ("val", 1), ("test", 2)):
        sp = c.split(name)
        want = np.flatnonzero(s.split == code)
        order = np.argsort(s.uid[want].astype(str))
        got_Z, got_ids = by_uid(sp)
        assert np.array_equal(got_ids, s.uid[want].astype(str)[order])
        assert got_Z.tobytes() == Z[want][order].tobytes()
        assert got_Z.dtype == np.float32
        assert np.array_equal(sp.g, sp.y * 2 + sp.a)


def test_float16_equals_float16_rounding(tmp_path):
    s = make_samples()
    Z = np.random.default_rng(2).standard_normal((40, 8)).astype(np.float32) * 3
    write_cache(tmp_path / "c.h5", s, "bb", Z, dtype="float16")
    c = Cache.open(tmp_path / "c.h5")
    assert c.info()["backbones"]["bb"]["dtype"] == "float16"
    sp = c.split("train")
    ref = Z.astype(np.float16).astype(np.float32)
    idx = {u: i for i, u in enumerate(s.uid)}
    assert np.array_equal(sp.Z, ref[[idx[u] for u in sp.ids]])


def test_two_backbones_share_samples(tmp_path):
    s = make_samples()
    rng = np.random.default_rng(3)
    Z1, Z2 = (
        rng.standard_normal((40, 8)).astype(np.float32),
        rng.standard_normal((40, 5)).astype(np.float32),
    )
    write_cache(tmp_path / "c.h5", s, "one", Z1)
    write_cache(tmp_path / "c.h5", s, "two", Z2)
    c = Cache.open(tmp_path / "c.h5")
    assert sorted(c.backbones()) == ["one", "two"]
    with h5py.File(tmp_path / "c.h5") as f:
        assert list(f.keys()).count("samples") == 1 and f["samples/uid"].shape == (40,)
    a, b = c.split("val", "one"), c.split("val", "two")
    assert np.array_equal(a.ids, b.ids) and np.array_equal(a.rows, b.rows)
    assert a.Z.shape[1] == 8 and b.Z.shape[1] == 5
    with pytest.raises(EmbedkitError, match="holds 2 backbones"):
        c.split("val")


def test_fingerprint_tracks_content(tmp_path):
    s = make_samples()
    Z = np.ones((40, 4), np.float32)
    write_cache(tmp_path / "a.h5", s, "bb", Z)
    write_cache(tmp_path / "b.h5", s, "bb", Z)
    Z[3, 1] = 2
    write_cache(tmp_path / "c.h5", s, "bb", Z)
    fa, fb, fc = (Cache.open(tmp_path / f"{k}.h5").fingerprint() for k in "abc")
    assert fa == fb != fc and len(fa) == 64


def test_split_is_contiguous_and_sorted(tmp_path):
    s = make_samples(n=60)
    write_cache(tmp_path / "c.h5", s, "bb", np.zeros((60, 3), np.float32))
    with h5py.File(tmp_path / "c.h5") as f:
        split = f["samples/split"][()]
        assert np.all(np.diff(split.astype(int)) >= 0)
        assert f["embeddings/bb/feats"].chunks is None  # contiguous, unfiltered
        assert f["embeddings/bb/feats"].compression is None


def test_import_real_waterbirds_npz(tmp_path):
    from embedkit.interop.arrays import import_npz

    path = need_data("waterbirds", "clip_rn50_train256.npz")
    import_npz(path, tmp_path / "wb.h5", key="clip_rn50")
    c = Cache.open(tmp_path / "wb.h5")
    tr = c.split("train")
    assert len(tr) == 256 and tr.Z.shape == (256, 1024)
    # Groups (y, place) from the data README: (0,0) 81, (0,1) 4, (1,0) 8, (1,1) 163.
    assert tr.group_counts().tolist() == [81, 4, 8, 163]
    with np.load(path) as z:
        ref = dict(zip(z["ids"].astype(str), z["embeddings"]))
        assert all(np.array_equal(tr.Z[i], ref[u]) for i, u in enumerate(tr.ids))
        assert c.text()["prompts"] == list(z["text_prompts"].astype(str))


def test_export_then_import_round_trip(tmp_path):
    from embedkit.interop.arrays import export_npz, import_npz

    s = make_samples()
    Z = np.random.default_rng(4).standard_normal((40, 6)).astype(np.float32)
    write_cache(tmp_path / "c.h5", s, "bb", Z)
    export_npz(tmp_path / "c.h5", tmp_path / "c.npz")
    import_npz(tmp_path / "c.npz", tmp_path / "d.h5", key="bb")
    a, b = Cache.open(tmp_path / "c.h5"), Cache.open(tmp_path / "d.h5")
    assert a.class_names == b.class_names and a.attr_names == b.attr_names
    for name in ("train", "val", "test"):
        x, y = a.split(name), b.split(name)
        assert (
            np.array_equal(x.Z, y.Z) and np.array_equal(x.ids, y.ids) and np.array_equal(x.g, y.g)
        )


def _shard_rows(s, Z, parts):
    order = s.split_order()
    s, Z = s.take(order), Z[order]
    bounds = np.linspace(0, len(s), parts + 1).astype(int)
    return s, Z, list(zip(bounds[:-1], bounds[1:]))


def test_merge_four_shards_equals_one_write(tmp_path):
    s = make_samples(n=103)
    Z = np.random.default_rng(5).standard_normal((103, 12)).astype(np.float32)
    s, Z, ranges = _shard_rows(s, Z, 4)
    shards = []
    for i, (lo, hi) in enumerate(ranges):
        p = tmp_path / f"part-{i}.h5"
        with CacheWriter(
            p, s.take(np.arange(lo, hi)), "bb", 12, provenance={"model": "m", "layer": "pool"}
        ) as w:
            for b in range(lo, hi, 10):
                w.append(Z[b : min(b + 10, hi)])
            w.finalize(extra_provenance={"images_per_s": 100.0 + i})
        shards.append(p)
    merge(shards, tmp_path / "merged.h5")
    write_cache(tmp_path / "one.h5", s, "bb", Z, provenance={"model": "m", "layer": "pool"})
    m, o = Cache.open(tmp_path / "merged.h5"), Cache.open(tmp_path / "one.h5")
    assert m.fingerprint() == o.fingerprint()
    for name in ("train", "val", "test"):
        assert np.array_equal(m.split(name).Z, o.split(name).Z)
        assert np.array_equal(m.split(name).ids, o.split(name).ids)


def test_merge_refuses_other_provenance(tmp_path):
    s = make_samples(n=20)
    Z = np.zeros((20, 4), np.float32)
    s, Z, ranges = _shard_rows(s, Z, 2)
    for i, ((lo, hi), layer) in enumerate(zip(ranges, ["pool", "fc"])):
        write_cache(
            tmp_path / f"p{i}.h5",
            s.take(np.arange(lo, hi)),
            "bb",
            Z[lo:hi],
            provenance={"layer": layer},
        )
    with pytest.raises(EmbedkitError, match=r"provenance differs.*layer"):
        merge([tmp_path / "p0.h5", tmp_path / "p1.h5"], tmp_path / "m.h5")
    assert not (tmp_path / "m.h5").exists()


# ---------------------------------------------------------------------------------------------
# Bad input: one line on stderr, exit 2, nothing half-written
# ---------------------------------------------------------------------------------------------


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "embedkit", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )


def save_npy(tmp_path, **arrays):
    for k, v in arrays.items():
        np.save(tmp_path / f"{k}.npy", v)
    return [tmp_path / f"{k}.npy" for k in arrays]


def assert_one_line_error(res, *needles):
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture
def good_arrays(tmp_path):
    rng = np.random.default_rng(0)
    return dict(
        Z=rng.standard_normal((10, 4)).astype(np.float32),
        y=rng.integers(0, 2, 10),
        a=rng.integers(0, 2, 10),
        split=np.array(["train"] * 4 + ["val"] * 3 + ["test"] * 3),
    )


def test_cli_import_and_info(tmp_path, good_arrays):
    np.savez(tmp_path / "in.npz", **good_arrays)
    res = run_cli(
        "import", "--npz", tmp_path / "in.npz", "--out", tmp_path / "c.h5", "--class-names", "a,b"
    )
    assert res.returncode == 0, res.stderr
    res = run_cli("info", tmp_path / "c.h5")
    assert res.returncode == 0 and "format version 1" in res.stdout and "a|attr_0" in res.stdout


def test_missing_file(tmp_path):
    assert_one_line_error(
        run_cli("import", "--npz", tmp_path / "nope.npz", "--out", tmp_path / "c.h5"),
        "nope.npz",
        "no such file",
    )
    assert_one_line_error(run_cli("info", tmp_path / "nope.h5"), "nope.h5", "no such file")


def test_unreadable_file(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert_one_line_error(
        run_cli("import", "--npz", tmp_path / "junk.npz", "--out", tmp_path / "c.h5"),
        "junk.npz",
        "unreadable",
    )
    assert not (tmp_path / "c.h5").exists()


def test_lengths_differ(tmp_path, good_arrays):
    good_arrays["y"] = good_arrays["y"][:9]
    np.savez(tmp_path / "in.npz", **good_arrays)
    assert_one_line_error(
        run_cli("import", "--npz", tmp_path / "in.npz", "--out", tmp_path / "c.h5"),
        "different lengths",
    )
    assert not (tmp_path / "c.h5").exists()


def test_unknown_split_name(tmp_path, good_arrays):
    good_arrays["split"] = good_arrays["split"].astype("<U8")
    good_arrays["split"][5] = "holdout"
    e, y, s = save_npy(tmp_path, e=good_arrays["Z"], y=good_arrays["y"], s=good_arrays["split"])
    assert_one_line_error(
        run_cli(
            "import", "--embeddings", e, "--labels", y, "--splits", s, "--out", tmp_path / "c.h5"
        ),
        "unknown split name 'holdout'",
        "row 5",
        "s.npy",
    )


def test_label_outside_declared_classes(tmp_path, good_arrays):
    good_arrays["y"][7] = 2
    np.savez(tmp_path / "in.npz", **good_arrays)
    assert_one_line_error(
        run_cli(
            "import",
            "--npz",
            tmp_path / "in.npz",
            "--out",
            tmp_path / "c.h5",
            "--class-names",
            "land,water",
        ),
        "label out of range",
        "row 7",
    )


def test_nonfinite_refused_unless_allowed(tmp_path, good_arrays):
    good_arrays["Z"][6, 2] = np.nan
    np.savez(tmp_path / "in.npz", **good_arrays)
    res = run_cli("import", "--npz", tmp_path / "in.npz", "--out", tmp_path / "c.h5")
    assert_one_line_error(res, "non-finite", "--allow-nonfinite")
    assert not (tmp_path / "c.h5").exists()
    res = run_cli(
        "import", "--npz", tmp_path / "in.npz", "--out", tmp_path / "c.h5", "--allow-nonfinite"
    )
    assert res.returncode == 0, res.stderr
    s = Cache.open(tmp_path / "c.h5").samples()
    assert (~s.valid).sum() == 1 and not s.valid[s.uid.astype(str) == "6"][0]


def test_newer_format_version(tmp_path, good_arrays):
    np.savez(tmp_path / "in.npz", **good_arrays)
    assert (
        run_cli("import", "--npz", tmp_path / "in.npz", "--out", tmp_path / "c.h5").returncode == 0
    )
    with h5py.File(tmp_path / "c.h5", "a") as f:
        f.attrs["format_version"] = 99
    assert_one_line_error(run_cli("info", tmp_path / "c.h5"), "newer embedkit", "99")


def test_existing_backbone_key(tmp_path, good_arrays):
    np.savez(tmp_path / "in.npz", **good_arrays)
    args = ("import", "--npz", tmp_path / "in.npz", "--out", tmp_path / "c.h5", "--name", "clip")
    assert run_cli(*args).returncode == 0
    assert_one_line_error(run_cli(*args), "'clip' already exists", "--overwrite")
    assert run_cli(*args, "--overwrite").returncode == 0


def test_not_an_embedkit_cache(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    assert_one_line_error(run_cli("info", tmp_path / "other.h5"), "not an embedkit cache")
    (tmp_path / "text.h5").write_text("hello")
    assert_one_line_error(run_cli("info", tmp_path / "text.h5"), "cannot open as HDF5")


def test_pickled_input_refused(tmp_path, good_arrays):
    good_arrays["ids"] = np.array([{"k": i} for i in range(10)], dtype=object)
    np.savez(tmp_path / "in.npz", **good_arrays)  # numpy pickles the object array
    assert_one_line_error(
        run_cli("import", "--npz", tmp_path / "in.npz", "--out", tmp_path / "c.h5"), "pickled"
    )


def test_no_pickles_in_cache(tmp_path):
    write_cache(tmp_path / "c.h5", make_samples(), "bb", np.zeros((40, 2), np.float32))
    with h5py.File(tmp_path / "c.h5") as f:
        kinds = []
        f.visititems(
            lambda name, obj: (
                kinds.append(obj.dtype.kind) if isinstance(obj, h5py.Dataset) else None
            )
        )
    assert "V" not in kinds  # object data is only vlen UTF-8 strings (kind 'O' in h5py)


def test_interrupted_write_leaves_no_accepted_file(tmp_path):
    """A writer killed between append and finalise leaves nothing Cache.open accepts."""
    out = tmp_path / "c.h5"
    script = textwrap.dedent(f"""
        import os, signal, numpy as np
        from embedkit.cache import CacheWriter
        from embedkit.schema import Samples
        s = Samples(uid=[str(i) for i in range(1000)], split=[0] * 1000, y=[0] * 1000, a=[0] * 1000,
                    class_names=["c"], attr_names=["t"])
        w = CacheWriter({str(out)!r}, s, "bb", 8)
        w.append(np.ones((500, 8), np.float32))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT)
    assert res.returncode == -signal.SIGKILL
    assert not out.exists()
    leftovers = list(tmp_path.iterdir())
    assert leftovers and all(p.name.endswith(".partial") for p in leftovers)
    for p in leftovers:
        with pytest.raises(EmbedkitError):
            Cache.open(p)


def test_incomplete_backbone_group_is_ignored(tmp_path):
    write_cache(tmp_path / "c.h5", make_samples(), "bb", np.zeros((40, 2), np.float32))
    with h5py.File(tmp_path / "c.h5", "a") as f:  # what a kill in the middle of an add leaves
        g = f["embeddings"].create_group("half")
        g.attrs["complete"] = False
        g.create_dataset("feats", shape=(40, 3), dtype=np.float32)
    c = Cache.open(tmp_path / "c.h5")
    assert c.backbones() == ["bb"]
    with pytest.raises(EmbedkitError, match="no backbone 'half'"):
        c.split("train", "half")


def test_native_dtype_view_and_unicode_ids(tmp_path):
    s = make_samples(n=6)
    s.uid = np.array([*s.uid[:2], "oiseau-été/02.jpg", *s.uid[3:]])
    Z = np.arange(24, dtype=np.float32).reshape(6, 4) / 7
    write_cache(tmp_path / "c.h5", s, "bb", Z, dtype="float16")
    c = Cache.open(tmp_path / "c.h5")
    assert "oiseau-été/02.jpg" in c.samples().uid
    for name in ("train", "val", "test"):
        half, full = c.split(name, dtype=None), c.split(name)
        assert half.Z.dtype == np.float16 and full.Z.dtype == np.float32
        assert np.array_equal(half.Z.astype(np.float32), full.Z)
