"""The LR study's metrics (methods spec 11.2): what each column of its tables means.

Sources: paper arXiv:2507.17748 (claims); metric definitions as in repo mbarsbey/advcomp
(`utils/statistics.py`, `utils/evaluation.py`). Symbols follow spec 11.2. A row of the study
(one run: a backbone, or a head at one learning rate and seed) carries these columns:

- `net_comp_{kappa}`, `layer_comp_{kappa}`, `comp_{kappa}` (heads): comp_kappa(w) =
  1 - ||w - T_kappa(w)||_q / ||w||_q, q = 2, T_kappa keeps the top-kappa-magnitude entries; the
  number kept is d - floor((1 - kappa) d) as in advcomp's `get_idx`. Network level: every
  parameter with ndim > 1 concatenated; layer level: the row-wise mean, then the mean over layers.
- `net_pqi`: PQ-index 1 - d^(1/q - 1/p) ||z||_p / ||z||_q (p = 1, q = 2) of all weights.
- `act_sparsity`: the fraction of exactly-zero post-ReLU activations; `act_comp_{kappa}`:
  comp_kappa per sample, averaged.
- `csep` (and `csep_dw`, `csep_db`): class separation on r = |activations|: d_w = mean over
  classes of the mean pairwise cosine distance within the class; d_b = mean over class pairs
  (i, j) of the mean cosine distance between the two classes (advcomp's loop over every (i, j),
  i = j included); csep = 1 - d_w / d_b. `bsep` is the same with the bias labels (lower is
  better); `csi` / `bsi` the mean neuron selectivity by class / by bias label.
- `{prefix}_wga`, `_mean`, `_gba`: worst-group, mean and group-balanced test accuracy of a head
  (`erm`: the backbone's own fc; `final`: a trained head at its last step); `_acc_ba` /
  `_acc_bc`: accuracy on bias-aligned {y = b} / bias-conflicting {y != b} rows; `_bbc`: among
  misclassified bias-conflicting rows, the fraction predicted as the bias label;
  `_max_softmax`, `_logit_norm`: mean confidence statistics.
- `eff_bcr`: the share of the summed NLL carried by conflicting rows (train rows, network in
  train mode for a backbone).
- `erm_spur_align`, `dfr_spur_align`, `spur_align`: how much of the spurious direction a head's
  weights read (the embedding-space substitute for core-feature utilisation).
- `prune_*`: the pruning curve (`embedkit.studies.lr.pruning`).
"""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.metrics import acc_bias_aligned, evaluate_split, softmax

KAPPAS = (0.05, 0.1, 0.2)


# ----------------------------------------------------------------------------------------------
# Compressibility
# ----------------------------------------------------------------------------------------------


def n_kept(kappa: float, d: int) -> int:
    """Entries T_kappa keeps out of d: d - floor((1 - kappa) d), advcomp's `get_idx` rule."""
    if not 0.0 < kappa <= 1.0:
        raise EmbedkitError(f"kappa must lie in (0, 1], got {kappa}")
    return d - int((1.0 - kappa) * d)


def compressibility(w, kappa: float, q: float = 2) -> np.ndarray:
    """comp_kappa per row of `w` (a vector gives a scalar): 1 - ||w - T_kappa(w)||_q / ||w||_q.

    An all-zero row has no direction to keep and gives NaN (0/0), as in advcomp.
    """
    w = np.abs(np.asarray(w, np.float64))
    rows = np.atleast_2d(w)
    k = n_kept(kappa, rows.shape[1])
    # The residual w - T_kappa(w) is w with its k largest magnitudes zeroed: the d - k smallest.
    small = np.sort(rows, axis=1)[:, : rows.shape[1] - k]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 1.0 - np.linalg.norm(small, ord=q, axis=1) / np.linalg.norm(rows, ord=q, axis=1)
    return out[0] if w.ndim == 1 else out


def network_compressibility(params, kappa: float, q: float = 2) -> float:
    """`net_comp_kappa`: comp_kappa of every parameter tensor with ndim > 1, concatenated."""
    flat = np.concatenate([np.asarray(p, np.float64).ravel() for p in params if np.ndim(p) > 1])
    return float(compressibility(flat, kappa, q))


def layer_compressibility(weight, kappa: float, q: float = 2) -> float:
    """`par_comp_kappa` of one layer: the row-wise mean (a conv kernel [out, in, h, w] has one
    row per output channel)."""
    w = np.asarray(weight, np.float64)
    rows = w.reshape(w.shape[0], -1) if w.ndim > 1 else w
    return float(np.mean(compressibility(rows, kappa, q)))


