"""The LR study's pruning experiments (spec 11.2, [W] protocol): global unstructured magnitude
pruning without fine-tuning, of a backbone (`prune_global`) or of a head on cached features
(`prune_head`), and the curve of test accuracy against sparsity.

Curve columns: `prune_mean_0` (unpruned mean accuracy), `prune_wga_{s}` / `prune_mean_{s}` at
each sparsity s, and `prune_max_sparsity`, the largest sparsity up to which (every grid sparsity
up to it) mean accuracy stays within 1 point of the unpruned network's, in either direction: a
pruned network that beats a below-chance original (reversed test correlation) is a different
network, not a compressed one.
"""

from __future__ import annotations

import numpy as np

PRUNE_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
TOLERANCE = 0.01  # the "within 1 point" of prune_max_sparsity


def _keep_mask(magnitudes: np.ndarray, sparsity: float) -> np.ndarray:
    """True for the entries kept when the `sparsity` fraction of smallest magnitudes is zeroed.
    By rank, not by a threshold value, so ties at the threshold cannot prune more than asked."""
    n_zero = int(round(sparsity * magnitudes.size))
    keep = np.ones(magnitudes.size, bool)
    keep[np.argsort(magnitudes, kind="stable")[:n_zero]] = False
    return keep


def prune_global(model, sparsity: float):
    """A copy of `model` with the `sparsity` fraction of smallest-magnitude entries of every
    parameter with ndim > 1 (pooled over the whole network) set to zero."""
    import copy

    import torch

    pruned = copy.deepcopy(model)
    if sparsity <= 0:
        return pruned
    weights = [p for p in pruned.parameters() if p.ndim > 1]
    flat = torch.cat([p.detach().abs().flatten() for p in weights]).cpu().numpy()
    keep = torch.from_numpy(_keep_mask(flat, sparsity))
    start = 0
    with torch.no_grad():
        for p in weights:
            n = p.numel()
            p.mul_(keep[start : start + n].view_as(p).to(p.device, p.dtype))
            start += n
    return pruned


def prune_head(state, sparsity: float):
    """A copy of a head (`HeadState`) with the `sparsity` fraction of smallest-magnitude entries
    of its weight matrices (pooled, as `prune_global`) set to zero; biases untouched."""
    from embedkit.heads.trainer import HeadState

    names = [n for n in ("coef", "W1", "W2") if n in state.arrays]
    keep = _keep_mask(np.concatenate([np.abs(state.arrays[n]).ravel() for n in names]), sparsity)
    arrays, start = dict(state.arrays), 0
    for n in names:
        w = state.arrays[n]
        arrays[n] = w * keep[start : start + w.size].reshape(w.shape)
        start += w.size
    return HeadState(state.kind, arrays)


def _curve(logits_at, split, sparsities) -> dict:
    """The curve columns from `logits_at(s)`, the test logits at sparsity s (0 = unpruned)."""
    from embedkit.metrics import evaluate_split

    base = evaluate_split(logits_at(0.0), split)["mean_acc"]
    out, best, intact = {"prune_mean_0": base}, 0.0, True
    for s in sorted(sparsities):
        rep = evaluate_split(logits_at(s), split)
        out[f"prune_wga_{s}"], out[f"prune_mean_{s}"] = rep["worst_group_acc"], rep["mean_acc"]
        intact = intact and abs(rep["mean_acc"] - base) <= TOLERANCE
        if intact:
            best = s
    out["prune_max_sparsity"] = best
    return out


def pruning_curve(model, images, preprocess: dict, split, sparsities=PRUNE_SPARSITIES) -> dict:
    """The curve of a backbone on its test `images` (rows in `split`'s order)."""
    from embedkit.backbones.train_backbone import predict_logits

    def logits_at(s):
        return predict_logits(model if s == 0 else prune_global(model, s), images, preprocess)

    return _curve(logits_at, split, sparsities)


def head_pruning_curve(state, split, sparsities=PRUNE_SPARSITIES) -> dict:
    """The curve of a head on cached features (same columns, same 1-point rule); without
    sparsities only `prune_mean_0`."""

    def logits_at(s):
        return (state if s == 0 else prune_head(state, s)).logits(split.Z)

    out = _curve(logits_at, split, sparsities or ())
    if not sparsities:
        del out["prune_max_sparsity"]
    return out
