"""Peer tools' embedding formats in and out of a cache.

    subpopbench     DIR/feats_{train,val,test}.npy + SubpopBench's metadata_<dataset>.csv:
                    the layout the `dpe` package (DPE, To et al. 2025) reads on SubpopBench's
                    metadata. feats_<split>.npy row i is the i-th metadata row of that split, in
                    file order (dpe's `split_indices`). Import and export.
    clip-retrieval  DIR/img_emb/img_emb_<k>.npy + DIR/metadata/metadata_<k>.parquet, row-aligned
                    part by part (clip-retrieval's `clip_inference` writer). Import.
    dfr             the DFR follow-up's `--save_embeddings` npz (embeddings_<split>, y_<split>,
                    g_<split>, p_<split>), or the DFR repository's ImageNet files, one npz per split
                    with `embeddings` and `labels` (`<dataset>_<model>_<split>_embeddings.npz`).
                    Import.

Nothing pickled is read: `.npy`/`.npz` load with allow_pickle=False, a `.pt` feature file (accepted
where a `.npy` is) loads with `torch.load(weights_only=True)` and must hold a tensor or a dict of
tensors. Every bad input is one `EmbedkitError` naming the file, row or column.
"""

from __future__ import annotations

import csv
import json
import re
import warnings
from pathlib import Path

import numpy as np

from embedkit.cache import Cache
from embedkit.errors import EmbedkitError
from embedkit.interop.arrays import _load_npy, _load_npz, import_arrays, load_array
from embedkit.schema import SPLITS

EXPORT_SIDECAR = "embedkit_export.json"  # names and provenance SubpopBench's CSV has no place for


def _store_dtype(dtype, Z: np.ndarray) -> str:
    """`None` keeps float16 sources in float16 (clip-retrieval writes fp16) and stores the rest as
    float32."""
    if dtype is not None:
        return dtype
    return "float16" if np.asarray(Z).dtype == np.float16 else "float32"


# ----------------------------------------------------------------------------------------------
# SubpopBench / DPE: feats_<split>.npy + metadata_<dataset>.csv
# ----------------------------------------------------------------------------------------------


def _feature_file(folder: Path, split: str) -> Path | None:
    for ext in (".npy", ".pt"):
        p = folder / f"feats_{split}{ext}"
        if p.exists():
            return p
    return None


def import_subpopbench(
    folder,
    out,
    *,
    metadata=None,
    test_split: str = "",
    class_names=None,
    attr_names=None,
    dataset=None,
    dtype=None,
    log=print,
    **kw,
) -> Path:
    """DPE's feature folder on a SubpopBench metadata CSV into a cache. Splits without a
    feats_<split> file are left out (DPE itself ships only val and test) and said so."""
    from embedkit.data.subpopbench import (
        dataset_name,
        default_names,
        find_metadata,
        int_cell,
        read_metadata,
    )

    folder = Path(folder)
    if not folder.is_dir():
        raise EmbedkitError(
            f"{folder}: no such folder (expected feats_{{train,val,test}}.npy and a metadata CSV)"
        )
    meta = read_metadata(
        Path(metadata) if metadata else find_metadata(folder, "--metadata"), test_split
    )
    sidecar = _read_sidecar(folder, meta.path)
    files = {s: _feature_file(folder, s) for s in SPLITS}
    if not any(files.values()):
        raise EmbedkitError(
            f"{folder}: no feats_train.npy, feats_val.npy or feats_test.npy (.pt also accepted)"
        )
    parts, keep = [], []
    for code, split in enumerate(SPLITS):
        rows = np.flatnonzero(meta.split == code)
        if files[split] is None:
            if rows.size:
                log(
                    f"{folder}: no feats_{split}.npy; the {rows.size} {split} rows of "
                    f"{meta.path.name} are left out"
                )
            continue
        Z = load_array(files[split])
        if Z.ndim != 2:
            raise EmbedkitError(
                f"{files[split]}: features must be a 2-D matrix, got shape {Z.shape}"
            )
        if len(Z) != rows.size:
            raise EmbedkitError(
                f"{files[split]}: {len(Z)} rows, but {meta.path} has {rows.size} rows with "
                f"split {split} ({code}); feats_{split} must follow the metadata order"
            )
        if parts and Z.shape[1] != parts[0].shape[1]:
            raise EmbedkitError(
                f"{files[split]}: {Z.shape[1]} columns, feats of the other splits have "
                f"{parts[0].shape[1]}"
            )
        parts.append(Z)
        keep.append(rows)
    rows = np.concatenate(keep)
    Z = np.concatenate(parts) if len(parts) > 1 else parts[0]
    y, a = meta.y[rows], meta.a[rows]
    if "seen" in meta.table.header:  # written by embedkit's export when the cache knew it
        if "seen" in kw:
            raise EmbedkitError(
                f"{meta.path}: has a 'seen' column and --seen was given too; give one"
            )
        column = meta.table.column("seen")
        flags = np.array(
            [int_cell(meta.table, int(r), "seen", column[r], False) for r in meta.rows[rows]]
        )
        kw.update(seen=flags, seen_source=f"column 'seen' of {meta.path}")
    class_names = (
        class_names
        or sidecar.get("class_names")
        or default_names(meta.y, "", "labels y", meta.path)
    )
    attr_names = (
        attr_names
        or sidecar.get("attr_names")
        or default_names(meta.a, "", "attributes a", meta.path)
    )
    return import_arrays(
        out,
        Z,
        y,
        meta.split[rows],
        a=a,
        ids=[meta.filename[i] for i in rows],
        class_names=class_names,
        attr_names=attr_names,
        dataset=dataset or sidecar.get("dataset") or dataset_name(meta.path),
        dtype=_store_dtype(dtype, Z),
        source=folder,
        **kw,
    )


