"""The text layouts on small fixtures written in their published formats: text_csv (columns, term
lists, the seeded group-stratified split), MultiNLI 1.0 (jsonl and txt) and TaxiNLI with the
GroupDRO negation attribute, CivilComments (WILDS all_data_with_identities.csv) with its coarse
groups and the 16 overlapping fine groups through the cache into the metrics."""

import csv
import json

import numpy as np
import pytest

from embedkit import data, metrics
from embedkit.cache import Cache, write_cache
from embedkit.cli import main
from embedkit.data.text import negation_attribute, stratified_split, term_attribute
from embedkit.errors import EmbedkitError
from tests.conftest import need_data

# -- text_csv -------------------------------------------------------------------------------------


def _write(path, header, rows, delimiter=","):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_text_csv_columns_terms_and_errors(tmp_path):
    rows = [
        ["c1", "I am a gay man, and proud.", "True", "train"],
        ["c2", "Gayle is here", "False", "val"],
        ["c3", "Middle  Eastern food\nis great", "False", "test"],
        ["c4", "nothing here", "True", "train"],
    ]
    p = _write(tmp_path / "t.csv", ["id", "body", "toxic", "part"], rows)
    ds = data.create(
        "text_csv",
        p,
        text_col="body",
        label_col="toxic",
        id_col="id",
        split_col="part",
        terms="gay,middle eastern",
    )
    s = ds.samples()
    assert ds.modality == "text" and list(s.uid) == ["c1", "c2", "c3", "c4"]
    assert s.class_names == ["False", "True"] and s.y.tolist() == [1, 0, 0, 1]
    assert s.a.tolist() == [1, 0, 1, 0]  # whole words, case-insensitive, phrases across spaces
    assert s.split.tolist() == [0, 1, 2, 0] and ds.load(2) == "Middle  Eastern food\nis great"
    assert "term list" in ds.meta["attribute"] and ds.meta["split_rule"] == "column part"
    (tmp_path / "a.tsv").write_text(
        'text\tlabel\tgrp\nx y\t0\t1\na "quoted\t1\t\n', encoding="utf-8"
    )
    with_attr = data.create("text_csv", tmp_path / "a.tsv", attr_col="grp", quoting="none")
    assert with_attr.samples().a.tolist() == [1, -1] and with_attr.load(1) == 'a "quoted'
    with pytest.raises(EmbedkitError, match=r"missing column 'body'"):
        data.create("text_csv", tmp_path / "a.tsv", text_col="body")
    dup = _write(tmp_path / "d.csv", ["id", "text", "label"], [["1", "a", "0"], ["1", "b", "1"]])
    with pytest.raises(EmbedkitError, match=r"d.csv, line 3: duplicate id '1'"):
        data.create("text_csv", dup, id_col="id")
    with pytest.raises(EmbedkitError, match="give one of attr_col, terms or terms_file"):
        data.create("text_csv", dup, attr_col="label", terms="a")
    with pytest.raises(EmbedkitError, match="no such terms file"):
        data.create("text_csv", dup, terms_file="nope.txt")


def test_seeded_split_is_deterministic_and_stratified_by_group():
    rng = np.random.default_rng(0)
    y, a = rng.integers(0, 2, 1000), rng.integers(0, 2, 1000)
    s1 = stratified_split(y, a, 2, (0.5, 0.25, 0.25), seed=3)
    assert np.array_equal(s1, stratified_split(y, a, 2, (0.5, 0.25, 0.25), seed=3))
    assert not np.array_equal(s1, stratified_split(y, a, 2, (0.5, 0.25, 0.25), seed=4))
    for g in range(4):
        m = y * 2 + a == g
        counts = np.bincount(s1[m], minlength=3)
        assert abs(counts[0] - 0.5 * m.sum()) <= 1 and abs(counts[1] - 0.25 * m.sum()) <= 1
    # a row's split depends on its own group only: dropping another group's rows changes nothing
    keep = (y * 2 + a) != 3
    assert np.array_equal(stratified_split(y[keep], a[keep], 2, (0.5, 0.25, 0.25), 3), s1[keep])


