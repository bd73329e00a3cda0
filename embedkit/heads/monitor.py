"""The runner-owned monitor (issue 11, the head contract): heads never hold test arrays.

The runner builds a `Monitor` with the splits it chose to watch (normally `{"test": test}`) and
passes it to `head.fit(train, val, monitor)`. At each evaluation point the head (or the shared
trainer) hands the monitor a way to score its current parameters, never the other way round:

    rec.update(monitor.score(lambda Z: head_logits(Z)))                 # one head
    per_config = monitor.score_many(lambda Z: logits_of_all_K(Z), K)    # K stacked heads

and the monitor returns the metrics per split. The results go into the history records under the
split names (`history_[i]["test"]`, the key kept for records); "test" is always present (None when
the runner watches no test split) so every record has the same shape. Selection never reads them:
they serve the post-hoc (oracle, flagged) rules and the reports.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from embedkit.metrics import evaluate_split

RECORD_KEYS = ("test",)  # keys every record carries, None when not monitored


class Monitor:
    """Scores heads on the splits the runner chose. `splits`: {name: Split}; empty splits and
    None values are dropped. `Monitor()` watches nothing (no cost per evaluation)."""

    def __init__(self, splits: dict | None = None):
        self._splits = {
            name: s for name, s in (splits or {}).items() if s is not None and len(s) > 0
        }

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._splits)

    def __bool__(self) -> bool:
        return bool(self._splits)

    def mapped(self, transform: Callable[[np.ndarray], np.ndarray]) -> Monitor:
        """The same splits seen through a feature map (for a head that trains on transformed
        features, e.g. DPE's row standardisation): each split's Z is mapped once, here."""
        import dataclasses

        return Monitor(
            {name: dataclasses.replace(s, Z=transform(s.Z)) for name, s in self._splits.items()}
        )

    def _empty(self) -> dict:
        return {k: None for k in RECORD_KEYS}

    def score(self, fn: Callable[[np.ndarray], np.ndarray]) -> dict:
        """{split name: metrics} of one head; `fn(Z)` -> logits [N, C] for raw features Z."""
        out = self._empty()
        for name, s in self._splits.items():
            out[name] = evaluate_split(_predictions(fn(s.Z)), s)
        return out

    def score_many(self, fn: Callable[[np.ndarray], np.ndarray], K: int, keep=None) -> list[dict]:
        """[{split name: metrics}] for K stacked heads; `fn(Z)` -> logits [K, N, C]. `keep(k)`
        False leaves config k's metrics None (e.g. a diverged config)."""
        out = [self._empty() for _ in range(K)]
        for name, s in self._splits.items():
            logits = np.asarray(fn(s.Z))
            if logits.shape[0] != K:
                raise ValueError(f"monitor: expected logits of {K} heads, got {logits.shape}")
            for k in range(K):
                if keep is None or keep(k):
                    out[k][name] = evaluate_split(_predictions(logits[k]), s)
        return out


def _predictions(logits) -> np.ndarray:
    """Per-step monitoring scores predictions only: the accuracy metrics that oracle rules and
    learning curves read. The probability metrics (ECE, Brier, NLL, AUROC) cost an order of
    magnitude more per call (AUROC sorts every row) and a per-epoch monitor runs thousands of calls
    (AFR: 48 configs x 500 epochs); the final head's full metrics are in the record's `metrics`."""
    logits = np.asarray(logits)
    return logits.argmax(axis=1) if logits.ndim == 2 else logits


def as_monitor(monitor) -> Monitor:
    """None -> an empty Monitor; a Monitor passes through. Anything else (a Split passed where the
    old `fit(train, val, test)` took test) is refused: test never enters a head."""
    if monitor is None:
        return Monitor()
    if isinstance(monitor, Monitor):
        return monitor
    from embedkit.errors import EmbedkitError

    raise EmbedkitError(
        "fit(train, val, monitor): the third argument is a runner-owned Monitor, not a split; "
        "heads never receive test data (use Monitor({'test': test}) to record test metrics)"
    )