def _read_sidecar(folder: Path, metadata: Path) -> dict:
    """The names an embedkit export left beside `metadata` ({} when there is none, or when it
    describes another metadata file)."""
    p = folder / EXPORT_SIDECAR
    if not p.exists():
        return {}
    try:
        out = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise EmbedkitError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(out, dict):
        raise EmbedkitError(f"{p}: expected a JSON object")
    return out if out.get("metadata") == metadata.name else {}


def export_subpopbench(cache_path, folder, backbone: str | None = None, log=print) -> Path:
    """Write feats_{train,val,test}.npy (the cache's dtype) and metadata_<dataset>.csv with
    SubpopBench's columns id, filename, split, y, a (filename = the cache's uid, id = the row
    number), plus a JSON sidecar with the class/attribute names. Rows flagged invalid are left out:
    peer tools have no validity mask. An unknown attribute is written as a = -1."""
    cache = Cache.open(cache_path)
    prov = cache.provenance(backbone)  # names the one backbone, or says which to choose
    key, dtype = prov["backbone_key"], prov["dtype"]
    folder = Path(folder)
    # a cache made by the `subpopbench` adapter keeps SubpopBench's own dataset name
    from_adapter = cache.samples().meta.get("subpopbench_dataset")
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", from_adapter or cache.dataset or "dataset")
    meta_path = folder / f"metadata_{name}.csv"
    others = (
        [p.name for p in folder.glob("metadata*.csv") if p != meta_path] if folder.is_dir() else []
    )
    if others:  # a reader takes the one metadata CSV of a folder: two would be ambiguous
        raise EmbedkitError(f"{folder}: already holds {others[0]}; export to a new or empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    n_invalid = int((~cache.samples().valid).sum())
    n_unknown = 0
    rows, seen_known = [], False
    for code, split in enumerate(SPLITS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid rows are counted above instead
            part = cache.split(split, key, dtype=None)
        n_unknown += int((part.a < 0).sum())
        seen_known = part.seen_known
        np.save(folder / f"feats_{split}.npy", part.Z.astype(dtype, copy=False), allow_pickle=False)
        rows += [
            (u, code, int(y), int(a), int(t))
            for u, y, a, t in zip(part.ids, part.y, part.a, part.seen)
        ]
    with open(meta_path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        # SubpopBench's columns; `seen` (rows the backbone trained on) only when the cache records
        # it (readers that select columns by name, as SubpopBench and dpe do, ignore it)
        w.writerow(["id", "filename", "split", "y", "a"] + (["seen"] if seen_known else []))
        for i, (u, code, y, a, t) in enumerate(rows):
            w.writerow([i, u, code, y, a] + ([t] if seen_known else []))
    (folder / EXPORT_SIDECAR).write_text(
        json.dumps(
            {
                "format": "embedkit subpopbench export",
                "cache": str(cache.path),
                "backbone": key,
                "dataset": cache.dataset,
                "class_names": cache.class_names,
                "attr_names": cache.attr_names,
                "fingerprint": cache.fingerprint(key),
                "metadata": meta_path.name,
            },
            indent=1,
        )
        + "\n"
    )
    if n_invalid:
        log(f"{n_invalid} rows flagged invalid in {cache.path} left out")
    if n_unknown:
        log(f"{n_unknown} rows with an unknown attribute written as a = -1")
    return folder


# ----------------------------------------------------------------------------------------------
# clip-retrieval: img_emb/img_emb_<k>.npy + metadata/metadata_<k>.parquet
# ----------------------------------------------------------------------------------------------


def _numbered(folder: Path, prefix: str, ext: str) -> dict[int, Path]:
    out = {}
    for p in folder.glob(f"{prefix}_*{ext}"):
        m = re.fullmatch(rf"{prefix}_(\d+){re.escape(ext)}", p.name)
        if m:
            out[int(m.group(1))] = p
    return out


def read_parquet_columns(path: Path, columns: list[str]) -> dict[str, list]:
    """The named columns of one parquet file as Python lists (pyarrow; no pandas needed)."""
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # ArrowInvalid for a file that is not parquet
        raise EmbedkitError(
            f"{path}: unreadable as parquet ({str(e).splitlines()[0][:160]})"
        ) from None
    names = pf.schema_arrow.names
    missing = [c for c in columns if c not in names]
    if missing:
        raise EmbedkitError(
            f"{path}: missing column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(c) for c in missing)} (found: {', '.join(names)})"
        )
    table = pf.read(columns=columns)
    return {c: table.column(c).to_pylist() for c in columns}


def _cell(v):
    """A parquet cell as None (null or NaN: pandas writes a missing int as NaN), an int (integral
    floats and bools too) or text."""
    if isinstance(v, float):
        if v != v:
            return None
        return int(v) if v.is_integer() else v
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    return v


def _encode_column(
    values: list,
    column: str,
    names: list[str] | None,
    files: list[tuple[Path, int]],
    allow_unknown: bool,
) -> tuple[np.ndarray, list[str]]:
    """Integer codes (ints, or strings mapped to sorted/given names) for one metadata column.
    `files[i]` is (parquet file, row in that file) for error messages."""
    values = [_cell(v) for v in values]
    known = [v for v in values if not (allow_unknown and v is None)]
    ints = all(isinstance(v, (int, np.integer)) for v in known)
    if names is None:
        names = (
            [str(k) for k in range(max(int(v) for v in known) + 1)]
            if ints and known
            else sorted({str(v) for v in known})
        )
    index = {n: k for k, n in enumerate(names)}
    codes = np.empty(len(values), np.int64)
    for i, v in enumerate(values):
        if v is None:
            if not allow_unknown:
                raise EmbedkitError(f"{files[i][0]}, row {files[i][1]}: empty {column!r}")
            codes[i] = -1
        elif ints and isinstance(v, (int, np.integer)):
            if not 0 <= int(v) < len(names):
                raise EmbedkitError(
                    f"{files[i][0]}, row {files[i][1]}: {column} {v} out of range "
                    f"0..{len(names) - 1}"
                )
            codes[i] = int(v)
        elif str(v) in index:
            codes[i] = index[str(v)]
        else:
            raise EmbedkitError(
                f"{files[i][0]}, row {files[i][1]}: unknown {column} {v!r} "
                f"(known: {', '.join(names)})"
            )
    return codes, names


def import_clip_retrieval(
    folder,
    out,
    *,
    label_col: str,
    attr_col: str | None = None,
    split_col: str | None = None,
    split: str | None = None,
    id_col: str = "image_path",
    class_names=None,
    attr_names=None,
    dtype=None,
    log=print,
    **kw,
) -> Path:
    """clip-retrieval's output folder into a cache: parts k of img_emb/ and metadata/ are paired by
    their number and must have the same row count. Labels, attributes and the split come from named
    metadata columns (or one `split` for every row); text_emb/ (caption embeddings) is not read."""
    folder = Path(folder)
    emb_dir, meta_dir = folder / "img_emb", folder / "metadata"
    for d in (emb_dir, meta_dir):
        if not d.is_dir():
            raise EmbedkitError(
                f"{d}: no such folder (clip-retrieval writes img_emb/ and metadata/)"
            )
    embs, metas = _numbered(emb_dir, "img_emb", ".npy"), _numbered(meta_dir, "metadata", ".parquet")
    if not embs:
        raise EmbedkitError(f"{emb_dir}: no img_emb_<k>.npy files")
    if set(embs) != set(metas):
        lone = sorted(set(embs) ^ set(metas))[0]
        which = embs.get(lone) or metas.get(lone)
        raise EmbedkitError(
            f"{which}: has no matching {'metadata_' if lone in embs else 'img_emb_'}"
            f"{which.stem.split('_')[-1]} part; img_emb/ and metadata/ must pair up"
        )
    if (split_col is None) == (split is None):
        raise EmbedkitError(
            "clip-retrieval import: give --split-col COLUMN or --split NAME (one of them)"
        )
    columns = [c for c in (id_col, label_col, attr_col, split_col) if c]
    Zs, cols, where = [], {c: [] for c in columns}, []
    for k in sorted(embs):
        Z = _load_npy(embs[k])
        if Z.ndim != 2:
            raise EmbedkitError(f"{embs[k]}: embeddings must be a 2-D matrix, got shape {Z.shape}")
        got = read_parquet_columns(metas[k], columns)
        n = len(got[columns[0]])
        if n != len(Z):
            raise EmbedkitError(
                f"{metas[k]}: {n} rows, but {embs[k]} has {len(Z)}; parts must be row-aligned"
            )
        if Zs and Z.shape[1] != Zs[0].shape[1]:
            raise EmbedkitError(
                f"{embs[k]}: {Z.shape[1]} columns, earlier parts have {Zs[0].shape[1]}"
            )
        Zs.append(Z)
        for c in columns:
            cols[c] += got[c]
        where += [(metas[k], i) for i in range(n)]
    Z = np.concatenate(Zs) if len(Zs) > 1 else Zs[0]
    y, class_names = _encode_column(
        cols[label_col], label_col, class_names, where, allow_unknown=False
    )
    if attr_col:
        a, attr_names = _encode_column(
            cols[attr_col], attr_col, attr_names, where, allow_unknown=True
        )
    else:
        a, attr_names = np.full(len(y), -1, np.int64), attr_names or ["unknown"]
    splits = [_cell(v) for v in cols[split_col]] if split_col else [split] * len(y)
    for i, v in enumerate(splits):
        if v is None:
            raise EmbedkitError(f"{where[i][0]}, row {where[i][1]}: empty {split_col!r}")
    ids = [str(v) for v in cols[id_col]]
    first: dict[str, int] = {}
    for i, u in enumerate(ids):
        j = first.setdefault(u, i)
        if j != i:
            raise EmbedkitError(
                f"{where[i][0]}, row {where[i][1]}: duplicate {id_col} {u!r} (also "
                f"{where[j][0].name} row {where[j][1]}); name a unique column with --id-col"
            )
    return import_arrays(
        out,
        Z,
        y,
        [str(s) for s in splits],
        a=a,
        ids=ids,
        class_names=class_names,
        attr_names=attr_names,
        dtype=_store_dtype(dtype, Z),
        source=folder,
        split_source=f"column {split_col!r} of {meta_dir}" if split_col else "--split",
        **kw,
    )


# ----------------------------------------------------------------------------------------------
# DFR: the follow-up's embeddings_<split>/y_/g_/p_ npz, and the ImageNet scripts' per-split npz
# ----------------------------------------------------------------------------------------------

_DFR_NAME = re.compile(r".*_(train|val|valid|validation|test)_embeddings\.npz$")


def _dfr_follow_up(f: Path, z: dict, log) -> list[tuple]:
    """(split, Z, y, a, ids) per split of a `--save_embeddings` file (spurious_feature_learning's
    dfr_evaluate_spurious.py): embeddings_<split>, y_<split>, g_<split> (group), p_<split> (the
    spurious attribute). a = p; the file's g is checked against y * n_attrs + a."""
    out = []
    for split in SPLITS:
        if f"embeddings_{split}" not in z:
            continue
        Z = z[f"embeddings_{split}"]
        if f"y_{split}" not in z:
            raise EmbedkitError(f"{f}: has 'embeddings_{split}' but no 'y_{split}'")
        y = z[f"y_{split}"]
        a = z.get(f"p_{split}")
        for name, arr in (
            (f"y_{split}", y),
            (f"p_{split}", a),
            (f"g_{split}", z.get(f"g_{split}")),
        ):
            if arr is not None and len(arr) != len(Z):
                raise EmbedkitError(
                    f"{f}: '{name}' has {len(arr)} rows, 'embeddings_{split}' {len(Z)}"
                )
        out.append((split, Z, y, a, [f"{split}:{i}" for i in range(len(Z))]))
    if not out:
        raise EmbedkitError(
            f"{f}: no 'embeddings_train/val/test' arrays (present: {', '.join(sorted(z))})"
        )
    if all(part[3] is not None for part in out):
        n_attrs = int(max((part[3].max() for part in out if len(part[3])), default=0)) + 1
        bad = sum(
            int((np.asarray(z[f"g_{sp}"]) != np.asarray(yy) * n_attrs + np.asarray(aa)).sum())
            for sp, _, yy, aa, _ in out
            if f"g_{sp}" in z
        )
        if bad:
            log(
                f"{f}: {bad} rows whose g differs from y * {n_attrs} + p; embedkit's groups are y "
                "* n_attrs + a"
            )
    return out


def import_dfr(
    files, out, *, splits=None, class_names=None, attr_names=None, dtype=None, log=print, **kw
) -> Path:
    """DFR's saved embeddings into one cache, from either published form:

    * the follow-up's `--save_embeddings` file (Izmailov, Kirichenko et al. 2022,
      spurious_feature_learning): one npz with embeddings_<split>, y_<split>, g_<split>, p_<split>
      for val and test; a = p. Row ids are `<split>:<row>`.
    * the DFR repository's ImageNet files (`imagenet_extract_embeddings.py`): one npz per split with
      `embeddings` and `labels`; the split is read from the name (`..._<split>_embeddings.npz`) or
      given in `splits` (one per file). They hold no attribute: a = -1. Row ids are `<stem>:<row>`.
    """
    files = [Path(f) for f in files]
    if not files:
        raise EmbedkitError("dfr import: give one or more DFR embeddings .npz files")
    if splits is not None and len(splits) != len(files):
        raise EmbedkitError(f"--split: {len(splits)} names for {len(files)} files")
    parts = []
    for j, f in enumerate(files):
        z = _load_npz(f)
        if any(k.startswith("embeddings_") for k in z):
            if splits is not None:
                raise EmbedkitError(
                    f"{f}: holds its splits (embeddings_<split>); --split is for per-split files"
                )
            parts += _dfr_follow_up(f, z, log)
            continue
        missing = [k for k in ("embeddings", "labels") if k not in z]
        if missing:
            raise EmbedkitError(
                f"{f}: missing array {missing[0]!r} (arrays present: {', '.join(sorted(z))}); "
                "DFR saves 'embeddings' and 'labels' (or embeddings_<split>, y_<split>, ...)"
            )
        if splits is not None:
            split = splits[j]
        else:
            m = _DFR_NAME.match(f.name)
            if not m:
                raise EmbedkitError(
                    f"{f}: no split in the file name (..._<train|val|test>_embeddings.npz); "
                    "pass --split"
                )
            split = m.group(1)
        Z, y = z["embeddings"], z["labels"]
        if Z.ndim != 2 or len(Z) != len(y):
            raise EmbedkitError(
                f"{f}: 'embeddings' {Z.shape} and 'labels' {y.shape} do not pair up row by row"
            )
        parts.append((split, Z, y, None, [f"{f.stem}:{i}" for i in range(len(y))]))
    dims = {p[1].shape[1] if p[1].ndim == 2 else None for p in parts}
    if len(dims) != 1 or None in dims:
        raise EmbedkitError(
            f"{files[0] if len(files) == 1 else files[0].parent}: embeddings of different widths "
            f"({', '.join(str(p[1].shape) for p in parts)})"
        )
    Z = np.concatenate([p[1] for p in parts])
    a = np.concatenate([np.full(len(p[2]), -1, np.int64) if p[3] is None else p[3] for p in parts])
    if attr_names is None and (a < 0).all():
        attr_names = ["unknown"]
    return import_arrays(
        out,
        Z,
        np.concatenate([p[2] for p in parts]),
        [p[0] for p in parts for _ in range(len(p[2]))],
        a=a,
        ids=[i for p in parts for i in p[4]],
        class_names=class_names,
        attr_names=attr_names,
        dtype=_store_dtype(dtype, Z),
        source=files[0] if len(files) == 1 else files[0].parent,
        **kw,
    )
