"""Cache read/write benchmark (issue 2).

Writes a 200,000 x 1,024 matrix through the cache (float32 and float16) and as a raw .npy, then
prints, from the same run, the read throughput of `cache.split(...).Z` as a ratio to `np.load`
of the .npy (target >= 0.8) and the file size as a ratio to the raw bytes (target <= 1.02).
Reads are timed best-of-3 with a warm page cache on both sides; the ratio compares reads of the
stored dtype (`split(..., dtype=None)`), and a second float16 line compares the float32 view heads
use against `np.load(...).astype(np.float32)`.

    python bench/cache_io.py [--rows 200000] [--dim 1024]
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from embedkit.cache import Cache, write_cache

from embedkit.schema import Samples


def best_of(fn, n=3):
    times = []
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
        del out
    return min(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--dir", default=None, help="scratch folder (default: a temp dir)")
    args = ap.parse_args()
    n, d = args.rows, args.dim
    rng = np.random.default_rng(0)
    Z = rng.standard_normal((n, d), dtype=np.float32)
    # Every row in train: the split read and np.load then move the same bytes.
    samples = Samples(
        uid=np.char.add("r", np.arange(n).astype(str)),
        split=np.zeros(n, np.uint8),
        y=rng.integers(0, 2, n),
        a=rng.integers(0, 2, n),
        class_names=["c0", "c1"],
        attr_names=["a0", "a1"],
        dataset="bench",
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        for dtype in ("float32", "float16"):
            M = Z.astype(dtype)
            raw = tmp / f"raw_{dtype}.npy"
            t = time.perf_counter()
            np.save(raw, M)
            t_npy_w = time.perf_counter() - t
            path = tmp / f"cache_{dtype}.h5"
            t = time.perf_counter()
            write_cache(path, samples, "bench", M, dtype=dtype)
            t_h5_w = time.perf_counter() - t
            cache = Cache.open(path)
            t_npy = best_of(lambda: np.load(raw))
            t_h5 = best_of(lambda: cache.split("train", dtype=None).Z)
            size_ratio = os.path.getsize(path) / M.nbytes
            gb = M.nbytes / 1e9
            print(
                f"cache_io {dtype} {n}x{d}: write cache {t_h5_w:.2f}s npy {t_npy_w:.2f}s | "
                f"read cache.split().Z {gb / t_h5:.2f} GB/s vs np.load {gb / t_npy:.2f} GB/s "
                f"-> read ratio {t_npy / t_h5:.2f} (target >= 0.8) | "
                f"file size ratio {size_ratio:.4f} (target <= 1.02)"
            )
            if dtype == "float16":
                # What heads load: float32 (methods spec 0.1). Reference: np.load then cast.
                t_ref = best_of(lambda: np.load(raw).astype(np.float32))
                t_cast = best_of(lambda: cache.split("train").Z)
                print(
                    f"cache_io float16->float32 {n}x{d}: cache.split().Z {t_cast:.3f}s vs "
                    f"np.load().astype(float32) {t_ref:.3f}s -> ratio {t_ref / t_cast:.2f}"
                )
            os.remove(raw)
            os.remove(path)


if __name__ == "__main__":
    main()
