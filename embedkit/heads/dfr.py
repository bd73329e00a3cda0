"""DFR — Deep Feature Reweighting (methods spec section 3; paper arXiv:2204.02937, repos
izmailovpavel/spurious_feature_learning and PolinaKirichenko/deep_feature_reweighting
`dfr_evaluate_spurious.py`).

Model: scikit-learn L1 logistic regression with the liblinear solver (intercept regularised too,
one-vs-rest for C > 2 classes), default tol and max_iter, on standardised embeddings.

`dfr_val` (DFR_Val^Tr, the headline) — exact protocol:
 1. perm = permutation of the labelled val rows (subsample stream); val_sel = perm[:Nv//2],
    val_fit = perm[Nv//2:].
 2. Group-balance val_fit: m_fit = min_g |val_fit ∩ g| rows per group, without replacement.
 3. StandardScaler fitted on that balanced subset; it transforms the subset and val_sel.
 4. For C in [1, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01] (this order) fit once, score WGA on val_sel;
    C* = the first C reaching the maximum (ties -> larger C).
 5. Final scaler on all val embeddings (`scaler_source="val"`, follow-up code) or all train
    embeddings (`scaler_source="train"`, original code).
 6. 20 refits, each on a fresh group-balanced subsample of the whole labelled val (m = min_g n_g
    per group), standardised by the final scaler, fitted with C*. (The reference redraws a
    subsample that misses a class; here every non-empty group contributes m >= 1 rows, so every
    class with a visible group is always present.)
 7. Head = mean of the 20 coefficient arrays and of the 20 intercepts.

`dfr_train` (DFR_Tr^Tr, original code only): scaler on all train embeddings; tuning fits on ONE
group-balanced train subsample with max_iter = 20, scored by WGA on the full val; optional
class-weight grid (14 dicts); head = mean of 10 refits on fresh balanced train subsets.

Random draws, in order, from the subsample stream `rng`: the val permutation, the tuning subset
(group by group, ascending g, `rng.choice(rows_g, m, replace=False)`), one liblinear
`random_state = rng.integers(2**31 - 1)` per tuning fit, then per refit its subset followed by
its `random_state`.
"""

from __future__ import annotations

import warnings

import numpy as np
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from embedkit import metrics
from embedkit.errors import EmbedkitError
from embedkit.heads.base import Head
from embedkit.heads.params import Param
from embedkit.selection import DFR_C_GRID, DFR_CLASS_WEIGHT_GRID, check_leak

SKLEARN_VERSION = tuple(int(p) for p in sklearn.__version__.split(".")[:2])
RS_HIGH = 2**31 - 1


def l1_logistic(
    C: float, random_state: int, max_iter: int = 100, class_weight=None
) -> LogisticRegression:
    """The one place that builds DFR's L1 liblinear logistic regression. scikit-learn 1.8 deprecated
    `penalty=` (removal announced for 1.10); there `l1_ratio=1.0` selects the same L1 fit."""
    kw = dict(
        C=C,
        solver="liblinear",
        random_state=int(random_state),
        max_iter=max_iter,
        class_weight=class_weight,
    )
    if SKLEARN_VERSION >= (1, 8):
        return LogisticRegression(l1_ratio=1.0, **kw)
    return LogisticRegression(penalty="l1", **kw)


def fit_l1(X, y, C: float, random_state: int, max_iter: int = 100, class_weight=None):
    """(coef [K, D], intercept [K], classes): one L1 fit for two classes (K = 1), else one binary
    fit per class against the rest with the same random_state (liblinear's own one-vs-rest,
    which scikit-learn >= 1.8 no longer runs inside LogisticRegression)."""
    classes = np.unique(y)
    if len(classes) <= 2:
        lr = l1_logistic(C, random_state, max_iter, class_weight).fit(X, y)
        return lr.coef_, lr.intercept_, lr.classes_
    fits = [
        l1_logistic(C, random_state, max_iter).fit(X, (y == c).astype(np.int64)) for c in classes
    ]
    return np.vstack([f.coef_ for f in fits]), np.concatenate([f.intercept_ for f in fits]), classes


