"""Official HSFM (ArianYp/Feature-Space-Meta-Learning @ 996e64d, code/train_hsfm.py) on in-memory
features. No embedkit import: it reads arrays/arrays_<cache>.npz written by embedkit_side.py.

    python bench/parity/hsfm_official.py --cache waterbirds_like --alpha 1e-3 --seeds 3

The module is imported unchanged from official/hsfm/code (a `git archive` of that commit) and its
`main()` runs as is. Shims (monkeypatches of module attributes, nothing copied or edited):
  - `load_datasets(args)` -> three in-memory datasets whose items are (z, onehot(y, 2), onehot(g,
    4))
    (the same item format as its Dominoes loader; g = embedkit's group index, 4 groups) and that
    expose `y_array` (read by get_train_labels);
  - `ERMResNet50` -> a module whose `.model` has the children [Identity, fc], so `build_backbone`
    (children[:-1]) is the identity on features and `model.model.fc` is the start head;
    its checkpoint file holds fc = (W0, b0), the same start head embedkit's HSFM gets;
  - `DataLoader` -> torch's DataLoader with num_workers=0 (in-memory arrays; 2 shared cores).
CLI arguments: --dataset waterbirds (paper Table 11 preset; eval over 4 groups), --inner_lr ALPHA
(the paper's alpha: the inner-loop step and the head's Adam lr), --seed, file paths in a tmp dir.
Test WGA: its own final print "Best model (test): ... worst_group_acc=..." (the best-val epoch's
head).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = Path(os.environ.get("PARITY_DIR", Path(__file__).resolve().parent))
RESULTS = Path(os.environ.get("PARITY_RESULTS", HERE / "results"))
CODE = HERE / "official" / "hsfm" / "code"


class FeatDS(torch.utils.data.Dataset):
    def __init__(self, Z, y, g):
        self.Z = torch.from_numpy(np.ascontiguousarray(Z, np.float32))
        self.y = F.one_hot(torch.from_numpy(np.asarray(y, np.int64)), 2).float()
        self.e = F.one_hot(torch.from_numpy(np.asarray(g, np.int64)), 4)
        self.y_array = np.asarray(y, np.int64)

    def __len__(self):
        return len(self.Z)

    def __getitem__(self, i):
        return self.Z[i], self.y[i], self.e[i]


def make_model_cls(D):
    class _Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Identity()  # children()[:-1] -> the features themselves
            self.fc = nn.Linear(D, 2)

        def forward(self, x):
            return self.fc(self.body(x))

    class ShimERM(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = _Inner()

        def forward(self, x):
            return self.model(x)

    return ShimERM


def aligned_torch(d, s):
    """A stand-in for the `torch` module inside train_hsfm whose randperm, called once per class
    in main() (idx0 = class0_idx[randperm(n0)[:n_s]], then class 1), returns a permutation that
    starts with embedkit's seed-s support rows of that class, in embedkit's order; everything else
    is torch itself. So both codes start from the identical support tensor."""
    y = d["tr_y"]
    sup = d[f"hsfm_support_{s}"]
    want = []
    for c in (0, 1):
        cls_pos = np.flatnonzero(y == c)
        picked = sup[y[sup] == c]
        first = np.searchsorted(cls_pos, picked)
        rest = np.setdiff1d(np.arange(len(cls_pos)), first)
        want.append(torch.from_numpy(np.concatenate([first, rest]).astype(np.int64)))
    calls = iter(want)
    proxy = types.SimpleNamespace(
        **{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")}
    )

    def randperm(n, generator=None, **kw):
        p = next(calls)
        assert len(p) == n
        return p

    proxy.randperm = randperm
    return proxy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", default="waterbirds_like")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--alpha", type=float, default=1e-3)
    ap.add_argument("--tag", default="")
    ap.add_argument(
        "--aligned",
        action="store_true",
        help="draw the support rows embedkit's HSFM drew at the same seed (torch.randperm shim)",
    )
    a = ap.parse_args()
    torch.set_num_threads(1)
    d = np.load(Path(os.environ.get("PARITY_ARRAYS", HERE / "arrays")) / f"arrays_{a.cache}.npz")
    sys.path.insert(0, str(CODE))
    import train_hsfm as th

    D = d["tr_Z"].shape[1]
    sets = (
        FeatDS(d["tr_Z"], d["tr_y"], d["tr_g"]),
        FeatDS(d["va_Z"], d["va_y"], d["va_g"]),
        FeatDS(d["te_Z"], d["te_y"], d["te_g"]),
    )
    th.load_datasets = lambda args: sets
    th.ERMResNet50 = make_model_cls(D)
    _DL = torch.utils.data.DataLoader

    def DL(*args, **kw):
        kw["num_workers"] = 0
        return _DL(*args, **kw)

    th.DataLoader = DL

    res = {"cache": a.cache, "alpha": a.alpha, "runs": []}
    for s in range(a.seeds):
        tmp = Path(tempfile.mkdtemp(prefix=f"hsfm_{a.cache}_{s}_", dir="/tmp"))
        m = th.ERMResNet50()
        with torch.no_grad():
            m.model.fc.weight.copy_(torch.from_numpy(d["hsfm_W0"]))
            m.model.fc.bias.copy_(torch.from_numpy(d["hsfm_b0"]))
        torch.save(m.state_dict(), tmp / "erm.pt")
        sys.argv = [
            "train_hsfm.py",
            "--dataset",
            "waterbirds",
            "--inner_lr",
            repr(a.alpha),
            "--seed",
            str(s),
            "--model_checkpoint",
            str(tmp / "erm.pt"),
            "--log_dir",
            str(tmp / "logs"),
            "--save_path",
            str(tmp / "final.pt"),
            "--best_save_path",
            str(tmp / "best.pt"),
            "--cache_root_dir",
            str(tmp / "cache"),
            "--refresh_val_cache",
            "--refresh_test_cache",
        ]
        if a.aligned:
            th.torch = aligned_torch(d, s)
        t = time.time()
        try:
            th.main()
        finally:
            sys.stdout, sys.stderr = sys.__stdout__, sys.__stderr__
        log = next((tmp / "logs").glob("*.log")).read_text()
        mt = re.search(r"Best model \(test\): avg_acc=([\d.]+)% worst_group_acc=([\d.]+)%", log)
        best = torch.load(tmp / "best.pt", weights_only=False)
        # The log prints 2 decimals; the same number from the saved best-val head at full precision:
        W, b = best["theta"]["weight"].numpy(), best["theta"]["bias"].numpy()
        pred = (d["te_Z"] @ W.T + b).argmax(1)
        exact = min(
            float((pred[d["te_g"] == k] == d["te_y"][d["te_g"] == k]).mean())
            for k in np.unique(d["te_g"])
        )
        assert abs(exact - float(mt.group(2)) / 100) < 1e-4
        res["runs"].append(
            {
                "seed": s,
                "test_wga": exact,
                "test_wga_printed": float(mt.group(2)) / 100,
                "test_mean": float(mt.group(1)) / 100,
                "val_wga": best["val_worst_group_acc"] / 100,
                "best_epoch": best["epoch"] + 1,
                "seconds": time.time() - t,
                "log": str(tmp / "logs"),
            }
        )
        print("official hsfm", res["runs"][-1], flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"official_hsfm_{a.cache}{a.tag}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
