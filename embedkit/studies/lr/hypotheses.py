"""The claims of the large-learning-rate paper (methods spec 11.1) as hypothesis tests on a study's
runs.

Each claim names one or more §11.2 metrics and the sign it predicts for "higher learning rate".
For a series of runs (one row per learning rate and seed; diverged runs are counted, not used):

- the trend test is Spearman's rank correlation between the learning rate and the metric over every
  finished run, with a bootstrap interval over seeds: seeds are drawn with replacement (all of a
  seed's runs travel together, so the LR grid stays intact) and the correlation is recomputed;
- the comparator test (claim "LR beats other regularisers") takes the best learning rate and the
  best comparator setting at the same budget (by their mean over seeds, in the claim's direction)
  and bootstraps the difference of their means over seeds.

Verdicts: `supported` when the interval lies on the predicted side of 0, `not supported` when it
lies on the other side, `inconclusive` otherwise (or with fewer than 3 learning rates or 2 runs).
Nothing here reads test data to choose anything: the metrics were computed by the study; this
module only summarises them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedkit.tables import markdown

SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


@dataclass(frozen=True)
class Claim:
    key: str
    text: str
    # ((metric, +1 if higher LR should raise it, -1 if lower), ...); the first is primary
    metrics: tuple


# Spec 11.1, one line each; metric names as the study's rows spell them.
BACKBONE_CLAIMS = (
    Claim(
        "robustness",
        "higher LR gives robustness to spurious correlations",
        (("erm_wga", +1), ("erm_acc_bc", +1), ("bestval_wga", +1), ("dfr_wga", +1)),
    ),
    Claim(
        "compressibility",
        "higher LR gives more compressible networks",
        (("net_comp_0.1", +1), ("prune_max_sparsity", +1)),
    ),
    Claim(
        "core_features",
        "higher LR uses the core feature more",
        (("core_util", +1), ("erm_spur_align", -1)),
    ),
    Claim(
        "class_separation",
        "higher LR separates classes better (and biases less)",
        (("csep", +1), ("bsep", -1)),
    ),
    Claim("activation_sparsity", "higher LR gives sparser activations", (("act_sparsity", +1),)),
    Claim(
        "mechanism",
        "v2 mechanism: bias-conflicting rows carry more of the loss (confident mispredictions)",
        (("eff_bcr", +1), ("erm_bbc", +1)),
    ),
)
HEAD_CLAIMS = (
    Claim(
        "robustness",
        "higher LR gives robustness to spurious correlations",
        (("final_wga", +1), ("final_acc_bc", +1), ("best_wga", +1)),
    ),
    Claim("compressibility", "higher LR gives more compressible heads", (("comp_0.1", +1),)),
    Claim("core_features", "higher LR reads the spurious direction less", (("spur_align", -1),)),
    Claim("class_separation", "higher LR separates classes better", (("csep", +1), ("bsep", -1))),
    Claim(
        "activation_sparsity",
        "higher LR gives sparser hidden activations (MLP heads)",
        (("act_sparsity", +1),),
    ),
)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean rank), as Spearman's correlation uses."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(x, y) -> float:
    """Spearman's rho: the Pearson correlation of the average ranks; NaN when either is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = np.sqrt((rx**2).sum() * (ry**2).sum())
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def _finished(rows, metric):
    return [
        r
        for r in rows
        if r.get("status", "ok") == "ok"
        and r.get(metric) is not None
        and np.isfinite(float(r[metric]))
    ]


def _seed_resamples(seeds, n_boot: int, rng):
    seeds = np.asarray(sorted(set(seeds)))
    return [rng.choice(seeds, len(seeds), replace=True) for _ in range(n_boot)]


def _verdict(lo: float, hi: float, sign: int) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return INCONCLUSIVE
    if sign * lo > 0 and sign * hi > 0:
        return SUPPORTED
    if sign * lo < 0 and sign * hi < 0:
        return NOT_SUPPORTED
    return INCONCLUSIVE


