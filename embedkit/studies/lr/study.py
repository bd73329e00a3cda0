"""Large-learning-rate study (methods spec section 11): metrics, the backbone sweep and the
head-level sweep.

Sources: paper arXiv:2507.17748 (claims); metric definitions as in repo mbarsbey/advcomp
(`utils/statistics.py`, `utils/evaluation.py`). Symbols follow spec 11.2:

- comp_kappa(w) = 1 - ||w - T_kappa(w)||_q / ||w||_q, q = 2, T_kappa keeps the top-kappa-magnitude
  entries; the number kept is d - floor((1 - kappa) d) as in advcomp's `get_idx`. Network level:
  every parameter with ndim > 1 concatenated; layer level: the row-wise mean.
- PQ-index: 1 - d^(1/q - 1/p) ||z||_p / ||z||_q (p = 1, q = 2 by default).
- activation sparsity: the fraction of exactly-zero post-ReLU activations.
- class separation on r = |activations|: d_w = mean over classes of the mean pairwise cosine
  distance within the class; d_b = mean over class pairs (i, j) of the mean cosine distance
  between the two classes (advcomp's loop over every (i, j), i = j included); csep = 1 - d_w / d_b.
  With bias labels: bsep (lower is better).
- acc_ba / acc_bc: accuracy on bias-aligned {y = b} / bias-conflicting {y != b} rows; bbc: among
  misclassified bias-conflicting rows, the fraction predicted as the bias label; eff_bcr: the
  share of the summed NLL carried by conflicting rows (train rows, network in train mode).

Entry points: `backbone_study` (spec 11.3 B: one small backbone per learning rate, trained with
`embedkit.backbones.train_backbone.train_erm` and extracted through `embedkit.extract`) and `head_study` (11.3 A: heads
on a fixed cache with the shared SGD trainer); `embedkit lr-study` runs either.
"""

from __future__ import annotations

import numpy as np

from embedkit.errors import EmbedkitError

KAPPAS = (0.05, 0.1, 0.2)
PRUNE_SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)


# ----------------------------------------------------------------------------------------------
# Compressibility (spec 11.2)
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
    return float(np.mean(compressibility(w.reshape(w.shape[0], -1) if w.ndim > 1 else w, kappa, q)))


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
# Activations (spec 11.2)
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


# ----------------------------------------------------------------------------------------------
# Bias-aware accuracies and losses (spec 11.2, advcomp `evaluate`)
# ----------------------------------------------------------------------------------------------


def bias_accuracies(y, pred, b) -> dict:
    """acc_ba on {y = b}, acc_bc on {y != b}, and bbc: among misclassified bias-conflicting rows,
    the fraction predicted as the bias label. `b` is the spurious label in the label space."""
    y, pred, b = np.asarray(y), np.asarray(pred), np.asarray(b)
    aligned = y == b
    conflict = ~aligned
    wrong_bc = conflict & (pred != y)

    def frac(mask, hit):
        return float(hit[mask].mean()) if mask.any() else float("nan")

    return {
        "acc_ba": frac(aligned, pred == y),
        "acc_bc": frac(conflict, pred == y),
        "bbc": frac(wrong_bc, pred == b),
    }


def nll(logits, y) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return lse - z[np.arange(len(z)), np.asarray(y)]


def eff_bcr(logits, y, b) -> float:
    """Loss share of the bias-conflicting rows: sum_{y != b} NLL / sum NLL."""
    loss = nll(logits, y)
    total = loss.sum()
    return float(loss[np.asarray(y) != np.asarray(b)].sum() / total) if total > 0 else float("nan")


