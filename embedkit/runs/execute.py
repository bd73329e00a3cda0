"""Fitting runs: the needs check, one run (`fit_record`) and many (`sweep`), in one process, in
worker processes (`jobs`) or as one slice of a SLURM job array (`shard`).

`fit_record` loads the cache, applies the label budget to val (the same rows for every method
at a given seed), decides the label regime from the visible labels, refuses a method whose needs
the cache cannot meet (`UnmetNeeds`), fits on train and val, evaluates val and test **after** the
fit, runs the leak guard on the head's row sets and writes the record. Test never enters a head:
the per-step test metrics of the history come from a `Monitor` the runner builds with the test
split and passes to `fit`; the head hands it a way to score its candidates.

A sweep is a list of planned runs (method x label budget x seed, in that order). Each planned run
ends in its own record or skip entry, whatever else runs, so the runs are independent: a serial
sweep, `jobs` worker processes and the `shard`s of a job array write the same files. Bitwise
equality needs the same thread count in every case, so a sweep pins torch's and the BLAS
libraries' threads to `threads` around each fit (the record says how many).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from embedkit import metrics
from embedkit.cache import Cache
from embedkit.configs import parse_shard
from embedkit.errors import EmbedkitError
from embedkit.jsonsafe import jsonable
from embedkit.runs.records import (
    FORMAT,
    FORMAT_VERSION,
    begin,
    finished,
    relpath,
    rows_sha,
    run_dir,
    run_id,
    run_name,
    write_record,
    write_skip,
)
from embedkit.selection import apply_label_budget, check_leak, regime, reserve_val

RICHNESS = {"R3": 0, "R2": 1, "R1": 2}  # label regimes by the labels they make visible


class UnmetNeeds(EmbedkitError):
    """The method needs labels or stored arrays that this cache (with this budget) lacks."""


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
        return (
            f"{name} supports label regimes {', '.join(head.regimes)}; "
            f"the visible labels give {regime_}"
        )
    if head.needs_train_attrs and (train.a < 0).any():
        return f"{name} needs the attribute on every train row ({int((train.a < 0).sum())} hidden)"
    if head.needs_val_attrs and not (val.a >= 0).any():
        return f"{name} needs attributes on validation rows; none are visible"
    if getattr(head, "needs_text", False) and not train.text:
        return (
            f"{name} needs text-tower prompt embeddings stored under /text/{train.backbone} "
            "in the cache"
        )
    if getattr(head, "needs_erm_head", False) and train.erm_head is None:
        return f"{name} needs the frozen ERM head (W0, b0) stored with backbone {train.backbone}"
    if getattr(head, "needs_logits", False) and train.logits is None:
        return f"{name} needs stored ERM logits for backbone {train.backbone}"
    check = getattr(head, "unmet", None)
    return check(train, val) if callable(check) else None


def bind_backbones(head, cache, val) -> None:
    """Hand a head that reads other backbones of the same rows (SELF's early checkpoint: its
    `early_keys()`) their val splits; keys the cache lacks are left out for `unmet` to report."""
    keys = getattr(head, "early_keys", lambda: [])()
    if keys:
        have = set(cache.backbones())
        head.bind_backbones({k: cache.split("val", k) for k in keys if k in have})


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------


def _evaluate(head, split) -> dict | None:
    if split is None or len(split) == 0:
        return None
    return metrics.evaluate_split(head.decision_function(split.Z), split)


PROMPT_PROVENANCE = (
    "library",
    "model",
    "pretrained",
    "weights_sha256",
    "preprocess",
    "layer",
    "normalised",
    "precision",
)


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
    threads: int | None = None,
) -> dict:
    """Fit `method` with `params` and `seed` on the cache, evaluate, write the run directory and
    return the record. `splits` = (cache, train, val, test) from `load_splits` to reuse loaded
    arrays across runs. `groups` (jtt / eiil / george): the head sees inferred pseudo-attributes on
    train and val instead of the true ones (embedkit.analysis.infer); the record says so
    (`groups`, regime R3) and the tables mark it. `threads`: torch and BLAS threads during the run
    (None: as they are)."""
    from embedkit import heads
    from embedkit.heads.monitor import Monitor

    params = dict(params or {})
    # Parameters are checked (by the head's PARAMS, in its constructor) before anything is loaded.
    heads.create(method, seed=seed, **params)
    cache, train, val, test = splits or load_splits(cache_path, backbone)
    out_dir = Path(out_dir)
    with pinned_threads(threads):
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
        begin(d)
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
            kept = {k: prov.get(k) for k in PROMPT_PROVENANCE if k in prov}
            prompts = {**prompts, "cache_provenance": kept}
            (d / "prompts.json").write_text(json.dumps(jsonable(prompts), indent=2, sort_keys=True))

        hp = head.get_params()
        record = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "run_id": run_id(method, params, seed, label_budget, val_reserved, groups),
            "method": method,
            "params": {k: v for k, v in hp.items() if k != "seed"},
            "params_given": params,
            "seed": int(seed),
            "seeds": head.seeds,
            "cache": {
                "path": str(Path(cache.path).resolve()),
                "path_rel": relpath(cache.path, out_dir),
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
            "threads": _threads_now(),
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
        return write_record(d, record)


# ----------------------------------------------------------------------------------------------
# Threads
# ----------------------------------------------------------------------------------------------


def _threads_now() -> int:
    import torch

    return int(torch.get_num_threads())


@contextmanager
def pinned_threads(threads: int | None):
    """torch's intra-op threads and the BLAS/OpenMP pools (numpy, scikit-learn) limited to
    `threads` inside, restored after; None leaves them as they are. The same count gives the same
    kernels, so a run in a worker process equals the same run in the parent bit for bit."""
    if not threads:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    prev = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        with threadpool_limits(limits=int(threads)):
            yield
    finally:
        torch.set_num_threads(prev)


# ----------------------------------------------------------------------------------------------
# Sweeps
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """One run of a sweep: its place in the plan fixes its shard."""

    index: int
    method: str
    params: dict
    budget: float
    seed: int


def plan(methods, seeds, params: dict, label_budgets) -> list[Planned]:
    """The sweep's runs in a fixed order: method, then label budget, then seed."""
    out = []
    for method in methods:
        for budget in label_budgets:
            for seed in seeds:
                out.append(Planned(len(out), method, params.get(method, {}), budget, int(seed)))
    return out


