"""The extractor on real CIFAR-10 with the real ResNet-20: determinism, equality with a direct
forward pass, the published JPEG accuracy, kill-and-resume, job-array shards, torchrun ranks;
open_clip image + text towers; unreadable images flagged, never dropped."""

import io
import os
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from embedkit import backbones
from embedkit.backbones.resnet_cifar import build_resnet_cifar
from embedkit.cache import Cache
from embedkit.data.base import ImageDataset
from embedkit.data.images import open_image
from embedkit.errors import EmbedkitError
from embedkit.extract import Layout, extract
from tests.conftest import DATA, ROOT, need_data

R20 = "resnet20-12fca82f.th"
KEY = f"resnet_cifar:20:{R20}"
BATCH = 32
SUBSET = {"max_per_class": 50}  # the first 50 test files of each class: 500 images


def _spec():
    return f"resnet_cifar:20:{need_data('weights', 'resnet_cifar', R20)}"


def _cifar(**opts):
    need_data("cifar10", "test.tar")
    from embedkit import data

    return data.create("cifar10", DATA, **opts)


def _arrays(path, key=KEY):
    c = Cache.open(path)
    s = c.samples()
    import h5py

    with h5py.File(path, "r") as f:
        g = f["embeddings"][key]
        return s, g["feats"][()], g["logits"][()] if "logits" in g else None


def _assert_same_cache(a, b, key=KEY):
    sa, fa, la = _arrays(a, key)
    sb, fb, lb = _arrays(b, key)
    assert sa.same_rows(sb) and np.array_equal(sa.valid, sb.valid)
    assert len(set(sb.uid)) == len(sb.uid)
    assert np.array_equal(fa, fb) and np.array_equal(la, lb)