def test_wiki_toxicity_through_text_csv_matches_the_readme():
    root = need_data("text", "wiki_toxicity")
    ds = data.create(
        "text_csv",
        root,
        file="toxicity_nonfuzzed_testset.csv",
        text_col="comment",
        label_col="toxic",
        id_col="rev_id",
        terms="lesbian,gay,bisexual,transgender,trans,queer,lgbt,lgbtq,homosexual",
    )
    s = ds.samples()
    assert len(s) == 1492 and int(s.y.sum()) == 248
    m = s.a == 1
    assert (
        round(float(s.y[m].mean()), 3) == 0.579 and round(float(s.y[~m].mean()), 3) == 0.097
    )  # README: 58 / 9.7 %
    full = data.create(
        "text_csv",
        root,
        file="toxicity_nonfuzzed_testset.csv",
        text_col="comment",
        label_col="toxic",
        id_col="rev_id",
        terms_file="identity_terms_adjectives_people.txt",
    )
    assert len(full.meta["attribute"].split(": ", 1)[1].split(", ")) == 50  # all 50 listed terms


# -- MultiNLI and TaxiNLI
# ---------------------------------------------------------------------------


def test_negation_rule_is_groupdros():
    hyps = [
        "No, he did not.",
        "Nobody's home",
        "There is nothing.",
        "I never said that",
        "Know it",
        "no-one came",
        "He said NO!",
    ]
    # punctuation removed before splitting: "Nobody's" -> "Nobodys", "no-one" -> "noone" (no match)
    assert negation_attribute(hyps).tolist() == [1, 0, 1, 1, 0, 0, 1]
    assert term_attribute(["Gay rights", "gayety", "a LGBT  person"], ["gay", "lgbt"]).tolist() == [
        1,
        0,
        1,
    ]


MNLI_FIELDS = [
    "annotator_labels",
    "genre",
    "gold_label",
    "pairID",
    "promptID",
    "sentence1",
    "sentence1_binary_parse",
    "sentence1_parse",
    "sentence2",
    "sentence2_binary_parse",
    "sentence2_parse",
]
MNLI_TXT = [
    "gold_label",
    "sentence1_binary_parse",
    "sentence2_binary_parse",
    "sentence1_parse",
    "sentence2_parse",
    "sentence1",
    "sentence2",
    "promptID",
    "pairID",
    "genre",
    "label1",
    "label2",
    "label3",
    "label4",
    "label5",
]
PAIRS = {
    "train": [
        (
            "neutral",
            "Conceptually cream skimming has two basic dimensions.",
            "Product and geography are what make cream skimming work. ",
            "31193n",
            "government",
        ),
        (
            "contradiction",
            "you know during the season and i guess at at your level uh you lose them",
            "You never lose the players.",
            "101457c",
            "telephone",
        ),
        (
            "-",
            "One of our number will carry out your instructions minutely.",
            "A member of my team will execute your orders with immense precision.",
            "134793e",
            "fiction",
        ),
    ],
    "dev_matched": [
        (
            "entailment",
            "The new rights are nice enough",
            "Everyone really likes the newest benefits ",
            "83248e",
            "slate",
        ),
        (
            "contradiction",
            "This site includes a list of all award winners.",
            "Nobody won an award; there is no list.",
            "2342c",
            "government",
        ),
    ],
    "dev_mismatched": [
        (
            "neutral",
            "Your contribution helped make it possible for us to provide our students.",
            "Your contributions were of no help with our students' education.",
            "63735c",
            "letters",
        )
    ],
}


def _mnli_folder(tmp_path, fmt):
    folder = tmp_path / fmt
    folder.mkdir(parents=True)
    for part, rows in PAIRS.items():
        path = folder / f"multinli_1.0_{part}.{fmt}"
        if fmt == "jsonl":
            with open(path, "w", encoding="utf-8") as f:
                for label, p, h, pid, genre in rows:
                    rec = {k: "" for k in MNLI_FIELDS}
                    rec.update(
                        annotator_labels=[label],
                        genre=genre,
                        gold_label=label,
                        pairID=pid,
                        promptID=pid[:-1],
                        sentence1=p,
                        sentence2=h,
                    )
                    f.write(json.dumps(rec) + "\n")
        else:
            lines = ["\t".join(MNLI_TXT)]
            for label, p, h, pid, genre in rows:
                lines.append(
                    "\t".join(
                        [
                            label,
                            "( x )",
                            "( y )",
                            "(ROOT x)",
                            "(ROOT y)",
                            p,
                            h,
                            pid[:-1],
                            pid,
                            genre,
                            label,
                            "",
                            "",
                            "",
                            "",
                        ]
                    )
                )
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("fmt", ["jsonl", "txt"])
def test_multinli_official_files(tmp_path, fmt):
    ds = data.create("multinli", _mnli_folder(tmp_path, fmt), split="official")
    s = ds.samples()
    assert list(s.uid) == [
        "31193n",
        "101457c",
        "83248e",
        "2342c",
        "63735c",
    ]  # the '-' pair left out
    assert ds.meta["rows_without_gold_label"] == 1 and ds.meta["source"] == "multinli"
    assert s.class_names == ["contradiction", "entailment", "neutral"] and s.y.tolist() == [
        2,
        0,
        1,
        0,
        2,
    ]
    assert s.a.tolist() == [0, 1, 0, 1, 1]  # never / Nobody...no / no
    assert s.split.tolist() == [0, 0, 1, 1, 2]
    assert ds.load(1) == (
        "you know during the season and i guess at at your level uh you lose them",
        "You never lose the players.",
    )
    rnd = data.create("multinli", _mnli_folder(tmp_path / "r", fmt))
    assert "seeded group-stratified" in rnd.meta["split_rule"]
    with pytest.raises(EmbedkitError, match="unknown genre 'news'"):
        data.create("multinli", _mnli_folder(tmp_path / "g", fmt), genres="news")