def pq_index(z, p: float = 1, q: float = 2) -> np.ndarray:
    """PQ-index per row: 1 - d^(1/q - 1/p) ||z||_p / ||z||_q (0 for a constant-magnitude row,
    approaching 1 for a 1-sparse one); NaN for an all-zero row."""
    z = np.asarray(z, np.float64)
    rows = np.atleast_2d(z)
    d = rows.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        out = 1.0 - d ** (1 / q - 1 / p) * (
            np.linalg.norm(rows, ord=p, axis=1) / np.linalg.norm(rows, ord=q, axis=1)
        )
    return out[0] if z.ndim == 1 else out


# ----------------------------------------------------------------------------------------------
# Activations
# ----------------------------------------------------------------------------------------------


def activation_sparsity(Z) -> float:
    """Fraction of exactly-zero entries of post-ReLU activations Z [N, D]."""
    return float(np.mean(np.asarray(Z) == 0))


def activation_compressibility(Z, kappa: float, q: float = 2) -> float:
    """comp_kappa per sample on activation vectors, averaged over samples with a non-zero vector."""
    return float(np.nanmean(compressibility(np.atleast_2d(Z), kappa, q)))


def _unit_sum(r: np.ndarray) -> np.ndarray:
    return (r / np.linalg.norm(r, axis=1, keepdims=True)).sum(axis=0)


def class_separation(Z, labels, n_labels: int | None = None) -> dict:
    """csep = 1 - d_w / d_b on r = |Z| with cosine distance (advcomp `get_class_separation`).

    d_w = mean over labels of the mean cosine distance over all ordered pairs of the label's rows
    (self-pairs included, as advcomp's matrix mean does); d_b = mean over all ordered label pairs
    (i, j) of the mean cosine distance between rows of i and rows of j (advcomp iterates over
    every (i, j), i = j included). The mean of a cosine-similarity block is computed exactly as
    (sum of unit rows of i) . (sum of unit rows of j) / (n_i n_j), so memory stays O(N D).
    Labels with no rows are skipped (advcomp's nanmean); all-zero rows have no direction and are
    left out and counted in `n_zero_rows` (advcomp would turn their whole label into NaN).
    Pass the bias labels to get bsep.
    """
    r = np.abs(np.asarray(Z, np.float64))
    labels = np.asarray(labels)
    n_labels = int(labels.max()) + 1 if n_labels is None else int(n_labels)
    nonzero = np.linalg.norm(r, axis=1) > 0
    sums, counts = [], []
    for i in range(n_labels):
        ri = r[(labels == i) & nonzero]
        counts.append(len(ri))
        sums.append(_unit_sum(ri) if len(ri) else None)
    present = [i for i in range(n_labels) if counts[i] > 0]
    if not present:
        return {
            "sep": float("nan"),
            "d_w": float("nan"),
            "d_b": float("nan"),
            "n_zero_rows": int((~nonzero).sum()),
        }

    def dist(i, j):
        return 1.0 - float(sums[i] @ sums[j]) / (counts[i] * counts[j])

    d_w = float(np.mean([dist(i, i) for i in present]))
    d_b = float(np.mean([dist(i, j) for i in present for j in present]))
    sep = 1.0 - d_w / d_b if d_b > 0 else float("nan")
    return {"sep": sep, "d_w": d_w, "d_b": d_b, "n_zero_rows": int((~nonzero).sum())}


def selectivity(Z, labels, n_labels: int, eps: float = 1e-6) -> float:
    """Mean per-neuron selectivity (max - mean_rest) / (max + mean_rest + eps) over the label-mean
    activations of r = |Z|, over neurons with a non-zero index (advcomp's csi / bsi)."""
    r = np.abs(np.asarray(Z, np.float64))
    labels = np.asarray(labels)
    means = np.stack(
        [r[labels == i].mean(axis=0) for i in range(n_labels) if (labels == i).any()], axis=1
    )
    top = means.max(axis=1)
    rest = (means.sum(axis=1) - top) / (means.shape[1] - 1)
    si = (top - rest) / (top + rest + eps)
    si = si[si != 0]
    return float(si.mean()) if si.size else float("nan")


def representation_metrics(H, split, kappas=KAPPAS) -> dict:
    """Activation sparsity and compressibility, csep / bsep and csi / bsi of activations H [N, D]
    of the rows of `split` (bias labels = the attribute, where known)."""
    out = {"act_sparsity": activation_sparsity(H)}
    for k in kappas:
        out[f"act_comp_{k}"] = activation_compressibility(H, k)
    cs = class_separation(H, split.y, split.n_classes)
    out.update(
        csep=cs["sep"],
        csep_dw=cs["d_w"],
        csep_db=cs["d_b"],
        zero_rows=cs["n_zero_rows"],
        csi=selectivity(H, split.y, split.n_classes),
    )
    known = split.a >= 0
    if known.any():
        bs = class_separation(H[known], split.a[known], split.n_attrs)
        out.update(
            bsep=bs["sep"],
            bsep_dw=bs["d_w"],
            bsep_db=bs["d_b"],
            bsi=selectivity(H[known], split.a[known], split.n_attrs),
        )
    return out


