"""MultiNLI with the GroupDRO negation attribute (Sagawa et al. 2020), from the official files.

    <root>/multinli_1.0_train.jsonl            the official MultiNLI 1.0 release (jsonl, or the
    <root>/multinli_1.0_dev_matched.jsonl      .txt tab-separated copies of the same files)
    <root>/multinli_1.0_dev_mismatched.jsonl
or
    <root>/taxinli10k.tsv                      TaxiNLI (microsoft/TaxiNLI): 10,071 MultiNLI pairs,
                                               columns prem, hyp, label, pairID, genre, ...

Fields used: `sentence1` (premise), `sentence2` (hypothesis), `gold_label`, `pairID`, `genre`
(TaxiNLI: `prem`, `hyp`, `label`, `pairID`, `genre`). Rows whose gold label is `-` (no annotator
consensus) have no class and are left out; how many is recorded in the dataset meta.

- y: contradiction 0, entailment 1, neutral 2 (GroupDRO's order).
- a: 1 when the hypothesis holds a negation word: remove `string.punctuation`, lowercase, split on
  single spaces, any token in {nobody, no, never, nothing} (GroupDRO's rule); else 0.
- The pair goes to the encoder as one sequence pair (premise, hypothesis).
- uid: `pairID` (MultiNLI repeats a handful of pairIDs for different pairs; later repeats get
  `#2`, `#3`, ... and the count is recorded).
- split: `random` (default): the seeded group-stratified split of `embedkit.data.text` over all the
  rows read, fractions 0.5/0.2/0.3 (the sizes of GroupDRO's own random split, 206,175 / 82,462 /
  123,712 of the 412,349 train + dev pairs; its exact row assignment is not published as a rule,
  so this split is embedkit's own). `official` (MultiNLI files only): train -> train,
  dev_matched -> val, dev_mismatched -> test.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from embedkit.errors import EmbedkitError

from .base import Option
from .tables import read_csv, sha256_file
from .text import (
    NEGATION_WORDS,
    TextDataset,
    allow_long_fields,
    cap_groups,
    negation_attribute,
    parse_fractions,
    split_rule,
    stratified_split,
    unique_ids,
)

CLASSES = ["contradiction", "entailment", "neutral"]
OFFICIAL = {"train": 0, "dev_matched": 1, "dev_mismatched": 2}
TAXINLI = "taxinli10k.tsv"


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError as e:
                raise EmbedkitError(f"{path}, line {n}: not a JSON object ({e})") from None
            missing = [k for k in ("gold_label", "sentence1", "sentence2", "pairID") if k not in r]
            if missing:
                raise EmbedkitError(
                    f"{path}, line {n}: missing field{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(missing)}"
                )
            rows.append(
                {
                    "label": r["gold_label"],
                    "prem": r["sentence1"],
                    "hyp": r["sentence2"],
                    "pairID": str(r["pairID"]),
                    "genre": r.get("genre", ""),
                    "line": n,
                }
            )
    return rows


def _read_tsv(path: Path, cols: dict) -> list[dict]:
    """A tab-separated MultiNLI/TaxiNLI file, read without quote processing (as published)."""
    allow_long_fields()
    t = read_csv(path, list(cols.values()), delimiter="\t", quoting=csv.QUOTE_NONE)
    idx = {k: t.header.index(c) for k, c in cols.items()}
    return [{**{k: r[j] for k, j in idx.items()}, "line": t.lines[i]} for i, r in enumerate(t.rows)]


class MultiNli(TextDataset):
    name = "multinli"
    description = (
        "MultiNLI 1.0 (official jsonl/txt files) or TaxiNLI's taxinli10k.tsv; premise/hypothesis "
        "pairs, y contradiction/entailment/neutral, a negation word in the hypothesis (GroupDRO)"
    )
    OPTIONS = {
        "split": Option(
            "random",
            str,
            "random (seeded group-stratified) or official (train/dev_matched/dev_mismatched)",
        ),
        "split_seed": Option(0, int, "seed of the random split"),
        "split_fractions": Option(
            "0.5,0.2,0.3", str, "train,val,test fractions of the random split"
        ),
        "genres": Option("", str, "comma-separated genres to keep ('' keeps all)"),
        "max_per_group": Option(
            0, int, "keep the first N pairs (file order) of each (y, a) group; 0 keeps all"
        ),
    }

    def _setup(self):
        o = self.options
        if o["split"] not in ("random", "official"):
            raise EmbedkitError(
                f"dataset {self.name}: option split={o['split']!r}: use random or official"
            )
        rows, files, source = self._read()
        genres = [g.strip() for g in o["genres"].split(",") if g.strip()]
        if genres:
            known = sorted({r["genre"] for r in rows})
            bad = [g for g in genres if g not in known]
            if bad:
                raise EmbedkitError(
                    f"dataset {self.name}: option genres: unknown genre {bad[0]!r} "
                    f"(genres: {', '.join(known)})"
                )
            rows = [r for r in rows if r["genre"] in genres]
        no_gold = sum(r["label"] == "-" for r in rows)
        rows = [r for r in rows if r["label"] != "-"]
        for r in rows:
            if r["label"] not in CLASSES:
                raise EmbedkitError(
                    f"{r['file']}, line {r['line']}: unknown label {r['label']!r} "
                    f"(expected {', '.join(CLASSES)} or -)"
                )
        if not rows:
            raise EmbedkitError(
                f"dataset {self.name}: no labelled pairs in {', '.join(str(f) for f in files)}"
            )
        y = np.asarray([CLASSES.index(r["label"]) for r in rows], np.int64)
        a = negation_attribute([r["hyp"] for r in rows])
        keep = cap_groups(y, a, 2, int(o["max_per_group"]))
        rows, y, a = [rows[i] for i in keep], y[keep], a[keep]
        self.texts = [r["prem"] for r in rows]
        self.pairs = [r["hyp"] for r in rows]
        uid, n_repeats = unique_ids([r["pairID"] for r in rows])
        if o["split"] == "official":
            if source != "multinli":
                raise EmbedkitError(
                    f"dataset {self.name}: split=official needs the official MultiNLI files; "
                    f"{files[0].name} has no split of its own (use split=random)"
                )
            split = np.asarray([OFFICIAL[r["part"]] for r in rows], np.uint8)
            rule = "official: train -> train, dev_matched -> val, dev_mismatched -> test"
        else:
            fr = parse_fractions(self.name, o["split_fractions"])
            split = stratified_split(y, a, 2, fr, o["split_seed"])
            rule = split_rule(fr, o["split_seed"])
        self._finish(
            uid,
            split,
            y,
            a,
            CLASSES,
            ["no_negation", "negation"],
            source=source,
            files=[f.name for f in files],
            metadata_sha256=sha256_file(files[0])
            if len(files) == 1
            else {f.name: sha256_file(f) for f in files},
            attribute=(
                "negation word in the hypothesis (GroupDRO: strip punctuation, lowercase, split on "
                f"spaces, any of {', '.join(NEGATION_WORDS)})"
            ),
            pair="premise, hypothesis (one sequence pair)",
            split_rule=rule,
            rows_without_gold_label=no_gold,
            repeated_pair_ids=n_repeats,
            genres=genres or "all",
            max_per_group=int(o["max_per_group"]),
        )

    def _read(self):
        root = Path(self.root) if self.root not in (None, "") else None
        if root is None or not root.exists():
            raise EmbedkitError(
                f"dataset {self.name}: needs --root, the folder holding multinli_1.0_*.jsonl "
                f"(or .txt) or {TAXINLI}" + (f"; {root} does not exist" if root else "")
            )
        if root.is_file():
            folder, only = root.parent, root.name
        else:
            folder, only = root, None
        if (only or TAXINLI) == TAXINLI and (folder / TAXINLI).is_file():
            path = folder / TAXINLI
            rows = _read_tsv(
                path,
                {
                    "prem": "prem",
                    "hyp": "hyp",
                    "label": "label",
                    "pairID": "pairID",
                    "genre": "genre",
                },
            )
            for r in rows:
                r["file"] = path
            return rows, [path], "taxinli"
        rows, files = [], []
        for part in OFFICIAL:
            for ext in ("jsonl", "txt"):
                path = folder / f"multinli_1.0_{part}.{ext}"
                if path.is_file() and (only is None or only == path.name):
                    got = (
                        _read_jsonl(path)
                        if ext == "jsonl"
                        else _read_tsv(
                            path,
                            {
                                "label": "gold_label",
                                "prem": "sentence1",
                                "hyp": "sentence2",
                                "pairID": "pairID",
                                "genre": "genre",
                            },
                        )
                    )
                    for r in got:
                        r["part"], r["file"] = part, path
                    rows += got
                    files.append(path)
                    break
        if not files:
            raise EmbedkitError(
                f"{root}: no MultiNLI files (multinli_1.0_train.jsonl, ..._dev_matched, "
                f"..._dev_mismatched; .jsonl or .txt) and no {TAXINLI}"
            )
        if self.options["split"] == "official" and len(files) < 3:
            have = ", ".join(f.name for f in files)
            raise EmbedkitError(
                f"dataset {self.name}: split=official needs train, dev_matched and dev_mismatched; "
                f"found only {have}"
            )
        return rows, files, "multinli"
