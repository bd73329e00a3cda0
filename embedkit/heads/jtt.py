"""JTT, Just Train Twice, on embeddings (methods spec section 5; repo anniesch/jtt).

1. Identification: an ERM head trained for T epochs (T * ceil(N_tr / B) steps) with strong weight
   decay gives the error set E = {i in train : argmax f_id(z_i) != y_i} (`id=head`, the default).
   `id=stored` takes E from the cache's stored ERM logits instead, which needs
   `allow_seen_rows=True`
   (on rows the backbone was trained on E is close to empty). Whenever the cache records that the
   backbone saw train rows (`Split.seen`), JTT refuses them in one line unless
   `allow_seen_rows=True`,
   and the override is stored in the record (`info.seen_override`).
2. Retraining: a fresh head on train where each i in E counts m times: a sampler with weight m on E
   and 1 elsewhere (default), or `upweight=loss` for loss weights (the same full-batch gradient).
   `count=official` (default): m = lambda_up + 1, as the official anniesch/jtt code builds its
   stage-2 set (the train set concatenated with lambda_up extra copies of every error row);
   `count=paper`: m = lambda_up, the paper's "upsample E by lambda_up" read literally. (T, stage-1
   wd, lambda_up, stage-2 lr/wd, step) are chosen together by the regime rule on val.

Seeds: stage 1 draws its init and sampler seeds from the run's `infer` stream (JTT's first stage is
group inference, spec section 14.1); stage 2 uses the `init` and `sampler` streams exactly as `erm`
does, so m = 1 (`count=paper`, lambda_up = 1) retrains the very ERM head of the same seed. All
stage-2 variants share the sampler's uniforms. Error sets that coincide for different (T, wd) are
trained once (listed in `info_["duplicate_error_sets"]`).

Budget [W]: the spec's head grid T {1,2,5,10,20,40,60} x lambda_up {4,5,6,20,50,100} x stage-1 wd
{1e-3,1e-2,1e-1,1} gives up to 168 stage-2 variants of 9 configs each, every variant costing one ERM
fit. The default (`grid=fast`) is a 2 x 3 sub-grid, T {2, 20} x lambda_up {5, 20, 100} at stage-1 wd
0.1: at most six ERM fits. `grid=spec` runs the full search; `T_grid`, `lambda_up_grid` and
`stage1_wd_grid` override single axes. Stage 1 uses lr `stage1_lr` = 1e-2 [W] (the spec fixes none).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.heads.heldout import check_unseen, unseen_need
from embedkit.heads.params import Param
from embedkit.heads.trainer import LoopConfig, SGDHead, Variant, as_grid, fit_grid
from embedkit.selection import GRIDS


def error_set(logits, y) -> np.ndarray:
    """E: sorted indices of the rows whose argmax prediction is not their label."""
    return np.flatnonzero(np.asarray(logits).argmax(axis=1) != np.asarray(y))


def upweights(n: int, E: np.ndarray, lambda_up: float) -> np.ndarray:
    """lambda_up on the error set, 1 elsewhere (unnormalised sampler or loss weights)."""
    w = np.ones(n)
    w[E] = float(lambda_up)
    return w


class JTTHead(SGDHead):
    """Just Train Twice: upweight the training errors of a weight-decayed ERM head by lambda_up and
    retrain; (T, lambda_up, config, step) chosen on val."""

    name = "jtt"
    regimes = ("R2", "R3")
    needs_val_attrs = False

    PARAMS = {
        **SGDHead.PARAMS,
        "grid": Param(
            "choice",
            "fast",
            "preset (T, lambda_up, stage-1 wd) grid: fast (2 x 3) or spec (the full search)",
            choices=("fast", "spec"),
        ),
        "T_grid": Param("ints", None, "stage-1 epochs T searched (none = the preset's)", low=1),
        "lambda_up_grid": Param(
            "floats", None, "upweights lambda_up searched (none = the preset's)", low=1
        ),
        "stage1_wd_grid": Param(
            "floats", None, "stage-1 weight decays searched (none = the preset's)", low=0
        ),
        "stage1_lr": Param("float", 1e-2, "stage-1 learning rate", low=0, open_low=True),
        "id": Param(
            "choice",
            "head",
            "error set from a stage-1 head fitted here, or the cache's stored ERM logits",
            choices=("head", "stored"),
        ),
        "upweight": Param(
            "choice",
            "sampler",
            "how E is upweighted: sampler weights or loss weights",
            choices=("sampler", "loss"),
        ),
        "count": Param(
            "choice",
            "official",
            "copies of each error row: official = lambda_up + 1 (anniesch/jtt), paper = lambda_up",
            choices=("official", "paper"),
        ),
        "allow_seen_rows": Param(
            "bool",
            False,
            "accept train rows the backbone was (or may have been) trained on; "
            "recorded as info.seen_override",
        ),
    }

    def unmet(self, train, val) -> str | None:
        if self.params["id"] == "stored" and train.logits is None:
            return f"jtt id=stored needs stored ERM logits for backbone {train.backbone}"
        return unseen_need(
            "jtt",
            train,
            "train rows (the error set is read on them)",
            allow=bool(self.params["allow_seen_rows"]),
        )

    def jtt_grid(self) -> dict:
        """{T, lambda_up, wd1} lists: the preset (`fast` or `spec`) overridden by explicit grids."""
        p = self.params
        base = (
            {"T": [2, 20], "lambda_up": [5, 20, 100], "wd1": [0.1]}
            if p["grid"] == "fast"
            else GRIDS["jtt"]
        )
        out = {
            "T": [int(t) for t in (p["T_grid"] if p["T_grid"] is not None else base["T"])],
            "lambda_up": list(
                as_grid(
                    p["lambda_up_grid"] if p["lambda_up_grid"] is not None else base["lambda_up"]
                )
            ),
            "wd1": list(
                as_grid(p["stage1_wd_grid"] if p["stage1_wd_grid"] is not None else base["wd1"])
            ),
        }
        if p["id"] == "stored":
            out.update(T=[0], wd1=[0.0])  # no stage-1 training to vary
        if min(out["T"]) < 0 or min(out["lambda_up"]) < 1:
            raise EmbedkitError("jtt: T must be >= 1 epochs and lambda_up >= 1")
        return out

    def _stage1(self, train, grid) -> dict:
        """{(T, wd1): E} from one vectorised ERM run over the stage-1 wd grid, snapshotted after
        T epochs for every T."""
        p = self.params
        if p["id"] == "stored":
            if train.logits is None:
                raise EmbedkitError(
                    "jtt: id=stored needs stored ERM logits in the cache (logits_erm)"
                )
            if not p["allow_seen_rows"]:
                raise EmbedkitError(
                    "jtt: id=stored reads the backbone's own train logits, which are "
                    "near-perfect on rows it was trained on; pass allow_seen_rows=True if the "
                    "backbone never saw them"
                )
            return {(0, 0.0): error_set(train.logits, train.y)}
        batch = int(p["batch_size"])
        epoch = math.ceil(len(train) / batch)
        s_init, s_sampler = (
            int(c.generate_state(1)[0])
            for c in np.random.SeedSequence(self.seeds["infer"]).spawn(2)
        )
        res = fit_grid(
            train.Z,
            train.y,
            [{"lr": float(p["stage1_lr"]), "wd": wd} for wd in grid["wd1"]],
            LoopConfig(
                steps=max(grid["T"]) * epoch,
                eval_every=max(grid["T"]) * epoch,
                batch_size=batch,
                standardize=bool(p["standardize"]),
                init_seed=s_init,
                sampler_seed=s_sampler,
                device=p["device"],
                threads=p["threads"],
                snapshot_steps=[T * epoch for T in grid["T"]],
            ),
        )
        self.info_["stage1"] = {
            "lr": float(p["stage1_lr"]),
            "seeds": {"init": s_init, "sampler": s_sampler},
            "steps_per_epoch": epoch,
            "seconds": res.info["seconds"],
        }
        self._stage1_heads = {
            (T, wd): res.snapshots[T * epoch][j]
            for T in grid["T"]
            for j, wd in enumerate(grid["wd1"])
        }
        return {key: error_set(h.logits(train.Z), train.y) for key, h in self._stage1_heads.items()}

    def _fit(self, train, val, monitor):
        p = self.params
        grid = self.jtt_grid()
        # The error set is read on train rows: on rows the backbone was trained on it is near empty.
        override = check_unseen(
            "jtt",
            train,
            "train rows (the error set is read on them)",
            allow=bool(p["allow_seen_rows"]),
        )
        if override:
            self.info_["seen_override"] = override
        self._stage1_heads = {}
        sets = self._stage1(train, grid)

        # Identical error sets give identical stage-2 runs: train each distinct set once.
        unique, duplicates = {}, []
        for key, E in sets.items():
            first = next((k for k, F in unique.items() if np.array_equal(E, F)), None)
            if first is None:
                unique[key] = E
            else:
                duplicates.append(
                    {"T": key[0], "wd1": key[1], "same_as": {"T": first[0], "wd1": first[1]}}
                )
        n = len(train)
        small = max(10, math.ceil(0.001 * n))
        stats = []
        for (T, wd1), E in sets.items():
            row = {"T": T, "wd1": wd1, "size": int(len(E))}
            if (train.a >= 0).all():
                g, G = train.g, train.n_groups
                inE = np.bincount(g[E], minlength=G)
                row["per_group"] = {
                    name: {"in_E": int(inE[i]), "recall": float(inE[i] / max(1, (g == i).sum()))}
                    for i, name in enumerate(train.group_names)
                }
            stats.append(row)
            if len(E) < small:
                warnings.warn(
                    f"jtt: error set of T={T}, wd1={wd1} has {len(E)} rows (< {small}); "
                    "stage 2 is then close to ERM"
                )

        variants = []
        for (T, wd1), E in unique.items():
            for lam in grid["lambda_up"]:
                w = upweights(n, E, lam + 1 if p["count"] == "official" else lam)
                tag = {"T": T, "wd1": wd1, "lambda_up": lam}
                variants.append(
                    Variant(tag=tag, sampler=w)
                    if p["upweight"] == "sampler"
                    else Variant(tag=tag, weights=w)
                )
        res = self.run_grid(train.Z, train.y, val, monitor, variants=variants)
        self.adopt([res], val)

        cfg = self.selected_["config"]
        E = sets[(cfg["T"], cfg["wd1"])]
        self.artifacts_["error_set_rows"] = train.rows[E]
        if self._stage1_heads:
            h = self._stage1_heads[(cfg["T"], cfg["wd1"])]
            self.artifacts_["stage1_coef"], self.artifacts_["stage1_intercept"] = (
                h.arrays["coef"],
                h.arrays["intercept"],
            )
        self.rows_ = {
            "fit": np.sort(train.rows),
            "tune": np.array([], np.int64),
            "select": np.sort(val.rows),
        }
        self.info_.update(
            error_sets=stats,
            duplicate_error_sets=duplicates,
            n_variants=len(variants),
            jtt_grid=grid,
            upweight=p["upweight"],
            count=p["count"],
            id=p["id"],
        )