def confidence(logits) -> dict:
    """Mean max-softmax and mean logit norm."""
    z = np.asarray(logits, np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    return {
        "max_softmax": float(p.max(axis=1).mean()),
        "logit_norm": float(np.linalg.norm(z, axis=1).mean()),
    }


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


def bias_labels(split) -> np.ndarray | None:
    """The spurious label in the label space (advcomp's b), when the dataset has one attribute
    value per class (colored digits: colour k is the cue of class k); otherwise None."""
    if split.n_attrs != split.n_classes:
        return None
    return split.a


# ----------------------------------------------------------------------------------------------
# Magnitude pruning (spec 11.2, [W] protocol: global unstructured, no fine-tuning)
# ----------------------------------------------------------------------------------------------


def prune_global(model, sparsity: float):
    """A copy of `model` with the `sparsity` fraction of smallest-magnitude entries of every
    parameter with ndim > 1 (pooled over the whole network) set to zero."""
    import copy

    import torch

    pruned = copy.deepcopy(model)
    if sparsity <= 0:
        return pruned
    weights = [p for p in pruned.parameters() if p.ndim > 1]
    flat = torch.cat([p.detach().abs().flatten() for p in weights])
    n_zero = int(round(sparsity * flat.numel()))
    if n_zero == 0:
        return pruned
    # Rank, not a threshold value, so ties at the threshold cannot prune more than asked.
    order = torch.argsort(flat, stable=True)
    keep = torch.ones_like(flat, dtype=torch.bool)
    keep[order[:n_zero]] = False
    start = 0
    with torch.no_grad():
        for p in weights:
            n = p.numel()
            p.mul_(keep[start : start + n].view_as(p).to(p.dtype))
            start += n
    return pruned


# ----------------------------------------------------------------------------------------------
# Tables and the plot
# ----------------------------------------------------------------------------------------------


def _mean_std(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std()) if v.size > 1 else 0.0


def summarize(rows: list[dict], columns: list[str]) -> list[dict]:
    """One line per learning rate: mean (and std over seeds) of `columns` over the runs that
    finished, with the number of diverged runs kept in view."""
    out = []
    for lr in sorted({r["lr"] for r in rows}):
        runs = [r for r in rows if r["lr"] == lr]
        done = [r for r in runs if r["status"] == "ok"]
        line = {"lr": lr, "runs": len(runs), "diverged": len(runs) - len(done)}
        for c in columns:
            line[c], line[c + "_std"] = _mean_std([r.get(c) for r in done])
        out.append(line)
    return out


def write_csv(rows: list[dict], path) -> None:
    import csv

    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys})


def markdown_table(summary: list[dict], columns: list[tuple[str, str]]) -> str:
    """`columns` = [(key, header)]; a cell reads 'mean' or 'mean ± std' when several seeds ran."""

    def cell(line, key):
        m, s = line[key], line[key + "_std"]
        if not np.isfinite(m):
            return "—"
        return f"{m:.3f}" + (f" ± {s:.3f}" if line["runs"] - line["diverged"] > 1 else "")

    head = "| lr | runs | diverged | " + " | ".join(h for _, h in columns) + " |"
    rule = "|" + "---|" * (3 + len(columns))
    body = [
        f"| {line['lr']:g} | {line['runs']} | {line['diverged']} | "
        + " | ".join(cell(line, k) for k, _ in columns)
        + " |"
        for line in summary
    ]
    return "\n".join([head, rule, *body])


