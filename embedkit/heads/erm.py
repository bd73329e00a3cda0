"""ERM heads (methods spec section 1): `erm` and `erm_native`."""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.heads.base import Head
from embedkit.heads.trainer import SGDHead


class ERMHead(SGDHead):
    """Linear ERM head: minimise (1/|B|) sum_{i in B} CE(W z_i + b, y_i) on train with uniform
    sampling, over the shared lr x wd grid; (config, step) chosen on val by the regime rule."""

    name = "erm"
    needs_val_attrs = False

    def _fit(self, train, val, monitor):
        res = self.run_grid(train.Z, train.y, val, monitor)
        self.adopt([res], val)
        self.rows_ = {
            "fit": np.sort(train.rows),
            "tune": np.array([], np.int64),
            "select": np.sort(val.rows),
        }
        self.info_["n_fit_rows"] = len(train)


class NativeHead(Head):
    """The backbone's own classifier: logits = Z W0^T + b0 from the head stored in the cache.
    No fitting, no selection (one record at step 0)."""

    name = "erm_native"
    needs_val_attrs = False
    needs_two_val_classes = False
    needs_erm_head = True

    def _fit(self, train, val, monitor):
        head = train.erm_head or val.erm_head
        if head is None:
            raise EmbedkitError(
                "erm_native: the cache stores no ERM head (W0, b0) for backbone "
                f"{train.backbone or '?'}"
            )
        W0, b0 = (np.asarray(h, np.float32) for h in head)
        if W0.shape != (train.n_classes, train.Z.shape[1]):
            raise EmbedkitError(
                f"erm_native: stored head has shape {W0.shape}, but the cache has "
                f"{train.n_classes} classes and {train.Z.shape[1]} features"
            )
        self.coef_, self.intercept_ = W0, b0
        self._no_selection(val, self.decision_function, monitor)
