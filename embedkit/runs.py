"""Run records (DESIGN section 3; metrics spec section 6) and result tables.

One run = one method, one parameter set, one seed and one label budget, in its own directory:

    OUT/<method>[-<params sha8>][-budget<b>]/seed<k>/
        record.json     the run record (schema below), written after everything else
        history.jsonl   the head's evaluation records {config_id, config, step, val, test}
        artifacts.npz   the head's arrays (`artifacts_`), its linear weights and the row sets by
        role
        prompts.json    the prompt log (zero-shot and text-projection heads)
        done            empty marker written last; a sweep skips directories that have it

`fit_record` loads the cache, applies the label budget to val (the same rows for every method
at a given seed), decides the label regime from the visible labels, refuses a method whose needs
the cache cannot meet (`UnmetNeeds`), fits on train and val, evaluates val and test **after** the
fit, runs the leak guard on the head's row sets and writes the record. Test never enters a head:
the per-step test metrics of the history come from a `Monitor` the runner builds with the test
split and passes to `fit`; the head hands it a way to score its candidates. `sweep` does that for
many methods and seeds and writes the results table; unmet needs, missing head modules and
refusals become table rows with their reason.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import json
import math
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from embedkit import metrics
from embedkit.cache import Cache
from embedkit.errors import EmbedkitError
from embedkit.selection import apply_label_budget, check_leak, regime, reserve_val

FORMAT = "embedkit-run"
FORMAT_VERSION = 1
RICHNESS = {"R3": 0, "R2": 1, "R1": 2}  # label regimes by the labels they make visible
TABLE_METRICS = (
    ("worst_group_acc", "wga"),
    ("mean_acc", "plain"),
    ("weighted_mean_acc", "trainw"),
    ("group_balanced_acc", "gba"),
)


class UnmetNeeds(EmbedkitError):
    """The method needs labels or stored arrays that this cache (with this budget) lacks."""


# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def jsonable(x):
    """numpy scalars/arrays to Python, NaN/inf to None, tuples to lists, dict keys to str."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set)):
        return [jsonable(v) for v in (sorted(x) if isinstance(x, set) else x)]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def rows_sha(rows) -> str:
    """SHA-256 of a row set as sorted little-endian int64 (metrics spec 4.4)."""
    return hashlib.sha256(np.sort(np.asarray(rows, np.int64)).astype("<i8").tobytes()).hexdigest()


def params_tag(params: dict) -> str:
    return hashlib.sha256(json.dumps(jsonable(params), sort_keys=True).encode()).hexdigest()[:8]


def run_name(
    method: str,
    params: dict | None = None,
    label_budget: float = 1.0,
    val_reserved: float = 0.0,
    groups: str | None = None,
) -> str:
    name = method + (f"-{params_tag(params)}" if params else "")
    name += f"-budget{label_budget:g}" if label_budget < 1.0 else ""
    name += f"-reserved{val_reserved:g}" if val_reserved > 0 else ""
    return name + (f"-groups_{groups}" if groups else "")


def run_dir(out_dir, method, params, seed, label_budget=1.0, val_reserved=0.0, groups=None) -> Path:
    return (
        Path(out_dir)
        / run_name(method, params, label_budget, val_reserved, groups)
        / f"seed{int(seed)}"
    )


def _versions() -> dict:
    import sklearn

    from embedkit.version import __version__

    return {
        "embedkit": __version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "python": sys.version.split()[0],
    }


def load_splits(cache_path, backbone=None):
    """(cache, train, val, test) with every split loaded once."""
    cache = Cache.open(cache_path)
    return (cache, *(cache.split(s, backbone) for s in ("train", "val", "test")))


# ----------------------------------------------------------------------------------------------
# Needs
# ----------------------------------------------------------------------------------------------


def unmet_needs(head, train, val, regime_: str) -> str | None:
    """Why `head` cannot run on these splits (None if it can): label regime, attributes on
    train/val, and stored arrays the head declares (`needs_text`, `needs_erm_head`,
    `needs_logits`), plus the head's own `unmet(train, val)` check when it has one."""
    name = getattr(head, "name", type(head).__name__)
    # R1 offers every label of R2, and R2 every label of R3: a method runs when one of its
    # regimes needs no more labels than are visible (it ignores the rest).
    if not any(RICHNESS[r] <= RICHNESS[regime_] for r in head.regimes):
        return f"{name} supports label regimes {', '.join(head.regimes)}; the visible labels give {regime_}"
    if head.needs_train_attrs and (train.a < 0).any():
        return f"{name} needs the attribute on every train row ({int((train.a < 0).sum())} hidden)"
    if head.needs_val_attrs and not (val.a >= 0).any():
        return f"{name} needs attributes on validation rows; none are visible"
    if getattr(head, "needs_text", False) and not train.text:
        return f"{name} needs text-tower prompt embeddings stored under /text/{train.backbone} in the cache"
    if getattr(head, "needs_erm_head", False) and train.erm_head is None:
        return f"{name} needs the frozen ERM head (W0, b0) stored with backbone {train.backbone}"
    if getattr(head, "needs_logits", False) and train.logits is None:
        return f"{name} needs stored ERM logits for backbone {train.backbone}"
    check = getattr(head, "unmet", None)
    return check(train, val) if callable(check) else None


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------


