"""Parity table from results/*.json (writes results/parity.md and prints it)."""

import json
import os
from pathlib import Path

import numpy as np

R = Path(os.environ.get("PARITY_RESULTS", str(Path(__file__).resolve().parent / "results")))
CACHES = ["waterbirds_like", "colored_mnist", "dominoes"]


def ms(v):
    v = 100 * np.asarray(v, float)
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def load(name):
    p = R / name
    return json.loads(p.read_text()) if p.exists() else None


def per_seed(v):
    return " / ".join(f"{100 * x:.2f}" for x in v)


lines = []
lines += [
    "### HSFM (preset waterbirds, alpha = 1e-3 on both sides, hard set + selection on all of val, same start head)",
    "",
    "| cache | start head val / test WGA | embedkit hsfm test WGA | official, own support draw | official, embedkit's support rows | embedkit per seed | official (own draw) per seed | official (aligned) per seed | selected epochs embedkit / official aligned |",
    "|---|---|---|---|---|---|---|---|---|",
]
for c in CACHES:
    e = load(f"embedkit_hsfm_{c}.json")
    o = load(f"official_hsfm_{c}.json")
    oa = load(f"official_hsfm_{c}_aligned.json")
    if not e or not e["hsfm"]:
        continue
    ev = [r["test_wga"] for r in e["hsfm"]]
    ov = [r["test_wga"] for r in o["runs"]] if o else []
    av = [r["test_wga"] for r in oa["runs"]] if oa else []
    ep = (
        "/".join(str(r["best_epoch"]) for r in e["hsfm"])
        + " vs "
        + ("/".join(str(r["best_epoch"]) for r in oa["runs"]) if oa else "—")
    )
    lines.append(
        f"| {c} | {100 * e['hsfm_start_val_wga']:.1f} / {100 * e['hsfm_start_test_wga']:.1f} | {ms(ev)} | "
        f"{ms(ov) if ov else '—'} | {ms(av) if av else '—'} | {per_seed(ev)} | {per_seed(ov)} | {per_seed(av)} | {ep} |"
    )
lines += [
    "",
    "### AFR stage 2 (gamma {4, 12, 20} x lambda {0, .1, .2, .3}, lr 1e-2, 500 full-batch epochs, clip 1; same stage-1 head and held-out rows per seed)",
    "",
    "| cache | embedkit afr test WGA | official train_embeddings.py test WGA | embedkit per seed | official per seed | selected (gamma, lambda, epoch) embedkit / official | official's printed 'Best test at val' |",
    "|---|---|---|---|---|---|---|",
]
for c in CACHES:
    e = load(f"embedkit_afr_{c}.json")
    o = load(f"official_afr_{c}.json")
    if not e or not e["afr"]:
        continue
    ev = [r["test_wga"] for r in e["afr"]]
    ov = [r["test_wga"] for r in o["runs"]] if o else []
    sel_e = "; ".join(
        f"({r['selected']['config']['gamma']:g}, {r['selected']['config']['lam']:g}, {r['selected']['step']})"
        for r in e["afr"]
    )
    sel_o = (
        "; ".join(f"({r['gamma']:g}, {r['lam']:g}, {r['epoch']})" for r in o["runs"]) if o else "—"
    )
    pr = per_seed([r["printed_best_test_at_val"] for r in o["runs"]]) if o else "—"
    lines.append(
        f"| {c} | {ms(ev)} | {ms(ov) if ov else '—'} | {per_seed(ev)} | {per_seed(ov)} | {sel_e} / {sel_o} | {pr} |"
    )
txt = "\n".join(lines) + "\n"
(R / "parity.md").write_text(txt)
print(txt)
