"""The head interface every method follows (DESIGN section 3, methods spec sections 0 and 15).

scikit-learn conventions: hyperparameters are constructor arguments, `fit` returns self,
learned state ends in `_`. After `fit` every head exposes:

- `history_`: one record per evaluation `{config_id, config, step, val: metrics, test:
  metrics|None}` so that any selection rule can be re-applied post hoc. The test metrics come from
  the runner's `Monitor` (embedkit/heads/monitor.py), passed as `fit(train, val, monitor)`: a head
  never holds test arrays, it hands the monitor a way to score its current parameters; selection
  never reads them;
- `selected_`: `{config_id, config, step, rule, split, score, refit}` of the chosen candidate, where
  `split` names the rows the rule actually read ("val" = every val row the head was given,
  "val[select]" = a held-apart part of val, "val[labelled]" = the val rows with a visible group) and
  `refit` is true when the final head is refit after selection (DFR's averaged refits), so its own
  score on those rows need not equal `score`;
- `selection_rows_`: the cache row ids the selection read (what `selected_["split"]` names);
- `rows_`: cache row ids by role, `{"fit": ..., "tune": ..., "select": ...}` (the leak guard);
- `info_`: method-specific JSON-able facts (chosen C, directions and their alignment, ...);
- `artifacts_`: numpy arrays saved beside the run record (e.g. HSFM's support before/after).
"""

from __future__ import annotations

import numpy as np

from embedkit import selection
from embedkit.errors import EmbedkitError
from embedkit.heads.monitor import Monitor, as_monitor
from embedkit.heads.params import Param, check_params, table
from embedkit.metrics import evaluate_split, softmax
from embedkit.seeds import STREAMS, spawn_seeds  # noqa: F401  (re-exported: heads use them from here)


