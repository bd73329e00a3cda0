"""The LR study's metric tables and figures, one per arm of methods spec 11.3.

Rows are run dicts (one per configuration and seed) carrying `status` ('ok' or 'diverged') and
the §11.2 metrics. A table has one line per configuration (learning rate, or comparator setting)
and one column per metric, each cell the mean ± std over the seeds that finished; the number of
diverged seeds is a column of its own, so nothing is dropped silently.
"""

from __future__ import annotations

import numpy as np

KAPPAS = (0.05, 0.1, 0.2)
SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)

# (key, header): every §11.2 metric the arm measures; compressibility carries kappa in its name.
BACKBONE_METRICS = (
    [
        ("erm_wga", "WGA"),
        ("bestval_wga", "WGA best-val ckpt"),
        ("erm_gba", "GBA"),
        ("erm_mean", "mean acc"),
        ("dfr_wga", "DFR WGA"),
        ("erm_acc_ba", "acc_ba"),
        ("erm_acc_bc", "acc_bc"),
        ("erm_bbc", "bbc"),
        ("eff_bcr", "eff_bcr"),
        ("erm_max_softmax", "max softmax"),
        ("erm_logit_norm", "logit norm"),
    ]
    + [(f"net_comp_{k}", f"net_comp_{k}") for k in KAPPAS]
    + [("net_pqi", "PQI(1,2)"), ("prune_max_sparsity", "prunable (≤1pt)")]
    + [(f"prune_wga_{s}", f"WGA@{int(s * 100)}%") for s in SPARSITIES]
    + [
        ("act_sparsity", "act sparsity"),
        ("act_comp_0.1", "act_comp_0.1"),
        ("csep", "csep"),
        ("bsep", "bsep"),
        ("csi", "csi"),
        ("bsi", "bsi"),
        ("core_util", "core util (attr)"),
        ("erm_spur_align", "spur align (emb)"),
        ("train_loss", "train loss"),
    ]
)
HEAD_METRICS = (
    [
        ("final_wga", "WGA"),
        ("best_wga", "WGA best-val"),
        ("final_gba", "GBA"),
        ("final_mean", "mean acc"),
        ("final_acc_ba", "acc_ba"),
        ("final_acc_bc", "acc_bc"),
        ("final_bbc", "bbc"),
        ("eff_bcr", "eff_bcr"),
    ]
    + [(f"comp_{k}", f"comp_{k}") for k in KAPPAS]
    + [("prune_max_sparsity", "prunable (≤1pt)")]
    + [(f"prune_wga_{s}", f"WGA@{int(s * 100)}%") for s in (0.5, 0.9)]
    + [
        ("act_sparsity", "hidden sparsity"),
        ("csep", "csep"),
        ("bsep", "bsep"),
        ("spur_align", "spur align (emb)"),
    ]
)


BACKBONE_PANELS = [
    ("WGA (test)", "erm_wga"),
    ("WGA at best-val ckpt", "bestval_wga"),
    ("acc_bc", "erm_acc_bc"),
    ("bbc", "erm_bbc"),
    ("eff_bcr (train)", "eff_bcr"),
    ("net_comp_0.1", "net_comp_0.1"),
    ("prunable sparsity", "prune_max_sparsity"),
    ("activation sparsity", "act_sparsity"),
    ("csep", "csep"),
    ("bsep", "bsep"),
    ("core util (attribution)", "core_util"),
    ("spur align (embedding)", "erm_spur_align"),
]
HEAD_PANELS = [
    ("WGA (test, final)", "final_wga"),
    ("WGA (best-val step)", "best_wga"),
    ("acc_bc", "final_acc_bc"),
    ("eff_bcr (train)", "eff_bcr"),
    ("comp_0.1", "comp_0.1"),
    ("prunable sparsity", "prune_max_sparsity"),
    ("hidden sparsity", "act_sparsity"),
    ("csep", "csep"),
    ("bsep", "bsep"),
    ("spur align", "spur_align"),
]


def mean_std(values) -> tuple[float, float, int]:
    v = np.asarray(
        [float(x) for x in values if x is not None and np.isfinite(float(x))], np.float64
    )
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std()) if v.size > 1 else 0.0, int(v.size)


def summarize(rows: list[dict], label: str, columns) -> list[dict]:
    """One line per value of `label` (in first-seen order): runs, diverged, and mean / std / n
    per column over the finished runs."""
    out = []
    for value in dict.fromkeys(r[label] for r in rows):
        runs = [r for r in rows if r[label] == value]
        done = [r for r in runs if r.get("status") == "ok"]
        line = {label: value, "runs": len(runs), "diverged": len(runs) - len(done)}
        for key, _ in columns:
            line[key], line[key + "_std"], line[key + "_n"] = mean_std([r.get(key) for r in done])
        out.append(line)
    return out


def markdown(summary: list[dict], label: str, columns, title: str = "") -> str:
    """Cells 'mean ± std' (std over seeds; plain mean for one seed); columns nobody measured are
    left out."""
    shown = [(k, h) for k, h in columns if any(line[k + "_n"] for line in summary)]

    def cell(line, key):
        m, s, n = line[key], line[key + "_std"], line[key + "_n"]
        if not n:
            return "—"
        return f"{m:.3f}" + (f" ± {s:.3f}" if n > 1 else "")

    def name(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    head = f"| {label} | runs | diverged | " + " | ".join(h for _, h in shown) + " |"
    rule = "|" + "---|" * (3 + len(shown))
    body = [
        f"| {name(line[label])} | {line['runs']} | {line['diverged']} | "
        + " | ".join(cell(line, k) for k, _ in shown)
        + " |"
        for line in summary
    ]
    return "\n".join(([f"### {title}", ""] if title else []) + [head, rule, *body])


def figure(series: dict, panels, path, title: str = "", comparators: dict | None = None) -> None:
    """Metric against learning rate (log axis), one panel per (title, key) in `panels`.
    `series`: {name: summary lines with an `lr` label}; `comparators`: {name: summary lines with a
    `config` label}, drawn as dashed horizontal lines (mean over seeds) so they read against the
    LR curve at the same budget. Drawn without pyplot (viz.canvas)."""
    from embedkit.viz.canvas import new_figure, save

    panels = [
        (t, k)
        for t, k in panels
        if any(line[k + "_n"] for lines in series.values() for line in lines)
    ]
    cols = min(4, max(1, len(panels)))
    rows = -(-len(panels) // cols) or 1
    fig = new_figure(int(380 * cols), int(300 * rows))
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    colors = ["C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9"]
    for ax, (panel_title, key) in zip(axes.ravel(), panels):
        for name, lines in series.items():
            lrs = np.array([line["lr"] for line in lines], np.float64)
            m = np.array([line[key] for line in lines])
            s = np.array([line[key + "_std"] for line in lines])
            ax.errorbar(lrs, m, yerr=np.nan_to_num(s), marker="o", capsize=3, label=name)
        for c, (name, line) in zip(
            colors * 9,
            (
                (f"{n}: {ln['config']}", ln)
                for n, lines in (comparators or {}).items()
                for ln in lines
            ),
        ):
            if line[key + "_n"]:
                ax.axhline(line[key], color=c, ls="--", lw=1, label=name)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(panel_title, fontsize=9)
        ax.grid(alpha=0.3)
    if panels:
        axes.ravel()[0].legend(fontsize=6)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    # fixed margins: tight_layout costs seconds per panel grid on a loaded CPU
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.9, wspace=0.3, hspace=0.45)
    save(fig, path)
