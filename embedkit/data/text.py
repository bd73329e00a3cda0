"""Text datasets, and the `text_csv` adapter for any CSV/TSV of texts.

A text adapter is a dataset whose rows are texts (or (text, pair) tuples, which the encoder sees as
one sequence pair) instead of images: `modality = "text"`, `load(i)` returns the text. The sample
table, groups, options and summary are the image adapters' own (`ImageDataset` holds them).

`text_csv` layout (`--root` the folder, `file` the table; or `--root` the table itself):

    id_col, text_col[, pair_col], label_col[, attr_col][, split_col]     one row per text

- the text column (and optionally a second text column: the pair);
- the label (integers 0..K-1 or names; `class_names` fixes the order, otherwise names sort);
- the attribute from a column (`attr_col`), or from a term list matched in the text (`terms` or
  `terms_file`: whole words, case-insensitive, a multi-word term matches as a phrase; a = 1 when
  any term occurs), or none (a = -1);
- the split from a column (`split_col`: train/val/test or 0/1/2), or, when the file has none, the
  deterministic split below;
- row ids from `id_col` (the dataset's own ids; a repeated id is an error), else `row-<n>` with n
  the 0-based data row.

The deterministic split (`stratified_split`): rows are grouped by (label, attribute) (by label alone
where the attribute is unknown); within each group, in file order, a permutation drawn from
`numpy.random.default_rng([seed, group])` assigns the first round(f_train * n) rows to train, the
next round(f_val * n) to val and the rest to test (`split_fractions`, default 0.5,0.25,0.25). Each
group is drawn independently, so a row's split depends only on its own group, the seed and the
fractions; the rule and its inputs are recorded in the cache's dataset meta.
"""

from __future__ import annotations

import csv
import re
import string
import sys
from pathlib import Path

import numpy as np

from embedkit.errors import EmbedkitError

from .base import ImageDataset, Option, check_fraction
from .tables import read_csv, sha256_file

DEFAULT_FRACTIONS = "0.5,0.25,0.25"
# GroupDRO (Sagawa et al. 2020, repo kohpangwei/group_DRO, dataset_scripts/generate_multinli.py):
# the hypothesis has a negation word after removing punctuation, lowercasing and splitting on
# spaces.
NEGATION_WORDS = ("nobody", "no", "never", "nothing")


class TextDataset(ImageDataset):
    """Rows of `samples()` with a text each (`self.texts`; `self.pairs` for sentence pairs)."""

    modality = "text"
    texts: list
    pairs: list | None = None

    def load(self, i: int):
        return self.texts[i] if self.pairs is None else (self.texts[i], self.pairs[i])

    def try_load(self, i: int, strict: bool = False):
        return self.load(i), None

    def thumbnail(self, i: int, size: int = 0):
        raise EmbedkitError(f"dataset {self.name} holds text, not images: no thumbnails")

    def table_path(self, default: str, what: str) -> Path:
        """The table to read: `--root` itself when it is a file, else `root / default`."""
        if self.root in (None, ""):
            raise EmbedkitError(f"dataset {self.name}: needs --root, the folder holding {what}")
        root = Path(self.root)
        if root.is_file():
            return root
        if not root.is_dir():
            raise EmbedkitError(f"{root}: no such file or folder (dataset {self.name})")
        p = Path(default)
        return p if p.is_absolute() else root / p


# ----------------------------------------------------------------------------------------------
# Shared rules: negation words, term lists, the deterministic split, unique ids
# ----------------------------------------------------------------------------------------------


def negation_attribute(hypotheses) -> np.ndarray:
    """1 where the text contains a GroupDRO negation word, else 0."""
    table = str.maketrans("", "", string.punctuation)
    words = set(NEGATION_WORDS)
    return np.asarray(
        [int(bool(words.intersection(h.translate(table).lower().split(" ")))) for h in hypotheses],
        np.int64,
    )


def term_pattern(terms) -> re.Pattern:
    terms = sorted({t.strip().lower() for t in terms if t.strip()}, key=len, reverse=True)
    if not terms:
        raise EmbedkitError("the term list is empty")
    return re.compile(
        r"\b(?:" + "|".join(r"\s+".join(map(re.escape, t.split())) for t in terms) + r")\b",
        re.IGNORECASE,
    )


def term_attribute(texts, terms) -> np.ndarray:
    """1 where any term occurs as a whole word (or phrase), case-insensitive, else 0."""
    pat = term_pattern(terms)
    return np.asarray([int(pat.search(t) is not None) for t in texts], np.int64)


