"""Shared SGD trainer benchmark: on a Waterbirds-size planted cache (train 4,795, val 1,199, test
5,794; D 2,048), the vectorised lr x wd grid (9 configs in one run) against the plain reference
(one nn.Linear + torch.optim.SGD per config, the same batches and evaluations) measured in the same
run, then fit seconds (wall and CPU) of every head built on the trainer, with their defaults.

    python bench/trainer.py [--dim 2048] [--threads 1] [--steps 1000] [--methods erm,jtt]

CPU seconds are the process time of the fit: with one thread they are what the fit costs a
dedicated core, whatever else runs on the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from embedkit import heads  # noqa: E402
from embedkit.schema import Split  # noqa: E402
from embedkit.heads.monitor import Monitor  # noqa: E402
from embedkit.heads.trainer import draw_indices, fit_grid, lr_wd_grid, sampler_cdf  # noqa: E402
from embedkit.metrics import evaluate_split  # noqa: E402
from embedkit.data.synthetic import WATERBIRDS_SIZES, planted_arrays  # noqa: E402

METHODS = [
    "erm",
    "rw_class",
    "rw_group",
    "rw_sqrt",
    "rs_class",
    "rs_group",
    "sub_class",
    "sub_group",
    "groupdro",
    "jtt",
    "afr",
]


def splits(dim: int, seed: int = 0):
    arr = planted_arrays(WATERBIRDS_SIZES, dim, seed=seed)
    out = []
    for code, name in enumerate(("train", "val", "test")):
        idx = np.flatnonzero(arr["split"] == code)
        out.append(
            Split(
                name=name,
                Z=arr["Z"][idx],
                y=arr["y"][idx],
                a=arr["a"][idx],
                ids=idx.astype(str),
                rows=idx.astype(np.int64),
                class_names=["landbird", "waterbird"],
                attr_names=["land", "water"],
            )
        )
    for s in out:
        s.train_group_counts = out[0].group_counts()
    return out


def reference_loop(train, val, test, grid, steps, eval_every, batch, seed):
    """One config at a time: nn.Linear, torch.optim.SGD (momentum 0.9, wd on the weight only)."""
    Z, y = torch.as_tensor(train.Z), torch.as_tensor(train.y)
    batches = torch.as_tensor(
        draw_indices(
            sampler_cdf(np.ones(len(y))), np.random.default_rng(seed).random((steps, batch))
        )
    )
    Zv, Zt = torch.as_tensor(val.Z), torch.as_tensor(test.Z)
    for cfg in grid:
        torch.manual_seed(seed)
        lin = torch.nn.Linear(Z.shape[1], val.n_classes)
        opt = torch.optim.SGD(
            [
                {"params": [lin.weight], "weight_decay": cfg["wd"]},
                {"params": [lin.bias], "weight_decay": 0.0},
            ],
            lr=cfg["lr"],
            momentum=0.9,
        )
        for step in range(1, steps + 1):
            idx = batches[step - 1]
            opt.zero_grad()
            F.cross_entropy(lin(Z[idx]), y[idx]).backward()
            opt.step()
            if step % eval_every == 0 or step == steps:
                with torch.no_grad():
                    evaluate_split(lin(Zv).numpy(), val), evaluate_split(lin(Zt).numpy(), test)


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    train, val, test = splits(args.dim)
    print(
        f"trainer bench: train {len(train)}, val {len(val)}, test {len(test)}, D {args.dim}, "
        f"threads {args.threads}, steps {args.steps}"
    )
    grid = lr_wd_grid()
    fit_grid(train.Z, train.y, grid, steps=20, eval_every=20)  # warm-up
    _, w_vec, c_vec = timed(
        lambda: fit_grid(
            train.Z,
            train.y,
            grid,
            val=val,
            monitor=Monitor({"test": test}),
            rule="val_wga",
            steps=args.steps,
            eval_every=100,
            threads=args.threads,
        )
    )
    _, w_ref, c_ref = timed(lambda: reference_loop(train, val, test, grid, args.steps, 100, 128, 0))
    print(
        f"lr x wd grid (9 configs): vectorised {w_vec:.2f}s wall {c_vec:.2f}s cpu | per-config loop "
        f"{w_ref:.2f}s wall {c_ref:.2f}s cpu | ratio (cpu) {c_vec / c_ref:.2f}"
    )
    total = 0.0
    for name in args.methods.split(","):
        head, w, c = timed(
            lambda: heads.create(name, seed=0, threads=args.threads).fit(
                train, val, Monitor({"test": test})
            )
        )
        total += c
        s = head.selected_
        print(
            f"{name:10s} fit {w:6.2f}s wall {c:6.2f}s cpu  configs {head.info_['grid_size']:4d}  "
            f"val WGA {s['score']:.3f}  selected {s['config']} step {s['step']}"
        )
    print(f"sum over these heads: {total:.1f}s cpu per seed, {3 * total:.1f}s for 3 seeds")


if __name__ == "__main__":
    main()
