"""The HDF5 embedding cache (DESIGN section 4, ecosystem-notes section 2).

One file per dataset. `/samples` holds one row per sample; every feature matrix under
`/embeddings/<backbone_key>/` is in the same row order, so several backbones share the sample
rows. Rows are stored sorted by split (train, val, test; stable within a split) so that loading
a split is one contiguous read. Feature matrices are uncompressed and contiguous once final.

Writes are atomic: a new file is written under a temporary name and renamed; a backbone added to
an existing file is marked `complete` only after its last byte is written, and readers ignore a
group without that mark. Nothing is pickled; strings are UTF-8 variable-length datasets and
provenance is small attributes (JSON for nested values).

`/embeddings/<key>/seen` (optional, bool per row) says which rows the backbone was trained on. It
belongs to the backbone, not to `/samples`: a CLIP tower and an ERM ResNet in one file saw
different rows. It is additive, so the format version stays 1: a file without it (older writers,
or a backbone whose training rows nobody knows, such as a published checkpoint) reads as
"unknown" (`Split.seen_known` False, `Split.seen` all False). The version changes only when a
reader of the previous version would misread a file.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.locking import LockBusy, writer_lock
from embedkit.schema import (  # noqa: F401  (re-exported: the cache's public vocabulary)
    SPLITS,
    Samples,
    Split,
    as_split_codes,
    group_ids,
    group_names,
    split_code,
)

FORMAT = "embedkit-cache"
FORMAT_VERSION = 1
STR = h5py.string_dtype("utf-8")

# Provenance attributes that legitimately differ between shards of one extraction.
VOLATILE_ATTRS = frozenset(
    {
        "images_per_s",
        "finished_at",
        "created_at",
        "timing_json",
        "fingerprint",
        "complete",
        "device_name",
        "row_start",
        "row_stop",
        "shard",
        "bottleneck",
        "n_invalid",
    }
)


def _version() -> str:
    from embedkit.version import __version__

    return __version__


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def _open_h5(path, mode="r", wait: float = 0.0) -> h5py.File:
    """Open with h5py; a file another process holds open (HDF5's own lock) is retried for up to
    `wait` seconds, then refused in one line naming that process."""
    path = Path(path)
    if mode == "r" and not path.exists():
        raise EmbedkitError(f"{path}: no such file")
    deadline = time.monotonic() + max(0.0, float(wait or 0))
    told = False
    while True:
        try:
            return h5py.File(path, mode)
        except BlockingIOError:
            if time.monotonic() < deadline:
                if not told:
                    from embedkit.locking import say_waiting

                    say_waiting(path, _in_use_by(path), wait)
                    told = True
                time.sleep(0.25)
                continue
            advice = (
                "wait for it to close the file"
                if mode == "r"
                else "close it, or pass --wait SECONDS"
            )
            raise LockBusy(
                f"{path}: in use by another process ({_in_use_by(path)}); {advice}"
            ) from None
        except OSError as e:
            raise EmbedkitError(
                f"{path}: cannot open as HDF5 ({e.__class__.__name__}: {str(e).splitlines()[0]})"
            ) from None


def _in_use_by(path) -> str:
    from embedkit.locking import hdf5_holders, holder_text, read_holder

    info = read_holder(path)
    if info and info.get("pid") != os.getpid():  # not our own writer lock
        return f"an embedkit writer: {holder_text(info)}"
    found = hdf5_holders(path)
    return "; ".join(found) if found else "an HDF5 file lock held by a process embedkit cannot name"


def _check_format(f: h5py.File, path) -> None:
    if f.attrs.get("format") != FORMAT:
        raise EmbedkitError(f"{path}: not an embedkit cache (no format='{FORMAT}' attribute)")
    version = int(f.attrs.get("format_version", 0))
    if version > FORMAT_VERSION:
        raise EmbedkitError(
            f"{path}: written by a newer embedkit (format version {version} > {FORMAT_VERSION}); "
            "upgrade embedkit"
        )
    if not f.attrs.get("complete", False) or "samples" not in f:
        raise EmbedkitError(
            f"{path}: incomplete cache (an interrupted write); delete it and write again"
        )


def _read_cast(ds: h5py.Dataset, lo: int, hi: int, out: np.ndarray, block: int = 32768) -> None:
    """Read rows [lo, hi) of `ds` into `out` of another dtype, block by block (no second full
    copy). torch's vectorised half->float copy is ~5x faster than numpy's cast."""
    import torch

    buf = np.empty((block, ds.shape[1]), ds.dtype)
    dst = torch.from_numpy(out)
    for b in range(lo, hi, block):
        k = min(block, hi - b)
        ds.read_direct(buf, np.s_[b : b + k], np.s_[:k])
        dst[b - lo : b - lo + k].copy_(torch.from_numpy(buf[:k]))


def _attrs_dict(attrs) -> dict:
    out = {}
    for k, v in attrs.items():
        if isinstance(v, bytes):
            v = v.decode()
        elif isinstance(v, np.generic):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = v.tolist()
        if isinstance(v, str) and k.endswith("_json"):
            try:
                v = json.loads(v)
            except ValueError:
                pass
        out[k] = v
    return out


def _to_attr(v):
    """Attributes hold scalars and strings; nested values travel as JSON."""
    if isinstance(v, (dict, list, tuple)):
        return json.dumps(v, sort_keys=True, default=str)
    if v is None:
        return "null"
    if isinstance(v, (np.generic,)):
        return v.item()
    return v


class Cache:
    """Read-only view of a cache file. The sample table is read once at open; every other read
    opens the file for that call only, so a Cache is safe to hand to forked workers."""

    def __init__(self, path):
        self.path = Path(path)
        with _open_h5(self.path) as f:
            _check_format(f, self.path)
            self.attrs = _attrs_dict(f.attrs)
            self._samples = _read_samples(f)
        self.n = len(self._samples)
        self.class_names = self._samples.class_names
        self.attr_names = self._samples.attr_names
        self.dataset = self.attrs.get("dataset_name", "")

    @classmethod
    def open(cls, path) -> Cache:
        return cls(path)

    # -- what is in the file --------------------------------------------------------------------
    def backbones(self) -> list[str]:
        with _open_h5(self.path) as f:
            if "embeddings" not in f:
                return []
            return [k for k, g in f["embeddings"].items() if g.attrs.get("complete", False)]

    def _backbone(self, backbone: str | None) -> str:
        keys = self.backbones()
        if backbone is None:
            if len(keys) == 1:
                return keys[0]
            if not keys:
                raise EmbedkitError(f"{self.path}: holds no complete backbone embeddings")
            raise EmbedkitError(
                f"{self.path}: holds {len(keys)} backbones ({', '.join(keys)}); name one"
            )
        if backbone not in keys:
            raise EmbedkitError(
                f"{self.path}: no backbone {backbone!r}; it holds {', '.join(keys) or 'none'}"
            )
        return backbone

    def provenance(self, backbone: str | None = None) -> dict:
        key = self._backbone(backbone)
        with _open_h5(self.path) as f:
            return _attrs_dict(f["embeddings"][key].attrs)

    def fingerprint(self, backbone: str | None = None) -> str:
        return self.provenance(backbone).get("fingerprint", "")

    @property
    def group_names(self) -> list[str]:
        return group_names(self.class_names, self.attr_names)

    def samples(self) -> Samples:
        return replace(self._samples, valid=self._samples.valid.copy())

    def split_range(self, name: str) -> tuple[int, int]:
        code = split_code(name)
        idx = np.flatnonzero(self._samples.split == code)
        if idx.size == 0:
            return 0, 0
        return int(idx[0]), int(idx[-1]) + 1

    # -- loading --------------------------------------------------------------------------------
    def split(
        self,
        name: str,
        backbone: str | None = None,
        include_invalid: bool = False,
        dtype: str | None = "float32",
    ) -> Split:
        """Load one split into memory with one contiguous read of each array.

        `Z` is float32 (methods spec 0.1: cast before any math); `dtype=None` keeps the on-disk
        dtype (half the memory for fp16 caches). Rows flagged invalid (unreadable image,
        non-finite features) are left out with a warning that counts them, unless `include_invalid`.
        """
        key = self._backbone(backbone)
        code = split_code(name)
        lo, hi = self.split_range(name)
        with _open_h5(self.path) as f:
            grp = f["embeddings"][key]
            feats = grp["feats"]
            Z = np.empty(
                (hi - lo, feats.shape[1]), feats.dtype if dtype is None else np.dtype(dtype)
            )
            if hi > lo and feats.dtype == Z.dtype:
                feats.read_direct(Z, np.s_[lo:hi])
            elif hi > lo:
                _read_cast(feats, lo, hi, Z)
            logits = grp["logits"][lo:hi].astype(np.float32) if "logits" in grp else None
            head = (
                (grp["head_W0"][()].astype(np.float32), grp["head_b0"][()].astype(np.float32))
                if "head_W0" in grp
                else None
            )
            seen = grp["seen"][lo:hi].astype(bool) if "seen" in grp else None
        s = self._samples
        keep = s.split[lo:hi] == code  # a file not sorted by split still reads right
        n_bad = int((keep & ~s.valid[lo:hi]).sum())
        if not include_invalid and n_bad:
            warnings.warn(
                f"{self.path}: {n_bad} invalid rows of split {name!r} left out (flagged in "
                "/samples/valid)"
            )
            keep &= s.valid[lo:hi]
        sel = np.flatnonzero(keep)
        full = sel.size == hi - lo
        pick = (lambda arr: arr[lo:hi]) if full else (lambda arr: arr[lo:hi][sel])
        return Split(
            name=SPLITS[code],
            Z=Z if full else Z[sel],
            y=pick(s.y),
            a=pick(s.a),
            ids=pick(s.uid),
            rows=(lo + sel).astype(np.int64),
            class_names=list(self.class_names),
            attr_names=list(self.attr_names),
            backbone=key,
            logits=None if logits is None else (logits if full else logits[sel]),
            erm_head=head,
            text=self.text(key),
            train_group_counts=self.group_counts("train"),
            seen=None if seen is None else (seen if full else seen[sel]),
            seen_known=seen is not None,
            eval_groups=None if s.eval_groups is None else pick(s.eval_groups),
            eval_group_names=list(s.eval_group_names) if s.eval_groups is not None else None,
        )

    def group_counts(self, name: str) -> np.ndarray:
        """Rows per group (valid rows with a known attribute) in one split."""
        s = self._samples
        g = s.g[(s.split == split_code(name)) & s.valid]
        return np.bincount(g[g >= 0], minlength=len(self.group_names))

    def seen(self, backbone: str | None = None) -> np.ndarray | None:
        """Per row of the file: was the backbone trained on it? None when nobody recorded it."""
        key = self._backbone(backbone)
        with _open_h5(self.path) as f:
            grp = f["embeddings"][key]
            return grp["seen"][()].astype(bool) if "seen" in grp else None

    def seen_counts(self, backbone: str | None = None) -> dict | None:
        """Rows the backbone was trained on, per split ({'train': n, 'val': n, 'test': n}), or
        None."""
        return _seen_counts(self.seen(backbone), self._samples.split)

    def head(self, backbone: str | None = None):
        """The frozen ERM head (W0 [C, D], b0 [C]) stored with the backbone, or None."""
        key = self._backbone(backbone)
        with _open_h5(self.path) as f:
            grp = f["embeddings"][key]
            if "head_W0" not in grp:
                return None
            return grp["head_W0"][()].astype(np.float32), grp["head_b0"][()].astype(np.float32)

    def text(self, backbone: str | None = None) -> dict | None:
        """Stored text-tower embeddings: {'prompts', 'feats', 'kind', 'index'} or None."""
        key = self._backbone(backbone)
        with _open_h5(self.path) as f:
            if "text" not in f or key not in f["text"]:
                return None
            t = f["text"][key]
            return {
                "prompts": list(t["prompts"].asstr()[()]),
                "feats": t["feats"][()].astype(np.float32),
                "kind": list(t["kind"].asstr()[()]),
                "index": t["index"][()].astype(np.int64),
                "attrs": _attrs_dict(t.attrs),
            }

    def derived(self, name: str) -> dict | None:
        with _open_h5(self.path) as f:
            if "derived" not in f or name not in f["derived"]:
                return None
            g = f["derived"][name]
            out = {k: (v.asstr()[()] if v.dtype.kind == "O" else v[()]) for k, v in g.items()}
            out["attrs"] = _attrs_dict(g.attrs)
            return out

    # -- summary --------------------------------------------------------------------------------
    def info(self) -> dict:
        samples = self.samples()
        counts = {}
        for code, name in enumerate(SPLITS):
            m = samples.split == code
            g = samples.g[m]
            counts[name] = {
                "rows": int(m.sum()),
                "invalid": int((~samples.valid[m]).sum()),
                "unknown_attr": int((g < 0).sum()),
                "groups": np.bincount(g[g >= 0], minlength=len(self.group_names)).tolist(),
            }
            if samples.eval_groups is not None:
                counts[name]["eval_groups"] = (
                    samples.eval_groups[m].sum(axis=0).astype(int).tolist()
                )
        backbones = {}
        with _open_h5(self.path) as f:
            for key in self.backbones():
                grp = f["embeddings"][key]
                backbones[key] = {
                    "dim": int(grp["feats"].shape[1]),
                    "dtype": str(grp["feats"].dtype),
                    "has_logits": "logits" in grp,
                    "has_head": "head_W0" in grp,
                    "has_text": "text" in f and key in f["text"],
                    "seen": _seen_counts(grp["seen"][()] if "seen" in grp else None, samples.split),
                    "provenance": _attrs_dict(grp.attrs),
                }
        return {
            "path": str(self.path),
            "format_version": self.attrs.get("format_version"),
            "dataset": self.dataset,
            "n_samples": self.n,
            "class_names": self.class_names,
            "attr_names": self.attr_names,
            "group_names": self.group_names,
            "group_definition": self.attrs.get("group_definition"),
            "splits": counts,
            "eval_group_names": list(self._samples.eval_group_names)
            if self._samples.eval_groups is not None
            else None,
            "backbones": backbones,
            "dataset_meta": self.attrs.get("dataset_meta_json"),
        }


def _seen_counts(seen, split) -> dict | None:
    if seen is None:
        return None
    seen = np.asarray(seen, bool)
    return {name: int((seen & (split == code)).sum()) for code, name in enumerate(SPLITS)}


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------


def _check_key(key: str) -> str:
    if not key or "/" in key or key.startswith("."):
        raise EmbedkitError(f"bad backbone key {key!r}: it must be non-empty and contain no '/'")
    return key


def _feat_dtype(dtype) -> np.dtype:
    dt = np.dtype({"fp32": "float32", "fp16": "float16"}.get(str(dtype), str(dtype)))
    if dt not in (np.float32, np.float16):
        raise EmbedkitError(f"feature dtype must be float32 or float16, not {dt}")
    return dt


def _write_samples(f: h5py.File, samples: Samples) -> None:
    s = f.create_group("samples")
    # Fixed-length UTF-8 bytes rather than vlen strings: vlen heap entries cost ~40 bytes a row
    # (2 % of an fp16 file of 1,024-d rows) and decode 5x slower (bench/cache_io.py).
    uid = s.create_dataset("uid", data=_encode_uids(samples.uid))
    uid.attrs["encoding"] = "utf-8"
    d = s.create_dataset("split", data=samples.split.astype(np.uint8))
    d.attrs["names"] = json.dumps(list(SPLITS))
    d = s.create_dataset("y", data=samples.y.astype(np.int16))
    d.attrs["class_names_json"] = json.dumps(samples.class_names)
    d = s.create_dataset("a", data=samples.a.astype(np.int16))
    d.attrs["attr_names_json"] = json.dumps(samples.attr_names)
    d = s.create_dataset("g", data=samples.g.astype(np.int16))
    d.attrs["group_names_json"] = json.dumps(samples.group_names())
    s.create_dataset("valid", data=samples.valid.astype(bool))
    if samples.eval_groups is not None:
        d = s.create_dataset("eval_groups", data=samples.eval_groups.astype(bool))
        d.attrs["names_json"] = json.dumps(samples.eval_group_names)
    f.attrs.update(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "embedkit_version": _version(),
            "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "h5py_version": h5py.version.version,
            "numpy_version": np.__version__,
            "dataset_name": samples.dataset,
            "n_samples": len(samples),
            "class_names_json": json.dumps(samples.class_names),
            "attr_names_json": json.dumps(samples.attr_names),
            "group_definition": f"g = y * {samples.n_attrs} + a (-1 when a is unknown)",
            "dataset_meta_json": json.dumps(samples.meta, sort_keys=True, default=str),
        }
    )


def _encode_uids(uid) -> np.ndarray:
    enc = np.strings.encode(np.asarray(uid).astype(str), "utf-8")
    return enc if enc.dtype.itemsize else enc.astype("S1")


def _decode_uids(raw: np.ndarray) -> np.ndarray:
    if raw.dtype.kind == "O":  # vlen strings from another writer
        return np.asarray([u.decode() if isinstance(u, bytes) else u for u in raw], dtype=str)
    try:
        return raw.astype(str)  # ASCII: a C-level cast
    except UnicodeDecodeError:
        return np.strings.decode(raw, "utf-8")


def _read_samples(f: h5py.File) -> Samples:
    s = f["samples"]
    eg = s["eval_groups"] if "eval_groups" in s else None
    return Samples(
        uid=_decode_uids(s["uid"][()]),
        split=s["split"][()],
        y=s["y"][()],
        a=s["a"][()],
        valid=s["valid"][()],
        class_names=json.loads(f.attrs["class_names_json"]),
        attr_names=json.loads(f.attrs["attr_names_json"]),
        dataset=f.attrs.get("dataset_name", ""),
        meta=json.loads(f.attrs.get("dataset_meta_json", "{}")),
        eval_groups=None if eg is None else eg[()],
        eval_group_names=[] if eg is None else json.loads(eg.attrs["names_json"]),
    )


def content_fingerprint(
    samples: Samples, feats: np.ndarray | h5py.Dataset, block: int = 65536
) -> str:
    """SHA-256 over the sample table and the feature bytes: equal files give equal prints."""
    h = hashlib.sha256()
    for arr in (
        samples.split.astype(np.uint8),
        samples.y.astype(np.int16),
        samples.a.astype(np.int16),
    ):
        h.update(arr.tobytes())
    h.update("\n".join(samples.uid.astype(str)).encode())
    h.update(str(np.dtype(feats.dtype)).encode() + repr(tuple(feats.shape)).encode())
    for lo in range(0, feats.shape[0], block):
        h.update(np.ascontiguousarray(feats[lo : lo + block]).tobytes())
    return h.hexdigest()


def _nonfinite_rows(feats: np.ndarray) -> np.ndarray:
    return np.flatnonzero(~np.isfinite(feats).all(axis=1))


def _tmp_name(path: Path, tag: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{tag}")


def as_seen(seen, n: int, source="seen") -> np.ndarray | None:
    """A row-aligned bool array (bools or 0/1) of the rows a backbone was trained on, or None."""
    if seen is None:
        return None
    arr = np.asarray(seen)
    if arr.ndim != 1 or len(arr) != n:
        raise EmbedkitError(
            f"{source}: seen must be a 1-D bool array row-aligned with the embeddings "
            f"({n} rows), got shape {arr.shape}"
        )
    if arr.dtype.kind != "b":
        if arr.dtype.kind not in "iu" or not np.isin(arr, (0, 1)).all():
            raise EmbedkitError(
                f"{source}: seen must hold booleans (or 0/1), got dtype {arr.dtype}"
            )
    return arr.astype(bool)


def write_cache(
    path,
    samples: Samples,
    backbone_key: str,
    feats: np.ndarray,
    *,
    provenance: Mapping | None = None,
    dtype="float32",
    logits: np.ndarray | None = None,
    head: tuple | None = None,
    seen: np.ndarray | None = None,
    overwrite: bool = False,
    allow_nonfinite: bool = False,
    wait: float = 0.0,
) -> Path:
    """Write one backbone's features for `samples`, creating the file or adding to it.

    A new file is written sorted by split under a temporary name and renamed into place. An
    existing file must hold the same samples; the backbone group is written, then marked
    complete. `head` is the frozen ERM head (W0 [C, D], b0 [C]); `seen` marks the rows (aligned
    with `samples`) the backbone was trained on, None when that is unknown. Under the file's
    writer lock (embedkit/locking.py): another writer is waited for up to `wait` seconds.
    """
    path = Path(path)
    _check_key(backbone_key)
    dt = _feat_dtype(dtype)
    feats = np.asarray(feats)
    if feats.ndim != 2:
        raise EmbedkitError(f"embeddings must be a 2-D matrix, got shape {feats.shape}")
    if feats.shape[0] != len(samples):
        raise EmbedkitError(
            f"arrays of different lengths: embeddings have {feats.shape[0]} rows, labels "
            f"{len(samples)}"
        )
    if logits is not None and len(logits) != len(samples):
        raise EmbedkitError(
            f"arrays of different lengths: logits have {len(logits)} rows, labels {len(samples)}"
        )
    seen = as_seen(seen, len(samples))
    stored = feats.astype(dt, copy=False)
    bad = _nonfinite_rows(stored)
    if bad.size:
        if not allow_nonfinite:
            raise EmbedkitError(
                f"non-finite embedding at row {bad[0]} (uid {samples.uid[bad[0]]}) and "
                f"{bad.size - 1} more rows; pass --allow-nonfinite to keep them flagged invalid"
            )
        samples = replace(samples, valid=samples.valid.copy())
        samples.valid[bad] = False
    order = samples.split_order()
    deadline = time.monotonic() + max(0.0, float(wait or 0))
    with writer_lock(path, wait, "write"):
        if path.exists():
            with _open_h5(path, "r", wait=_left(deadline)) as f:
                _check_format(f, path)
                on_disk = _read_samples(f)
            sorted_new = samples.take(order)
            if not on_disk.same_rows(sorted_new):
                raise EmbedkitError(
                    f"{path}: holds different samples (uid/split/y/a) than the ones being written; "
                    "write to a new file"
                )
            with _open_h5(path, "a", wait=_left(deadline)) as f:
                _add_backbone(
                    f,
                    path,
                    backbone_key,
                    stored[order],
                    provenance or {},
                    sorted_new,
                    None if logits is None else np.asarray(logits)[order],
                    head,
                    overwrite,
                    seen=None if seen is None else seen[order],
                )
                f["samples"]["valid"][...] &= sorted_new.valid
            return path
        return _write_new(
            path,
            samples.take(order),
            backbone_key,
            stored[order],
            provenance or {},
            None if logits is None else np.asarray(logits)[order],
            head,
            None if seen is None else seen[order],
        )


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


def _write_new(
    path: Path, sorted_new: Samples, backbone_key, feats, provenance, logits, head, seen
) -> Path:
    tmp = _tmp_name(path)
    try:
        with h5py.File(tmp, "w") as f:
            _write_samples(f, sorted_new)
            _add_backbone(
                f, path, backbone_key, feats, provenance, sorted_new, logits, head, seen=seen
            )
            f.attrs["complete"] = True
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _add_backbone(
    f: h5py.File,
    path,
    key: str,
    feats,
    provenance: Mapping,
    samples: Samples,
    logits=None,
    head=None,
    overwrite=False,
    seen=None,
) -> None:
    emb = f.require_group("embeddings")
    if key in emb:
        if emb[key].attrs.get("complete", False) and not overwrite:
            raise EmbedkitError(
                f"{path}: backbone key {key!r} already exists; pass --overwrite to replace it"
            )
        del emb[key]
    grp = emb.create_group(key)
    grp.attrs["complete"] = False
    f.flush()
    d = grp.create_dataset("feats", shape=feats.shape, dtype=feats.dtype)  # contiguous, no filter
    for lo in range(0, feats.shape[0], 65536):
        d[lo : lo + 65536] = feats[lo : lo + 65536]
    if logits is not None:
        grp.create_dataset("logits", data=np.asarray(logits, np.float32))
    if head is not None:
        W0, b0 = head
        grp.create_dataset("head_W0", data=np.asarray(W0, np.float32))
        grp.create_dataset("head_b0", data=np.asarray(b0, np.float32))
    if seen is not None:
        grp.create_dataset("seen", data=np.asarray(seen, bool))
    attrs = {k: _to_attr(v) for k, v in dict(provenance).items()}
    attrs.update(
        dim=int(feats.shape[1]),
        dtype=str(feats.dtype),
        backbone_key=key,
        fingerprint=content_fingerprint(samples, d),
        finished_at=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    grp.attrs.update(attrs)
    f.flush()
    grp.attrs["complete"] = True


class CacheWriter:
    """Streaming writer for one backbone over a known sample table (extraction shards).

    Rows are appended in order into resizable, ~1 MiB-chunked datasets of a `.partial` file;
    `finalize()` copies them into a contiguous file under a temporary name and renames it to
    `path`. A process killed before `finalize()` leaves only the `.partial` file, which
    `Cache.open` refuses.
    """

    def __init__(
        self,
        path,
        samples: Samples,
        backbone_key: str,
        dim: int,
        *,
        dtype="float32",
        provenance: Mapping | None = None,
        n_logits: int | None = None,
        allow_nonfinite=False,
        seen: np.ndarray | None = None,
    ):
        self.path = Path(path)
        self.samples = replace(samples, valid=samples.valid.copy())
        self.seen = as_seen(seen, len(samples), str(self.path))
        self.key = _check_key(backbone_key)
        self.dt = _feat_dtype(dtype)
        self.provenance = dict(provenance or {})
        self.allow_nonfinite = allow_nonfinite
        self.n = 0
        self.partial = self.path.with_name(self.path.name + ".partial")
        self._f = h5py.File(self.partial, "w")
        rows = max(1, (1 << 20) // (dim * self.dt.itemsize))
        self._feats = self._f.create_dataset(
            "feats", shape=(0, dim), maxshape=(None, dim), dtype=self.dt, chunks=(rows, dim)
        )
        self._logits = (
            None
            if not n_logits
            else self._f.create_dataset(
                "logits",
                shape=(0, n_logits),
                maxshape=(None, n_logits),
                dtype=np.float32,
                chunks=(rows, n_logits),
            )
        )

    def append(
        self, feats: np.ndarray, logits: np.ndarray | None = None, valid: np.ndarray | None = None
    ) -> None:
        feats = np.asarray(feats).astype(self.dt, copy=False)
        k = feats.shape[0]
        if self.n + k > len(self.samples):
            raise EmbedkitError(
                f"{self.path}: more rows appended ({self.n + k}) than samples ({len(self.samples)})"
            )
        rows = slice(self.n, self.n + k)
        if valid is not None:
            self.samples.valid[rows] &= np.asarray(valid, bool)
        bad = _nonfinite_rows(feats)
        bad = bad[self.samples.valid[rows][bad]]  # rows already flagged may hold anything
        if bad.size:
            uid = self.samples.uid[self.n + bad[0]]
            if not self.allow_nonfinite:
                raise EmbedkitError(
                    f"non-finite embedding at row {self.n + bad[0]} (uid {uid}); "
                    "pass --allow-nonfinite to keep such rows flagged invalid"
                )
            self.samples.valid[self.n + bad] = False
        self._feats.resize(self.n + k, axis=0)
        self._feats[rows] = feats
        if self._logits is not None:
            self._logits.resize(self.n + k, axis=0)
            self._logits[rows] = np.asarray(logits, np.float32)
        self.n += k

    def finalize(self, head: tuple | None = None, extra_provenance: Mapping | None = None) -> Path:
        if self.n != len(self.samples):
            raise EmbedkitError(
                f"{self.path}: only {self.n} of {len(self.samples)} rows were appended"
            )
        self._f.flush()
        self.provenance.update(extra_provenance or {})
        self.provenance["n_invalid"] = int((~self.samples.valid).sum())
        tmp = _tmp_name(self.path)
        try:
            with h5py.File(tmp, "w") as out:
                _write_samples(out, self.samples)
                _add_backbone(
                    out,
                    self.path,
                    self.key,
                    self._feats,
                    self.provenance,
                    self.samples,
                    None if self._logits is None else self._logits[()],
                    head,
                    seen=self.seen,
                )
                out.attrs["complete"] = True
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        self.close()
        self.partial.unlink(missing_ok=True)
        return self.path

    def close(self) -> None:
        if self._f.id.valid:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def provenance_key(attrs: Mapping) -> str:
    """Hash of the provenance attributes that must agree between shards of one extraction."""
    keep = {k: v for k, v in attrs.items() if k not in VOLATILE_ATTRS}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()


def merge(
    shards: Iterable,
    out,
    *,
    backbone: str | None = None,
    overwrite: bool = False,
    wait: float = 0.0,
) -> Path:
    """Concatenate shard caches (rows in the given order) into one file, or into `out` if it
    already holds the same samples. Shards must share dataset, classes and provenance."""
    shards = [Path(p) for p in shards]
    if not shards:
        raise EmbedkitError("merge: no shard files given")
    caches = [Cache.open(p) for p in shards]
    key = backbone or caches[0]._backbone(None)
    ref = caches[0].provenance(key)
    ref_key = provenance_key(ref)
    for c in caches[1:]:
        if key not in c.backbones():
            raise EmbedkitError(f"{c.path}: shard has no backbone {key!r}")
        if provenance_key(c.provenance(key)) != ref_key:
            diff = sorted(
                k
                for k in set(ref) | set(c.provenance(key))
                if k not in VOLATILE_ATTRS and ref.get(k) != c.provenance(key).get(k)
            )
            raise EmbedkitError(
                f"{c.path}: shard provenance differs from {caches[0].path} ({', '.join(diff)}); "
                "refusing to merge"
            )
        if (c.class_names, c.attr_names, c.dataset) != (
            caches[0].class_names,
            caches[0].attr_names,
            caches[0].dataset,
        ):
            raise EmbedkitError(
                f"{c.path}: shard is of another dataset or label set than {caches[0].path}"
            )
    parts = [c.samples() for c in caches]
    s0 = parts[0]
    samples = Samples(
        uid=np.concatenate([p.uid for p in parts]),
        split=np.concatenate([p.split for p in parts]),
        y=np.concatenate([p.y for p in parts]),
        a=np.concatenate([p.a for p in parts]),
        valid=np.concatenate([p.valid for p in parts]),
        class_names=s0.class_names,
        attr_names=s0.attr_names,
        dataset=s0.dataset,
        meta=s0.meta,
        eval_groups=None
        if s0.eval_groups is None
        else np.concatenate([p.eval_groups for p in parts]),
        eval_group_names=s0.eval_group_names,
    )
    feats, logits, seen, head = [], [], [], None
    for c in caches:
        with _open_h5(c.path) as f:
            g = f["embeddings"][key]
            feats.append(g["feats"][()])
            if "logits" in g:
                logits.append(g["logits"][()])
            if "seen" in g:
                seen.append(g["seen"][()])
            if "head_W0" in g:
                head = (g["head_W0"][()], g["head_b0"][()])
    prov = {k: v for k, v in ref.items() if k not in VOLATILE_ATTRS or k == "images_per_s"}
    prov["merged_from"] = len(shards)
    F = np.concatenate(feats)
    return write_cache(
        out,
        samples,
        key,
        F,
        provenance=prov,
        dtype=F.dtype,
        logits=np.concatenate(logits) if len(logits) == len(caches) else None,
        # one shard without the record makes the whole backbone "unknown"
        seen=np.concatenate(seen) if len(seen) == len(caches) else None,
        head=head,
        overwrite=overwrite,
        allow_nonfinite=True,
        wait=wait,
    )


def _fresh_group(f, path, parent: str, name: str):
    """An empty /<parent>/<name> in an open cache of a format this version reads (a group of that
    name is replaced: derived arrays and text embeddings are rewritten whole)."""
    _check_format(f, path)
    p = f.require_group(parent)
    if name in p:
        del p[name]
    return p.create_group(name)


def write_derived(
    path,
    name: str,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping | None = None,
    wait: float = 0.0,
) -> None:
    """Store derived arrays (projections, centroids, inferred groups) under /derived/<name>."""
    with writer_lock(path, wait, "derived"), _open_h5(path, "a", wait=wait) as f:
        g = _fresh_group(f, path, "derived", name)
        for k, v in arrays.items():
            v = np.asarray(v)
            g.create_dataset(
                k,
                data=v.astype(object) if v.dtype.kind == "U" else v,
                dtype=STR if v.dtype.kind in "UO" else None,
            )
        g.attrs.update({k: _to_attr(v) for k, v in dict(attrs or {}).items()})