def plot(
    summary: list[dict], panels: list[tuple[str, list[tuple[str, str]]]], path, title: str = ""
) -> None:
    """One panel per (title, [(key, label)]) against the learning rate on a log axis. Drawn
    without pyplot (viz.canvas), so a notebook's inline backend is left alone."""
    from embedkit.viz.canvas import new_figure, save

    lrs = np.array([line["lr"] for line in summary])
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = new_figure(int(420 * cols * 1.1), int(320 * rows * 1.1))
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for ax, (panel_title, series) in zip(axes.ravel(), panels):
        for key, label in series:
            m = np.array([line[key] for line in summary])
            s = np.array([line[key + "_std"] for line in summary])
            ax.errorbar(lrs, m, yerr=np.nan_to_num(s), marker="o", capsize=3, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(panel_title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save(fig, path)


# ----------------------------------------------------------------------------------------------
# B. Small backbones, one per learning rate (spec 11.3 B, the paper's regime)
# ----------------------------------------------------------------------------------------------

BACKBONE_COLUMNS = [
    ("erm_wga", "ERM WGA"),
    ("erm_mean", "ERM mean"),
    ("dfr_wga", "DFR WGA"),
    ("dfr_mean", "DFR mean"),
    ("net_comp_0.1", "net comp 0.1"),
    ("act_sparsity", "act sparsity"),
    ("csep", "csep"),
    ("bsep", "bsep"),
    ("erm_acc_bc", "ERM acc_bc"),
    ("erm_spur_align", "ERM spur align"),
    ("prune_max_sparsity", "prunable"),
]
BACKBONE_PANELS = [
    ("worst-group accuracy (test)", [("erm_wga", "ERM head"), ("dfr_wga", "DFR")]),
    ("mean accuracy (test)", [("erm_mean", "ERM head"), ("dfr_mean", "DFR")]),
    ("compressibility (weights)", [(f"net_comp_{k}", f"kappa {k}") for k in KAPPAS]),
    ("activations (test)", [("act_sparsity", "sparsity"), ("act_comp_0.1", "comp 0.1")]),
    ("separation (test)", [("csep", "csep (class)"), ("bsep", "bsep (bias)")]),
    (
        "bias (test)",
        [
            ("erm_acc_bc", "ERM acc_bc"),
            ("erm_bbc", "ERM bbc"),
            ("eff_bcr", "eff_bcr (train)"),
            ("erm_spur_align", "ERM spur align"),
            ("dfr_spur_align", "DFR spur align"),
        ],
    ),
]


def parse_lrs(text) -> list[float]:
    """'0.01,0.03,0.1' (or a sequence) -> sorted distinct positive floats."""
    items = text.replace(";", ",").split(",") if isinstance(text, str) else list(text)
    try:
        lrs = sorted({float(v) for v in items if str(v).strip()})
    except ValueError:
        raise EmbedkitError(
            f"--lrs {text!r}: expected comma-separated numbers such as 0.01,0.03,0.1"
        ) from None
    if not lrs or lrs[0] <= 0:
        raise EmbedkitError(f"--lrs {text!r}: give one or more positive learning rates")
    return lrs


def _prefixed(prefix: str, d: dict) -> dict:
    return {f"{prefix}_{k}": v for k, v in d.items()}


def head_metrics(logits, split, prefix: str) -> dict:
    """WGA, mean and group-balanced accuracy of logits on a split, plus the bias-aware
    accuracies and the confidence statistics of spec 11.2."""
    from embedkit.metrics import evaluate_split

    rep = evaluate_split(logits, split)
    out = {"wga": rep["worst_group_acc"], "mean": rep["mean_acc"], "gba": rep["group_balanced_acc"]}
    b = bias_labels(split)
    if b is not None and (b >= 0).all():
        out.update(bias_accuracies(split.y, np.asarray(logits).argmax(axis=1), b))
    out.update(confidence(logits))
    return _prefixed(prefix, out)


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


def pruning_curve(model, images, preprocess: dict, split, sparsities=PRUNE_SPARSITIES) -> dict:
    """Global magnitude pruning without fine-tuning: test WGA and mean accuracy at each sparsity,
    and `prune_max_sparsity`, the largest sparsity up to which (every grid sparsity up to it)
    mean accuracy stays within 1 point of the unpruned network's, in either direction: a pruned
    network that beats a below-chance original (reversed test correlation) is a different
    network, not a compressed one."""
    from embedkit.backbones.train_backbone import predict_logits
    from embedkit.metrics import evaluate_split

    base = evaluate_split(predict_logits(model, images, preprocess), split)["mean_acc"]
    out, best, intact = {"prune_mean_0": base}, 0.0, True
    for s in sorted(sparsities):
        rep = evaluate_split(predict_logits(prune_global(model, s), images, preprocess), split)
        out[f"prune_wga_{s}"], out[f"prune_mean_{s}"] = rep["worst_group_acc"], rep["mean_acc"]
        intact = intact and abs(rep["mean_acc"] - base) <= 0.01
        if intact:
            best = s
    out["prune_max_sparsity"] = best
    return out


def backbone_row(
    ckpt_path,
    cache_path,
    key: str,
    *,
    test_images=None,
    train_images=None,
    train_b=None,
    train_y=None,
    dfr_seeds=(0,),
    kappas=KAPPAS,
    sparsities=PRUNE_SPARSITIES,
) -> dict:
    """Every spec 11.2 metric of one trained backbone whose embeddings are in `cache_path` under
    `key`: its ERM head (the backbone's own fc, stored logits) and DFR on its features, on test;
    weight compressibility; activation statistics on the test embeddings; eff_bcr in train mode
    on `train_images` (a sample of train rows with labels `train_y` and bias labels `train_b`);
    the pruning curve on `test_images` (rows in the cache's test order)."""
    from embedkit import heads
    from embedkit.backbones.train_backbone import load_checkpoint, predict_logits
    from embedkit.cache import Cache
    from embedkit.metrics import evaluate_split

    model, ckpt = load_checkpoint(ckpt_path)
    cache = Cache.open(cache_path)
    train, val, test = (cache.split(s, backbone=key) for s in ("train", "val", "test"))
    t = ckpt["train"]
    row = {
        "status": "ok",
        "backbone": key,
        "train_seconds": t["seconds"],
        "train_loss": t["final_loss"],
        "train_acc": t["final_acc"],
    }
    row.update(head_metrics(test.logits, test, "erm"))
    dfr = []
    for s in dfr_seeds:  # none: DFR is skipped
        head = heads.create("dfr", seed=s).fit(train, val)
        rep = evaluate_split(head.decision_function(test.Z), test)
        dfr.append((rep["worst_group_acc"], rep["mean_acc"], rep["group_balanced_acc"]))
    if dfr:
        row["dfr_wga"], row["dfr_mean"], row["dfr_gba"] = (float(v) for v in np.mean(dfr, axis=0))
        row["dfr_spur_align"] = spurious_alignment(head.coef_, val)  # the last DFR seed's head
    row["erm_spur_align"] = spurious_alignment(model.fc.weight.detach().numpy(), val)
    params = [p.detach().numpy() for p in model.parameters() if p.ndim > 1]
    for k in kappas:
        row[f"net_comp_{k}"] = network_compressibility(params, k)
        row[f"layer_comp_{k}"] = float(np.mean([layer_compressibility(w, k) for w in params]))
    row["net_pqi"] = float(pq_index(np.concatenate([w.ravel() for w in params])))
    row.update(representation_metrics(test.Z, test, kappas))
    if train_images is not None and train_b is not None:
        logits = predict_logits(
            model,
            train_images,
            ckpt["preprocess"],
            batch_size=int(t["batch_size"]),
            train_mode=True,
        )
        row["eff_bcr"] = eff_bcr(logits, train_y, train_b)
    if test_images is not None and sparsities:
        row.update(pruning_curve(model, test_images, ckpt["preprocess"], test, sparsities))
    return row


def backbone_study(
    dataset,
    lrs,
    out_dir,
    *,
    seeds=(0,),
    root=None,
    dataset_options=None,
    dfr_seeds=(0,),
    kappas=KAPPAS,
    sparsities=PRUNE_SPARSITIES,
    n_eff_bcr: int = 1000,
    extract_batch_size: int = 256,
    device: str = "cpu",
    log=print,
    **train_kwargs,
) -> dict:
    """Train one ERM backbone per (learning rate, seed) with `embedkit.backbones.train_backbone.train_erm`, extract
    each into `out_dir/cache.h5` through the extractor (one backbone key per run, so the cache
    carries each one's provenance), and measure every run with `backbone_row`. A run whose loss
    turns non-finite is recorded as `diverged`, never dropped. Writes `runs.csv` (one row per
    run), `lr_study.csv` / `lr_study.md` (one line per LR, mean and std over seeds),
    `lr_study.png` and `lr_study.json`; returns {rows, summary, files}."""
    from pathlib import Path

    from embedkit.backbones.train_backbone import TrainingDiverged, load_images, train_erm
    from embedkit.determinism import cpu_threads
    from embedkit.extract import extract

    lrs = parse_lrs(lrs)
    log = log or (lambda msg: None)
    out = Path(out_dir)
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    if isinstance(dataset, str):
        from embedkit import data

        ds = data.create(dataset, root=root, **(dataset_options or {}))
    else:
        ds = dataset
    samples = ds.samples()
    cache_path = out / "cache.h5"

    # Images read once for every run: the test rows in the cache's order (pruning) and a seeded
    # sample of train rows (eff_bcr, advcomp's `eff-bcr-nll_train_1000`).
    test_rows = np.flatnonzero(samples.split == 2)
    test_images = load_images(ds, test_rows) if sparsities and test_rows.size else None
    train_rows = np.flatnonzero(samples.split == 0)
    n = min(int(n_eff_bcr), train_rows.size)
    pick = (
        np.sort(np.random.default_rng(0).choice(train_rows, n, replace=False))
        if n
        else train_rows[:0]
    )
    with_b = (
        n > 0
        and len(samples.attr_names) == len(samples.class_names)
        and (samples.a[pick] >= 0).all()
    )
    train_images = load_images(ds, pick) if with_b else None

    rows = []
    # Training sets its own thread count; the extraction and the metrics run under the same one.
    with cpu_threads(train_kwargs.get("threads", 1)):
        for lr in lrs:
            for seed in seeds:
                name = f"lr{lr:g}_seed{seed}"
                ckpt = out / "checkpoints" / f"{name}.pt"
                base = {"lr": lr, "seed": seed, "checkpoint": str(ckpt)}
                log(f"[lr-study] {name}: training")
                try:
                    train_erm(
                        ds,
                        lr=lr,
                        seed=seed,
                        out=ckpt,
                        device=device,
                        log=lambda m, p=name: log(f"  [{p}] {m}"),
                        **train_kwargs,
                    )
                except TrainingDiverged as e:
                    log(f"[lr-study] {name}: diverged at epoch {e.epoch}, step {e.step}")
                    rows.append({**base, "status": "diverged", "diverged_at_step": e.step})
                    continue
                res = extract(
                    ds,
                    f"checkpoint:{ckpt}",
                    cache_path,
                    batch_size=extract_batch_size,
                    workers=0,
                    device=device,
                    overwrite=True,
                    log=lambda m, name=name: log(f"  [{name}] {m}"),
                )
                rows.append(
                    {
                        **base,
                        **backbone_row(
                            ckpt,
                            cache_path,
                            res.key,
                            test_images=test_images,
                            train_images=train_images,
                            train_b=samples.a[pick] if with_b else None,
                            train_y=samples.y[pick],
                            dfr_seeds=dfr_seeds,
                            kappas=kappas,
                            sparsities=sparsities,
                        ),
                    }
                )
                r = rows[-1]
                log(
                    f"[lr-study] {name}: ERM WGA {r['erm_wga']:.3f} mean {r['erm_mean']:.3f} | DFR WGA "
                    f"{r['dfr_wga']:.3f} | net comp 0.1 {r.get('net_comp_0.1', float('nan')):.3f} | "
                    f"act sparsity {r['act_sparsity']:.3f} | csep {r['csep']:.3f}"
                )
    config = {
        "kind": "backbone",
        "dataset": ds.name,
        "dataset_options": dict(dataset_options or {}),
        "dataset_meta": getattr(ds, "meta", {}),
        "lrs": lrs,
        "seeds": list(seeds),
        "dfr_seeds": list(dfr_seeds),
        "kappas": list(kappas),
        "sparsities": list(sparsities or ()),
        "n_eff_bcr": n,
        "train": dict(train_kwargs),
        "cache": str(cache_path),
    }
    return write_outputs(
        rows,
        config,
        out,
        BACKBONE_COLUMNS,
        BACKBONE_PANELS,
        title=f"LR study: {ds.name}, {train_kwargs.get('arch', 'small_cnn')} backbones",
    )


def _finite(obj):
    """NaN and infinities as null, so the JSON file is standard JSON."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_outputs(rows, config, out, columns, panels, title: str) -> dict:
    import json
    from pathlib import Path

    out = Path(out)
    keys = [
        k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("lr", "seed", "status")
    ]
    numeric = [
        k
        for k in keys
        if any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rows)
    ]
    summary = summarize(rows, numeric)
    shown = [(k, h) for k, h in columns if k in numeric]
    files = {
        "runs_csv": out / "runs.csv",
        "csv": out / "lr_study.csv",
        "md": out / "lr_study.md",
        "png": out / "lr_study.png",
        "json": out / "lr_study.json",
    }
    write_csv(rows, files["runs_csv"])
    write_csv(summary, files["csv"])
    table = markdown_table(summary, shown)
    files["md"].write_text(f"# {title}\n\n{table}\n")
    if panels is not None:
        plot(
            summary,
            [
                (t, [(k, lab) for k, lab in s if k in numeric])
                for t, s in panels
                if any(k in numeric for k, _ in s)
            ],
            files["png"],
            title,
        )
    else:
        del files["png"]
    files["json"].write_text(
        json.dumps(
            _finite({"config": config, "runs": rows, "summary": summary}), indent=1, default=str
        )
    )
    return {
        "rows": rows,
        "summary": summary,
        "table": table,
        "files": {k: str(v) for k, v in files.items()},
    }


# ----------------------------------------------------------------------------------------------
# A. Heads on a fixed cache (spec 11.3 A)
# ----------------------------------------------------------------------------------------------

HEAD_COLUMNS = [
    ("final_wga", "final WGA"),
    ("final_mean", "final mean"),
    ("best_wga", "best-val WGA"),
    ("best_mean", "best-val mean"),
    ("comp_0.1", "weight comp 0.1"),
    ("act_sparsity", "hidden sparsity"),
    ("csep", "csep"),
    ("bsep", "bsep"),
    ("final_acc_bc", "acc_bc"),
    ("spur_align", "spur align"),
]
HEAD_PANELS = [
    ("worst-group accuracy (test)", [("final_wga", "final step"), ("best_wga", "best-val step")]),
    ("mean accuracy (test)", [("final_mean", "final step"), ("best_mean", "best-val step")]),
    ("compressibility (head weights)", [(f"comp_{k}", f"kappa {k}") for k in KAPPAS]),
    ("hidden activations (MLP)", [("act_sparsity", "sparsity"), ("act_comp_0.1", "comp 0.1")]),
    ("separation (test)", [("csep", "csep (class)"), ("bsep", "bsep (bias)")]),
    (
        "bias (test)",
        [
            ("final_acc_bc", "acc_bc"),
            ("final_bbc", "bbc"),
            ("final_max_softmax", "max softmax"),
            ("spur_align", "spur align (val u)"),
        ],
    ),
]


def head_activations(state, Z) -> np.ndarray:
    """What the separation metrics read for a trained head: the post-ReLU hidden layer of an MLP
    head; the logits of a linear head (spec 11.3 A: "logits for linear heads")."""
    if state.kind == "linear":
        return state.logits(Z)
    a = state.arrays
    Z = np.asarray(Z, np.float32)
    if "mu" in a:
        Z = (Z - a["mu"]) / a["sigma"]
    return np.maximum(Z @ a["W1"].T + a["b1"], 0.0)


def prune_head(state, sparsity: float):
    """A copy of a head (`HeadState`) with the `sparsity` fraction of smallest-magnitude entries of
    its weight matrices (pooled, as `prune_global`) set to zero; biases untouched."""
    from embedkit.heads.trainer import HeadState

    names = [n for n in ("coef", "W1", "W2") if n in state.arrays]
    flat = np.concatenate([np.abs(state.arrays[n]).ravel() for n in names])
    n_zero = int(round(sparsity * flat.size))
    keep = np.ones(flat.size, bool)
    keep[np.argsort(flat, kind="stable")[:n_zero]] = False
    arrays, start = dict(state.arrays), 0
    for n in names:
        w = state.arrays[n]
        arrays[n] = w * keep[start : start + w.size].reshape(w.shape)
        start += w.size
    return HeadState(state.kind, arrays)


def head_pruning_curve(state, split, sparsities=PRUNE_SPARSITIES) -> dict:
    """`pruning_curve` for a head on cached features (same keys, same 1-point rule)."""
    from embedkit.metrics import evaluate_split

    base = evaluate_split(state.logits(split.Z), split)["mean_acc"]
    out, best, intact = {"prune_mean_0": base}, 0.0, True
    for s in sorted(sparsities or ()):
        rep = evaluate_split(prune_head(state, s).logits(split.Z), split)
        out[f"prune_wga_{s}"], out[f"prune_mean_{s}"] = rep["worst_group_acc"], rep["mean_acc"]
        intact = intact and abs(rep["mean_acc"] - base) <= 0.01
        if intact:
            best = s
    if sparsities:
        out["prune_max_sparsity"] = best
    return out


def head_study(
    cache_path,
    lrs,
    out_dir,
    *,
    backbone: str | None = None,
    model: str = "linear",
    hidden: int = 512,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    steps: int = 2000,
    eval_every: int = 200,
    batch_size: int = 128,
    seeds=(0,),
    standardize: bool = False,
    kappas=KAPPAS,
    sparsities=PRUNE_SPARSITIES,
    plot: bool = True,
    log=print,
) -> dict:
    """Train linear (or MLP) heads at every learning rate of `lrs` on a fixed cache with the
    shared SGD trainer (`embedkit.heads.trainer.fit_grid`, all LRs in one vectorised run per seed,
    same init and batches for every LR) and report, per LR: test WGA / mean at the last step and at
    the step selected on validation (val WGA, or val worst-class accuracy without attributes), the
    compressibility of the head's weight matrices, and activation sparsity (MLP) and csep / bsep
    on the head's activations. Non-finite weights mark a run `diverged`. Same outputs as
    `backbone_study`."""
    from pathlib import Path

    from embedkit import selection
    from embedkit.cache import Cache
    from embedkit.heads.base import spawn_seeds
    from embedkit.heads.monitor import Monitor
    from embedkit.heads.trainer import fit_grid

    lrs = parse_lrs(lrs)
    log = log or (lambda msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Cache.open(cache_path)
    train, val, test = (cache.split(s, backbone=backbone) for s in ("train", "val", "test"))
    rule = "val_wga" if (val.a >= 0).any() else "val_worst_class"
    grid = [{"lr": lr, "wd": float(weight_decay)} for lr in lrs]
    rows = []
    for seed in seeds:
        s = spawn_seeds(seed)
        log(
            f"[lr-study] heads ({model}) seed {seed}: {len(lrs)} learning rates x {steps} steps on {train.backbone}"
        )
        # The study's table reports test at each config's own val-selected step: the runner-style
        # monitor records test per evaluation (selection reads val only).
        res = fit_grid(
            train.Z,
            train.y,
            grid,
            val=val,
            monitor=Monitor({"test": test}),
            rule=rule,
            steps=steps,
            eval_every=eval_every,
            batch_size=batch_size,
            model=model,
            hidden=hidden,
            standardize=standardize,
            momentum=momentum,
            init_seed=s["init"],
            sampler_seed=s["sampler"],
            device="cpu",
            threads=1,
        )
        for k, cfg in enumerate(res.configs):
            row = {"lr": cfg["lr"], "seed": seed}
            state = res.final[k]
            if not all(np.isfinite(v).all() for v in state.arrays.values()):
                rows.append({**row, "status": "diverged"})
                continue
            recs = [r for r in res.history if r["config_id"] == k]
            best = selection.select(recs, rule)
            row.update(
                status="ok",
                best_step=best["step"],
                best_wga=best["test"]["worst_group_acc"],
                best_mean=best["test"]["mean_acc"],
            )
            row.update(head_metrics(state.logits(test.Z), test, "final"))
            weights = [v for name, v in state.arrays.items() if name in ("coef", "W1", "W2")]
            for kappa in kappas:
                row[f"comp_{kappa}"] = network_compressibility(weights, kappa)
            b = bias_labels(train)
            if b is not None and (b >= 0).all():
                row["eff_bcr"] = eff_bcr(state.logits(train.Z), train.y, b)
            row.update(head_pruning_curve(state, test, sparsities))
            if state.kind == "linear":
                row["spur_align"] = spurious_alignment(state.arrays["coef"], val)
            H = head_activations(state, test.Z)
            rep = representation_metrics(H, test, kappas)
            if state.kind == "linear":  # logits are never exactly zero: no sparsity to report
                rep = {n: v for n, v in rep.items() if not n.startswith("act_")}
            row.update(rep)
            rows.append(row)
            log(
                f"[lr-study] lr {cfg['lr']:g} seed {seed}: final WGA {row['final_wga']:.3f}, best-val WGA "
                f"{row['best_wga']:.3f}, comp 0.1 {row.get('comp_0.1', float('nan')):.3f}, csep {row['csep']:.3f}"
            )
    config = {
        "kind": "head",
        "cache": str(cache_path),
        "backbone": train.backbone,
        "model": model,
        "hidden": hidden if model == "mlp" else None,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "steps": steps,
        "eval_every": eval_every,
        "batch_size": batch_size,
        "standardize": standardize,
        "selection_rule": rule,
        "lrs": lrs,
        "seeds": list(seeds),
        "kappas": list(kappas),
    }
    return write_outputs(
        rows,
        config,
        out,
        HEAD_COLUMNS,
        HEAD_PANELS if plot else None,
        title=f"LR study: {model} heads on {Path(cache_path).name} [{train.backbone}]",
    )
