"""CLIP zero-shot with logged prompts — `zeroshot` (= `clip_zs`) and `clip_group_prompt` mode
(methods spec section 12; repos SprocketLab/roboshot `run.py`, chingyaoc/debias_vl
`discriminative/main.py`).

Inputs: post-projection CLIP image embeddings (the `encode_image` output) and the text-tower
embeddings of the prompts stored in the cache under `/text/<backbone_key>`, each with a `kind`
and an `index`:

- kind `class`, index c: prompts of class c (templates). t_c = unit(mean_j
  unit(E_text(template_j(c)))).
- kind `group`, index g = y·A + a: one prompt per (class, attribute) for `prompts="group"`.

logits = τ · X̂ Tᵀ with x̂ = x/‖x‖ and τ = 100 (both reference codes); ŷ = argmax. In group mode
the class logit is the maximum over that class's group prompts, so ŷ = class of the arg-max
prompt (RoboShot maps prompt indices {0, 1} → class 0 and {2, 3} → class 1: prompt order is
part of the spec). No labels are used; nothing is fitted or selected.
"""

from __future__ import annotations

import hashlib

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.heads.base import Head
from embedkit.heads.params import Param

TAU = 100.0
ENSEMBLING = "t_c = unit(mean_j unit(e_j)) over the prompts of class c"


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def prompt_entries(text: dict | None, kind: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(unit feats [n, D], index [n], prompts) of the stored prompts of one kind, file order."""
    if not text:
        return np.zeros((0, 0)), np.zeros(0, np.int64), []
    kinds = np.asarray(text["kind"])
    m = kinds == kind
    return (
        unit(text["feats"][m]) if m.any() else np.zeros((0, text["feats"].shape[1])),
        np.asarray(text["index"])[m],
        [p for p, k in zip(text["prompts"], kinds) if k == kind],
    )


def class_embeddings(text: dict | None, n_classes: int) -> np.ndarray:
    """T [C, D]: per class, the unit mean of its unit prompt embeddings."""
    feats, index, _ = prompt_entries(text, "class")
    missing = [c for c in range(n_classes) if not (index == c).any()]
    if missing:
        raise EmbedkitError(
            f"no class prompt stored for class(es) {missing} (kind 'class' in /text/<backbone>)"
        )
    return unit(np.stack([feats[index == c].mean(axis=0) for c in range(n_classes)]))


def prompt_log(text: dict, kinds, class_names, tau: float, **extra) -> dict:
    """Everything needed to reproduce a zero-shot number (methods spec 12, 'Logged with every
    number'): the prompts by kind and index, τ, normalisation, ensembling, and a hash of the
    prompt set that changes when any prompt, kind or index changes."""
    entries = [
        (k, int(i), p)
        for k, i, p in zip(text["kind"], text["index"], text["prompts"])
        if k in kinds
    ]
    sha = hashlib.sha256("\n".join(f"{k}\t{i}\t{p}" for k, i, p in entries).encode()).hexdigest()
    return {
        "prompts": [{"kind": k, "index": i, "prompt": p} for k, i, p in entries],
        "tau": tau,
        "normalisation": "L2 on image and text embeddings",
        "ensembling": ENSEMBLING,
        "class_names": list(class_names),
        "prompt_set_sha256": sha,
        "text_attrs": {k: v for k, v in (text.get("attrs") or {}).items()},
        **extra,
    }


def _check_dims(T: np.ndarray, Z: np.ndarray, what: str) -> None:
    if T.shape[1] != Z.shape[1]:
        raise EmbedkitError(
            f"{what}: text embeddings have {T.shape[1]} dims but image embeddings {Z.shape[1]}; "
            "zero-shot needs post-projection CLIP image features"
        )


class ZeroShotHead(Head):
    """CLIP zero-shot: τ · cos(image, class prompt embedding), prompts read from the cache and
    logged."""

    name = "zeroshot"
    needs_val_attrs = False
    needs_two_val_classes = False  # fits and selects nothing
    needs_text = True

    PARAMS = {
        "tau": Param(
            "float", TAU, "logit scale tau of tau * cos(image, prompt)", low=0, open_low=True
        ),
        "prompts": Param(
            "choice",
            "class",
            "class prompts, or group prompts (a class's score = its best group prompt)",
            choices=("class", "group"),
        ),
    }

    def unmet(self, train, val) -> str | None:
        kind = self.params["prompts"]
        _, index, _ = prompt_entries(train.text, kind)
        need = train.n_classes if kind == "class" else train.n_groups
        if not set(range(need)) <= set(index.tolist()):
            return (
                f"zeroshot: the cache stores no {kind!r} prompt for some of the {need} {kind} "
                "indices"
            )
        return None

    def _fit(self, train, val, monitor):
        text = train.text or val.text
        why = (
            self.unmet(train, val)
            if text
            else "zeroshot: the cache stores no text prompts for this backbone"
        )
        if why:
            raise EmbedkitError(why)
        if self.params["prompts"] == "class":
            self.text_ = class_embeddings(text, train.n_classes)
            self.prompt_class_ = np.arange(train.n_classes)
        else:
            feats, index, _ = prompt_entries(text, "group")
            order = np.argsort(index, kind="stable")
            self.text_, self.prompt_class_ = feats[order], index[order] // train.n_attrs
        _check_dims(self.text_, train.Z, self.name)
        self.n_classes_ = train.n_classes
        self.info_["prompts"] = prompt_log(
            text,
            (self.params["prompts"],),
            train.class_names,
            self.params["tau"],
            mode=self.params["prompts"],
        )
        self._no_selection(val, self.decision_function, monitor)  # zero-shot fits nothing

    def transform(self, Z: np.ndarray) -> np.ndarray:
        """Image side of the head: x̂ = x/‖x‖ (text projections edit it further)."""
        return unit(Z)

    def decision_function(self, Z: np.ndarray) -> np.ndarray:
        s = self.params["tau"] * self.transform(Z) @ self.text_.T
        if len(self.prompt_class_) == self.n_classes_ and np.array_equal(
            self.prompt_class_, np.arange(self.n_classes_)
        ):
            return s
        out = np.full((len(s), self.n_classes_), -np.inf)
        for c in range(self.n_classes_):
            out[:, c] = s[:, self.prompt_class_ == c].max(axis=1)
        return out