def bind_backbones(head, cache, val) -> None:
    """Hand a head that reads other backbones of the same rows (SELF's early checkpoint: its
    `early_keys()`) their val splits; keys the cache lacks are left out for `unmet` to report."""
    keys = getattr(head, "early_keys", lambda: [])()
    if keys:
        have = set(cache.backbones())
        head.bind_backbones({k: cache.split("val", k) for k in keys if k in have})


def _evaluate(head, split) -> dict | None:
    if split is None or len(split) == 0:
        return None
    return metrics.evaluate_split(head.decision_function(split.Z), split)


def fit_record(
    cache_path,
    method: str,
    params: dict | None,
    seed: int,
    out_dir,
    backbone: str | None = None,
    label_budget: float = 1.0,
    *,
    allow_overlap: bool = False,
    val_reserved: float = 0.0,
    test_history: bool = True,
    splits=None,
    groups: str | None = None,
) -> dict:
    """Fit `method` with `params` and `seed` on the cache, evaluate, write the run directory and
    return the record. `splits` = (cache, train, val, test) from `load_splits` to reuse loaded
    arrays across runs. `groups` (jtt / eiil / george): the head sees inferred pseudo-attributes on
    train and val instead of the true ones (embedkit.analysis.infer); the record says so
    (`groups`, regime R3) and the tables mark it."""
    from embedkit import heads
    from embedkit.heads.monitor import Monitor

    params = dict(params or {})
    # Parameters are checked (by the head's PARAMS, in its constructor) before anything is loaded.
    heads.create(method, seed=seed, **params)
    cache, train, val, test = splits or load_splits(cache_path, backbone)
    if val_reserved:
        val, reserved = reserve_val(val, val_reserved, seed)
    else:
        reserved = None
    seen = apply_label_budget(val, label_budget, seed)
    reg = regime(train, seen)
    head = heads.create(method, seed=seed, **params)
    inferred = None
    if groups:
        from embedkit.analysis.infer import infer_groups

        inferred = infer_groups(groups, train, seen, seed=head.seeds["infer"])
        train, seen = inferred.apply(train, "train"), inferred.apply(seen, "val")
        reg = regime(train, seen)  # the pseudo-labels' regime decides what can run
    bind_backbones(head, cache, seen)
    why = unmet_needs(head, train, seen, reg)
    if why:
        raise UnmetNeeds(why)

    t0 = time.perf_counter()
    head.fit(train, seen, Monitor({"test": test}) if test_history else Monitor())
    fit_seconds = time.perf_counter() - t0

    split_metrics = {"val": _evaluate(head, seen), "test": _evaluate(head, test)}
    if reserved is not None:
        split_metrics["val_reserved"] = _evaluate(head, reserved)

    rows = {
        role: np.sort(np.asarray(head.rows_.get(role, []), np.int64))
        for role in ("fit", "tune", "select")
    }
    rows["report"] = np.sort(test.rows)
    if reserved is not None:
        rows["reserved"] = np.sort(reserved.rows)
    # Rows a head fitted or tuned on may not be read by its final selection (spec 4.4).
    flags = check_leak(
        np.union1d(rows["fit"], rows["tune"]), rows["select"], rows["report"], allow_overlap
    )
    sel = dict(head.selected_ or {})
    read = getattr(head, "selection_rows_", None)  # the rows `selection.split` names
    sel_rows = np.sort(np.asarray([] if read is None else read, np.int64))
    sel_flags = sel.pop("flags", {}) or {}
    flags.update(
        oracle=bool(sel_flags.get("oracle", False)),
        partial_groups=bool(
            sel_flags.get("partial_groups", False)
            or (split_metrics["val"] or {}).get("partial_groups", False)
        ),
        reconstructed=bool(getattr(head, "reconstructed", False)),
        rows_declared=all(role in head.rows_ for role in ("fit", "tune", "select")),
    )

    d = run_dir(out_dir, method, params, seed, label_budget, val_reserved, groups)
    d.mkdir(parents=True, exist_ok=True)
    (d / "done").unlink(missing_ok=True)
    (d / "skipped.json").unlink(missing_ok=True)
    arrays = {f"artifact_{k}": np.asarray(v) for k, v in (head.artifacts_ or {}).items()}
    arrays.update({f"rows_{r}": v for r, v in rows.items()})
    for k in ("coef_", "intercept_"):
        if getattr(head, k, None) is not None:
            arrays[k.rstrip("_")] = np.asarray(getattr(head, k))
    np.savez(d / "artifacts.npz", **arrays)
    history = head.history_ or []
    with open(d / "history.jsonl", "w") as f:
        for r in history:
            f.write(json.dumps(jsonable(r)) + "\n")
    prov = cache.provenance(train.backbone)
    info = dict(head.info_ or {})
    prompts = info.pop("prompts", None)
    if prompts is not None:
        prompts = {
            **prompts,
            "cache_provenance": {
                k: prov.get(k)
                for k in (
                    "library",
                    "model",
                    "pretrained",
                    "weights_sha256",
                    "preprocess",
                    "layer",
                    "normalised",
                    "precision",
                )
                if k in prov
            },
        }
        (d / "prompts.json").write_text(json.dumps(jsonable(prompts), indent=2, sort_keys=True))

    hp = head.get_params()
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "run_id": f"{run_name(method, params, label_budget, val_reserved, groups)}/seed{int(seed)}",
        "method": method,
        "params": {k: v for k, v in hp.items() if k != "seed"},
        "params_given": params,
        "seed": int(seed),
        "seeds": head.seeds,
        "cache": {
            "path": str(Path(cache.path).resolve()),
            "path_rel": _relpath(cache.path, out_dir),
            "backbone_key": train.backbone,
            "fingerprint": prov.get("fingerprint", ""),
            "dtype": prov.get("dtype"),
            "dataset": cache.dataset,
        },
        "selection": {
            "rule": sel.get("rule"),
            "split": sel.get("split"),
            "score": sel.get("score"),
            "config_id": sel.get("config_id"),
            "config": sel.get("config"),
            "step": sel.get("step"),
            "tie": sel.get("tie"),
            "grid_size": sel.get("grid_size"),
            "refit": bool(sel.get("refit", False)),
            "rows": {"n": int(len(sel_rows)), "sha256": rows_sha(sel_rows)},
        },
        "fit_seconds": fit_seconds,
        "metrics": split_metrics,
        "mean_kinds": dict(metrics.MEAN_KINDS),
        "label_budget": float(label_budget),
        "val_reserved": float(val_reserved),
        # With inferred groups no true attribute reaches the head: the run is R3 whatever the
        # budget.
        "regime": "R3" if inferred else reg,
        "groups": inferred.record() if inferred else None,
        "val_used_for_training": bool(np.intersect1d(rows["fit"], val.rows).size),
        "rows": {r: {"n": int(len(v)), "sha256": rows_sha(v)} for r, v in rows.items()},
        "flags": flags,
        "info": info,
        "history": {"file": "history.jsonl", "n": len(history)},
        "prompts": prompts,
        "versions": _versions(),
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    record = jsonable(record)
    tmp = d / "record.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))  # insertion order keeps groups in g order
    tmp.replace(d / "record.json")
    (d / "done").touch()
    return record