def test_taxinli_file_reads_with_the_readme_counts():
    ds = data.create("multinli", need_data("text", "taxinli"))
    s = ds.samples()
    assert len(s) == 10071 and ds.meta["source"] == "taxinli" and ds.meta["repeated_pair_ids"] == 5
    counts = np.bincount(s.y * 2 + s.a, minlength=6).tolist()
    assert counts == [2811, 564, 3419, 76, 3120, 81]  # README: contradiction / entailment / neutral
    capped = data.create("multinli", need_data("text", "taxinli"), max_per_group=300).samples()
    assert np.bincount(capped.y * 2 + capped.a, minlength=6).tolist() == [
        300,
        300,
        300,
        76,
        300,
        81,
    ]
    assert set(capped.uid) <= set(s.uid)
    with pytest.raises(EmbedkitError, match="split=official needs the official MultiNLI files"):
        data.create("multinli", need_data("text", "taxinli"), split="official")


# -- CivilComments (WILDS) -------------------------------------------------------------------------

# The WILDS civilcomments_v1.0 table: a pandas index column, then the Jigsaw columns and WILDS'
# aggregated identity columns. Values as published: fractions of annotators.
WILDS_HEADER = (
    "|id|comment_text|split|created_date|publication_id|parent_id|article_id|rating|funny|wow|sad|likes|"
    "disagree|toxicity|severe_toxicity|obscene|sexual_explicit|identity_attack|insult|threat|male|female|"
    "transgender|other_gender|heterosexual|homosexual_gay_or_lesbian|bisexual|other_sexual_orientation|"
    "christian|jewish|muslim|hindu|buddhist|atheist|other_religion|black|white|asian|latino|"
    "other_race_or_ethnicity|physical_disability|intellectual_or_learning_disability|"
    "psychiatric_or_mental_illness|other_disability|identity_annotator_count|toxicity_annotator_count|"
    "LGBTQ|other_religions|asian_latino_etc|disability_any|identity_any|num_identities|na_gender|"
    "na_orientation|na_religion|na_race|na_disability"
).split("|")
# (id, text, split, toxicity, {identity: value}, identity_any)
COMMENTS = [
    ("239575", "He is a good man.", "train", 0.0, {"male": 1.0}, 1.0),
    (
        "239576",
        "Stupid muslim and christian fools",
        "train",
        0.8,
        {"muslim": 0.9, "christian": 0.6},
        1.0,
    ),
    ("239577", "Nice weather today", "train", 0.1, {}, 0.0),
    ("239578", "Idiots, all of you", "val", 0.7, {"jewish": 0.8}, 0.8),  # only an 'other' identity
    (
        "239579",
        'The women in the story, "quoted"\nacross lines',
        "val",
        0.2,
        {"female": 0.5, "white": 0.4},
        0.5,
    ),
    ("239580", "Black and white photos", "test", 0.6, {"black": 0.7, "white": 0.7}, 0.7),
    (
        "239581",
        "gay marriage is fine",
        "test",
        0.0,
        {"homosexual_gay_or_lesbian": 1.0, "LGBTQ": 1.0},
        1.0,
    ),
    ("239582", "you moron", "test", 0.9, {}, 0.0),
]


