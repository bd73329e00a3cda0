"""embedkit side of the parity runs (issue 11 (a)). Run with PYTHONPATH=<embedkit root> (the project
root).

    PYTHONPATH=/work/main python bench/parity/embedkit_side.py --cache waterbirds_like

1. Loads the cache's train/val/test arrays with embedkit's own loader and writes them to
   arrays_<cache>.npz (the official scripts read only this file, so both sides see the same arrays).
2. HSFM start: the cache's stored ERM head is the ResNet-20's 10-way CIFAR-10 head (10 x 64), not a
   2-class head, so embedkit's `init=auto` would fit an `erm` probe on train first. We fit that
   probe once (seed 0, selected on val) and give the SAME (W0, b0) to both sides: embedkit through
   `init=stored` on a copy of the train split whose erm_head is (W0, b0); the official code through
   its ERM checkpoint's fc layer.
3. embedkit HSFM, paper protocol: val_split_for_hard=0 (hard set and selection on all of val),
   preset waterbirds, a fixed alpha; seeds 0..n-1. Test WGA from head.predict on test (test never
   enters fit).
4. embedkit AFR: stage1=fit (ERM on a seeded 80 % of train), allow_seen_rows=True, the given
   gamma x lambda grid, lr_scale_grid=1 (the paper's lr), 500 epochs. Its stage-1 head and held-out
   rows are saved per seed so the official stage 2 starts from the same head on the same rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(os.environ.get("PARITY_DIR", Path(__file__).resolve().parent))
RESULTS = Path(os.environ.get("PARITY_RESULTS", HERE / "results"))


def wga(pred, y, g) -> tuple[float, float]:
    accs = [float((pred[g == k] == y[g == k]).mean()) for k in np.unique(g)]
    return min(accs), float((pred == y).mean())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="waterbirds_like")
    ap.add_argument("--cache-dir", default=os.environ.get("EMBEDKIT_TEST_CACHE", "cache/test"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=1e-3)
    ap.add_argument("--gamma", default="4,12,20")
    ap.add_argument("--lam", default="0,0.1,0.2,0.3")
    ap.add_argument("--afr-lr", type=float, default=1e-2)
    ap.add_argument("--afr-epochs", type=int, default=500)
    ap.add_argument("--only", default="hsfm,afr")
    ap.add_argument("--tag", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)

    import embedkit
    from embedkit import heads, runs

    root = Path(embedkit.__file__).resolve().parents[1]
    commit = (
        os.environ.get("EK_COMMIT")
        or subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    )
    path = sorted(glob.glob(f"{a.cache_dir}/{a.cache}-*.h5"))[0]
    cache, train, val, test = runs.load_splits(path)
    out_dir = Path(os.environ.get("PARITY_ARRAYS", HERE / "arrays"))
    out_dir.mkdir(exist_ok=True)
    arrays = out_dir / f"arrays_{a.cache}.npz"

    # (2) the shared HSFM start: embedkit's erm probe, seed 0.
    probe = heads.create("erm", seed=0).fit(train, val)
    W0, b0 = np.asarray(probe.coef_, np.float32), np.asarray(probe.intercept_, np.float32)
    save = dict(
        tr_Z=train.Z,
        tr_y=train.y,
        tr_g=train.g,
        tr_rows=train.rows,
        va_Z=val.Z,
        va_y=val.y,
        va_g=val.g,
        te_Z=test.Z,
        te_y=test.y,
        te_g=test.g,
        hsfm_W0=W0,
        hsfm_b0=b0,
    )
    if arrays.exists():  # keep the other head's per-seed arrays from an earlier --only run
        old = dict(np.load(arrays))
        save = {**old, **save}
    res = {
        "cache": path,
        "embedkit_root": str(root),
        "embedkit_commit": commit,
        "alpha": a.alpha,
        "hsfm": [],
        "afr": [],
        "afr_grid": {"gamma": a.gamma, "lam": a.lam, "lr": a.afr_lr, "epochs": a.afr_epochs},
    }
    start_pred = (test.Z @ W0.T + b0).argmax(1)
    res["hsfm_start_test_wga"] = wga(start_pred, test.y, test.g)[0]
    res["hsfm_start_val_wga"] = wga((val.Z @ W0.T + b0).argmax(1), val.y, val.g)[0]

    if "hsfm" in a.only:
        tr_stored = dataclasses.replace(train, erm_head=(W0, b0))
        for s in range(a.seeds):
            t = time.time()
            h = heads.create(
                "hsfm",
                seed=s,
                preset="waterbirds",
                val_split_for_hard=0,
                alpha=a.alpha,
                init="stored",
            )
            h.fit(tr_stored, val)
            w, m = wga(h.predict(test.Z), test.y, test.g)
            sup = np.searchsorted(train.rows, h.artifacts_["support_rows"])
            assert (train.rows[sup] == h.artifacts_["support_rows"]).all()
            save[f"hsfm_support_{s}"] = (
                sup  # lets hsfm_official.py --aligned use the same support rows
            )
            res["hsfm"].append(
                {
                    "seed": s,
                    "test_wga": w,
                    "test_mean": m,
                    "val_wga": h.info_.get("val_wga"),
                    "best_epoch": h.info_.get("best_epoch"),
                    "init": h.info_.get("init"),
                    "selected": {k: h.selected_.get(k) for k in ("step", "split", "score")},
                    "seconds": time.time() - t,
                }
            )
            print("embedkit hsfm", res["hsfm"][-1], flush=True)

    if "afr" in a.only:
        gam = [float(x) for x in a.gamma.split(",")]
        lam = [float(x) for x in a.lam.split(",")]
        for s in range(a.seeds):
            t = time.time()
            h = heads.create(
                "afr",
                seed=s,
                gamma_grid=gam,
                lam_grid=lam,
                lr=a.afr_lr,
                lr_scale_grid=[1.0],
                epochs=a.afr_epochs,
                allow_seen_rows=True,
            )
            h.fit(train, val)
            w, m = wga(h.predict(test.Z), test.y, test.g)
            hold_rows = np.asarray(h.artifacts_["train_holdout_rows"])
            pos = np.searchsorted(train.rows, hold_rows)
            assert (train.rows[pos] == hold_rows).all()
            save[f"afr_hold_{s}"] = pos
            save[f"afr_W0_{s}"] = np.asarray(h.artifacts_["stage1_coef"], np.float32)
            save[f"afr_b0_{s}"] = np.asarray(h.artifacts_["stage1_intercept"], np.float32)
            sel = h.selected_
            res["afr"].append(
                {
                    "seed": s,
                    "test_wga": w,
                    "test_mean": m,
                    "selected": {k: sel.get(k) for k in ("config", "step", "split", "score")},
                    "n_holdout": int(len(pos)),
                    "seconds": time.time() - t,
                }
            )
            print("embedkit afr", res["afr"][-1], flush=True)
    np.savez(arrays, **save)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"embedkit_{a.only.replace(',', '+')}_{a.cache}{a.tag}.json").write_text(
        json.dumps(res, indent=1, default=str)
    )


if __name__ == "__main__":
    main()