def _relpath(path, start) -> str:
    import os

    try:
        return os.path.relpath(Path(path).resolve(), Path(start).resolve())
    except ValueError:  # another drive (Windows)
        return str(path)


def load_record(d) -> dict:
    return json.loads((Path(d) / "record.json").read_text())


def load_history(d) -> list[dict]:
    with open(Path(d) / "history.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def is_done(d) -> bool:
    return (Path(d) / "done").exists() and (Path(d) / "record.json").exists()


def finished(d, fingerprint: str) -> dict | None:
    """The finished record in run directory `d`, or None. A finished run of another cache (its
    fingerprint differs) is an error: one runs folder holds the runs of one cache."""
    if not is_done(d):
        return None
    rec = load_record(d)
    if rec["cache"].get("fingerprint") != fingerprint:
        raise EmbedkitError(
            f"{d}: holds a run of another cache ({rec['cache'].get('path')}); "
            f"use another --out folder or --force"
        )
    return rec


# ----------------------------------------------------------------------------------------------
# Sweeps
# ----------------------------------------------------------------------------------------------


def _skip_entry(
    d: Path, method, params, seed, budget, reserved, status, reason, groups=None
) -> dict:
    entry = {
        "format": FORMAT,
        "method": method,
        "params_given": params,
        "seed": int(seed),
        "label_budget": float(budget),
        "val_reserved": float(reserved),
        "status": status,
        "reason": reason,
        "run_id": f"{run_name(method, params, budget, reserved, groups)}/seed{int(seed)}",
    }
    d.mkdir(parents=True, exist_ok=True)
    (d / "done").unlink(missing_ok=True)
    (d / "skipped.json").write_text(json.dumps(jsonable(entry), indent=2, sort_keys=True))
    return entry


def sweep(
    cache_path,
    methods,
    seeds,
    out_dir,
    *,
    params: dict | None = None,
    label_budgets=(1.0,),
    backbone: str | None = None,
    allow_overlap: bool = False,
    val_reserved: float = 0.0,
    skip_existing: bool = True,
    log=print,
    groups: str | None = None,
) -> list[dict]:
    """Fit every method x seed x label budget; finished runs (`done` marker) are loaded, not
    refitted. `params` maps a method to its parameters; `groups` runs every head on inferred groups
    (see `fit_record`). Returns the records and skip entries and writes `results.csv`, `results.md`
    and `results_per_seed.csv` to `out_dir`."""
    from embedkit import heads

    if methods in ("all", None):
        methods = list(heads.DEFAULT_SWEEP)
    params = params or {}
    for method, p in params.items():  # a bad parameter is one line before any fit
        if method in heads.names() and (methods is None or method in methods):
            heads.create(method, **p)
    out_dir = Path(out_dir)
    splits = load_splits(cache_path, backbone)
    fingerprint = splits[0].fingerprint(splits[1].backbone)
    entries = []
    for method in methods:
        p = params.get(method, {})
        for budget in label_budgets:
            for seed in seeds:
                d = run_dir(out_dir, method, p, seed, budget, val_reserved, groups)
                tag = f"{run_name(method, p, budget, val_reserved, groups)} seed {seed}"
                done = finished(d, fingerprint) if skip_existing else None
                if done:
                    entries.append(done)
                    log(f"{tag}: done before, skipped")
                    continue
                try:
                    rec = fit_record(
                        cache_path,
                        method,
                        p,
                        seed,
                        out_dir,
                        backbone,
                        budget,
                        allow_overlap=allow_overlap,
                        val_reserved=val_reserved,
                        splits=splits,
                        groups=groups,
                    )
                except UnmetNeeds as e:
                    entries.append(
                        _skip_entry(
                            d, method, p, seed, budget, val_reserved, "skipped", str(e), groups
                        )
                    )
                    log(f"{tag}: skipped ({e})")
                    break  # the same needs fail for every seed
                except ImportError as e:
                    entries.append(
                        _skip_entry(
                            d,
                            method,
                            p,
                            seed,
                            budget,
                            val_reserved,
                            "unavailable",
                            f"head module not importable: {e}",
                            groups,
                        )
                    )
                    log(f"{tag}: unavailable ({e})")
                    break
                except EmbedkitError as e:
                    entries.append(
                        _skip_entry(
                            d, method, p, seed, budget, val_reserved, "refused", str(e), groups
                        )
                    )
                    log(f"{tag}: refused ({e})")
                except Exception as e:  # a bug in one head must not lose the rest of the sweep
                    last = traceback.format_exception_only(type(e), e)[-1].strip()
                    entries.append(
                        _skip_entry(d, method, p, seed, budget, val_reserved, "error", last, groups)
                    )
                    log(f"{tag}: ERROR {last}")
                else:
                    entries.append(rec)
                    t = rec["metrics"]["test"] or {}
                    log(
                        f"{tag}: test WGA {_pct(t.get('worst_group_acc'))}, mean {_pct(t.get('mean_acc'))} "
                        f"(plain), {rec['fit_seconds']:.2f} s"
                    )
    write_results(out_dir)
    return entries


# ----------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------


def collect(root) -> list[dict]:
    """Every record and skip entry under `root` (a run directory or a folder of runs)."""
    root = Path(root)
    if not root.exists():
        raise EmbedkitError(f"{root}: no such run folder")
    out = []
    for p in sorted(root.rglob("record.json")):
        if (p.parent / "done").exists():
            out.append(json.loads(p.read_text()))
    for p in sorted(root.rglob("skipped.json")):
        out.append(json.loads(p.read_text()))
    return out


def _pct(v, digits=1) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f}"


