"""Result tables from run records: one row per run (method, parameters, label budget, backbone) with
the mean and sample std over seeds, one row per seed, and their markdown. Written through the shared
writer (embedkit.tables); the records come from `records.collect`, the loader the figures use
too."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from embedkit import metrics
from embedkit.runs.records import collect
from embedkit.selection import excluded_flags
from embedkit.tables import STD_RULE, markdown, write_csv

TABLE_METRICS = (
    ("worst_group_acc", "wga"),
    ("mean_acc", "plain"),
    ("weighted_mean_acc", "trainw"),
    ("group_balanced_acc", "gba"),
)
# Flags shown in a row's notes (the excluding ones only with --include-flagged).
NOTED_FLAGS = ("partial_groups", "reconstructed", "oracle", "selected_on_fit_data")


def _cell(mean, std, digits=1) -> str:
    if mean is None:
        return "—"
    if std is None:
        return f"{100 * mean:.{digits}f}"
    return f"{100 * mean:.{digits}f} ± {100 * std:.{digits}f}"


def results_table(entries, include_flagged: bool = False) -> list[dict]:
    """One row per (method, params, label budget, backbone): mean and sample std (ddof = 1) over
    seeds of the test metrics, the selection rule and split, and the reasons for skipped runs."""
    by_run: dict[tuple, list] = {}
    for e in entries:
        key = (e["run_id"].rsplit("/", 1)[0], e.get("cache", {}).get("backbone_key", ""))
        by_run.setdefault(key, []).append(e)
    rows = []
    for (name, backbone), es in by_run.items():
        recs = [e for e in es if "metrics" in e and (include_flagged or not excluded_flags(e))]
        skipped = [e for e in es if "status" in e]
        flagged = sorted({f for e in es if "metrics" in e for f in excluded_flags(e)})
        first = (recs or es)[0]
        row = {
            "run": name,
            "method": first["method"],
            "params": json.dumps(first.get("params_given") or {}, sort_keys=True),
            "backbone": backbone,
            "label_budget": first.get("label_budget", 1.0),
            "n_seeds": len(recs),
            "seeds": ",".join(str(e["seed"]) for e in sorted(recs, key=lambda e: e["seed"])),
        }
        if not recs:
            row["status"] = skipped[0]["status"] if skipped else "flagged"
            row["notes"] = (
                skipped[0]["reason"] if skipped else f"every seed flagged: {', '.join(flagged)}"
            )
            rows.append(row)
            continue
        r0 = recs[0]
        row.update(
            regime=r0.get("regime"),
            rule=r0["selection"].get("rule"),
            split=r0["selection"].get("split"),
            cache_dtype=r0["cache"].get("dtype"),
        )
        for key, short in TABLE_METRICS:
            s = metrics.seed_summary([(e["metrics"]["test"] or {}).get(key) for e in recs])
            row[f"test_{short}_mean"], row[f"test_{short}_std"] = s["mean"], s["std"]
        s = metrics.seed_summary([(e["metrics"]["val"] or {}).get("worst_group_acc") for e in recs])
        row["val_wga_mean"], row["val_wga_std"] = s["mean"], s["std"]
        row["fit_seconds_mean"] = float(np.mean([e["fit_seconds"] for e in recs]))
        notes = sorted(
            {f for e in recs for f, on in e.get("flags", {}).items() if on and f in NOTED_FLAGS}
        )
        if r0.get("groups"):
            notes.insert(0, f"groups={r0['groups']['method']} (inferred)")
        if flagged and not include_flagged:
            notes.append(f"also flagged: {', '.join(flagged)}")
        row["status"] = "ok"
        row["notes"] = ", ".join(notes)
        rows.append(row)
    return rows


def per_seed_table(entries) -> list[dict]:
    out = []
    for e in entries:
        if "metrics" not in e:
            continue
        t, s = e["metrics"]["test"] or {}, e["selection"]
        out.append(
            {
                "run": e["run_id"],
                "method": e["method"],
                "seed": e["seed"],
                "label_budget": e["label_budget"],
                "rule": s.get("rule"),
                "split": s.get("split"),
                "config_id": s.get("config_id"),
                "config": json.dumps(s.get("config"), sort_keys=True),
                "step": s.get("step"),
                "val_score": s.get("score"),
                "test_wga": t.get("worst_group_acc"),
                "test_mean_plain": t.get("mean_acc"),
                "test_mean_trainw": t.get("weighted_mean_acc"),
                "test_gba": t.get("group_balanced_acc"),
                "fit_seconds": e["fit_seconds"],
                "flags": ",".join(k for k, v in e["flags"].items() if v),
            }
        )
    return out


HEADER = (
    "method",
    "budget",
    "seeds",
    "WGA",
    "mean (plain)",
    "mean (trainw)",
    "gba",
    "val WGA",
    "selected by",
    "fit s",
    "notes",
)
CAPTION = (
    f"Test accuracy (%) as mean ± {STD_RULE} over head seeds of one backbone (seed level: head; "
    "n = seeds). Mean kinds: plain = all test rows; trainw = group accuracies weighted by train "
    "group proportions; gba = unweighted mean over groups. 'selected by' = the rule and the split "
    "it read. Runs selected on test (oracle) or on their own fitted rows are left out."
)


def markdown_table(rows: list[dict]) -> str:
    """Test metrics in %, mean ± sample std over seeds; each mean kind in its own column."""
    cells = []
    for r in rows:
        if r["status"] != "ok":
            cells.append(
                [r["run"], f"{r['label_budget']:g}", "0"]
                + ["—"] * 7
                + [f"{r['status']}: {r['notes']}"]
            )
            continue
        cells.append(
            [
                r["run"],
                f"{r['label_budget']:g}",
                str(r["n_seeds"]),
                *(_cell(r[f"test_{s}_mean"], r[f"test_{s}_std"]) for _, s in TABLE_METRICS),
                _cell(r["val_wga_mean"], r["val_wga_std"]),
                f"{r['rule']} on {r['split']}" if r["rule"] else "none (no selection)",
                f"{r['fit_seconds_mean']:.2f}",
                r["notes"],
            ]
        )
    return markdown(HEADER, cells, CAPTION)


TABLE_FILES = ("results.csv", "results.md", "results_per_seed.csv")


def write_results(root, out_dir=None, include_flagged: bool = False, entries=None) -> list[dict]:
    """results.csv, results.md and results_per_seed.csv from the records under `root` (every
    shard's, when several sweeps shared the folder), or from `entries` already collected there."""
    out = Path(out_dir or root)
    out.mkdir(parents=True, exist_ok=True)
    entries = collect(root) if entries is None else entries
    rows = results_table(entries, include_flagged)
    write_csv(out / "results.csv", rows)
    write_csv(out / "results_per_seed.csv", per_seed_table(entries))
    (out / "results.md").write_text(markdown_table(rows))
    return rows
