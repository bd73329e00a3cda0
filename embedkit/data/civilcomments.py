"""CivilComments in the WILDS layout (`civilcomments_v1.0/`):

    <root>/all_data_with_identities.csv     one row per comment; a pandas index column first,
                                            then id, comment_text, split (train/val/test),
                                            toxicity and the identity columns (fractions of
                                            annotators, 0..1), among others

Columns used: `id` (the row id), `comment_text`, `split`, `toxicity`, and the eight identity
columns WILDS evaluates: male, female, LGBTQ, christian, muslim, other_religions, black, white
(`identity_any` too with `coarse=identity_any`). An empty identity cell counts as not mentioned.

- y = toxicity >= 0.5 (0 non_toxic, 1 toxic); an identity is mentioned when its value >= 0.5
  (`threshold`), as WILDS, JTT and SubpopBench binarise them.
- Coarse groups, in `a` (what heads train and select on): a = 1 when any of the eight identities is
  mentioned (`coarse=any8`, as SubpopBench/BalancingGroups' "no active attributes" complement), or
  when WILDS' own `identity_any` column (over all 24 annotated identities) is >= 0.5
  (`coarse=identity_any`); g = 2 y + a: the four toxic x identity groups of DFR and JTT.
- Fine groups, in `eval_groups` (what the fine worst-group accuracy is scored on): the 16
  overlapping groups (identity, y) for the eight identities: a comment mentioning two identities
  belongs to two groups. One attribute per row cannot hold them, so the cache stores the
  membership matrix `/samples/eval_groups` [N, 16] and the metrics report `worst_eval_group_acc`
  (min over the 16, as WILDS, JTT and SubpopBench's CivilCommentsFine score it) beside the
  coarse `worst_group_acc`. (SubpopBench's fine *training* duplicates each comment once per
  identity; that is not reproduced: rows stay one per comment.)
"""

from __future__ import annotations

import csv

import numpy as np

from embedkit.errors import EmbedkitError

from .base import Option
from .tables import SPLIT_ALIASES, sha256_file
from .text import TextDataset, allow_long_fields

IDENTITIES = ["male", "female", "LGBTQ", "christian", "muslim", "other_religions", "black", "white"]
CLASSES = ["non_toxic", "toxic"]


def _value(path, line, col, v) -> float:
    if v.strip() == "":
        return float("nan")
    try:
        return float(v)
    except ValueError:
        raise EmbedkitError(f"{path}, line {line}: {col} {v!r} is not a number") from None


class CivilComments(TextDataset):
    name = "civilcomments"
    description = (
        "CivilComments (WILDS all_data_with_identities.csv); y toxic, a any of 8 identities "
        "(coarse), 16 overlapping toxic x identity evaluation groups (fine)"
    )
    OPTIONS = {
        "file": Option("all_data_with_identities.csv", str, "the WILDS table, relative to --root"),
        "threshold": Option(0.5, float, "toxicity and identity values >= threshold count as 1"),
        "coarse": Option(
            "any8",
            str,
            "coarse attribute: any8 (any of the 8 identities) or identity_any (WILDS column)",
        ),
    }

    def _setup(self):
        o = self.options
        if o["coarse"] not in ("any8", "identity_any"):
            raise EmbedkitError(
                f"dataset {self.name}: option coarse={o['coarse']!r}: use any8 or identity_any"
            )
        path = self.table_path(o["file"], "all_data_with_identities.csv")
        if not path.is_file():
            raise EmbedkitError(
                f"{path}: no such file (dataset {self.name}: the WILDS "
                "all_data_with_identities.csv)"
            )
        need = (
            ["id", "comment_text", "split", "toxicity"]
            + IDENTITIES
            + (["identity_any"] if o["coarse"] == "identity_any" else [])
        )
        allow_long_fields()
        uid, texts, split, tox, ident, anyw, empty = [], [], [], [], [], [], 0
        # Streamed column by column of interest: the full table (450k rows x 50 columns) would not
        # be worth holding as strings.
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise EmbedkitError(f"{path}: empty file (no header line)")
            header = [h.strip() for h in header]
            missing = [c for c in need if c not in header]
            if missing:
                raise EmbedkitError(
                    f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(repr(c) for c in missing)} (the WILDS layout has "
                    f"{', '.join(need)})"
                )
            j = {c: header.index(c) for c in need}
            for row in reader:
                if not any(field.strip() for field in row):
                    continue
                line = reader.line_num
                if len(row) != len(header):
                    raise EmbedkitError(
                        f"{path}, line {line}: {len(row)} fields, the header has {len(header)}"
                    )
                code = SPLIT_ALIASES.get(row[j["split"]].strip().lower())
                if code is None:
                    raise EmbedkitError(
                        f"{path}, line {line}: unknown split {row[j['split']]!r} (train/val/test)"
                    )
                t = _value(path, line, "toxicity", row[j["toxicity"]])
                if not t == t:
                    raise EmbedkitError(f"{path}, line {line}: empty toxicity")
                vals = [_value(path, line, c, row[j[c]]) for c in IDENTITIES]
                empty += any(v != v for v in vals)
                uid.append(row[j["id"]].strip())
                texts.append(row[j["comment_text"]])
                split.append(code)
                tox.append(t)
                ident.append(vals)
                if o["coarse"] == "identity_any":
                    anyw.append(_value(path, line, "identity_any", row[j["identity_any"]]))
        if not uid:
            raise EmbedkitError(f"{path}: no data rows")
        seen: dict[str, int] = {}
        for i, u in enumerate(uid):
            if u in seen:
                raise EmbedkitError(f"{path}: duplicate id {u!r} (rows {seen[u] + 1} and {i + 1})")
            seen[u] = i
        thr = float(o["threshold"])
        y = (np.asarray(tox) >= thr).astype(np.int64)
        ident = np.nan_to_num(np.asarray(ident, np.float64), nan=0.0) >= thr  # [N, 8]
        a = (
            ident.any(axis=1)
            if o["coarse"] == "any8"
            else np.nan_to_num(np.asarray(anyw, np.float64), nan=0.0) >= thr
        ).astype(np.int64)
        eval_groups = np.stack(
            [ident[:, k] & (y == c) for k in range(len(IDENTITIES)) for c in (0, 1)], axis=1
        )
        names = [f"{idn}|{cls}" for idn in IDENTITIES for cls in CLASSES]
        self.texts = texts
        coarse = (
            "any of " + ", ".join(IDENTITIES)
            if o["coarse"] == "any8"
            else "the identity_any column (all 24 annotated identities)"
        )
        self._finish(
            uid,
            np.asarray(split, np.uint8),
            y,
            a,
            CLASSES,
            ["no_identity", "identity"],
            eval_groups=eval_groups,
            eval_group_names=names,
            metadata_sha256=sha256_file(path),
            file=path.name,
            group_definition=(
                f"coarse: g = 2 y + a; y = toxicity >= {thr}; a = 1 when {coarse} "
                f">= {thr} (the 4 toxic x identity groups of DFR/JTT)"
            ),
            eval_group_definition=(
                f"fine: 16 overlapping groups (identity, y) for {', '.join(IDENTITIES)} "
                f"(identity >= {thr}); worst_eval_group_acc = min over them "
                "(WILDS/JTT/SubpopBench CivilCommentsFine)"
            ),
            rows_with_empty_identity_cells=int(empty),
        )