def _cell(summary, digits=1) -> str:
    if summary["mean"] is None:
        return "—"
    if summary["std"] is None:
        return f"{100 * summary['mean']:.{digits}f}"
    return f"{100 * summary['mean']:.{digits}f} ± {100 * summary['std']:.{digits}f}"


def excluded_flags(rec) -> list[str]:
    """Flags that keep a record out of the default tables (spec 4.4)."""
    f = rec.get("flags", {})
    return [k for k in ("oracle", "selected_on_fit_data", "selected_on_report_rows") if f.get(k)]


def results_table(entries, include_flagged: bool = False) -> list[dict]:
    """One row per (method, params, label budget, backbone): mean and sample std (ddof = 1) over
    seeds of the test metrics, the selection rule and split, and the reasons for skipped runs."""
    groups: dict[tuple, list] = {}
    for e in entries:
        key = (e["run_id"].rsplit("/", 1)[0], e.get("cache", {}).get("backbone_key", ""))
        groups.setdefault(key, []).append(e)
    rows = []
    for (name, backbone), es in groups.items():
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
        if recs:
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
            s = metrics.seed_summary(
                [(e["metrics"]["val"] or {}).get("worst_group_acc") for e in recs]
            )
            row["val_wga_mean"], row["val_wga_std"] = s["mean"], s["std"]
            row["fit_seconds_mean"] = float(np.mean([e["fit_seconds"] for e in recs]))
            notes = sorted(
                {
                    f
                    for e in recs
                    for f, on in e.get("flags", {}).items()
                    if on
                    and f in ("partial_groups", "reconstructed", "oracle", "selected_on_fit_data")
                }
            )
            if r0.get("groups"):
                notes.insert(0, f"groups={r0['groups']['method']} (inferred)")
            row["status"] = "ok"
            row["notes"] = ", ".join(
                notes
                + (
                    [f"also flagged: {', '.join(flagged)}"]
                    if flagged and not include_flagged
                    else []
                )
            )
        else:
            row["status"] = skipped[0]["status"] if skipped else "flagged"
            row["notes"] = (
                skipped[0]["reason"] if skipped else f"every seed flagged: {', '.join(flagged)}"
            )
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