# ----------------------------------------------------------------------------------------------
# Bias-aware accuracies and losses (advcomp `evaluate`)
# ----------------------------------------------------------------------------------------------


def bias_labels(split) -> np.ndarray | None:
    """The spurious label in the label space (advcomp's b), when the dataset has one attribute
    value per class (colored digits: colour k is the cue of class k); otherwise None."""
    if split.n_attrs != split.n_classes:
        return None
    return split.a


def bias_accuracies(y, pred, b) -> dict:
    """acc_ba on {y = b}, acc_bc on {y != b}, and bbc: among misclassified bias-conflicting rows,
    the fraction predicted as the bias label. `b` is the spurious label in the label space.
    `embedkit.metrics.acc_bias_aligned`, with NaN (not None) for an empty set of rows, so that a
    row's metrics stay floats."""
    return {k: float("nan") if v is None else v for k, v in acc_bias_aligned(y, pred, b).items()}


def nll(logits, y) -> np.ndarray:
    """Per-row negative log-likelihood of labels `y` under softmax(logits), via log-sum-exp on
    the logits (exact where `embedkit.metrics.nll`, the mean over rows from probabilities,
    floors p at the smallest double)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return lse - z[np.arange(len(z)), np.asarray(y)]


def eff_bcr(logits, y, b) -> float:
    """Loss share of the bias-conflicting rows: sum_{y != b} NLL / sum NLL."""
    loss = nll(logits, y)
    total = loss.sum()
    if total <= 0:
        return float("nan")
    return float(loss[np.asarray(y) != np.asarray(b)].sum() / total)


def confidence(logits) -> dict:
    """Mean max-softmax and mean logit norm."""
    z = np.asarray(logits, np.float64)
    return {
        "max_softmax": float(softmax(z).max(axis=1).mean()),
        "logit_norm": float(np.linalg.norm(z, axis=1).mean()),
    }


def head_metrics(logits, split, prefix: str) -> dict:
    """WGA, mean and group-balanced accuracy of logits on a split, plus the bias-aware
    accuracies and the confidence statistics, each key prefixed with `prefix`_."""
    rep = evaluate_split(logits, split)
    out = {"wga": rep["worst_group_acc"], "mean": rep["mean_acc"], "gba": rep["group_balanced_acc"]}
    b = bias_labels(split)
    if b is not None and (b >= 0).all():
        out.update(bias_accuracies(split.y, np.asarray(logits).argmax(axis=1), b))
    out.update(confidence(logits))
    return {f"{prefix}_{k}": v for k, v in out.items()}


def head_activations(state, Z) -> np.ndarray:
    """What the separation metrics read for a trained head (`HeadState`): the post-ReLU hidden
    layer of an MLP head; the logits of a linear head (spec 11.3 A: "logits for linear heads")."""
    if state.kind == "linear":
        return state.logits(Z)
    a = state.arrays
    Z = np.asarray(Z, np.float32)
    if "mu" in a:
        Z = (Z - a["mu"]) / a["sigma"]
    return np.maximum(Z @ a["W1"].T + a["b1"], 0.0)


def spurious_alignment(W, split) -> float:
    """Embedding-space substitute for core-feature utilisation (spec 11.2 [W]): ||W u|| / ||W||_F
    with u the unit spurious direction, the class-averaged attribute mean shift
    u = unit(E_y[mu_(y,a') - mu_(y,a)]) of `split` (P2 of spec 10.3; the mean over attribute pairs
    when there are more than two values). W is centred over classes first: adding one vector to
    every row leaves the softmax unchanged, so only the centred head is comparable between a
    backbone's fc and a refitted head. Higher = the head reads more of the spurious direction.
    NaN without two attribute values in some class."""
    from embedkit.geometry.directions import attribute_pair_directions, group_means

    known = split.a >= 0
    mu, counts = group_means(
        split.Z[known], split.y[known], split.a[known], split.n_classes, split.n_attrs
    )
    try:
        dirs, _ = attribute_pair_directions(mu, counts, normalize=True)
    except EmbedkitError:
        return float("nan")
    Wc = np.asarray(W, np.float64) - np.asarray(W, np.float64).mean(axis=0)
    norm = np.linalg.norm(Wc)
    if norm == 0:
        return float("nan")
    return float(np.mean([np.linalg.norm(Wc @ u) for u in np.asarray(dirs, np.float64)]) / norm)