def trend_test(
    rows,
    metric: str,
    sign: int,
    x: str = "lr",
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Spearman's rho of `x` (the learning rate) against `metric` over the finished runs, its
    bootstrap interval over seeds and the verdict for the predicted `sign`."""
    done = _finished(rows, metric)
    out = {
        "metric": metric,
        "sign": sign,
        "n_runs": len(done),
        "n_diverged": sum(1 for r in rows if r.get("status") == "diverged"),
        "n_lrs": len({r[x] for r in done}),
        "rho": float("nan"),
        "ci": [float("nan"), float("nan")],
    }
    if out["n_lrs"] < 3 or len(done) < 3:
        out["verdict"] = INCONCLUSIVE
        out["why"] = "fewer than 3 learning rates with finished runs"
        return out
    xs = np.log(np.array([float(r[x]) for r in done]))
    vs = np.array([float(r[metric]) for r in done])
    seeds = np.array([r["seed"] for r in done])
    out["rho"] = spearman(xs, vs)
    rng = np.random.default_rng(seed)
    memo: dict = {}  # few seeds give few distinct resamples: compute each one once
    boots = []
    for pick in _seed_resamples(seeds, n_boot, rng):
        key = tuple(sorted(pick.tolist()))
        if key not in memo:
            idx = np.concatenate([np.flatnonzero(seeds == s) for s in key])
            memo[key] = spearman(xs[idx], vs[idx])
        boots.append(memo[key])
    boots = np.array([b for b in boots if np.isfinite(b)])
    if boots.size:
        a = (1 - level) / 2
        out["ci"] = [float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))]
    out["verdict"] = _verdict(*out["ci"], sign)
    return out


def _config_means(rows, metric, key):
    """{config: {seed: value}} over finished runs."""
    out: dict = {}
    for r in _finished(rows, metric):
        out.setdefault(r[key], {})[r["seed"]] = float(r[metric])
    return out


def comparator_test(
    lr_rows,
    comp_rows,
    metric: str,
    sign: int,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> dict:
    """Best learning rate against the best comparator setting (each by its seed mean, in the
    claim's direction `sign`), the difference best LR - best comparator with a bootstrap interval
    over the seeds both have, and the verdict (supported = LR better)."""
    lrs = _config_means(lr_rows, metric, "lr")
    comps = _config_means(comp_rows, metric, "config")
    out = {
        "metric": metric,
        "sign": sign,
        "best_lr": None,
        "best_comparator": None,
        "diff": float("nan"),
        "ci": [float("nan"), float("nan")],
    }
    if not lrs or not comps:
        out["verdict"], out["why"] = INCONCLUSIVE, "no finished runs on one side"
        return out
    best_lr = max(lrs, key=lambda c: sign * np.mean(list(lrs[c].values())))
    best_c = max(comps, key=lambda c: sign * np.mean(list(comps[c].values())))
    a, b = lrs[best_lr], comps[best_c]
    out.update(
        best_lr=best_lr,
        best_comparator=best_c,
        lr_mean=float(np.mean(list(a.values()))),
        comparator_mean=float(np.mean(list(b.values()))),
    )
    out["diff"] = out["lr_mean"] - out["comparator_mean"]
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
        out["verdict"], out["why"] = INCONCLUSIVE, "fewer than 2 seeds on both sides"
        return out
    rng = np.random.default_rng(seed)
    diffs = [
        np.mean([a[s] for s in pick]) - np.mean([b[s] for s in pick])
        for pick in _seed_resamples(seeds, n_boot, rng)
    ]
    q = (1 - level) / 2
    out["ci"] = [float(np.quantile(diffs, q)), float(np.quantile(diffs, 1 - q))]
    out["verdict"] = _verdict(*out["ci"], sign)
    return out


def evaluate_claims(rows, claims=BACKBONE_CLAIMS, comparator_rows=None, **kw) -> list[dict]:
    """One result per (claim, metric) whose metric appears in `rows`: the trend test, and with
    `comparator_rows` (the same series' comparator runs, each with a `config` label) the best-LR
    against best-comparator test. The claim's verdict is its primary (first present) metric's."""
    out = []
    for claim in claims:
        present = [(m, s) for m, s in claim.metrics if _finished(rows, m)]
        for k, (m, s) in enumerate(present):
            res = {
                "claim": claim.key,
                "text": claim.text,
                "primary": k == 0,
                "trend": trend_test(rows, m, s, **kw),
            }
            if comparator_rows:
                res["vs_comparators"] = comparator_test(rows, comparator_rows, m, s, **kw)
            out.append(res)
    return out


def _fmt(v, spec=".3f") -> str:
    return "—" if v is None or not np.isfinite(v) else format(v, spec)


def summary_markdown(results: list[dict], title: str) -> str:
    """The verdict table: one line per (claim, metric), primary metrics in bold. Intervals are
    bootstrap percentiles over seeds (no std is reported here)."""
    header = [
        "claim",
        "metric (predicted sign)",
        "Spearman rho [95% CI over seeds]",
        "runs (diverged)",
        "trend verdict",
        "best LR vs best comparator (diff [CI])",
        "comparator verdict",
    ]
    body = []
    for r in results:
        t = r["trend"]
        metric = f"{t['metric']} ({'+' if t['sign'] > 0 else '−'})"
        if r["primary"]:
            metric = f"**{metric}**"
        trend = f"{_fmt(t['rho'], '+.2f')} [{_fmt(t['ci'][0], '+.2f')}, {_fmt(t['ci'][1], '+.2f')}]"
        c = r.get("vs_comparators")
        if c and c.get("best_lr") is not None:
            comp = (
                f"lr {c['best_lr']:g}: {_fmt(c['lr_mean'])} vs {c['best_comparator']}: "
                f"{_fmt(c['comparator_mean'])} ({_fmt(c['diff'], '+.3f')} "
                f"[{_fmt(c['ci'][0], '+.3f')}, {_fmt(c['ci'][1], '+.3f')}])"
            )
            cv = c["verdict"]
        else:
            comp, cv = "—", "—"
        body.append(
            [
                r["claim"],
                metric,
                trend,
                f"{t['n_runs']} ({t['n_diverged']})",
                t["verdict"],
                comp,
                cv,
            ]
        )
    caption = (
        f"### {title}\n\nTrend: Spearman's rho of log LR against the metric over finished runs, "
        "95% bootstrap interval over seeds; comparator: difference of seed means, same bootstrap."
    )
    return markdown(header, body, caption)