def parse_fractions(dataset: str, value: str) -> tuple[float, float, float]:
    try:
        f = tuple(float(v) for v in str(value).split(","))
    except ValueError:
        f = ()
    if len(f) != 3 or any(v < 0 for v in f) or abs(sum(f) - 1) > 1e-6:
        raise EmbedkitError(
            f"dataset {dataset}: option split_fractions={value!r}: give three non-negative "
            f"fractions train,val,test summing to 1 (e.g. {DEFAULT_FRACTIONS})"
        )
    for name, v in zip(("train", "val", "test"), f):
        check_fraction(dataset, f"split_fractions ({name})", v)
    return f


def stratified_split(y, a, n_attrs: int, fractions, seed: int) -> np.ndarray:
    """The module docstring's deterministic split: split codes 0/1/2 per row."""
    y, a = np.asarray(y, np.int64), np.asarray(a, np.int64)
    key = np.where(a >= 0, y * max(n_attrs, 1) + a, -1 - y)  # unknown a: stratify by label alone
    split = np.empty(len(y), np.uint8)
    for k in np.unique(key):
        rows = np.flatnonzero(key == k)
        perm = rows[np.random.default_rng([int(seed), int(k) + 1_000_000]).permutation(len(rows))]
        n_tr = int(round(fractions[0] * len(rows)))
        n_va = min(len(rows) - n_tr, int(round(fractions[1] * len(rows))))
        split[perm[:n_tr]] = 0
        split[perm[n_tr : n_tr + n_va]] = 1
        split[perm[n_tr + n_va :]] = 2
    return split


def split_rule(fractions, seed: int) -> str:
    return (
        "seeded group-stratified split: per (y, a) group, in file order, a permutation from "
        f"numpy default_rng([{seed}, group + 1000000]); fractions train/val/test "
        f"{','.join(str(f) for f in fractions)} (rounded; test takes the rest)"
    )


def unique_ids(ids) -> tuple[list[str], int]:
    """Ids made unique by suffixing later repeats `#2`, `#3`, ... (MultiNLI itself repeats a few
    pairIDs for different pairs); returns the ids and how many were suffixed."""
    seen: dict[str, int] = {}
    out, n = [], 0
    for u in ids:
        k = seen.get(u, 0) + 1
        seen[u] = k
        if k > 1:
            n += 1
            out.append(f"{u}#{k}")
        else:
            out.append(u)
    return out, n


def cap_groups(y, a, n_attrs: int, cap: int) -> np.ndarray:
    """Rows kept by `max_per_group`: the first `cap` rows (file order) of each (y, a) group, in
    file order; all rows when cap is 0. A smaller, still real, sample with every group present."""
    if cap <= 0:
        return np.arange(len(y))
    g = np.where(
        np.asarray(a) >= 0, np.asarray(y) * max(n_attrs, 1) + np.asarray(a), -1 - np.asarray(y)
    )
    keep = np.zeros(len(g), bool)
    for k in np.unique(g):
        keep[np.flatnonzero(g == k)[:cap]] = True
    return np.flatnonzero(keep)