class Head:
    """Base class. Subclasses declare `PARAMS` (name -> Param; extend the parent's with
    `{**Parent.PARAMS, ...}`), implement `_fit(train, val, monitor)` and either set `coef_` [C, D]
    and `intercept_` [C] (a linear head on raw features) or override `decision_function`."""

    name = "head"
    # Label regimes (methods spec 0.2) the method supports; the default needs y and a on val.
    regimes: tuple[str, ...] = ("R1", "R2", "R3")
    needs_train_attrs = False
    needs_val_attrs = True
    # Heads that fit or select need two classes among the val rows (a one-class val split is one
    # error line, not a scikit-learn traceback); zero-shot heads read no val labels.
    needs_two_val_classes = True
    PARAMS: dict[str, Param] = {}

    def __init__(self, seed: int = 0, selection_rule: str | None = None, **params):
        self.seed = int(seed)
        # None = the label regime's default (val_wga when val attributes are visible, else
        # val_worst_class); see specs/metrics-and-selection.md section 4.2.
        if selection_rule is not None and selection_rule not in selection.RULES:
            raise EmbedkitError(
                f"{self.name}: parameter selection_rule={selection_rule}: expects one of "
                f"{', '.join(selection.RULES)}"
            )
        self.selection_rule = selection_rule
        self.params = check_params(self.name, self.PARAMS, params)

    @classmethod
    def default_params(cls) -> dict:
        return {name: p.default for name, p in cls.PARAMS.items()}

    @classmethod
    def param_table(cls, preset: dict | None = None) -> list[dict]:
        """Rows {name, kind, default, accepts, help} (`embedkit heads NAME`)."""
        return table(cls.PARAMS, preset)

    def get_params(self) -> dict:
        return {"seed": self.seed, "selection_rule": self.selection_rule, **self.params}

    def rule(self, val) -> str:
        if self.selection_rule:
            return self.selection_rule
        return "val_wga" if (val.a >= 0).any() else "val_worst_class"

    @property
    def seeds(self) -> dict[str, int]:
        return spawn_seeds(self.seed)

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, train, val, monitor: Monitor | None = None):
        """Fit on train and val only. `monitor` (runner-owned) scores the head's candidates on the
        splits the runner chose; its metrics land in `history_` and are never selected on."""
        monitor = as_monitor(monitor)
        self._check_labels(train, val)
        self.history_, self.selected_, self.rows_, self.info_, self.artifacts_ = [], {}, {}, {}, {}
        self.selection_rows_ = None
        self.classes_ = np.arange(train.n_classes)
        self._fit(train, val, monitor)
        if self.selection_rows_ is None:
            self.selection_rows_ = np.sort(np.asarray(self.rows_.get("select", []), np.int64))
        return self

    def _check_labels(self, train, val):
        if self.needs_train_attrs and (train.a < 0).any():
            raise EmbedkitError(
                f"{self.name}: needs spurious attributes on every train row "
                f"({int((train.a < 0).sum())} rows have a = -1)"
            )
        if self.needs_val_attrs and (val.a < 0).all():
            raise EmbedkitError(
                f"{self.name}: needs spurious attributes on validation rows; none are visible"
            )
        if self.needs_two_val_classes:
            present = np.unique(np.asarray(val.y))
            if len(present) < 2:
                which = (
                    f"only class {val.class_names[int(present[0])]!r}"
                    if len(present)
                    else "no rows"
                )
                raise EmbedkitError(
                    f"{self.name}: the validation split has {which}; fitting and selecting a "
                    "head needs rows of at least two classes in val"
                )

    def _fit(self, train, val, monitor):
        raise NotImplementedError

    # -- shared helpers: evaluation records and selection -------------------------------------
    @staticmethod
    def _evaluate(split, fn) -> dict | None:
        """Metrics of logits `fn(Z)` on `split` (None for an empty split)."""
        if split is None or len(split) == 0:
            return None
        return evaluate_split(np.asarray(fn(split.Z)), split)

    def _record(self, config_id: int, config: dict, step: int, val, fn, monitor, **extra) -> dict:
        """One history record of the head `fn` (logits of raw Z): val metrics on `val` and the
        monitor's metrics on its splits."""
        rec = {
            "config_id": int(config_id),
            "config": dict(config),
            "step": int(step),
            "val": self._evaluate(val, fn),
            **as_monitor(monitor).score(fn),
        }
        rec.update(extra)
        return rec

    def _select(
        self,
        history,
        rule: str,
        split_name: str,
        refit: bool = False,
        tie: str = "default",
        rows=None,
    ) -> dict:
        """Select over `history` by `rule`; sets `selected_` with `split` = the name of the rows
        read and `refit`, and `selection_rows_` = those rows (cache ids) when given."""
        from embedkit import selection

        top = selection.select(history, rule, tie=tie)
        self.selected_ = {
            k: top[k]
            for k in (
                "config_id",
                "config",
                "step",
                "rule",
                "metric",
                "score",
                "tie",
                "grid_size",
                "n_candidates",
                "flags",
            )
        }
        self.selected_.update(split=split_name, refit=bool(refit))
        if rows is not None:
            self.selection_rows_ = np.sort(np.asarray(rows, np.int64))
        return top

    def _no_selection(self, val, fn, monitor) -> None:
        """A head that fits nothing: one record at step 0, no rule, nothing read for selection."""
        self.history_ = [self._record(0, {}, 0, val, fn, monitor)]
        self.selected_ = {
            "config_id": 0,
            "config": {},
            "step": 0,
            "rule": None,
            "split": None,
            "score": None,
            "grid_size": 1,
            "refit": False,
        }
        empty = np.zeros(0, np.int64)
        self.rows_ = {"fit": empty, "tune": empty, "select": empty}
        self.selection_rows_ = empty

    # -- prediction -------------------------------------------------------------------------
    def decision_function(self, Z: np.ndarray) -> np.ndarray:
        """Logits [N, C]."""
        return np.asarray(Z, np.float32) @ self.coef_.T + self.intercept_

    def predict_proba(self, Z: np.ndarray) -> np.ndarray:
        return softmax(self.decision_function(Z).astype(np.float64))

    def predict(self, Z: np.ndarray) -> np.ndarray:
        return self.decision_function(Z).argmax(axis=1)
