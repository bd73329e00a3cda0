"""Text-direction projections — `textproj` with variants `orth_proj`, `orth_cali`, `roboshot`
(methods spec section 13). Closed form and training-free over cached CLIP embeddings; classify
with τ = 100 as in `zeroshot`.

- `orth_proj` [repo chingyaoc/debias_vl `discriminative/main.py`]: spurious prompts S_sp [m, D]
  (kind `attr`), unit-normalised; U [D, m] = the m right singular vectors of S_sp (uncentred
  SVD); P0 = I − U(UᵀU)⁻¹Uᵀ; class embeddings T′ = unit(T P0ᵀ).
- `orth_cali` [same file]: candidate prompts Zc [n, D] (kind `candidate`, index = class; else
  the `group` prompts, class = g // A); S = every within-class pair (i < j);
  M = (1/|S|) Σ_{(i,j)∈S} (z_i − z_j)(z_i − z_j)ᵀ; P = P0 (λM + I)⁻¹ with λ = 1000; T′ = unit(T Pᵀ).
- `roboshot` [repo SprocketLab/roboshot `run.py`, `libs/cached_concepts.py`]: concept pairs
  (kinds `reject` / `accept`, index = pair k, the two prompts in pair order); v_k = e(pair_k[0])
  − e(pair_k[1]); each set orthonormalised by QR (directions with |R_kk| < 1e-6 dropped, the
  effective rank logged); x ← x/‖x‖, then for each q_k: reject x ← x − ⟨x, q_k⟩ q_k, accept
  x ← x + ⟨x, q_k⟩ q_k, renormalising after each; `mode` = reject, accept or both (reject, then
  accept); classes keep their unmodified prompts.

Reference prompt sets ship as `embedkit/prompts/{debias_vl,roboshot}_{waterbirds,celeba}.txt`
(lines `KIND:INDEX | PROMPT`); `embedkit.cache.text.store_prompts` embeds them with a text encoder
and adds them to a cache.
"""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.heads.params import Param
from embedkit.heads.zeroshot import (
    ZeroShotHead,
    _check_dims,
    class_embeddings,
    prompt_entries,
    prompt_log,
    unit,
)

QR_TOL = 1e-6
VARIANTS = ("orth_proj", "orth_cali", "roboshot")
# RoboShot's Waterbirds group prompts repeat "landbird on water background" as the fourth
# prompt; embedkit's file holds the corrected list, `roboshot_compat=True` restores the bug.
ROBOSHOT_COMPAT = {"roboshot_waterbirds": {("group", 3): "landbird on water background"}}


# ----------------------------------------------------------------------------------------------
# The closed forms
# ----------------------------------------------------------------------------------------------


def projection_P0(S_sp: np.ndarray) -> np.ndarray:
    """P0 = I − U(UᵀU)⁻¹Uᵀ, U = the m right singular vectors of the (uncentred) spurious
    prompt embeddings [m, D]: the orthogonal projection onto the complement of their span."""
    S = np.asarray(S_sp, np.float64)
    U = np.linalg.svd(S, full_matrices=False)[2].T  # [D, m]
    return np.eye(S.shape[1]) - U @ np.linalg.solve(U.T @ U, U.T)


def within_class_pairs(classes) -> list[tuple[int, int]]:
    classes = np.asarray(classes)
    return [
        (i, j)
        for i in range(len(classes))
        for j in range(i + 1, len(classes))
        if classes[i] == classes[j]
    ]


def calibration_M(Zc: np.ndarray, pairs) -> np.ndarray:
    """M = (1/|S|) Σ (z_i − z_j)(z_i − z_j)ᵀ over the pairs S."""
    Zc = np.asarray(Zc, np.float64)
    diffs = np.stack([Zc[i] - Zc[j] for i, j in pairs])
    return diffs.T @ diffs / len(pairs)


def calibrated_projection(P0: np.ndarray, M: np.ndarray, lam: float) -> np.ndarray:
    """P = P0 (λM + I)⁻¹."""
    G = lam * M + np.eye(len(M))
    return np.linalg.solve(G.T, P0.T).T


def orthonormal_directions(pairs_feats: np.ndarray) -> tuple[np.ndarray, int]:
    """(Q [r, D], r): QR of the pair differences v_k = e_k0 − e_k1 ([K, 2, D] input), keeping
    the directions whose |R_kk| ≥ 1e-6 (nearly dependent ones get arbitrary columns otherwise)."""
    V = pairs_feats[:, 0] - pairs_feats[:, 1]
    if len(V) == 0:
        return np.zeros((0, pairs_feats.shape[-1])), 0
    q, r = np.linalg.qr(V.T)
    keep = np.abs(np.diag(r)) >= QR_TOL
    return q[:, keep].T, int(keep.sum())


