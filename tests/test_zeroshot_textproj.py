"""CLIP zero-shot (methods spec 12) and text projections (13): the real Waterbirds CLIP-RN50
embeddings, and the spec's faithfulness tests."""

import json

import numpy as np
import pytest

from embedkit import heads, metrics
from embedkit.cache import Cache, store_prompts
from embedkit.schema import Split
from embedkit.errors import EmbedkitError
from embedkit.heads import textproj as tp
from embedkit.heads.zeroshot import prompt_log, unit
from embedkit.data.synthetic import planted_cache
from tests.conftest import need_data


def text_split(Z, y, a, prompts, kinds, index, feats, n_classes=2, n_attrs=2, name="test"):
    return Split(
        name=name,
        Z=np.asarray(Z, np.float32),
        y=np.asarray(y),
        a=np.asarray(a),
        ids=np.arange(len(y)).astype(str),
        rows=np.arange(len(y)),
        class_names=[f"c{c}" for c in range(n_classes)],
        attr_names=[f"t{t}" for t in range(n_attrs)],
        text={
            "prompts": list(prompts),
            "kind": list(kinds),
            "index": np.asarray(index),
            "feats": np.asarray(feats, np.float32),
            "attrs": {},
        },
    )


def empty_like(s):
    return s.subset(np.zeros(0, np.int64))


# ---- the real Waterbirds CLIP embeddings (data README: 75.78 %, hits 80/81, 4/4, 2/8, 108/163)
# ----


def test_zeroshot_real_waterbirds_clip_rn50(tmp_path):
    from embedkit.interop.arrays import import_npz

    path = import_npz(need_data("waterbirds", "clip_rn50_train256.npz"), tmp_path / "wb.h5")
    cache = Cache.open(path)
    train, val = cache.split("train"), cache.split("val")
    assert len(train) == 256 and len(val) == 0
    head = heads.create("zeroshot").fit(train, val)
    pred = head.predict(train.Z)
    hits = [
        (int((pred == train.y)[train.g == k].sum()), int((train.g == k).sum())) for k in range(4)
    ]
    assert hits == [(80, 81), (4, 4), (2, 8), (108, 163)]
    assert int((pred == train.y).sum()) == 194 and round(100 * np.mean(pred == train.y), 2) == 75.78
    r = metrics.evaluate_split(head.decision_function(train.Z), train)
    assert r["worst_group_acc"] == 0.25 and r["worst_group"] == "class_1|attr_0"
    log = head.info_["prompts"]
    assert [p["prompt"] for p in log["prompts"]] == [
        "a photo of a landbird.",
        "a photo of a waterbird.",
    ]
    assert log["tau"] == 100.0


def test_zeroshot_record_logs_prompts_on_real_cache(tmp_path):
    from embedkit import runs
    from embedkit.interop.arrays import import_npz

    path = import_npz(need_data("waterbirds", "clip_rn50_train256.npz"), tmp_path / "wb.h5")
    rec = runs.fit_record(path, "zeroshot", {}, 0, tmp_path / "runs")
    assert rec["prompts"]["prompts"][1]["prompt"] == "a photo of a waterbird."
    assert (
        rec["metrics"]["test"] is None and rec["selection"]["rule"] is None
    )  # no test rows, no selection
    d = runs.run_dir(tmp_path / "runs", "zeroshot", {}, 0)
    assert (
        json.loads((d / "prompts.json").read_text())["prompt_set_sha256"]
        == rec["prompts"]["prompt_set_sha256"]
    )


# ---- zero-shot faithfulness --------------------------------------------------------------------


def orthonormal(k, dim, seed=0):
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, k)))[0].T


def test_orthonormal_text_and_noisy_images_give_accuracy_one():
    T = orthonormal(3, 32)
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    Z = T[y] + 0.05 * rng.normal(size=(300, 32))
    s = text_split(
        Z,
        y,
        np.zeros(300, int),
        ["a", "b", "c"],
        ["class"] * 3,
        [0, 1, 2],
        T,
        n_classes=3,
        n_attrs=1,
    )
    head = heads.create("zeroshot").fit(s, empty_like(s))
    assert np.mean(head.predict(s.Z) == y) == 1.0
    again = heads.create("zeroshot").fit(s, empty_like(s))
    assert np.array_equal(
        head.decision_function(s.Z), again.decision_function(s.Z)
    )  # pure function