def _write_csv(path: Path, rows: list[dict]) -> None:
    cols = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in cols})


def markdown_table(rows: list[dict]) -> str:
    """Test metrics in %, mean ± sample std over seeds; each mean kind in its own column."""
    head = [
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
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["status"] != "ok":
            cells = (
                [r["run"], f"{r['label_budget']:g}", "0"]
                + ["—"] * 7
                + [f"{r['status']}: {r['notes']}"]
            )
        else:

            def sm(short, r=r):
                return _cell({"mean": r[f"test_{short}_mean"], "std": r[f"test_{short}_std"]})

            cells = [
                r["run"],
                f"{r['label_budget']:g}",
                str(r["n_seeds"]),
                sm("wga"),
                sm("plain"),
                sm("trainw"),
                sm("gba"),
                _cell({"mean": r["val_wga_mean"], "std": r["val_wga_std"]}),
                f"{r['rule']} on {r['split']}" if r["rule"] else "none (no selection)",
                f"{r['fit_seconds_mean']:.2f}",
                r["notes"],
            ]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    caption = (
        "Test accuracy (%) as mean ± sample std (ddof = 1) over head seeds of one backbone (seed level: "
        "head; n = seeds). Mean kinds: plain = all test rows; trainw = group accuracies weighted by train "
        "group proportions; gba = unweighted mean over groups. 'selected by' = the rule and the split it "
        "read. Runs selected on test (oracle) or on their own fitted rows are left out."
    )
    return caption + "\n\n" + "\n".join(lines) + "\n"


def write_results(root, out_dir=None, include_flagged: bool = False) -> list[dict]:
    """results.csv, results.md and results_per_seed.csv from the records under `root`."""
    out = Path(out_dir or root)
    out.mkdir(parents=True, exist_ok=True)
    entries = collect(root)
    rows = results_table(entries, include_flagged)
    _write_csv(out / "results.csv", rows)
    _write_csv(out / "results_per_seed.csv", per_seed_table(entries))
    (out / "results.md").write_text(markdown_table(rows))
    return rows


def write_report(root, out_dir, include_flagged: bool = False) -> dict:
    """Tables from run directories only (nothing is refitted), plus the figures of
    `embedkit.viz.report_figures`: per-group accuracy bars over seeds (`group_accuracy.png`),
    the cache's analysis figures and HSFM's edit views."""
    from embedkit.viz import report_figures

    out = Path(out_dir)
    rows = write_results(root, out, include_flagged)
    files = [out / "results.csv", out / "results.md", out / "results_per_seed.csv"]
    files += [Path(p) for p in (report_figures(Path(root), out) or [])]
    return {"rows": rows, "files": [str(f) for f in files]}
