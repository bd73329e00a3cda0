"""Head benchmark (issue 5): fit seconds per head on planted-spurious caches of Waterbirds size
(train 4,795, val 1,199, test 5,794; D 2,048; Waterbirds group counts) and, with
--sizes waterbirds,celeba, CelebA size (162,770 / 19,867 / 19,962; D 2,048; CelebA Blond_Hair x
Male group counts); DFR's time as a ratio to the plain scikit-learn reference protocol
(tests/test_dfr.py) measured in the same run; and the full default sweep (every head of
`embedkit.heads.DEFAULT_SWEEP`, 3 seeds) on the Waterbirds-size cache, serially and in --jobs
worker processes, with the ratio. Issue 14's heads (LLR variants, DPE, SELF variants) are timed
too, and DPE with the package's protocol is timed against the published `dpe` package on the
same arrays in the same run, with both test WGAs (`--dpe-cache` adds a real cache).

    python bench/heads.py [--sizes waterbirds,celeba] [--dim 2048] [--seeds 0,1,2] [--no-sweep]
                          [--jobs 2] [--no-serial] [--methods a,b] [--dpe-cache CACHE.h5]

A head added to DEFAULT_SWEEP is benchmarked without changes here. Heads that cannot run on the
cache (or are not implemented yet) print their reason instead of a time.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from embedkit import heads, runs  # noqa: E402
from embedkit.data.synthetic import (
    CELEBA_GROUPS,
    CELEBA_SIZES,
    WATERBIRDS_GROUPS,
    WATERBIRDS_SIZES,
    planted_cache,
)  # noqa: E402


# The independent reference implementations live with their equality tests.
def _load_test_module(name, file):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


dfr_reference = _load_test_module("dfr_reference", "test_dfr.py")
dpe_reference = _load_test_module(
    "dpe_reference", "test_dpe.py"
)  # run_package: the published `dpe`

# Issue 14's heads and their variants, timed beside the default sweep.
NEW_HEADS = [
    "llr",
    "cb_llr",
    "cb_llr_upsampling",
    "cb_llr_upweighting",
    "cb_llr_mixture",
    "gb_llr",
    "dpe",
    "self",
    "self_dropout_disagreement",
    "self_es_misclassification",
    "self_misclassification",
    "self_random",
]


def make_cache(folder, name, sizes, groups, dim, seed=0):
    t0 = time.perf_counter()
    path, _ = planted_cache(
        Path(folder) / f"{name}.h5", sizes, dim, seed=seed, erm_head=True, text=True, groups=groups
    )
    return path, time.perf_counter() - t0


def fit_seconds(path, methods, seed=0):
    """One fit per head (seed 0): fit seconds, or the reason it did not run."""
    out = {}
    splits = runs.load_splits(path)
    cache, train, val, test = splits
    for m in methods:
        try:
            head = heads.create(m, seed=seed)
            why = runs.unmet_needs(head, train, val, runs.regime(train, val))
            if why:
                out[m] = f"skipped ({why})"
                continue
            t0 = time.perf_counter()
            head.fit(train, val)
            out[m] = time.perf_counter() - t0
        except ImportError as e:
            out[m] = f"unavailable ({e})"
        except Exception as e:  # report and go on: a benchmark lists every head
            out[m] = f"error ({type(e).__name__}: {e})"
    return out, splits


def dfr_vs_reference(splits, repeats=5, seed=0):
    """The reference protocol and DFR interleaved in ABBA order `repeats` times; best wall time and
    best CPU time of this process (less sensitive to other users of a shared machine) of each."""
    _, train, val, _ = splits
    runs_ = {
        "ref": lambda: dfr_reference.reference_dfr_val(val.Z, val.y, val.g, seed),
        "dfr": lambda: heads.create("dfr", seed=seed).fit(train, val),
    }
    wall = {k: [] for k in runs_}
    cpu = {k: [] for k in runs_}
    out = {}
    for i in range(repeats):
        for k in list(runs_) if i % 2 == 0 else list(runs_)[::-1]:
            w0, c0 = time.perf_counter(), time.process_time()
            out[k] = runs_[k]()
            wall[k].append(time.perf_counter() - w0)
            cpu[k].append(time.process_time() - c0)
    C, coef = out["ref"][0], out["ref"][1]
    diff = float(np.max(np.abs(out["dfr"].coef_std_ - coef)))
    return (
        {k: min(v) for k, v in wall.items()},
        {k: min(v) for k, v in cpu.items()},
        out["dfr"].info_["C"] == C,
        diff,
    )


def dpe_vs_package(splits, seed=0, num_stages=15):
    """embedkit's dpe with the package's protocol and the published package on the same val/test
    arrays, one fit each in this process: (wall seconds, test WGA) per side, or a reason."""
    from embedkit import metrics

    try:
        import dpe  # noqa: F401
        import netcal  # noqa: F401
    except ImportError as e:
        return f"published dpe package not importable ({e}); pip install dpe pandas && pip install --no-deps netcal"
    _, train, val, test = splits
    t0 = time.perf_counter()
    ours = heads.create("dpe", seed=seed, protocol="package", num_stages=num_stages).fit(train, val)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    probs = dpe_reference.run_package(val, test, seed=seed, num_stages=num_stages)
    t_pkg = time.perf_counter() - t0
    wga = lambda logits: metrics.evaluate_split(logits, test)["worst_group_acc"]
    return {
        "embedkit": (t_ours, wga(ours.decision_function(test.Z))),
        "package": (t_pkg, wga(np.log(probs))),
    }


def print_dpe_vs_package(splits, label):
    res = dpe_vs_package(splits)
    if isinstance(res, str):
        print(f"  DPE vs the published package ({label}): {res}")
        return
    (t_e, w_e), (t_p, w_p) = res["embedkit"], res["package"]
    print(
        f"  DPE (protocol=package, 15 stages) vs the published dpe 0.2.0 on {label}: wall {t_e:.2f} s vs "
        f"{t_p:.2f} s -> ratio {t_e / t_p:.3f}; test WGA {w_e:.3f} (embedkit) vs {w_p:.3f} (package)"
    )


def timed_sweep(path, methods, seeds, out, jobs):
    t0 = time.perf_counter()
    entries = runs.sweep(path, methods, seeds, out, jobs=jobs, log=lambda s: None)
    return entries, time.perf_counter() - t0


def full_sweep(path, methods, seeds, tmp, jobs, no_serial=False):
    """The full default sweep in this process (torch's default threads) and, with jobs > 1, in
    `jobs` worker processes of cpu_count // jobs threads each; a wall-time line per mode."""
    modes = ([] if no_serial else [1]) + ([jobs] if jobs > 1 else [])
    walls, tables = {}, {}
    for j in modes:
        entries, walls[j] = timed_sweep(path, methods, seeds, tmp / f"sweep_jobs{j}", j)
        ok = sum("metrics" in e for e in entries)
        skipped = sorted({f"{e['method']} ({e['status']})" for e in entries if "status" in e})
        how = (
            "serial, one process"
            if j == 1
            else f"--jobs {j} ({len(entries)} runs in {j} processes)"
        )
        print(
            f"  full default sweep ({how}): {len(methods)} heads x {len(seeds)} seeds: "
            f"{walls[j]:.1f} s (target < 300 s on 2 cores); {ok} runs fitted"
            + (f"; not run: {', '.join(skipped)}" if skipped else "")
        )
        tables[j] = runs.results_table(runs.collect(tmp / f"sweep_jobs{j}"))
    if len(walls) == 2:
        diff = max(
            abs((a["test_wga_mean"] or 0) - (b["test_wga_mean"] or 0))
            for a, b in zip(tables[1], tables[jobs], strict=True)
        )
        print(
            f"  --jobs {jobs} vs serial: wall {walls[jobs]:.1f} s vs {walls[1]:.1f} s -> ratio "
            f"{walls[jobs] / walls[1]:.2f}; max |test WGA mean diff| {100 * diff:.2f} points "
            "(thread counts differ, so equality is not bitwise here)"
        )
    print()
    print(runs.markdown_table(tables[modes[-1]]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--sizes",
        default="waterbirds",
        help="comma-separated: waterbirds, celeba (1.7 GB of features)",
    )
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--seeds", default="0,1,2", help="seeds of the full sweep")
    p.add_argument(
        "--methods", default="all", help="heads to time (default: embedkit.heads.DEFAULT_SWEEP)"
    )
    p.add_argument("--no-sweep", action="store_true", help="skip the full 3-seed sweep")
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="also run the full sweep in this many worker processes (1: serial only)",
    )
    p.add_argument("--no-serial", action="store_true", help="time only the --jobs sweep")
    p.add_argument(
        "--dpe-cache",
        default=None,
        help="also compare DPE with the published package on this cache",
    )
    args = p.parse_args(argv)
    methods = list(heads.DEFAULT_SWEEP) if args.methods == "all" else args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    print(
        f"bench/heads.py: {os.cpu_count()} CPU cores visible, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
    known = {
        "waterbirds": ("waterbirds_size", WATERBIRDS_SIZES, WATERBIRDS_GROUPS),
        "celeba": ("celeba_size", CELEBA_SIZES, CELEBA_GROUPS),
    }
    sizes = [known[k.strip()] for k in args.sizes.split(",")]
    if args.dpe_cache:
        print(f"\n[{Path(args.dpe_cache).name}]")
        print_dpe_vs_package(runs.load_splits(args.dpe_cache), Path(args.dpe_cache).name)
    with tempfile.TemporaryDirectory() as tmp:
        for name, sz, groups in sizes:
            path, t_make = make_cache(tmp, name, sz, groups, args.dim)
            print(
                f"\n[{name}] train {sz['train']}, val {sz['val']}, test {sz['test']}, D {args.dim}, group counts "
                f"{'/'.join(str(n) for n in groups['train'])} on train (planted cache written in {t_make:.1f} s)"
            )
            secs, splits = fit_seconds(path, methods + [m for m in NEW_HEADS if m not in methods])
            for m, v in secs.items():
                print(f"  fit {m:<10} " + (f"{v:8.2f} s" if isinstance(v, float) else v))
            if (
                name == "waterbirds_size"
            ):  # the package evaluates every epoch in pandas: minutes on CPU
                print_dpe_vs_package(splits, f"the {name} cache")
            wall, cpu, same_c, diff = dfr_vs_reference(
                splits, repeats=5 if name == "waterbirds_size" else 2
            )
            print(
                f"  DFR (dfr_val, 7 C + 20 refits) vs the plain scikit-learn protocol: wall {wall['dfr']:.2f} s vs "
                f"{wall['ref']:.2f} s -> ratio {wall['dfr'] / wall['ref']:.2f}; CPU {cpu['dfr']:.2f} s vs "
                f"{cpu['ref']:.2f} s -> ratio {cpu['dfr'] / cpu['ref']:.2f} (target <= 1.0); same C: {same_c}; "
                f"max |coef diff| {diff:.1e}"
            )
            del splits
            if name == "waterbirds_size" and not args.no_sweep:
                full_sweep(path, methods, seeds, Path(tmp), args.jobs, args.no_serial)


if __name__ == "__main__":
    main()