def check_params(methods, params: dict) -> None:
    """Every parameter names a method that is run and is valid for it: one line before any fit.
    A parameter for a method that is not run would be silently ignored, so it is refused."""
    from embedkit import heads

    for method, p in params.items():
        if method not in methods:
            key = f"{method}.{next(iter(p), 'KEY')}"
            raise EmbedkitError(
                f"--param {key}=...: {method!r} is not being run (methods: {', '.join(methods)})"
            )
        if method in heads.names():
            heads.create(method, **p)


def _attempt(splits, run: Planned, out_dir, options: dict) -> tuple[dict, str]:
    """Fit one planned run; (record or skip entry, log line). Every outcome is written to the
    run's directory, so the sweep can be resumed and its tables rebuilt from the folder."""
    reserved, groups = options["val_reserved"], options["groups"]
    d = run_dir(out_dir, run.method, run.params, run.seed, run.budget, reserved, groups)
    tag = f"{run_name(run.method, run.params, run.budget, reserved, groups)} seed {run.seed}"

    def skip(status, reason):
        entry = write_skip(
            d, run.method, run.params, run.seed, run.budget, reserved, status, reason, groups
        )
        return entry, f"{tag}: {status} ({reason})"

    try:
        rec = fit_record(
            None,
            run.method,
            run.params,
            run.seed,
            out_dir,
            None,
            run.budget,
            allow_overlap=options["allow_overlap"],
            val_reserved=reserved,
            splits=splits,
            groups=groups,
            threads=options["threads"],
        )
    except UnmetNeeds as e:
        if options["raise_errors"]:
            raise
        return skip("skipped", str(e))
    except ImportError as e:
        if options["raise_errors"]:
            raise
        return skip("unavailable", f"head module not importable: {e}")
    except EmbedkitError as e:
        if options["raise_errors"]:
            raise
        return skip("refused", str(e))
    except Exception as e:  # a bug in one head must not lose the rest of the sweep
        if options["raise_errors"]:
            raise
        last = traceback.format_exception_only(type(e), e)[-1].strip()
        entry, _ = skip("error", last)
        return entry, f"{tag}: ERROR {last}"
    t = rec["metrics"]["test"] or {}
    line = (
        f"{tag}: test WGA {_pct(t.get('worst_group_acc'))}, mean {_pct(t.get('mean_acc'))} "
        f"(plain), {rec['fit_seconds']:.2f} s"
    )
    return rec, line