def reject_sequential(X: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """RoboShot reject loop: per q_k, x ← x − ⟨x, q_k⟩ q_k then renormalise."""
    X = unit(X)
    for q in Q:
        X = unit(X - np.outer(X @ q, q))
    return X


def accept_sequential(X: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """RoboShot accept loop: per q_k, x ← x + ⟨x, q_k⟩ q_k then renormalise."""
    X = unit(X)
    for q in Q:
        X = unit(X + np.outer(X @ q, q))
    return X


# ----------------------------------------------------------------------------------------------
# Reference prompt sets
# ----------------------------------------------------------------------------------------------


def read_prompt_file(path, roboshot_compat: bool = False) -> list[tuple[str, int, str]]:
    """(kind, index, prompt) entries of a `KIND:INDEX | PROMPT` file, in file order. A bare
    name resolves to the shipped file `embedkit/prompts/<name>.txt`. The file is parsed by the
    one prompt-set reader (`embedkit.prompts.load_prompt_set`); here the tags must be KIND:INDEX."""
    from embedkit.prompts import load_prompt_set

    ps = load_prompt_set(path)
    compat = ROBOSHOT_COMPAT.get(ps.name, {}) if roboshot_compat else {}
    out = []
    for tag, prompt, n in zip(ps.tags, ps.prompts, ps.lines):
        kind, colon, index = tag.partition(":")
        if not colon or not index.strip().isdigit():
            raise EmbedkitError(f"{ps.source}:{n}: expected 'KIND:INDEX | PROMPT', got tag {tag!r}")
        key = (kind.strip(), int(index))
        out.append((key[0], key[1], compat.get(key, prompt)))
    return out


# ----------------------------------------------------------------------------------------------
# The head
# ----------------------------------------------------------------------------------------------


class TextProjHead(ZeroShotHead):
    """CLIP zero-shot after removing spurious text directions (orth_proj, orth_cali) or rejecting /
    accepting concept directions on the image side (roboshot)."""

    name = "textproj"

    def __init__(self, seed: int = 0, selection_rule: str | None = None, **params):
        super().__init__(seed=seed, selection_rule=selection_rule, **params)
        self.name = self.params["variant"]

    PARAMS = {
        "variant": Param(
            "choice", "orth_cali", "orth_proj, orth_cali (debias_vl) or roboshot", choices=VARIANTS
        ),
        "tau": Param("float", 100.0, "logit scale tau", low=0, open_low=True),
        "lam": Param(
            "float",
            1000.0,
            "orth_cali's calibration strength lambda in P0 (lambda M + I)^-1",
            low=0,
        ),
        "mode": Param(
            "choice",
            "both",
            "roboshot: reject, accept or both (reject, then accept)",
            choices=("reject", "accept", "both"),
        ),
        "prompts": ZeroShotHead.PARAMS["prompts"],
    }

    def _kinds(self) -> tuple[str, ...]:
        v = self.params["variant"]
        if v == "orth_proj":
            return ("class", "attr")
        if v == "orth_cali":
            return ("class", "attr", "candidate|group")
        return ("class",) + {
            "reject": ("reject",),
            "accept": ("accept",),
            "both": ("reject", "accept"),
        }[self.params["mode"]]

    def unmet(self, train, val) -> str | None:
        for kind in self._kinds():
            if not any(len(prompt_entries(train.text, k)[2]) for k in kind.split("|")):
                wanted = " or ".join(repr(k) for k in kind.split("|"))
                return (
                    f"{self.name}: needs prompts of kind {wanted} in "
                    f"/text/{train.backbone or '<backbone>'} "
                    "(see embedkit.cache.text.store_prompts)"
                )
        return super().unmet(train, val)

    def _fit(self, train, val, monitor):
        text = train.text or val.text
        why = (
            self.unmet(train, val)
            if text
            else f"{self.name}: the cache stores no text prompts for this backbone"
        )
        if why:
            raise EmbedkitError(why)
        v, p = self.params["variant"], self.params
        T = class_embeddings(text, train.n_classes)
        _check_dims(T, train.Z, self.name)
        self.n_classes_, self.prompt_class_ = train.n_classes, np.arange(train.n_classes)
        self.Q_reject_ = self.Q_accept_ = np.zeros((0, T.shape[1]))
        kinds = ["class"]
        if v in ("orth_proj", "orth_cali"):
            S_sp, _, _ = prompt_entries(text, "attr")
            P = P0 = projection_P0(S_sp)
            kinds.append("attr")
            if v == "orth_cali":
                Zc, idx, _ = prompt_entries(text, "candidate")
                kinds.append("candidate")
                if not len(Zc):
                    Zc, idx, _ = prompt_entries(text, "group")
                    idx, kinds[-1] = idx // train.n_attrs, "group"
                pairs = within_class_pairs(idx)
                if not pairs:
                    raise EmbedkitError(
                        f"{self.name}: no two candidate prompts share a class, so M is undefined"
                    )
                P = calibrated_projection(P0, calibration_M(Zc, pairs), p["lam"])
                self.info_.update(n_pairs=len(pairs), lam=p["lam"])
            self.text_ = unit(T @ P.T)
            self.info_.update(
                n_spurious_prompts=len(S_sp), spurious_rank=int(np.linalg.matrix_rank(S_sp))
            )
            self.artifacts_.update(text_before=T, text_after=self.text_)
        else:
            self.text_ = T
            for kind in ("reject", "accept"):
                if kind in self._kinds():
                    Q, rank = orthonormal_directions(self._pairs(text, kind))
                    setattr(self, f"Q_{kind}_", Q)
                    kinds.append(kind)
                    self.info_[f"{kind}_rank"] = rank
                    self.artifacts_[f"Q_{kind}"] = Q
        self.info_["prompts"] = prompt_log(
            text,
            tuple(kinds),
            train.class_names,
            p["tau"],
            variant=v,
            **({"mode": p["mode"]} if v == "roboshot" else {}),
        )
        self._no_selection(val, self.decision_function, monitor)

    @staticmethod
    def _pairs(text, kind) -> np.ndarray:
        feats, index, prompts = prompt_entries(text, kind)
        pairs = []
        for k in np.unique(index):
            rows = np.flatnonzero(index == k)
            if len(rows) != 2:
                raise EmbedkitError(
                    f"roboshot: concept pair {kind}:{k} has {len(rows)} prompts, expected 2"
                )
            pairs.append(feats[rows])
        return np.stack(pairs) if pairs else np.zeros((0, 2, feats.shape[1]))

    def transform(self, Z: np.ndarray) -> np.ndarray:
        X = unit(Z)
        if self.params["variant"] != "roboshot":
            return X
        return accept_sequential(reject_sequential(X, self.Q_reject_), self.Q_accept_)
