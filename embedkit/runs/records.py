"""Run directories and run records (DESIGN section 3; metrics spec section 6), and `collect`, the
one loader that tables and figures share.

One run = one method, one parameter set, one seed and one label budget, in its own directory:

    OUT/<method>[-<params sha8>][-budget<b>][-reserved<r>][-groups_<m>]/seed<k>/
        record.json     the run record, written after everything else
        history.jsonl   the head's evaluation records {config_id, config, step, val, test}
        artifacts.npz   the head's arrays (`artifacts_`), its linear weights and the row sets
                        by role
        prompts.json    the prompt log (zero-shot and text-projection heads)
        done            empty marker written last; a sweep skips directories that have it
        skipped.json    instead of the above when the run could not run (its status and reason)

A record counts only with its `done` marker: a run interrupted while writing leaves a record
without it, and neither a table nor a figure reads that record.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.jsonsafe import jsonable

FORMAT = "embedkit-run"
FORMAT_VERSION = 1


def rows_sha(rows) -> str:
    """SHA-256 of a row set as sorted little-endian int64 (metrics spec 4.4)."""
    return hashlib.sha256(np.sort(np.asarray(rows, np.int64)).astype("<i8").tobytes()).hexdigest()


def params_tag(params: dict) -> str:
    return hashlib.sha256(json.dumps(jsonable(params), sort_keys=True).encode()).hexdigest()[:8]


def run_name(
    method: str,
    params: dict | None = None,
    label_budget: float = 1.0,
    val_reserved: float = 0.0,
    groups: str | None = None,
) -> str:
    name = method + (f"-{params_tag(params)}" if params else "")
    name += f"-budget{label_budget:g}" if label_budget < 1.0 else ""
    name += f"-reserved{val_reserved:g}" if val_reserved > 0 else ""
    return name + (f"-groups_{groups}" if groups else "")


def run_id(method, params, seed, label_budget=1.0, val_reserved=0.0, groups=None) -> str:
    return f"{run_name(method, params, label_budget, val_reserved, groups)}/seed{int(seed)}"


def run_dir(out_dir, method, params, seed, label_budget=1.0, val_reserved=0.0, groups=None) -> Path:
    return Path(out_dir) / run_id(method, params, seed, label_budget, val_reserved, groups)


def relpath(path, start) -> str:
    try:
        return os.path.relpath(Path(path).resolve(), Path(start).resolve())
    except ValueError:  # another drive (Windows)
        return str(path)


def begin(d: Path) -> None:
    """Make run directory `d` and clear its markers: until `write_record` ends, it holds no run."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "done").unlink(missing_ok=True)
    (d / "skipped.json").unlink(missing_ok=True)


def write_record(d: Path, record: dict) -> dict:
    """Write the record atomically, then the `done` marker: a reader sees a whole run or none."""
    record = jsonable(record)
    tmp = d / "record.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))  # insertion order keeps groups in g order
    tmp.replace(d / "record.json")
    (d / "done").touch()
    return record


def write_skip(d: Path, method, params, seed, budget, reserved, status, reason, groups=None):
    """A run that could not run: `skipped.json` with its status (skipped, unavailable, refused,
    error) and the one-line reason; the tables show it as a row."""
    entry = {
        "format": FORMAT,
        "method": method,
        "params_given": params,
        "seed": int(seed),
        "label_budget": float(budget),
        "val_reserved": float(reserved),
        "status": status,
        "reason": reason,
        "run_id": run_id(method, params, seed, budget, reserved, groups),
    }
    d.mkdir(parents=True, exist_ok=True)
    (d / "done").unlink(missing_ok=True)
    (d / "skipped.json").write_text(json.dumps(jsonable(entry), indent=2, sort_keys=True))
    return entry


def load_record(d) -> dict:
    return json.loads((Path(d) / "record.json").read_text())


def load_history(d) -> list[dict]:
    with open(Path(d) / "history.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def is_done(d) -> bool:
    return (Path(d) / "done").exists() and (Path(d) / "record.json").exists()


def finished(d, fingerprint: str) -> dict | None:
    """The finished record in run directory `d`, or None. A finished run of another cache (its
    fingerprint differs) is an error: one runs folder holds the runs of one cache."""
    if not is_done(d):
        return None
    rec = load_record(d)
    if rec["cache"].get("fingerprint") != fingerprint:
        raise EmbedkitError(
            f"{d}: holds a run of another cache ({rec['cache'].get('path')}); "
            "use another --out folder or --force"
        )
    return rec


def collect(root, skipped: bool = True) -> list[dict]:
    """Every finished record (its `done` marker written) under `root` — a run directory or a
    folder of runs, such as the shared --out of several sweep shards — and, with `skipped`, every
    skip entry. The one loader: the results tables and the report's figures both read this, so
    they count the same runs. Each entry carries `_path`, the file it was read from."""
    root = Path(root)
    if not root.exists():
        raise EmbedkitError(f"{root}: no such run folder")
    out = []
    for p in sorted(root.rglob("record.json")):
        if (p.parent / "done").exists():
            out.append({**json.loads(p.read_text()), "_path": str(p)})
    if skipped:
        for p in sorted(root.rglob("skipped.json")):
            out.append({**json.loads(p.read_text()), "_path": str(p)})
    return out
