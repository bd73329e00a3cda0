"""Feature edits and their CLIP-based read-outs (methods.md 8.1 step 4 and 13.4).

An `Edit` is a set of items with an embedding before (h0) and after (h*) some change: HSFM's
optimised support (`support_before` / `support_after` in the run's artifacts.npz), a projection that
removes a spurious direction, or any pair of matrices. Two quantitative views:

- text probe: for every prompt t_p of a prompt set, cos(h*_i - h0_i, t_p) averaged over items (what
  the edit moved towards) and the change of cos(h, t_p) from h0 to h* (section 8.1's shift);
- retrieval: the k nearest real cached embeddings of h0 and of h* (cosine), and the share of those
  neighbours whose attribute differs from the item's, before vs after.

Prompt sets (`embedkit.prompts`) are plain text files, one `TAG | PROMPT` per line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.geometry.index import Index, as_float32, l2_normalize
from embedkit.prompts import PromptSet


class TextEmbedder:
    """Text-tower embeddings of prompts, from an encoder (a callable or an object with
    `encode_text`, e.g. `embedkit.backbones.create("openclip:...")`) or, without one, from the
    prompts stored in a cache's /text group (only prompts stored there can be embedded)."""

    def __init__(self, encoder=None, stored: dict | None = None):
        if encoder is not None and hasattr(encoder, "encode_text"):
            encoder = encoder.encode_text
        self.encoder = encoder
        self.stored = (
            {}
            if not stored
            else dict(zip(stored["prompts"], np.asarray(stored["feats"], np.float32)))
        )
        if self.encoder is None and not self.stored:
            raise EmbedkitError(
                "no text embeddings: the cache has no /text group for this backbone and no "
                "text tower was given (--text-backbone openclip:MODEL:PRETRAINED)"
            )

    @property
    def source(self) -> str:
        return "text tower" if self.encoder is not None else "cache /text"

    def __call__(self, prompts: list[str]) -> np.ndarray:
        if self.encoder is not None:
            return as_float32(self.encoder(list(prompts)), "text embeddings")
        missing = [p for p in prompts if p not in self.stored]
        if missing:
            raise EmbedkitError(
                f"prompt {missing[0]!r} (and {len(missing) - 1} more) is not in the cache's /text "
                "group; give a text tower or use the stored prompts"
            )
        return np.stack([self.stored[p] for p in prompts])


@dataclass
class Edit:
    """Items before (h0 [n, D]) and after (h* [n, D]) an edit; `rows` are the items' rows in the
    cache (or -1), `y` / `a` their labels when known."""

    name: str
    before: np.ndarray
    after: np.ndarray
    y: np.ndarray | None = None
    a: np.ndarray | None = None
    rows: np.ndarray | None = None
    source: str = ""

    def __post_init__(self):
        self.before, self.after = (
            as_float32(self.before, "edit before"),
            as_float32(self.after, "edit after"),
        )
        if self.before.shape != self.after.shape:
            raise EmbedkitError(
                f"edit {self.name!r}: before {self.before.shape} and after {self.after.shape} "
                "differ"
            )

    @property
    def delta(self) -> np.ndarray:
        return self.after - self.before

    def relative_norm(self) -> np.ndarray:
        """||h* - h0|| / ||h0|| per item."""
        return np.linalg.norm(self.delta, axis=1) / np.maximum(
            np.linalg.norm(self.before, axis=1), 1e-12
        )

    def top_items(self, per_class: int, n_random: int = 0, seed: int = 0) -> np.ndarray:
        """Section 8.1 step 2: per class the `per_class` items with the largest ||h* - h0|| plus
        `n_random` random others (item indices, sorted)."""
        size = np.linalg.norm(self.delta, axis=1)
        y = self.y if self.y is not None else np.zeros(len(size), np.int64)
        pick = []
        for c in np.unique(y):
            r = np.flatnonzero(y == c)
            pick.extend(r[np.argsort(-size[r], kind="stable")[:per_class]].tolist())
        rest = np.setdiff1d(np.arange(len(size)), pick)
        if n_random and rest.size:
            pick.extend(
                np.random.default_rng(seed)
                .choice(rest, min(n_random, rest.size), replace=False)
                .tolist()
            )
        return np.array(sorted(pick), np.int64)


