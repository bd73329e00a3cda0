"""A second writer on one cache waits (--wait) or refuses in one line naming the first, with real
second processes (issue 11): two extractions on one --out, and an import onto a file another
process holds open."""

import os
import platform
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from embedkit.cache import Cache, write_cache
from embedkit.locking import LockBusy, lock_path, writer_lock
from tests.test_cache import ROOT, make_samples

ENV = {**os.environ, "PYTHONPATH": ROOT}


def cli(*args, **kw):
    return subprocess.Popen(
        [sys.executable, "-m", "embedkit.cli", *map(str, args)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def wait_for(path, timeout=90, text=None):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists() and (text is None or text in path.read_text()):
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} never appeared" + (f" with {text!r}" if text else ""))


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from embedkit.backbones.train_backbone import train_erm

    return train_erm(
        "colored_digits",
        epochs=1,
        width=4,
        out=tmp_path_factory.mktemp("lock") / "erm.pt",
        log=None,
    )


def test_second_extract_on_the_same_out_refuses_naming_the_first_then_waits(
    ckpt, tmp_path, monkeypatch
):
    from embedkit import locking
    from embedkit.extract import extract

    out, started, release = tmp_path / "c.h5", tmp_path / "started", tmp_path / "release"
    args = [
        "extract",
        "--dataset",
        "colored_digits",
        "--backbone",
        f"checkpoint:{ckpt}",
        "--out",
        out,
        "--workers",
        "0",
        "--batch-size",
        "512",
    ]
    # The first writer: a real extraction held inside its first batch until the test releases it.
    first = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import pathlib, sys, time
        import embedkit.cache as C
        append = C.CacheWriter.append
        def held(self, *a, **k):
            pathlib.Path({str(started)!r}).write_text("in")
            while not pathlib.Path({str(release)!r}).exists():
                time.sleep(0.05)
            return append(self, *a, **k)
        C.CacheWriter.append = held
        sys.argv = ["embedkit", *{[str(a) for a in args]!r}]      # as the `embedkit` script sees it
        from embedkit.cli import main
        sys.exit(main(sys.argv[1:]))
        """),
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(started)
        second = cli(*args)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2
        line = one_line(err)
        assert (
            f"pid {first.pid} on {platform.node()}" in line
            and "embedkit extract --dataset colored_digits" in line
        )
        assert "started 20" in line and "--wait SECONDS" in line
        # A third writer with --wait: in this process, releasing the first one once it says it
        # waits.
        told = []

        def waiting(what, holder, wait):
            told.append(holder)
            release.write_text("go")

        monkeypatch.setattr(locking, "say_waiting", waiting)
        res = extract(
            "colored_digits",
            f"checkpoint:{ckpt}",
            out,
            workers=0,
            batch_size=512,
            device="cpu",
            log=lambda m: None,
            wait=120,
        )
        assert len(told) == 1 and f"pid {first.pid}" in told[0] and "nothing to do" in res.message
        assert first.wait(timeout=120) == 0
    finally:
        release.write_text("go")
        first.wait(timeout=120)
    assert Cache.open(out).seen_counts() == {"train": 1000, "val": 0, "test": 0}
    assert not lock_path(out).exists() and not list(tmp_path.glob(".c.h5.*lock"))


def test_import_onto_a_file_another_process_holds_open(tmp_path):
    s = make_samples()
    path = write_cache(tmp_path / "c.h5", s, "bb", np.zeros((len(s), 3), np.float32))
    np.savez(
        tmp_path / "x.npz",
        Z=np.ones((len(s), 3), np.float32),
        y=s.y,
        a=s.a,
        split=s.split,
        ids=s.uid,
    )
    opened, release = tmp_path / "opened", tmp_path / "release"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import pathlib, time, h5py
        f = h5py.File({str(path)!r}, "r")          # a notebook reading the cache
        pathlib.Path({str(opened)!r}).write_text("open")
        while not pathlib.Path({str(release)!r}).exists():
            time.sleep(0.05)
        """),
        ],
        cwd=ROOT,
        env=ENV,
    )
    try:
        wait_for(opened)
        second = cli("import", "--npz", tmp_path / "x.npz", "--out", path, "--name", "other")
        _, err = second.communicate(timeout=60)
        assert second.returncode == 2
        line = one_line(err)
        assert "in use by another process" in line
        if os.path.exists("/proc/locks"):
            assert f"pid {holder.pid} on {platform.node()}" in line and "h5py" in line
        third = cli(
            "import", "--npz", tmp_path / "x.npz", "--out", path, "--name", "other", "--wait", "60"
        )
        time.sleep(1.0)
        release.write_text("go")
        _, err = third.communicate(timeout=60)
        assert third.returncode == 0, err
    finally:
        release.write_text("go")
        holder.wait(timeout=60)
    assert set(Cache.open(path).backbones()) == {"bb", "other"}


def test_lock_is_reentrant_ignores_a_dead_holder_and_times_out(tmp_path):
    s = make_samples()
    path = tmp_path / "c.h5"
    lock_path(path).write_text(
        '{"pid": 1, "host": "gone"}'
    )  # left by a killed writer: no flock on it
    with writer_lock(path):
        write_cache(path, s, "bb", np.zeros((len(s), 3), np.float32))  # the same process re-enters
    assert not lock_path(path).exists()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
        import sys, time
        from embedkit.locking import writer_lock
        with writer_lock({str(path)!r}):
            print("held", flush=True)
            time.sleep(30)
        """),
        ],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(LockBusy, match=f"pid {holder.pid}"):
            write_cache(path, s, "bb2", np.zeros((len(s), 3), np.float32), wait=0.6)
        assert 0.5 < time.monotonic() - t0 < 10
    finally:
        holder.kill()
        holder.wait()
    write_cache(path, s, "bb2", np.zeros((len(s), 3), np.float32))  # a killed holder frees it
    assert set(Cache.open(path).backbones()) == {"bb", "bb2"}