def test_template_ensembling_and_prompt_log_hash():
    T = orthonormal(4, 16)
    feats = np.stack([T[0], T[1], 3 * T[2], T[3]])  # class 1 has two templates
    text = {
        "prompts": ["a c0", "a c1", "the c1", "x"],
        "kind": ["class", "class", "class", "attr"],
        "index": np.array([0, 1, 1, 0]),
        "feats": feats,
        "attrs": {},
    }
    s = text_split(
        T[:2],
        [0, 1],
        [0, 0],
        **{k: text[k] for k in ("prompts", "feats")},
        kinds=text["kind"],
        index=text["index"],
    )
    head = heads.create("clip_zs").fit(s, empty_like(s))
    np.testing.assert_allclose(
        head.text_[1], unit(T[1] + T[2]), atol=1e-12
    )  # unit(mean of unit prompts)
    log = prompt_log(text, ("class",), ["c0", "c1"], 100.0)
    assert json.loads(json.dumps(log)) == log and len(log["prompts"]) == 3
    changed = dict(text, prompts=["a c0", "a c1", "this c1", "x"])
    assert (
        prompt_log(changed, ("class",), ["c0", "c1"], 100.0)["prompt_set_sha256"]
        != log["prompt_set_sha256"]
    )
    other_kind = dict(text, prompts=["a c0", "a c1", "the c1", "y"])
    assert (
        prompt_log(other_kind, ("class",), ["c0", "c1"], 100.0)["prompt_set_sha256"]
        == log["prompt_set_sha256"]
    )


def test_group_prompt_index_to_class_mapping():
    G = orthonormal(4, 16)  # prompts g = y*A + a: 0,1 -> class 0; 2,3 -> class 1
    rng = np.random.default_rng(0)
    g = rng.integers(0, 4, 200)
    Z = G[g] + 0.05 * rng.normal(size=(200, 16))
    prompts = [f"group {k}" for k in range(4)]
    # stored out of order on purpose: the head sorts by index
    order = [2, 0, 3, 1]
    s = text_split(Z, g // 2, g % 2, [prompts[k] for k in order], ["group"] * 4, order, G[order])
    head = heads.create("zeroshot", prompts="group").fit(s, empty_like(s))
    assert head.prompt_class_.tolist() == [0, 0, 1, 1]
    assert np.array_equal(head.predict(Z), g // 2)
    logits = head.decision_function(Z)
    np.testing.assert_allclose(logits[:, 1], 100 * np.max(unit(Z) @ G[2:].T, axis=1), atol=1e-4)


def test_zeroshot_refuses_missing_prompts_and_dim_mismatch():
    T = orthonormal(2, 8)
    s = text_split(np.ones((4, 8)), [0, 1, 0, 1], [0] * 4, ["a"], ["class"], [0], T[:1])
    assert "class" in heads.create("zeroshot").unmet(s, s)
    with pytest.raises(EmbedkitError, match="prompt"):
        heads.create("zeroshot").fit(s, empty_like(s))
    s = text_split(np.ones((4, 6)), [0, 1, 0, 1], [0] * 4, ["a", "b"], ["class"] * 2, [0, 1], T)
    with pytest.raises(EmbedkitError, match="post-projection"):
        heads.create("zeroshot").fit(s, empty_like(s))


# ---- text projections (spec 13 faithfulness tests a-d) -----------------------------------------


def test_a_orth_proj_P0_idempotent_symmetric_annihilates_spurious():
    S = unit(np.random.default_rng(0).normal(size=(8, 40)))
    P0 = tp.projection_P0(S)
    np.testing.assert_allclose(P0 @ P0, P0, atol=1e-10)
    np.testing.assert_allclose(P0, P0.T, atol=1e-12)
    np.testing.assert_allclose(S @ P0.T, 0, atol=1e-10)
    assert np.linalg.matrix_rank(P0) == 40 - 8


def planted_text_split(tmp_path, dim=48):
    path, _ = planted_cache(
        tmp_path / "p.h5", {"train": 400, "val": 200, "test": 800}, dim, text=True
    )
    c = Cache.open(path)
    return c.split("train"), c.split("val"), c.split("test")


def test_b_orth_cali_with_lambda_zero_equals_orth_proj(tmp_path):
    train, val, _ = planted_text_split(tmp_path)
    a = heads.create("orth_proj").fit(train, val)
    b = heads.create("orth_cali", lam=0.0).fit(train, val)
    np.testing.assert_allclose(a.text_, b.text_, atol=1e-10)
    c = heads.create("orth_cali").fit(train, val)
    assert (
        not np.allclose(a.text_, c.text_) and c.info_["n_pairs"] == 2
    )  # group prompts: one pair per class


def test_c_d_roboshot_sequential_equals_closed_forms_and_rejects():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 30))
    Qr, rank_r = tp.orthonormal_directions(unit(rng.normal(size=(4, 2, 30))))
    Qa, rank_a = tp.orthonormal_directions(unit(rng.normal(size=(3, 2, 30))))
    assert (rank_r, rank_a) == (4, 3)
    Xh = unit(X)
    np.testing.assert_allclose(
        tp.reject_sequential(X, Qr), unit(Xh @ (np.eye(30) - Qr.T @ Qr).T), atol=1e-6
    )
    np.testing.assert_allclose(
        tp.accept_sequential(X, Qa), unit(Xh @ (np.eye(30) + Qa.T @ Qa).T), atol=1e-6
    )
    both = tp.accept_sequential(tp.reject_sequential(X, Qr), Qa)
    closed = unit(Xh @ ((np.eye(30) + Qa.T @ Qa) @ (np.eye(30) - Qr.T @ Qr)).T)
    np.testing.assert_allclose(both, closed, atol=1e-6)
    # (d) no component left along any rejected direction v_k (nor its orthonormal basis)
    pairs = unit(rng.normal(size=(4, 2, 30)))
    Q, _ = tp.orthonormal_directions(pairs)
    rej = tp.reject_sequential(X, Q)
    np.testing.assert_allclose(rej @ (pairs[:, 0] - pairs[:, 1]).T, 0, atol=1e-10)


