"""Held-out rows must be held out from the backbone too (issue 11, "rows seen by the backbone").

AFR reweights its held-out rows by the ERM head's confidence and JTT upweights the rows its ERM
head gets wrong. On rows the backbone was trained on, that head is right and confident almost
everywhere (p_y ~ 1), so AFR's weights turn uniform and JTT's error set shrinks to label noise:
both quietly become ERM. The cache records which rows the backbone saw
(`/embeddings/<key>/seen`, `Split.seen`); a head calls `check_unseen` on the rows it holds out
and refuses them, in one line, unless the caller overrides, in which case the returned entry is
stored in the record (`seen_override`) so the run is flagged.

A cache without the record ("unknown": published backbones, old files) is not refused: nobody can
tell, and refusing every CLIP cache would make AFR and JTT unusable on them.
"""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError

OVERRIDE_PARAM = "allow_seen_rows"


def check_unseen(
    head_name: str, split, role: str, allow: bool = False, param: str = OVERRIDE_PARAM
) -> dict | None:
    """None when no row of `split` was seen by the backbone (or nobody recorded it); else raise
    one EmbedkitError line, or, with `allow`, return the `seen_override` entry to record:
    {head, split, role, n_seen, n_rows, backbone}. `role` says what the rows are for (e.g.
    'stage-2 reweighting rows'); `param` is the head parameter that overrides."""
    if not getattr(split, "seen_known", False):
        return None
    seen = np.asarray(split.seen, bool)
    n_seen = int(seen.sum())
    if n_seen == 0:
        return None
    entry = {
        "head": head_name,
        "split": split.name,
        "role": role,
        "n_seen": n_seen,
        "n_rows": int(len(seen)),
        "backbone": split.backbone,
        "rows_sha256": _rows_sha(split.rows[seen]),
    }
    if allow:
        return entry
    raise EmbedkitError(
        f"{head_name}: {n_seen} of {len(seen)} {role} ({split.name} split) were seen by backbone "
        f"{split.backbone or '?'} in training, so its head is confident on them and the method "
        "degenerates to "
        "ERM; use a backbone that did not train on them (train-erm --holdout 0.2 keeps the last "
        f"20 % of train unseen), or pass {param}=true (flagged as seen_override)"
    )


def _rows_sha(rows) -> str:
    import hashlib

    return hashlib.sha256(np.asarray(rows, np.int64).tobytes()).hexdigest()


def unseen_need(
    head_name: str, split, role: str, allow: bool = False, param: str = OVERRIDE_PARAM
) -> str | None:
    """The same check as a need the runner reports (a sweep skips the head with this reason)
    instead of an error: None when the rows may be used."""
    try:
        check_unseen(head_name, split, role, allow=allow, param=param)
    except EmbedkitError as e:
        return str(e)
    return None
