"""Bring-your-own embeddings: `.npz` / `.npy` import into a cache, and `.npz` export.

Inputs are read with `allow_pickle=False`: an object array in an input is refused, never
unpickled. A `.pt` array file loads with `torch.load(weights_only=True)` and must hold a tensor or a
dict of tensors; anything else is refused with one line.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import numpy as np

from embedkit.cache import Cache, as_seen, write_cache, write_text
from embedkit.errors import EmbedkitError
from embedkit.schema import SPLITS, Samples, as_split_codes


def _load_npy(path) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise EmbedkitError(f"{path}: no such file")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise EmbedkitError(
            f"{path}: holds pickled objects, which embedkit never loads ({e})"
        ) from None
    except (OSError, EOFError) as e:
        raise EmbedkitError(f"{path}: unreadable as .npy ({e})") from None


def _load_npz(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise EmbedkitError(f"{path}: no such file")
    if not zipfile.is_zipfile(path):
        raise EmbedkitError(f"{path}: unreadable as .npz (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {}
            for k in z.files:
                try:
                    out[k] = z[k]
                except ValueError:
                    raise EmbedkitError(
                        f"{path}: array {k!r} holds pickled objects, which embedkit never loads"
                    ) from None
            return out
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise EmbedkitError(f"{path}: unreadable as .npz ({e})") from None


FEATURE_KEYS = ("feats", "features", "embeddings", "Z")


def _tensor_to_numpy(t, path, what: str) -> np.ndarray:
    import torch

    if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
        raise EmbedkitError(
            f"{path}: {what} is a {type(t).__name__}, not a dense tensor; "
            "a .pt feature file must hold a tensor or a dict of tensors"
        )
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
        t = t.float()
    return t.numpy()


def load_pt(path) -> dict[str, np.ndarray] | np.ndarray:
    """A `.pt` file as an array (a saved tensor) or {name: array} (a saved dict of tensors).
    Loaded with weights_only=True; any other content is refused with one line."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise EmbedkitError(f"{path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:  # the weights-only unpickler met a class it does not allow
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        what = (
            f"holds a {found.group(1)} object"
            if found
            else "is unreadable or holds objects other than tensors"
        )
        raise EmbedkitError(
            f"{path}: not a plain-tensor .pt file: it {what}; embedkit loads .pt files only "
            "with torch.load(weights_only=True)"
        ) from None
    except Exception as e:  # not a torch file at all, or a broken archive
        raise EmbedkitError(
            f"{path}: not a plain-tensor .pt file (torch.load with weights_only=True: "
            f"{type(e).__name__})"
        ) from None
    if isinstance(obj, dict):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad or not obj:
            raise EmbedkitError(f"{path}: a .pt feature dict must map names to tensors")
        return {k: _tensor_to_numpy(v, path, f"entry {k!r}") for k, v in obj.items()}
    return _tensor_to_numpy(obj, path, "the saved object")


def load_array(path) -> np.ndarray:
    """An array from `.npy`, or from `.pt`/`.pth`: a tensor, or a dict with one entry or an entry
    named feats / features / embeddings / Z."""
    path = Path(path)
    if path.suffix not in (".pt", ".pth"):
        return _load_npy(path)
    obj = load_pt(path)
    if isinstance(obj, np.ndarray):
        return obj
    for k in FEATURE_KEYS:
        if k in obj:
            return obj[k]
    if len(obj) == 1:
        return next(iter(obj.values()))
    raise EmbedkitError(
        f"{path}: a dict of {len(obj)} tensors ({', '.join(sorted(obj))}) with none named "
        f"{', '.join(FEATURE_KEYS)}"
    )


def _int_labels(arr, what: str, source) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim != 1:
        raise EmbedkitError(f"{source}: {what} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise EmbedkitError(f"{source}: {what} must hold integers")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iub":
        raise EmbedkitError(f"{source}: {what} must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def import_arrays(
    out,
    Z,
    y,
    split,
    *,
    a=None,
    ids=None,
    key: str = "imported",
    class_names=None,
    attr_names=None,
    dataset: str = "imported",
    dtype="float32",
    overwrite=False,
    allow_nonfinite=False,
    text_prompts=None,
    text_feats=None,
    source="input",
    split_source=None,
    seen=None,
    seen_source=None,
    wait: float = 0.0,
) -> Path:
    """`seen` (optional, bool per row): the rows the backbone was trained on; without it the
    cache says "unknown" for this backbone."""
    Z = np.asarray(Z)
    split = as_split_codes(split, f"the splits in {split_source or source}")
    if Z.ndim != 2 or Z.dtype.kind != "f":
        raise EmbedkitError(
            f"{source}: embeddings must be a 2-D float matrix, got {Z.dtype} {Z.shape}"
        )
    y = _int_labels(y, "labels (y)", source)
    a = np.full(len(y), -1, np.int64) if a is None else _int_labels(a, "attributes (a)", source)
    n = len(Z)
    for name, arr in (("labels (y)", y), ("attributes (a)", a), ("splits", split)):
        if len(arr) != n:
            raise EmbedkitError(
                f"{source}: arrays of different lengths: embeddings have {n} rows, {name} "
                f"{len(arr)}"
            )
    if ids is not None and len(ids) != n:
        raise EmbedkitError(
            f"{source}: arrays of different lengths: embeddings have {n} rows, ids {len(ids)}"
        )
    seen = as_seen(seen, n, str(seen_source or source))
    if class_names is None:
        class_names = [f"class_{c}" for c in range(int(y.max()) + 1 if n else 0)]
    if attr_names is None:
        attr_names = [f"attr_{t}" for t in range(int(a.max()) + 1 if (a >= 0).any() else 1)]
    ids = np.arange(n).astype(str) if ids is None else np.asarray(ids).astype(str)
    samples = Samples(
        uid=ids,
        split=split,
        y=y,
        a=a,
        class_names=list(class_names),
        attr_names=list(attr_names),
        dataset=dataset,
        meta={"source": str(source)},
    )
    prov_seen = {} if seen is None else {"seen_source": f"imported from {seen_source or source}"}
    path = write_cache(
        out,
        samples,
        key,
        Z,
        dtype=dtype,
        overwrite=overwrite,
        allow_nonfinite=allow_nonfinite,
        seen=seen,
        wait=wait,
        provenance={
            **prov_seen,
            "library": "import",
            "source": str(source),
            "source_dtype": str(Z.dtype),
            "normalised": bool(
                np.allclose(np.linalg.norm(Z[:64].astype(np.float64), axis=1), 1, atol=1e-2)
            ),
        },
    )
    if text_feats is not None:
        prompts = [str(p) for p in text_prompts]
        write_text(
            path,
            key,
            prompts,
            text_feats,
            ["class"] * len(prompts),
            list(range(len(prompts))),
            attrs={"source": str(source)},
            wait=wait,
        )
    return path


def _seen_arg(seen) -> dict:
    """`seen` given as a .npy path (the CLI) or an array -> import_arrays keywords."""
    if seen is None:
        return {}
    if isinstance(seen, (str, Path)):
        return {"seen": _load_npy(seen), "seen_source": str(seen)}
    return {"seen": seen, "seen_source": "the seen array"}


def import_npz(path, out, seen=None, **kw) -> Path:
    """`seen`: a .npy path or a bool array (rows the backbone was trained on), row-aligned; an
    .npz may carry it as its own 'seen' array instead."""
    z = _load_npz(path)
    Z = z.get("Z", z.get("embeddings"))
    if Z is None:
        raise EmbedkitError(f"{path}: no array named 'Z' or 'embeddings'")
    for need in ("y", "split"):
        if need not in z:
            raise EmbedkitError(
                f"{path}: missing array {need!r} (arrays present: {', '.join(sorted(z))})"
            )
    names = {k: [str(s) for s in z[k]] for k in ("class_names", "attr_names") if k in z}
    text = {}
    if "text_embeddings" in z and "text_prompts" in z:
        text = {"text_feats": z["text_embeddings"], "text_prompts": z["text_prompts"]}
    if "seen" in z and seen is not None:
        raise EmbedkitError(f"{path}: holds a 'seen' array and --seen was given too; give one")
    kw.update(
        _seen_arg(seen) if "seen" not in z else {"seen": z["seen"], "seen_source": f"{path}:seen"}
    )
    return import_arrays(
        out,
        Z,
        z["y"],
        z["split"],
        a=z.get("a"),
        ids=z.get("ids"),
        source=path,
        **names,
        **text,
        **kw,
    )


def import_npy(out, embeddings, labels, splits, attrs=None, ids=None, seen=None, **kw) -> Path:
    """`seen`: a .npy path or a bool array (rows the backbone was trained on), row-aligned."""
    return import_arrays(
        out,
        load_array(embeddings),
        load_array(labels),
        load_array(splits),
        a=None if attrs is None else load_array(attrs),
        ids=None if ids is None else _load_npy(ids),
        source=embeddings,
        split_source=splits,
        **_seen_arg(seen),
        **kw,
    )


def export_npz(cache_path, out, backbone: str | None = None) -> Path:
    """Write one backbone's rows (all splits, file order) to an uncompressed, pickle-free .npz."""
    cache = Cache.open(cache_path)
    parts = [cache.split(s, backbone, include_invalid=True) for s in SPLITS]
    arrays = {
        "Z": np.concatenate([p.Z for p in parts]),
        "y": np.concatenate([p.y for p in parts]),
        "a": np.concatenate([p.a for p in parts]),
        "split": np.concatenate([np.full(len(p), s, dtype="<U5") for p, s in zip(parts, SPLITS)]),
        "ids": np.concatenate([p.ids for p in parts]).astype(str),
        "class_names": np.asarray(cache.class_names),
        "attr_names": np.asarray(cache.attr_names),
    }
    if all(p.seen_known for p in parts):
        arrays["seen"] = np.concatenate([p.seen for p in parts])
    text = cache.text(backbone)
    if text is not None:
        arrays["text_embeddings"], arrays["text_prompts"] = (
            text["feats"],
            np.asarray(text["prompts"]),
        )
    out = Path(out)
    np.savez(out, **arrays)
    return out
