"""The LR study's tables and the numbers of its figures, for the single-study pipelines
(`embedkit.studies.lr.pipeline`) and for each arm of the protocol (methods spec 11.3).

Rows are run dicts (one per configuration and seed) carrying `status` ('ok' or 'diverged') and
the §11.2 metrics (`embedkit.studies.lr.metrics`). A summary has one line per configuration
(learning rate, or comparator setting) and per metric its mean, std and count over the seeds that
finished (`embedkit.metrics.seed_summary`: std ddof = 1, None for one seed); the number of
diverged seeds is a column of its own, so nothing is dropped silently. Markdown and CSV leave
through the shared writer (`embedkit.tables`), every caption naming the std rule; the figure is
drawn by `embedkit.viz.lr` from the panels built here.
"""

from __future__ import annotations

import numpy as np

from embedkit.metrics import seed_summary
from embedkit.studies.lr.metrics import KAPPAS
from embedkit.studies.lr.pruning import PRUNE_SPARSITIES
from embedkit.tables import STD_RULE, markdown

STD_CAPTION = (
    f"Cells: mean ± std over the seeds that finished (std: {STD_RULE}; a plain mean for one "
    "seed, — where nothing was measured). Diverged runs are counted, never averaged."
)

# (key, header): every §11.2 metric the protocol's arm measures; compressibility carries kappa in
# its name.
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
    + [(f"prune_wga_{s}", f"WGA@{int(s * 100)}%") for s in PRUNE_SPARSITIES]
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

# Figure panels: (title, [(key, curve label)]); a label None names the curve by its series.
BACKBONE_PANELS = [
    ("WGA (test)", [("erm_wga", None)]),
    ("WGA at best-val ckpt", [("bestval_wga", None)]),
    ("acc_bc", [("erm_acc_bc", None)]),
    ("bbc", [("erm_bbc", None)]),
    ("eff_bcr (train)", [("eff_bcr", None)]),
    ("net_comp_0.1", [("net_comp_0.1", None)]),
    ("prunable sparsity", [("prune_max_sparsity", None)]),
    ("activation sparsity", [("act_sparsity", None)]),
    ("csep", [("csep", None)]),
    ("bsep", [("bsep", None)]),
    ("core util (attribution)", [("core_util", None)]),
    ("spur align (embedding)", [("erm_spur_align", None)]),
]
HEAD_PANELS = [
    ("WGA (test, final)", [("final_wga", None)]),
    ("WGA (best-val step)", [("best_wga", None)]),
    ("acc_bc", [("final_acc_bc", None)]),
    ("eff_bcr (train)", [("eff_bcr", None)]),
    ("comp_0.1", [("comp_0.1", None)]),
    ("prunable sparsity", [("prune_max_sparsity", None)]),
    ("hidden sparsity", [("act_sparsity", None)]),
    ("csep", [("csep", None)]),
    ("bsep", [("bsep", None)]),
    ("spur align", [("spur_align", None)]),
]

# The single-study pipelines' tables (`lr_study.md`) and figures (`lr_study.png`).
STUDY_BACKBONE_COLUMNS = [
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
STUDY_BACKBONE_PANELS = [
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
STUDY_HEAD_COLUMNS = [
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
STUDY_HEAD_PANELS = [
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


def _finite(values) -> list[float]:
    """The measured values: None and NaN (a metric a run could not compute) are left out."""
    return [float(x) for x in values if x is not None and np.isfinite(float(x))]


def summarize(rows: list[dict], label: str, keys) -> list[dict]:
    """One line per value of `label` (in first-seen order): runs, diverged, and per key its
    mean / std / n over the finished runs (`seed_summary`; None where nothing was measured)."""
    out = []
    for value in dict.fromkeys(r[label] for r in rows):
        runs = [r for r in rows if r[label] == value]
        done = [r for r in runs if r.get("status") == "ok"]
        line = {label: value, "runs": len(runs), "diverged": len(runs) - len(done)}
        for key in keys:
            s = seed_summary(_finite(r.get(key) for r in done))
            line[key], line[key + "_std"], line[key + "_n"] = s["mean"], s["std"], s["n"]
        out.append(line)
    return out


def _measured(lines, key) -> bool:
    return any(line.get(key + "_n") for line in lines)


def table_markdown(summary: list[dict], label: str, columns, title: str = "") -> str:
    """The summary as markdown, `title` and the std rule in its caption: cells 'mean ± std'
    (a plain mean for one seed); columns nobody measured are left out."""
    shown = [(k, h) for k, h in columns if _measured(summary, k)]

    def cell(line, key):
        m, s = line.get(key), line.get(key + "_std")
        if m is None:
            return "—"
        return f"{m:.3f}" + (f" ± {s:.3f}" if s is not None else "")

    def name(v):
        return f"{v:g}" if isinstance(v, float) else str(v)

    header = [label, "runs", "diverged", *(h for _, h in shown)]
    body = [
        [name(line[label]), line["runs"], line["diverged"], *(cell(line, k) for k, _ in shown)]
        for line in summary
    ]
    caption = (f"### {title}\n\n" if title else "") + STD_CAPTION
    return markdown(header, body, caption)


COLORS = ["C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9"]


def figure_panels(series: dict, panels, comparators: dict | None = None) -> list[dict]:
    """The panels `embedkit.viz.lr.lr_figure` draws. `series`: {name: summary lines with an
    `lr` label}, one curve per (series, key) that was measured; `comparators`: {name: summary
    lines with a `config` label}, one dashed level (mean over seeds) per measured line, coloured
    by its place among all comparator lines. A panel with no curve is left out."""
    comp_lines = [
        (f"{n}: {ln['config']}", ln, COLORS[i % len(COLORS)])
        for i, (n, ln) in enumerate(
            (n, ln) for n, lines in (comparators or {}).items() for ln in lines
        )
    ]
    out = []
    for title, keys in panels:
        curves = [
            {
                "label": name if lab is None else (lab if len(series) == 1 else f"{name}: {lab}"),
                "lr": [line["lr"] for line in lines],
                "mean": [line.get(key) for line in lines],
                "std": [line.get(key + "_std") for line in lines],
            }
            for key, lab in keys
            for name, lines in series.items()
            if _measured(lines, key)
        ]
        if not curves:
            continue
        levels = [
            {"label": name, "value": line[key], "color": color}
            for key, _ in keys
            for name, line, color in comp_lines
            if line.get(key + "_n")
        ]
        out.append({"title": title, "curves": curves, "levels": levels})
    return out
