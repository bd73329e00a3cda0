"""Text-tower embeddings stored in a cache: /text/<backbone_key> holds prompts, their features,
their kind ('class' or 'attr') and the class or attribute index each describes. Zero-shot heads,
text projections and edit probes read them through `Cache.text`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from embedkit.cache.store import STR, Cache, _fresh_group, _open_h5, _to_attr
from embedkit.errors import EmbedkitError
from embedkit.locking import writer_lock


def write_text(
    path,
    backbone_key: str,
    prompts: Sequence[str],
    feats: np.ndarray,
    kind: Sequence[str],
    index: Sequence[int],
    attrs: Mapping | None = None,
    wait: float = 0.0,
) -> None:
    """Store text-tower embeddings of prompts (`kind` 'class' or 'attr', `index` the class or
    attribute each prompt describes) for zero-shot heads, text projections and edit probes."""
    feats = np.asarray(feats, np.float32)
    if not (len(prompts) == len(feats) == len(kind) == len(index)):
        raise EmbedkitError("text prompts, feats, kind and index must have the same length")
    with writer_lock(path, wait, "text"), _open_h5(path, "a", wait=wait) as f:
        g = _fresh_group(f, path, "text", backbone_key)
        g.create_dataset("prompts", data=np.asarray(list(prompts), dtype=object), dtype=STR)
        g.create_dataset("feats", data=feats)
        g.create_dataset("kind", data=np.asarray(list(kind), dtype=object), dtype=STR)
        g.create_dataset("index", data=np.asarray(index, np.int64))
        g.attrs["prompt_set_sha"] = hashlib.sha256("\n".join(prompts).encode()).hexdigest()
        g.attrs.update({k: _to_attr(v) for k, v in dict(attrs or {}).items()})


def store_prompts(cache_path, backbone_key: str, entries, encode) -> None:
    """Embed (kind, index, prompt) entries with `encode(list[str]) -> [n, D]` (a CLIP text tower,
    e.g. a backbone's `encode_text`) and add them to the cache's /text/<backbone_key>, keeping the
    prompts already stored there (an entry already present is not re-embedded)."""
    old = Cache.open(cache_path).text(backbone_key) or {
        "kind": [],
        "index": [],
        "prompts": [],
        "feats": None,
    }
    have = {(k, int(i), p) for k, i, p in zip(old["kind"], old["index"], old["prompts"])}
    new = [e for e in entries if (e[0], int(e[1]), e[2]) not in have]
    feats = [] if old["feats"] is None else [np.asarray(old["feats"], np.float32)]
    if new:
        feats.append(np.asarray(encode([p for _, _, p in new]), np.float32))
    write_text(
        cache_path,
        backbone_key,
        list(old["prompts"]) + [p for _, _, p in new],
        np.concatenate(feats),
        list(old["kind"]) + [k for k, _, _ in new],
        list(old["index"]) + [int(i) for _, i, _ in new],
        attrs={k: v for k, v in (old.get("attrs") or {}).items() if k != "prompt_set_sha"},
    )