def fit_counted(X, y, C: float, random_state: int, max_iter: int = 100, class_weight=None):
    """`fit_l1` plus the number of ConvergenceWarnings it raised (expected at dfr_train's
    max_iter = 20), which the head records instead of printing; other warnings pass through.
    Fits run one after another: liblinear reseeds one process-global generator per fit, so
    concurrent fits in threads would interleave its draws and lose reproducibility."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        out = fit_l1(X, y, C, random_state, max_iter, class_weight)
    n_conv = 0
    for w in caught:
        if issubclass(w.category, ConvergenceWarning):
            n_conv += 1
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return (*out, n_conv)


def balanced_subset(rows: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """m = min over non-empty groups of |rows ∩ g| positions per group, drawn without
    replacement, concatenated in ascending group order. `rows` index into `g`."""
    groups = np.unique(g[rows])
    groups = groups[groups >= 0]
    per = [rows[g[rows] == k] for k in groups]
    m = min(len(p) for p in per)
    return np.concatenate([rng.choice(p, m, replace=False) for p in per])


class DFRHead(Head):
    """DFR: group-balanced L1 logistic-regression refits of the last layer (DFR_Val^Tr or
    DFR_Tr^Tr)."""

    name = "dfr"
    regimes = ("R1", "R2")

    PARAMS = {
        "variant": Param(
            "choice",
            "val",
            "val: DFR_Val^Tr (tune and refit on val); train: DFR_Tr^Tr (fit on train, tune on val)",
            choices=("val", "train"),
        ),
        "C_grid": Param(
            "floats",
            list(DFR_C_GRID),
            "inverse L1 strengths C searched, in this order (ties -> larger C)",
            low=0,
            open_low=True,
        ),
        "n_refits": Param(
            "int", None, "averaged refits of the chosen C (none = 20 for val, 10 for train)", low=1
        ),
        "scaler_source": Param(
            "choice",
            "val",
            "rows of the final StandardScaler (dfr_val): val (follow-up code) or "
            "train (original code)",
            choices=("val", "train"),
        ),
        "tune_class_weights": Param(
            "bool", False, "dfr_train: also search the 14 class-weight dicts (2 classes)"
        ),
    }

    def __init__(self, seed: int = 0, selection_rule: str | None = None, **params):
        super().__init__(seed=seed, selection_rule=selection_rule, **params)
        v = self.params["variant"]
        self.name = f"dfr_{v}"
        self.needs_train_attrs = v == "train"
        self.regimes = ("R1",) if v == "train" else ("R1", "R2")

    # -- fitting ---------------------------------------------------------------------------------
    def _fit(self, train, val, monitor):
        p = self.params
        rng = np.random.default_rng(self.seeds["subsample"])
        if p["variant"] == "val":
            self._fit_val(train, val, monitor, rng)
        else:
            self._fit_train(train, val, monitor, rng)

    def _tune(self, Xfit, yfit, score_split, Xscore, configs, max_iter, monitor, rng, split_name):
        """Fit each config once; one history record per config (val = the tuning split's metrics,
        the monitor's splits through the tuning scaler); select on `score_split` (named
        `split_name`).
        The final head is refit after selection (`refit`), so it is the selected C's refits."""
        fits = [
            fit_counted(
                Xfit, yfit, cfg["C"], rng.integers(RS_HIGH), max_iter, cfg.get("class_weight")
            )
            for cfg in configs
        ]
        self.info_["tuning_fits_not_converged"] = sum(f[3] for f in fits)
        # Widened once: each config's float64 scores would otherwise convert the matrix again (the
        # monitor's splits likewise, through the tuning scaler).
        Xscore = Xscore.astype(np.float64)
        watched = monitor.mapped(lambda Z: self._scaler_apply(Z).astype(np.float64))
        for cid, (cfg, (coef, intercept, classes, _)) in enumerate(zip(configs, fits)):
            W, b = self._expand(coef, intercept, score_split.n_classes, classes)
            rec = {
                "config_id": cid,
                "config": dict(cfg),
                "step": 0,
                "val": metrics.evaluate_split(Xscore @ W.T + b, score_split),
                **watched.score(lambda X, W=W, b=b: X @ W.T + b),
            }
            self.history_.append(rec)
        return self._select(
            self.history_,
            self.rule(score_split),
            split_name,
            refit=True,
            tie="larger_C",
            rows=score_split.rows,
        )

    def _refits(self, Z, y, g, rows, C, class_weight, n_refits, rng):
        """Fits with C on fresh balanced subsets of `rows`, standardised by the final scaler."""
        subsets, fits = [], []
        for _ in range(n_refits):
            b = balanced_subset(rows, g, rng)
            subsets.append(b)
            fits.append(
                fit_counted(
                    self._scaler_apply(Z[b]),
                    y[b],
                    C,
                    rng.integers(RS_HIGH),
                    class_weight=class_weight,
                )
            )
        self.info_["m_refit"] = int(len(b) // len(np.unique(g[b])))
        self.info_["refits_not_converged"] = sum(f[3] for f in fits)
        return (
            np.stack([f[0] for f in fits]),
            np.stack([f[1] for f in fits]),
            np.stack(subsets),
            fits[0][2],
        )

    def _fit_val(self, train, val, monitor, rng):
        p = self.params
        gv, yv = val.g, val.y
        lab = np.flatnonzero(gv >= 0)  # rows whose group the label budget shows
        n = len(lab)
        perm = lab[rng.permutation(n)]
        sel, fit = perm[: n // 2], perm[n // 2 :]
        fb = balanced_subset(fit, gv, rng)
        check_leak(val.rows[fb], val.rows[sel])  # the two halves are disjoint by construction
        self._scaler = StandardScaler().fit(val.Z[fb])
        configs = [{"C": float(c)} for c in p["C_grid"]]
        chosen = self._tune(
            self._scaler_apply(val.Z[fb]),
            yv[fb],
            val.subset(sel),
            self._scaler_apply(val.Z[sel]),
            configs,
            100,
            monitor,
            rng,
            "val[select]",
        )
        C = chosen["config"]["C"]
        if p["scaler_source"] == "train":
            if len(train) == 0:
                raise EmbedkitError(
                    "dfr: scaler_source='train' needs train embeddings; the train split is empty"
                )
            self._scaler = StandardScaler().fit(train.Z)
        else:
            self._scaler = StandardScaler().fit(val.Z)
        coefs, ints, subsets, classes = self._refits(
            val.Z, yv, gv, lab, C, None, p["n_refits"] or 20, rng
        )
        self._finish(coefs, ints, classes, val.n_classes, chosen)
        self.rows_ = {
            "fit": val.rows,
            "tune": np.sort(val.rows[sel]),
            "select": np.zeros(0, np.int64),
        }
        self.artifacts_.update(
            refit_rows=val.rows[subsets],
            tune_fit_rows=val.rows[fb],
            val_sel_rows=np.sort(val.rows[sel]),
        )
        self.info_.update(
            m_tune=int(len(fb) // len(np.unique(gv[fb]))),
            val_labelled=int(n),
            empty_val_groups=[
                val.group_names[k] for k in range(val.n_groups) if not (gv[lab] == k).any()
            ],
        )

    def _fit_train(self, train, val, monitor, rng):
        p = self.params
        gt, yt = train.g, train.y
        rows = np.arange(len(train))
        self._scaler = StandardScaler().fit(train.Z)
        if p["tune_class_weights"]:
            if train.n_classes != 2:
                raise EmbedkitError(
                    "dfr_train: tune_class_weights needs 2 classes, the cache has "
                    f"{train.n_classes}"
                )
            configs = [
                {"C": float(c), "class_weight": cw}
                for c in p["C_grid"]
                for cw in DFR_CLASS_WEIGHT_GRID
            ]
        else:
            configs = [{"C": float(c)} for c in p["C_grid"]]
        tb = balanced_subset(rows, gt, rng)
        partial = bool((val.g < 0).any())
        labelled_val = val.subset(np.flatnonzero(val.g >= 0)) if partial else val
        chosen = self._tune(
            self._scaler_apply(train.Z[tb]),
            yt[tb],
            labelled_val,
            self._scaler_apply(labelled_val.Z),
            configs,
            20,
            monitor,
            rng,
            "val[labelled]" if partial else "val",
        )
        cw = chosen["config"].get("class_weight")
        coefs, ints, subsets, classes = self._refits(
            train.Z, yt, gt, rows, chosen["config"]["C"], cw, p["n_refits"] or 10, rng
        )
        self._finish(coefs, ints, classes, train.n_classes, chosen)
        self.rows_ = {
            "fit": train.rows,
            "tune": np.zeros(0, np.int64),
            "select": np.sort(labelled_val.rows),
        }
        self.artifacts_.update(refit_rows=train.rows[subsets], tune_fit_rows=train.rows[tb])
        self.info_.update(m_tune=int(len(tb) // len(np.unique(gt[tb]))))

    # -- the averaged head -----------------------------------------------------------------------
    @staticmethod
    def _expand(coef, intercept, n_classes, classes):
        """liblinear's coef [1, D] (binary) or [C, D] (one-vs-rest) as logit weights [C, D]:
        binary becomes (0, s) so that argmax = 1[s > 0] and softmax = sigmoid(s)."""
        coef, intercept = np.asarray(coef, np.float64), np.asarray(intercept, np.float64)
        if len(classes) != n_classes:
            raise EmbedkitError(
                f"dfr: the fitting rows hold {len(classes)} of {n_classes} classes; "
                "every class needs rows with a visible group"
            )
        if coef.shape[0] == 1:
            return np.vstack([np.zeros_like(coef), coef]), np.r_[0.0, intercept]
        return coef, intercept

    def _finish(self, coefs, ints, classes, n_classes, chosen):
        # The DFR head in standardised coordinates: the mean of the refits' arrays.
        self.coef_std_, self.intercept_std_ = coefs.mean(axis=0), ints.mean(axis=0)
        self._W, self._b = self._expand(self.coef_std_, self.intercept_std_, n_classes, classes)
        mean, scale = self._scaler.mean_, self._scaler.scale_
        # The same head on raw features: W (z - μ)/σ + b = (W/σ) z + (b - W μ/σ).
        self.coef_ = self._W / scale
        self.intercept_ = self._b - self._W @ (mean / scale)
        self.artifacts_.update(coefs=coefs, intercepts=ints, scaler_mean=mean, scaler_scale=scale)
        self.info_.update(
            C=chosen["config"]["C"],
            class_weight=chosen["config"].get("class_weight"),
            n_refits=len(coefs),
            scaler_source=self.params["scaler_source"]
            if self.params["variant"] == "val"
            else "train",
            sklearn_version=sklearn.__version__,
            tuning_scores={str(r["config"]): r["val"]["worst_group_acc"] for r in self.history_},
        )

    def _scaler_apply(self, Z):
        return self._scaler.transform(np.asarray(Z, np.float32))

    def decision_function(self, Z: np.ndarray) -> np.ndarray:
        """Logits [N, C]: standardised Z times the averaged head, as the reference predicts."""
        return self._scaler_apply(Z) @ self._W.T + self._b