def _pct(v, digits=1) -> str:
    return "—" if v is None else f"{100 * v:.{digits}f}"


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
    jobs: int = 1,
    threads: int | None = None,
    shard: tuple[int, int] | str | None = None,
    tables: bool | None = None,
    raise_errors: bool = False,
) -> list[dict]:
    """Fit every method x label budget x seed; finished runs (`done` marker) are loaded, not
    refitted. `params` maps a method to its parameters (one for a method not in `methods` is an
    error); `groups` runs every head on inferred groups (see `fit_record`).

    `jobs` > 1 fits in that many worker processes, each run pinned to `threads` threads (default
    cpu_count // jobs); `shard` = (i, n) or 'i/n' fits only the planned runs with index = i mod n.
    Records equal a serial sweep's with the same `threads` (apart from timings). Returns the
    records and skip entries of this call's runs, in plan order, and (unless `tables` is False;
    default: not for a shard, whose siblings write the same folder) writes `results.csv`,
    `results.md` and `results_per_seed.csv` to `out_dir`. `raise_errors` (embedkit fit): a run
    that cannot run raises instead of becoming a skip entry."""
    from embedkit import heads
    from embedkit.runs.tables import write_results

    methods = list(heads.DEFAULT_SWEEP) if methods in ("all", None) else list(methods)
    params = params or {}
    check_params(methods, params)
    jobs = int(jobs)
    if jobs < 1:
        raise EmbedkitError(f"--jobs {jobs}: expected a positive number of worker processes")
    if threads is None and jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
    if threads is not None and int(threads) < 1:
        raise EmbedkitError(f"--threads {threads}: expected a positive thread count")
    i, n = parse_shard(shard) if shard is not None else (0, 1)
    out_dir = Path(out_dir)
    splits = load_splits(cache_path, backbone)
    fingerprint = splits[0].fingerprint(splits[1].backbone)
    options = {
        "allow_overlap": allow_overlap,
        "val_reserved": val_reserved,
        "groups": groups,
        "threads": threads,
        "raise_errors": raise_errors,
    }
    todo, results = [], {}
    for run in plan(methods, seeds, params, label_budgets):
        if run.index % n != i:
            continue
        d = run_dir(out_dir, run.method, run.params, run.seed, run.budget, val_reserved, groups)
        done = finished(d, fingerprint) if skip_existing else None
        if done:
            results[run.index] = done
            tag = run_name(run.method, run.params, run.budget, val_reserved, groups)
            log(f"{tag} seed {run.seed}: done before, skipped")
        else:
            todo.append(run)
    if jobs > 1 and len(todo) > 1:
        for run, (entry, line) in _in_workers(
            cache_path, backbone, todo, out_dir, options, min(jobs, len(todo))
        ):
            results[run.index] = entry
            log(line)
    else:
        for run in todo:
            entry, line = _attempt(splits, run, out_dir, options)
            results[run.index] = entry
            log(line)
    if tables if tables is not None else n == 1:
        write_results(out_dir)
    return [results[k] for k in sorted(results)]


# -- worker processes --------------------------------------------------------------------------

_WORKER: dict = {}


def _worker_init(cache_path, backbone, threads) -> None:
    # Pinned once for the worker's life as well as around each fit: imports and loading run under
    # the same pools as the fit.
    if threads:
        import torch

        torch.set_num_threads(int(threads))
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # already set by an earlier parallel region
            pass
    _WORKER["splits"] = load_splits(cache_path, backbone)


def _worker_run(run: Planned, out_dir, options):
    return _attempt(_WORKER["splits"], run, out_dir, options)


def _in_workers(cache_path, backbone, todo, out_dir, options, jobs):
    """Yield (run, (entry, log line)) as runs finish in `jobs` spawned processes (spawn: a forked
    torch process can deadlock in its thread pools). Longest-first is not known, so runs are
    handed out in plan order, one at a time, to whichever worker is free."""
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=ctx,
        initializer=_worker_init,
        initargs=(str(cache_path), backbone, options["threads"]),
    ) as pool:
        pending = {pool.submit(_worker_run, run, out_dir, options): run for run in todo}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    yield pending.pop(f), f.result()
        except BaseException:
            for f in pending:
                f.cancel()
            raise