def _cli_env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted single-process run over the 500 images: what every other run must equal."""
    out = tmp_path_factory.mktemp("ref") / "cifar500.h5"
    res = extract(
        _cifar(**SUBSET),
        _spec(),
        out,
        splits=["test"],
        batch_size=BATCH,
        workers=1,
        device="cpu",
        part_rows=128,
    )
    assert res.path == out and res.n_parts == 4 and not res.parts_skipped
    return out


# -- layout -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,b,w,part",
    [
        (500, 32, 1, 128),
        (500, 32, 2, 128),
        (1000, 7, 3, 50),
        (5, 64, 4, 10),
        (10_000, 256, 8, 16384),
    ],
)
def test_layout_covers_every_row_once_on_batch_boundaries(n, b, w, part):
    lay = Layout.plan(n, b, w, part)
    parts = [p for worker in range(w) for p in lay.parts_of(worker, w)]
    assert parts == list(range(lay.n_parts))  # contiguous blocks, in order
    ranges = [lay.rows(p) for p in parts]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(r0[1] == r1[0] for r0, r1 in zip(ranges, ranges[1:])) and all(
        lo < hi for lo, hi in ranges
    )
    assert all(lo % b == 0 for lo, _ in ranges)


# -- the real ResNet-20 on real CIFAR-10 ---------------------------------------------------------


def test_resnet20_cifar500_deterministic_and_equal_to_direct_forward(reference, tmp_path):
    s, feats, logits = _arrays(reference)
    prov = Cache.open(reference).provenance(KEY)
    assert feats.shape == (500, 64) and feats.dtype == np.float32 and logits.shape == (500, 10)
    assert prov["weights_sha256"].startswith("12fca82f") and prov["random_init"] is False
    assert prov["n_invalid"] == 0 and prov["timing_json"]["rows"] == 500
    assert prov["bottleneck"] in ("data", "model", "write") and prov["images_per_s"] > 0
    # Two runs are bitwise equal.
    again = tmp_path / "again.h5"
    extract(
        _cifar(**SUBSET),
        _spec(),
        again,
        splits=["test"],
        batch_size=BATCH,
        workers=0,
        device="cpu",
        part_rows=500,
    )
    _assert_same_cache(reference, again)
    # Equal to a direct forward pass over the same images in the same row order: a plain model
    # loaded from the checkpoint by hand, NCHW, with the NOTES.md preprocessing written out.
    ds = _cifar(**SUBSET)
    rows = np.flatnonzero(ds.samples().split == 2)
    assert list(ds.samples().uid[rows]) == list(s.uid)
    ck = torch.load(
        need_data("weights", "resnet_cifar", R20), map_location="cpu", weights_only=True
    )
    model = build_resnet_cifar(20)
    model.load_state_dict(
        {k[len("module.") :].replace("linear.", "fc."): v for k, v in ck["state_dict"].items()}
    )
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = torch.stack(
        [torch.from_numpy(np.asarray(ds.load(i), np.float32) / 255).permute(2, 0, 1) for i in rows]
    )
    with torch.no_grad():
        direct = model.eval().forward_features((x - mean[:, None, None]) / std[:, None, None])
        direct_logits = model.fc(direct)
    assert np.allclose(feats, direct.numpy(), atol=1e-5) and np.allclose(
        logits, direct_logits.numpy(), atol=1e-4
    )
    assert np.array_equal(logits.argmax(1), direct_logits.numpy().argmax(1))
    W, b = Cache.open(reference).head(KEY)
    assert np.array_equal(W, model.fc.weight.detach().numpy()) and np.array_equal(
        b, model.fc.bias.detach().numpy()
    )


@pytest.mark.slow
def test_resnet20_own_head_reaches_readme_jpeg_accuracy(tmp_path):
    """Data README: ResNet-20 scores 81.0% on the 10,000 JPEG test images (81.03% in NOTES.md)."""
    out = tmp_path / "cifar10_test.h5"
    extract(_cifar(), _spec(), out, splits=["test"], batch_size=500, workers=1, device="cpu")
    test = Cache.open(out).split("test")
    assert len(test) == 10_000 and test.Z.shape == (10_000, 64)
    acc = 100 * float((test.logits.argmax(1) == test.y).mean())
    assert abs(acc - 81.03) <= 1.0, acc
    W0, b0 = test.erm_head
    assert np.array_equal((test.Z @ W0.T + b0).argmax(1), test.logits.argmax(1))


def test_shards_of_a_job_array_merge_to_the_single_run(reference, tmp_path):
    out = tmp_path / "sharded.h5"
    first = extract(
        _cifar(**SUBSET),
        _spec(),
        out,
        splits=["test"],
        batch_size=BATCH,
        workers=0,
        device="cpu",
        part_rows=128,
        shard="0/2",
    )
    assert first.path is None and not out.exists() and "merges them" in first.message
    second = extract(
        _cifar(**SUBSET),
        _spec(),
        out,
        splits=["test"],
        batch_size=BATCH,
        workers=0,
        device="cpu",
        part_rows=128,
        shard=(1, 2),
    )
    assert second.path == out and not (tmp_path / "sharded.h5.shards").exists()
    assert sorted(first.parts_done + second.parts_done) == list(range(first.n_parts))
    _assert_same_cache(reference, out)
    # The same configuration again: nothing to do; another one for the same key: refused.
    assert (
        "nothing to do"
        in extract(
            _cifar(**SUBSET),
            _spec(),
            out,
            splits=["test"],
            batch_size=BATCH,
            workers=0,
            device="cpu",
        ).message
    )
    with pytest.raises(EmbedkitError, match="already exists from another configuration"):
        extract(
            _cifar(**SUBSET),
            _spec(),
            out,
            splits=["test"],
            batch_size=BATCH,
            workers=0,
            device="cpu",
            precision="bf16",
        )


def test_second_backbone_joins_a_cache_of_the_same_samples(reference, tmp_path):
    out = tmp_path / "two.h5"
    out.write_bytes(reference.read_bytes())
    extract(
        _cifar(**SUBSET),
        _spec(),
        out,
        splits=["test"],
        batch_size=BATCH,
        workers=0,
        device="cpu",
        layer="layer2",
    )
    c = Cache.open(out)
    assert sorted(c.backbones()) == sorted([KEY, f"{KEY}@layer2"])
    assert c.split("test", f"{KEY}@layer2").Z.shape == (500, 32)
    with pytest.raises(EmbedkitError, match="holds different samples"):
        extract(
            _cifar(max_per_class=40),
            _spec(),
            out,
            splits=["test"],
            batch_size=BATCH,
            workers=0,
            device="cpu",
        )


@pytest.mark.slow
def test_kill_after_first_part_then_resume_equals_uninterrupted(reference, tmp_path):
    out = tmp_path / "killed.h5"
    cmd = [
        sys.executable,
        "-m",
        "embedkit",
        "extract",
        "--dataset",
        "cifar10",
        "--root",
        str(DATA),
        "--dataset-opt",
        "max_per_class=50",
        "--splits",
        "test",
        "--backbone",
        _spec(),
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
    shards = tmp_path / "killed.h5.shards" / KEY
    proc = subprocess.Popen(cmd, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (shards / "part-00000-of-00016.h5").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in shards.glob("part-*.h5"))
    assert not out.exists() and 1 <= len(done) < 16, done
    resumed = subprocess.run(cmd, env=_cli_env(), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resume: {len(done)} finished part(s) of 16" in resumed.stderr
    _assert_same_cache(reference, out)


@pytest.mark.slow
def test_torchrun_two_ranks_equal_single_process(reference, tmp_path):
    out = tmp_path / "ddp.h5"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "embedkit",
        "extract",
        "--dataset",
        "cifar10",
        "--root",
        str(DATA),
        "--dataset-opt",
        "max_per_class=50",
        "--splits",
        "test",
        "--backbone",
        _spec(),
        "--out",
        str(out),
        "--batch-size",
        str(BATCH),
        "--part-rows",
        "128",
        "--workers",
        "0",
        "--device",
        "cpu",
    ]
    run = subprocess.run(cmd, env=_cli_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    prov = Cache.open(out).provenance(KEY)
    assert prov["n_parts"] == 4 and prov["merged_from"] == 4
    _assert_same_cache(reference, out)


# -- a small in-memory dataset: bad images and the open_clip towers ------------------------------


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


class TinyImages(ImageDataset):
    """n RGB 32x32 images as PNG bytes; rows in `broken` hold truncated bytes (a real decode
    error)."""

    name = "tiny_images"
    description = "test images in memory"

    def __init__(self, n=32, broken=()):
        self.n, self.broken = n, set(broken)
        super().__init__()

    def _setup(self):
        rng = np.random.default_rng(0)
        self.blobs = [
            _png(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(self.n)
        ]
        for i in self.broken:
            self.blobs[i] = self.blobs[i][:40]
        idx = np.arange(self.n)
        self._finish(
            [f"img{i:03d}.png" for i in idx],
            idx % 3,
            idx % 2,
            (idx // 2) % 2,
            ["cat", "dog"],
            ["indoor", "outdoor"],
        )

    def load(self, i):
        return open_image(self.blobs[i], name=f"tiny/img{i:03d}.png")


def test_unreadable_images_are_flagged_counted_and_kept(tmp_path):
    ds = TinyImages(24, broken=(3, 10))
    out = tmp_path / "bad.h5"
    res = extract(ds, _spec(), out, batch_size=8, workers=0, device="cpu")
    assert res.n_invalid == 2 and "img003.png" in res.invalid_examples[0]
    c = Cache.open(out)
    s = c.samples()
    assert len(s) == 24 and c.provenance(KEY)["n_invalid"] == 2
    assert sorted(s.uid[~s.valid]) == ["img003.png", "img010.png"]
    _, feats, logits = _arrays(out)
    assert not feats[~s.valid].any() and not logits[~s.valid].any() and feats[s.valid].any()
    assert c.info()["splits"]["train"]["invalid"] == 1 and c.info()["splits"]["val"]["invalid"] == 1
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert len(c.split("train")) == 7
    assert "1 invalid rows" in str(w[0].message)
    with pytest.raises(EmbedkitError, match=r"uid img003\.png.*--strict"):
        extract(
            ds, _spec(), tmp_path / "strict.h5", batch_size=8, workers=0, device="cpu", strict=True
        )


def test_openclip_image_and_text_towers_random_init(tmp_path):
    prompts = tmp_path / "pets.txt"
    prompts.write_text(
        "# tags are class or attribute names\ncat | a photo of a cat.\ndog | a photo of a dog.\n"
        "indoor | a photo taken indoors.\noutdoor | a photo taken outdoors.\n",
        encoding="utf-8",
    )
    with pytest.raises(EmbedkitError, match="--allow-random-init"):
        extract(
            TinyImages(), "openclip:ViT-S-32-alt:random", tmp_path / "x.h5", workers=0, device="cpu"
        )
    bb = backbones.create("openclip:ViT-S-32-alt:random", allow_random_init=True)
    ds = TinyImages(32)
    out = tmp_path / "clip.h5"
    extract(ds, bb, out, batch_size=16, workers=0, device="cpu", prompts=[str(prompts)])
    c = Cache.open(out)
    key = "openclip:ViT-S-32-alt:random-init"
    prov = c.provenance(key)
    assert (
        prov["random_init"] is True and prov["normalised"] is False and prov["weights_sha256"] == ""
    )
    s, feats, logits = _arrays(out, key)
    assert feats.shape == (32, 256) and feats.dtype == np.float16 and logits is None
    order = [int(u[3:6]) for u in s.uid]
    x = torch.stack([bb.transform(ds.load(i)) for i in order])
    assert np.allclose(feats, bb.features(x)[0].numpy().astype(np.float16), atol=2e-3)
    text = c.text(key)
    assert text["prompts"][0] == "a photo of a cat." and text["kind"] == [
        "class",
        "class",
        "attr",
        "attr",
    ]
    assert list(text["index"]) == [0, 1, 0, 1] and text["feats"].shape == (4, 256)
    assert np.allclose(text["feats"], bb.encode_text(text["prompts"]), atol=1e-5)
    assert text["attrs"]["random_init"] is True
    with pytest.raises(EmbedkitError, match="text tower"):
        extract(ds, _spec(), tmp_path / "y.h5", workers=0, device="cpu", prompts=[str(prompts)])