def _wilds_csv(path):
    rows = []
    for k, (cid, text, split, tox, ids, any_) in enumerate(COMMENTS):
        rec = {c: "0.0" for c in WILDS_HEADER}
        rec.update(
            {
                "": str(k),
                "id": cid,
                "comment_text": text,
                "split": split,
                "created_date": "2015-09-29 10:50:41.987077+00",
                "publication_id": "2",
                "parent_id": "",
                "article_id": "2006",
                "rating": "approved",
                "toxicity": str(tox),
                "identity_any": str(any_),
                "identity_annotator_count": "4",
                "toxicity_annotator_count": "10",
            }
        )
        rec.update({c: str(v) for c, v in ids.items()})
        rows.append([rec[c] for c in WILDS_HEADER])
    rows[2][WILDS_HEADER.index("white")] = ""  # an empty identity cell counts as not mentioned
    return _write(path, WILDS_HEADER, rows)


def test_civilcomments_coarse_and_fine_groups_through_cache_and_metrics(tmp_path, capsys):
    _wilds_csv(tmp_path / "all_data_with_identities.csv")
    ds = data.create("civilcomments", tmp_path)
    s = ds.samples()
    assert list(s.uid) == [c[0] for c in COMMENTS] and ds.load(4).endswith("\nacross lines")
    assert s.y.tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert s.a.tolist() == [
        1,
        1,
        0,
        0,
        1,
        1,
        1,
        0,
    ]  # any of the 8 (jewish alone is not one of them)
    assert data.create("civilcomments", tmp_path, coarse="identity_any").samples().a.tolist() == [
        1,
        1,
        0,
        1,
        1,
        1,
        1,
        0,
    ]
    assert len(s.eval_group_names) == 16 and s.eval_group_names[:2] == [
        "male|non_toxic",
        "male|toxic",
    ]
    eg = s.eval_groups
    col = {n: j for j, n in enumerate(s.eval_group_names)}
    assert np.flatnonzero(eg[:, col["muslim|toxic"]]).tolist() == [1]
    assert np.flatnonzero(eg[:, col["christian|toxic"]]).tolist() == [1]  # overlapping: row 1 twice
    assert np.flatnonzero(eg[:, col["white|toxic"]]).tolist() == [5]  # 0.4 < 0.5 on row 4
    assert np.flatnonzero(eg[:, col["female|non_toxic"]]).tolist() == [4]  # 0.5 counts
    assert np.flatnonzero(eg[:, col["LGBTQ|non_toxic"]]).tolist() == [6]
    assert eg.sum() == 7 and "coarse: g = 2 y + a" in ds.meta["group_definition"]
    assert "16 overlapping groups" in ds.meta["eval_group_definition"]
    assert ds.meta["rows_with_empty_identity_cells"] == 1
    path = tmp_path / "cc.h5"
    write_cache(path, s, "fake", np.zeros((len(s), 2), np.float32))
    cache = Cache.open(path)
    assert (
        np.array_equal(cache.samples().eval_groups, eg)
        and cache.samples().eval_group_names == s.eval_group_names
    )
    test = cache.split("test")
    assert test.eval_groups.shape == (3, 16)
    pred = np.array([1, 1, 1])  # right on 239580 and 239582, wrong on 239581
    rep = metrics.evaluate_split(pred, test)
    assert rep["worst_group_acc"] == 0.0 and rep["worst_eval_group_acc"] == 0.0
    assert rep["worst_eval_group"] == "LGBTQ|non_toxic"
    assert rep["per_eval_group"]["black|toxic"] == {"acc": 1.0, "n": 1}
    assert rep["per_eval_group"]["male|toxic"] == {"acc": None, "n": 0}
    rep = metrics.evaluate_split(np.array([1, 0, 1]), test)
    assert rep["worst_eval_group_acc"] == 1.0 and rep["worst_group_acc"] == 1.0
    from embedkit.selection import select

    records = [
        {
            "config_id": 0,
            "val": {"worst_eval_group_acc": 0.2, "worst_group_acc": 0.9, "mean_acc": 0.9},
        },
        {
            "config_id": 1,
            "val": {"worst_eval_group_acc": 0.5, "worst_group_acc": 0.4, "mean_acc": 0.8},
        },
    ]
    assert (
        select(records, "val_eval_wga")["config_id"] == 1
        and select(records, "val_wga")["config_id"] == 0
    )
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert (
        "overlapping evaluation groups: fine: 16 overlapping groups" in out
        and "muslim|toxic" in out
    )
    bad = _write(
        tmp_path / "x.csv",
        ["id", "comment_text", "split", "toxicity"],
        [["1", "a", "train", "0.1"]],
    )
    with pytest.raises(EmbedkitError, match="missing columns 'male', 'female'"):
        data.create("civilcomments", bad)