def allow_long_fields() -> None:
    """Comments can exceed the csv module's 128 KiB default field limit."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


# ----------------------------------------------------------------------------------------------
# text_csv
# ----------------------------------------------------------------------------------------------


class TextCsv(TextDataset):
    name = "text_csv"
    description = (
        "any CSV/TSV of texts (or text pairs): text, label, optional attribute column or term "
        "list, optional split (else a seeded group-stratified split)"
    )
    OPTIONS = {
        "file": Option("data.csv", str, "the table, relative to --root (or --root is the file)"),
        "text_col": Option("text", str, "column with the text"),
        "pair_col": Option("", str, "column with the second text of a pair ('' for single texts)"),
        "label_col": Option("label", str, "column with the class label"),
        "attr_col": Option(
            "", str, "column with the spurious attribute ('' for none or a term list)"
        ),
        "terms": Option(
            "", str, "comma-separated terms; a = 1 when any occurs in the text (whole words)"
        ),
        "terms_file": Option(
            "", str, "file of terms, one a line, relative to --root's folder (or absolute)"
        ),
        "terms_in": Option("text", str, "which text the terms are matched in: text, pair or both"),
        "split_col": Option(
            "", str, "column with train/val/test or 0/1/2 ('' for the seeded split)"
        ),
        "split_seed": Option(0, int, "seed of the group-stratified split"),
        "split_fractions": Option(
            DEFAULT_FRACTIONS, str, "train,val,test fractions of the seeded split"
        ),
        "id_col": Option("", str, "column with the row ids ('' for row-<n>)"),
        "class_names": Option("", str, "comma-separated label values in class order"),
        "attr_names": Option(
            "", str, "comma-separated attribute values in order (term list: the names of a=0,1)"
        ),
        "delimiter": Option("", str, "field delimiter ('' : tab for .tsv/.tab, else comma)"),
        "quoting": Option(
            "minimal", str, "csv quoting: minimal (quoted fields allowed) or none (TSV as is)"
        ),
    }

    def _setup(self):
        from .manifest import encode

        o = self.options
        path = self.table_path(o["file"], "the text table")
        delim = o["delimiter"] or ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
        if o["quoting"] not in ("minimal", "none"):
            raise EmbedkitError(
                f"dataset {self.name}: option quoting={o['quoting']!r}: use minimal or none"
            )
        if o["terms"] and o["terms_file"] or (o["attr_col"] and (o["terms"] or o["terms_file"])):
            raise EmbedkitError(f"dataset {self.name}: give one of attr_col, terms or terms_file")
        cols = [
            c
            for c in (
                o["id_col"],
                o["text_col"],
                o["pair_col"],
                o["label_col"],
                o["attr_col"],
                o["split_col"],
            )
            if c
        ]
        allow_long_fields()
        table = read_csv(
            path,
            cols,
            delimiter=delim,
            quoting=csv.QUOTE_NONE if o["quoting"] == "none" else csv.QUOTE_MINIMAL,
        )
        if not len(table):
            raise EmbedkitError(f"{path}: no data rows")
        self.texts = [
            r[table.header.index(o["text_col"])] for r in table.rows
        ]  # text kept verbatim
        self.pairs = (
            [r[table.header.index(o["pair_col"])] for r in table.rows] if o["pair_col"] else None
        )
        if o["id_col"]:
            uid = table.column(o["id_col"])
            table.check_unique(uid, o["id_col"])
        else:
            uid = [f"row-{i}" for i in range(len(table))]
        y, class_names = encode(table, o["label_col"], o["class_names"], allow_unknown=False)
        meta = {"metadata_sha256": sha256_file(path), "file": str(path.name)}
        if o["attr_col"]:
            a, attr_names = encode(table, o["attr_col"], o["attr_names"], allow_unknown=True)
            meta["attribute"] = f"column {o['attr_col']}"
        elif o["terms"] or o["terms_file"]:
            terms = self._terms(path)
            where = {
                "text": [self.texts],
                "pair": [self.pairs],
                "both": [self.texts, self.pairs],
            }.get(o["terms_in"])
            if where is None or any(w is None for w in where):
                raise EmbedkitError(
                    f"dataset {self.name}: option terms_in={o['terms_in']!r}: use text, or "
                    "pair/both with a pair_col"
                )
            a = np.zeros(len(table), np.int64)
            for texts in where:
                a |= term_attribute(texts, terms)
            attr_names = [v.strip() for v in o["attr_names"].split(",") if v.strip()] or [
                "no_term",
                "term",
            ]
            if len(attr_names) != 2:
                raise EmbedkitError(
                    f"dataset {self.name}: a term-list attribute has two values; attr_names "
                    f"{o['attr_names']!r} names {len(attr_names)}"
                )
            meta["attribute"] = (
                f"term list matched in {o['terms_in']} (whole words, case-insensitive): "
                f"{', '.join(terms)}"
            )
        else:
            a, attr_names = np.full(len(table), -1, np.int64), ["unknown"]
            meta["attribute"] = "none"
        if o["split_col"]:
            split = table.splits(o["split_col"])
            meta["split_rule"] = f"column {o['split_col']}"
        else:
            fr = parse_fractions(self.name, o["split_fractions"])
            split = stratified_split(y, a, len(attr_names), fr, o["split_seed"])
            meta["split_rule"] = split_rule(fr, o["split_seed"])
        self._finish(uid, split, y, a, class_names, attr_names, **meta)

    def _terms(self, path: Path) -> list[str]:
        o = self.options
        if o["terms"]:
            return [t.strip() for t in o["terms"].split(",") if t.strip()]
        tf = Path(o["terms_file"])
        tf = tf if tf.is_absolute() else path.parent / tf
        if not tf.is_file():
            raise EmbedkitError(
                f"{tf}: no such terms file (dataset {self.name}, option terms_file)"
            )
        return [
            line.strip() for line in tf.read_text(encoding="utf-8").splitlines() if line.strip()
        ]
