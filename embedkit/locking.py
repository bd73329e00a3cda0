"""One writer at a time per cache file, and a refusal that names the other one.

HDF5 locks a file while it is open, but a second writer then fails deep inside h5py with
"unable to lock file, errno = 11" and no word on who holds it. Every embedkit write to a cache
(write, merge, import, extraction parts and their merge, prompts, derived arrays) first takes
`writer_lock(path)`: an advisory `flock` on a small file beside it, `.NAME.lock`, that holds the
holder's pid, host, command and start time. A second writer waits up to `wait` seconds
(`--wait SECONDS`), then refuses in one line naming the holder.

Why flock: the kernel drops it when the holder dies, so a killed run never leaves a stale lock
(the file may stay; the next writer simply takes it). The lock file is removed on release; an
acquirer that locked a file someone just removed notices (the inode changed) and tries again.
Where the filesystem has no flock (ENOLCK, some network mounts) the write goes ahead unlocked
with a warning, as HDF5 itself does with HDF5_USE_FILE_LOCKING=FALSE.

A process outside embedkit that holds the HDF5 file open (a notebook's `h5py.File`) takes no
embedkit lock; `hdf5_holders` names it from /proc/locks where Linux provides it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

from embedkit.errors import EmbedkitError

POLL_S = 0.25
_HELD: dict[str, list] = {}  # lock path -> [fd, depth]: a process re-entering its own lock


class LockBusy(EmbedkitError):
    """Another process holds the lock (after waiting `wait` seconds)."""


def lock_path(path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


def _command() -> str:
    argv = list(sys.argv)
    if argv and Path(argv[0]).name in ("cli.py", "__main__.py", "embedkit"):
        argv = ["embedkit", *argv[1:]]
    return _short(" ".join(argv) or "python")


def _short(text: str) -> str:
    """One line of at most 200 characters (a `python -c` script spans several)."""
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."


def holder_text(info: dict | None) -> str:
    if not info:
        return "a process that has not yet written its name into the lock"
    return (
        f"pid {info.get('pid')} on {info.get('host')} ({info.get('command')!r}, started "
        f"{info.get('started')})"
    )


def read_holder(path) -> dict | None:
    """The holder record of the lock beside cache `path`, or None."""
    try:
        return json.loads(lock_path(path).read_text() or "null")
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def writer_lock(path, wait: float = 0.0, what: str = "write", label: str | None = None):
    """Hold the writer lock of `path` (a cache file) for the `with` block. Waits up to `wait`
    seconds for another holder, then raises LockBusy naming it (and `label`, what the lock
    guards, default the path)."""
    lp = lock_path(path)
    key = str(lp.resolve())
    if key in _HELD:  # our own lock: nested writes of one command
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    if not lp.parent.is_dir():
        raise EmbedkitError(f"{lp.parent}: no such folder (for {Path(path).name})")
    deadline = time.monotonic() + max(0.0, float(wait or 0))
    fd, told = None, False
    while fd is None:
        try:
            fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise EmbedkitError(
                f"{lp}: cannot create the lock file for {Path(path).name} ({e.strerror})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            fd = None
            holder = holder_text(read_holder(path))
            if time.monotonic() >= deadline:
                raise LockBusy(
                    f"{label or path}: another writer holds it: {holder}; "
                    f"{f'waited {wait:g}s; ' if wait else ''}wait for it to finish or pass "
                    "--wait SECONDS"
                ) from None
            if not told:
                say_waiting(label or path, holder, wait)
                told = True
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
            continue
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            warnings.warn(
                f"{lp}: this filesystem has no file locks ({e.strerror}); writing {path} unlocked"
            )
            yield
            return
        try:
            same = os.stat(lp).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # removed by its last holder after we opened it
            os.close(fd)
            fd = None
    info = {
        "pid": os.getpid(),
        "host": platform.node(),
        "command": _command(),
        "what": what,
        "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(info).encode())
    _HELD[key] = [fd, 1]
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(FileNotFoundError):
            lp.unlink()  # while still locked: no one can hold the old inode
        os.close(fd)


def say_waiting(what, holder: str, wait: float) -> None:
    """One line on stderr when a writer starts to wait, so a quiet terminal is explained."""
    print(
        f"embedkit: waiting up to {wait:g}s for {what}: held by {holder}",
        file=sys.stderr,
        flush=True,
    )


def hdf5_holders(path) -> list[str]:
    """Processes holding a kernel lock on `path` itself (HDF5's own lock of an open file), as
    'pid N (command, started T)' from /proc/locks; empty where that is not available."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    out = []
    for line in lines:
        parts = line.split()
        where = [p for p in parts if p.count(":") == 2]
        if not where or where[0] != dev:
            continue
        pid = parts[parts.index(where[0]) - 1]
        if pid.isdigit() and int(pid) != os.getpid() and f"pid {pid}" not in " ".join(out):
            out.append(_describe_pid(int(pid)))
    return out


def _describe_pid(pid: int) -> str:
    host = platform.node()
    try:
        cmd = _short(
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
        started = _dt.datetime.fromtimestamp(boot + ticks / os.sysconf("SC_CLK_TCK"), _dt.UTC)
        when = started.isoformat(timespec="seconds")
    except (OSError, ValueError, IndexError, StopIteration):
        return f"pid {pid} on {host}"
    return f"pid {pid} on {host} ({cmd!r}, started {when})"
