"""Per-group accuracy bars across methods, with error bars over seeds, from run records
(DESIGN section 3: one JSON per fitted head and seed, `metrics.<split>.per_group.<name>.acc`),
as `embedkit.runs.collect` loads them: the figure draws the records it is given."""

from __future__ import annotations

import warnings

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.selection import excluded_flags
from embedkit.viz.canvas import group_colors, new_figure, save


def run_label(record: dict) -> str:
    """A run's name without its seed (`run_id` of embedkit.runs: method, params tag, budget)."""
    rid = record.get("run_id")
    return rid.rsplit("/", 1)[0] if isinstance(rid, str) and "/" in rid else str(record["method"])


def per_group_table(
    records: list[dict], split: str = "test", include_flagged: bool = False
) -> tuple[list[str], list[str], np.ndarray]:
    """(run names, group names, acc [R, G, S] with NaN padding) over the records' seeds. Records
    selected on test or on their own fitting rows are left out unless `include_flagged` (as in
    the results table). The records come from `embedkit.runs.collect`, the loader the tables use,
    so a figure counts the runs its table counts."""
    by_run: dict[str, list[dict]] = {}
    for r in records:
        per = ((r.get("metrics") or {}).get(split) or {}).get("per_group")
        if per and (include_flagged or not excluded_flags(r)):
            by_run.setdefault(run_label(r), []).append(per)
    if not by_run:
        raise EmbedkitError(f"no run record has per-group metrics on the {split!r} split")
    groups = list(dict.fromkeys(g for recs in by_run.values() for per in recs for g in per))
    S = max(len(v) for v in by_run.values())
    acc = np.full((len(by_run), len(groups), S), np.nan)
    for m, recs in enumerate(by_run.values()):
        for s, per in enumerate(recs):
            for gi, g in enumerate(groups):
                v = (per.get(g) or {}).get("acc")
                acc[m, gi, s] = np.nan if v is None else float(v)
    return list(by_run), groups, acc


def group_accuracy_bars(
    records: list[dict], out, split: str = "test", size=(1000, 500), include_flagged: bool = False
):
    """Grouped bars: x = group, one bar per run (method and parameters) = mean accuracy over seeds,
    error bar = sample std over seeds (ddof = 1; none with one seed). Each run's worst group (by
    mean) is hatched."""
    methods, groups, acc = per_group_table(records, split, include_flagged)
    n_seeds = np.sum(np.isfinite(acc), axis=2)
    with np.errstate(invalid="ignore"):
        mean = np.nanmean(np.where(np.isfinite(acc), acc, np.nan), axis=2)
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # one seed: no spread, drawn as 0
            std = np.where(n_seeds > 1, np.nanstd(acc, axis=2, ddof=1), 0.0)
    fig = new_figure(*size)
    ax = fig.add_axes([0.07, 0.22, 0.74, 0.68])
    M, G = mean.shape
    width = 0.8 / M
    x = np.arange(G)
    colors = group_colors(M)
    for m in range(M):
        worst = int(np.nanargmin(mean[m])) if np.isfinite(mean[m]).any() else -1
        bars = ax.bar(
            x - 0.4 + width * (m + 0.5),
            np.nan_to_num(mean[m]),
            width,
            yerr=std[m],
            capsize=2,
            color=colors[m],
            label=f"{methods[m]} (n={int(n_seeds[m].max())})",
            error_kw={"elinewidth": 0.8},
        )
        if worst >= 0:
            bars[worst].set_hatch("//")
            bars[worst].set_edgecolor("black")
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"{split} accuracy")
    ax.set_title(
        f"Per-group {split} accuracy: mean ± std over seeds (ddof=1); hatched = each method's "
        "worst group",
        fontsize=9,
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return save(fig, out)