def load_hsfm_edit(artifacts, name: str = "hsfm") -> Edit:
    """HSFM's support edits from a run's artifacts.npz: support_before, support_after, support_y,
    support_rows (cache rows), stored bare or with embedkit.runs' `artifact_` prefix."""
    path = Path(artifacts)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k.removeprefix("artifact_"): k for k in z.files}
            missing = [k for k in ("support_before", "support_after") if k not in arrays]
            if missing:
                raise EmbedkitError(
                    f"{path}: no {', '.join(missing)} array (not an HSFM run's artifacts)"
                )

            def get(key, dtype=None):
                if key not in arrays:
                    return None
                v = z[arrays[key]]
                return v if dtype is None else v.astype(dtype)

            return Edit(
                name,
                get("support_before"),
                get("support_after"),
                y=get("support_y", np.int64),
                rows=get("support_rows", np.int64),
                source=str(path),
            )
    except (OSError, ValueError) as e:
        raise EmbedkitError(f"{path}: cannot read as .npz ({e})") from None


def projection_edit(
    Z, directions, name: str, *, y=None, a=None, rows=None, source: str = ""
) -> Edit:
    """Remove the span of `directions` [m, D] from each row (methods.md 13.4, "project out an
    orthonormalised set"): h* = (I - Q^T Q) h0 with Q an orthonormal basis of the directions."""
    V = np.atleast_2d(np.asarray(directions, np.float64))
    Q, R = np.linalg.qr(V.T)
    Q = Q[:, np.abs(np.diag(R)) > 1e-6]  # drop dependent directions (13.3 pitfall)
    Z = as_float32(Z)
    after = Z - (Z.astype(np.float64) @ Q @ Q.T).astype(np.float32)
    return Edit(name, Z, after, y=y, a=a, rows=rows, source=source)


def text_probe(edit: Edit, prompts: PromptSet, text_feats: np.ndarray) -> dict:
    """Cosines between the edit and each prompt's text embedding.

    cos_delta[p] = mean_i cos(h*_i - h0_i, t_p)         (where the edit points)
    shift[p]     = mean_i [cos(h*_i, t_p) - cos(h0_i, t_p)]   (how much closer items got to the
    prompt)
    Rows are ranked by cos_delta, largest first; `by_tag` averages both over a tag's prompts.
    """
    T = l2_normalize(as_float32(text_feats, "text embeddings"))
    if T.shape[1] != edit.before.shape[1]:
        raise EmbedkitError(
            f"text embeddings are {T.shape[1]}-d but the edited embeddings are "
            f"{edit.before.shape[1]}-d: use the text tower of the same CLIP model"
        )
    moving = np.linalg.norm(edit.delta, axis=1) > 0
    cos_delta = (
        (l2_normalize(edit.delta[moving]) @ T.T).mean(axis=0) if moving.any() else np.zeros(len(T))
    )
    shift = (l2_normalize(edit.after) @ T.T - l2_normalize(edit.before) @ T.T).mean(axis=0)
    order = np.argsort(-cos_delta, kind="stable")
    rows = [
        {
            "prompt": prompts.prompts[i],
            "tag": prompts.tags[i],
            "cos_delta": float(cos_delta[i]),
            "shift": float(shift[i]),
        }
        for i in order
    ]
    by_tag = {}
    for t in dict.fromkeys(prompts.tags):
        m = np.array([tt == t for tt in prompts.tags])
        by_tag[t] = {"cos_delta": float(cos_delta[m].mean()), "shift": float(shift[m].mean())}
    return {
        "edit": edit.name,
        "prompt_set": prompts.name,
        "n_items": int(len(edit.before)),
        "n_moved": int(moving.sum()),
        "ranked": rows,
        "by_tag": by_tag,
    }


def retrieval(
    edit: Edit, Z_db, a_db=None, y_db=None, k: int = 10, index: Index | None = None
) -> dict:
    """The k nearest cached rows (cosine) of every item before and after the edit, and the share of
    neighbours whose attribute differs from the item's (section 8.1 step 4) before vs after."""
    index = index or Index(Z_db, "cosine")
    S0, I0 = index.search(edit.before, k)
    S1, I1 = index.search(edit.after, k)
    out = {
        "k": int(k),
        "before": I0,
        "after": I1,
        "scores_before": S0,
        "scores_after": S1,
        "relative_edit_norm": float(edit.relative_norm().mean()),
    }
    if a_db is not None and edit.a is not None:
        a_db = np.asarray(a_db)
        known = edit.a >= 0
        if known.any():
            out["other_attr_share_before"] = float((a_db[I0[known]] != edit.a[known, None]).mean())
            out["other_attr_share_after"] = float((a_db[I1[known]] != edit.a[known, None]).mean())
    if y_db is not None and edit.y is not None:
        y_db = np.asarray(y_db)
        out["same_class_share_before"] = float((y_db[I0] == edit.y[:, None]).mean())
        out["same_class_share_after"] = float((y_db[I1] == edit.y[:, None]).mean())
    return out