def test_qr_drops_dependent_directions():
    rng = np.random.default_rng(0)
    pairs = unit(rng.normal(size=(3, 2, 20)))
    dup = np.concatenate([pairs, pairs[:1]])  # the same concept twice
    Q, rank = tp.orthonormal_directions(dup)
    assert rank == 3 and Q.shape == (3, 20)


def test_projections_remove_the_planted_spurious_lean(tmp_path):
    train, val, test = planted_text_split(tmp_path)
    wga = {}
    for name, kw in [
        ("zeroshot", {}),
        ("orth_proj", {}),
        ("roboshot", {"mode": "reject"}),
        ("roboshot", {"mode": "both"}),
    ]:
        h = heads.create(name, **kw).fit(train, val)
        wga[name + kw.get("mode", "")] = metrics.evaluate_split(h.decision_function(test.Z), test)[
            "worst_group_acc"
        ]
    assert wga["orth_proj"] > wga["zeroshot"] + 0.1
    assert (
        wga["roboshotreject"] > wga["zeroshot"] + 0.1
        and wga["roboshotboth"] > wga["zeroshot"] + 0.1
    )
    h = heads.create("roboshot").fit(train, val)
    assert h.info_["reject_rank"] == 2 and h.info_["accept_rank"] == 1
    assert {p["kind"] for p in h.info_["prompts"]["prompts"]} == {"class", "reject", "accept"}


def test_textproj_unmet_names_missing_kind():
    T = orthonormal(2, 8)
    s = text_split(np.ones((4, 8)), [0, 1, 0, 1], [0] * 4, ["a", "b"], ["class"] * 2, [0, 1], T)
    assert "'attr'" in heads.create("orth_proj").unmet(s, s)
    assert "'reject'" in heads.create("roboshot").unmet(s, s)
    s = text_split(
        np.ones((4, 8)),
        [0, 1, 0, 1],
        [0] * 4,
        ["a", "b", "c"],
        ["class", "class", "attr"],
        [0, 1, 0],
        np.vstack([T, T[:1]]),
    )
    assert heads.create("orth_proj").unmet(s, s) is None
    assert "'candidate' or 'group'" in heads.create("textproj").unmet(s, s)


# ---- reference prompt files and storing prompts ------------------------------------------------


def test_reference_prompt_files():
    wb = tp.read_prompt_file("roboshot_waterbirds")
    kinds = [k for k, _, _ in wb]
    assert kinds.count("reject") == 20 and kinds.count("accept") == 12  # 10 + 6 pairs
    cel = tp.read_prompt_file("roboshot_celeba")
    assert [k for k, _, _ in cel].count("reject") == 22 and [k for k, _, _ in cel].count(
        "accept"
    ) == 6
    groups = [p for k, _, p in wb if k == "group"]
    assert groups[3] == "waterbird on water background"
    compat = [
        p
        for k, _, p in tp.read_prompt_file("roboshot_waterbirds", roboshot_compat=True)
        if k == "group"
    ]
    assert compat[3] == "landbird on water background"
    dv = tp.read_prompt_file("debias_vl_waterbirds")
    cand = [i for k, i, _ in dv if k == "candidate"]
    assert len(tp.within_class_pairs(cand)) == 20 and [k for k, _, _ in dv].count("attr") == 8
    dc = tp.read_prompt_file("debias_vl_celeba")
    assert tp.within_class_pairs([i for k, i, _ in dc if k == "candidate"]) == [(0, 1), (2, 3)]


def test_bad_prompt_file_names_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("class:0 | ok\nclass | no index\n")
    with pytest.raises(EmbedkitError, match=r"bad.txt:2"):
        tp.read_prompt_file(p)


def test_store_prompts_keeps_existing_and_embeds_only_new(tmp_path):
    path, arr = planted_cache(
        tmp_path / "p.h5", {"train": 40, "val": 20, "test": 20}, 16, text=True
    )
    before = Cache.open(path).text("planted")
    seen = []

    def encode(prompts):
        seen.extend(prompts)
        return np.tile(arr["u"], (len(prompts), 1))

    store_prompts(
        path,
        "planted",
        [("class", 0, before["prompts"][0]), ("candidate", 0, "new prompt")],
        encode,
    )
    after = Cache.open(path).text("planted")
    assert seen == ["new prompt"]
    assert (
        after["prompts"][: len(before["prompts"])] == before["prompts"]
        and after["prompts"][-1] == "new prompt"
    )
    np.testing.assert_array_equal(after["feats"][: len(before["prompts"])], before["feats"])
    assert after["kind"][-1] == "candidate"
