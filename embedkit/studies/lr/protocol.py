"""The three-arm large-learning-rate study of methods spec 11.3, as jobs and a merge.

A protocol config names the datasets, the backbone series (architecture, optimiser, LR grid),
the seeds, the training budget (steps, batch size, early checkpoint steps), the comparators of arm
C and the head variants of arm A. `jobs(config)` lists one job per (arm B: dataset, series, lr,
seed) and (arm C: dataset, series, comparator setting, seed); `run_job` trains one backbone with
`embedkit.backbones.train_backbone.train_erm`, extracts it into its own cache (so SLURM array
tasks never share a file), measures every §11.2 metric with `pipeline.backbone_row` plus the
attribution share and the best-val checkpoint, and writes `runs/<job>/row.json`. A diverged run
writes its row too. `merge` reads the rows, runs arm A (heads at each LR on the cache of the
series' reference backbone, `pipeline.head_study`), writes one metric table and one figure per
arm, and tests each claim of spec 11.1 (`embedkit.studies.lr.hypotheses`). Orchestration only:
the metrics live in `studies.lr.metrics`, `.pruning` and `.attribution`, the tables in
`studies.lr.tables`, the figure in `embedkit.viz.lr`.

The matched budget is the step count: every run of a series, comparators included, takes the same
number of optimiser steps (spec 11.4: iteration-based). The quick batch-size comparator only goes
down (32, 64 against 128): smaller batches add the gradient noise a larger learning rate adds, and
a 512 batch would cost four times the compute per step; the full grid has both directions.

QUICK: Double-MNIST (4,000 train rows), MLP 5 x 256 with plain SGD at 4 learning rates, 2 seeds,
500 steps; 279 s of CPU time on one thread (measured; about 5 minutes on an idle core). FULL: the
spec's grids, 1,188 jobs (a GPU job or a SLURM array).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.jsonsafe import write_json
from embedkit.studies.lr.pruning import PRUNE_SPARSITIES

SGD_GRID = [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0]
ADAM_GRID = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3]
SPARSITIES = PRUNE_SPARSITIES

QUICK = {
    "name": "quick",
    "datasets": {
        "double_mnist": {
            "dataset": "double_mnist",
            "options": {"n_train": 4000, "n_val": 400, "n_test": 4000, "train_corr": 0.9},
        }
    },
    "series": [
        {
            "arch": "mlp:5x256",
            "optimizer": "sgd",
            "momentum": 0.0,
            "lrs": [0.01, 0.03, 0.1, 0.3],
            "comparator_lr": 0.03,
        }
    ],
    "seeds": [0, 1],
    "train": {"steps": 500, "batch_size": 128, "weight_decay": 0.0, "checkpoint_steps": [100, 250]},
    "comparators": {
        "batch_size": [32, 64],
        "weight_decay": [1e-3, 1e-2],
        "dropout": [0.1, 0.3],
        "l1": [1e-5, 1e-4],
    },
    "heads": {
        "models": ["linear", "mlp"],
        "momenta": [0.9],
        "weight_decays": [0.0],
        "hidden": 256,
        "lrs": [0.01, 0.03, 0.1, 0.3, 1.0],
        "steps": 1000,
        "eval_every": 100,
        "batch_size": 128,
    },
    "dfr_seeds": [0],
    "sparsities": list(SPARSITIES),
    "n_eff_bcr": 1000,
    "n_attribution": 500,
    "attribution": "input_x_gradient",
}


def _full() -> dict:
    series = []
    for arch in ("mlp:5x2000", "small_cnn", "resnet18"):
        series += [
            {
                "arch": arch,
                "optimizer": "sgd",
                "momentum": 0.0,
                "lrs": SGD_GRID,
                "comparator_lr": 1e-2,
            },
            {"arch": arch, "optimizer": "sgd", "momentum": 0.9, "lrs": SGD_GRID},
            {"arch": arch, "optimizer": "adam", "lrs": ADAM_GRID},
        ]
    datasets = {
        f"double_mnist_rho{r}": {"dataset": "double_mnist", "options": {"train_corr": r}}
        for r in (0.9, 0.95, 0.99)
    }
    datasets["dominoes"] = {"dataset": "dominoes", "options": {}}
    return {
        **copy.deepcopy(QUICK),
        "name": "full",
        "datasets": datasets,
        "series": series,
        "seeds": [0, 1, 2],
        "train": {
            "steps": 10000,
            "batch_size": 128,
            "weight_decay": 0.0,
            "checkpoint_steps": [500, 2000, 5000],
        },
        "comparators": {
            "batch_size": [32, 64, 256, 512],
            "weight_decay": [1e-4, 1e-3, 1e-2],
            "dropout": [0.1, 0.3, 0.5],
            "l1": [1e-6, 1e-5, 1e-4],
        },
        "heads": {
            "models": ["linear", "mlp"],
            "momenta": [0.0, 0.9],
            "weight_decays": [0.0, 1e-4],
            "hidden": 512,
            "lrs": SGD_GRID,
            "steps": 20000,
            "eval_every": 1000,
            "batch_size": 128,
        },
        "dfr_seeds": [0, 1, 2],
        "n_attribution": 2000,
    }


CONFIGS = {"quick": QUICK, "full": _full()}
COMPARATOR_FLAGS = {"batch_size": "bs", "weight_decay": "wd", "dropout": "dropout", "l1": "l1"}


def get_config(name_or_dict) -> dict:
    if isinstance(name_or_dict, dict):
        return copy.deepcopy(name_or_dict)
    if name_or_dict not in CONFIGS:
        raise EmbedkitError(f"--protocol {name_or_dict!r}: choose {' or '.join(CONFIGS)}")
    return copy.deepcopy(CONFIGS[name_or_dict])


def series_name(s: dict) -> str:
    opt = f"sgd-m{s.get('momentum', 0.0):g}" if s["optimizer"] == "sgd" else s["optimizer"]
    arch = "resnet18" if s["arch"].startswith("resnet18") else s["arch"].replace(":", "")
    return f"{arch}-{opt}"


def jobs(config: dict) -> list[dict]:
    """Every backbone run of arms B and C, in a fixed order (the SLURM array index)."""
    out = []
    for dkey in config["datasets"]:
        for si, s in enumerate(config["series"]):
            for lr in s["lrs"]:
                for seed in config["seeds"]:
                    out.append(
                        {
                            "arm": "B",
                            "data": dkey,
                            "series": si,
                            "lr": float(lr),
                            "seed": seed,
                            "name": f"B_{dkey}_{series_name(s)}_lr{lr:g}_s{seed}",
                        }
                    )
            if s.get("comparator_lr") is None:
                continue
            for comp, values in config["comparators"].items():
                if comp == "dropout" and not s["arch"].startswith("mlp"):
                    continue  # only the MLP has dropout layers
                for v in values:
                    flag = f"{COMPARATOR_FLAGS[comp]}{v:g}"
                    for seed in config["seeds"]:
                        out.append(
                            {
                                "arm": "C",
                                "data": dkey,
                                "series": si,
                                "lr": float(s["comparator_lr"]),
                                "seed": seed,
                                "comparator": comp,
                                "value": v,
                                "config": f"{COMPARATOR_FLAGS[comp]}={v:g}",
                                "name": f"C_{dkey}_{series_name(s)}_{flag}_s{seed}",
                            }
                        )
    return out


# ----------------------------------------------------------------------------------------------
# One job
# ----------------------------------------------------------------------------------------------

_DATA: dict = {}


def _dataset(config, dkey, root):
    """The dataset and the arrays every run on it reuses, built once per process."""
    spec = config["datasets"][dkey]
    key = (dkey, json.dumps(spec, sort_keys=True), str(root))
    if key not in _DATA:
        from embedkit import data
        from embedkit.backbones.train_backbone import load_images

        ds = data.create(spec["dataset"], root=root, **spec.get("options", {}))
        s = ds.samples()
        rng = np.random.default_rng(0)
        test, val, train = (np.flatnonzero(s.split == c) for c in (2, 1, 0))
        n = min(int(config["n_eff_bcr"]), train.size)
        pick = np.sort(rng.choice(train, n, replace=False))
        attr = test[
            np.sort(
                rng.choice(test.size, min(int(config["n_attribution"]), test.size), replace=False)
            )
        ]
        _DATA.clear()  # one dataset at a time: the full grid's datasets do not all fit in memory
        _DATA[key] = {
            "ds": ds,
            "test_images": load_images(ds, test),
            "val_images": load_images(ds, val),
            "train_pick": pick,
            "train_images": load_images(ds, pick),
            "attr_rows": attr,
            "attr_images": load_images(ds, attr),
        }
    return _DATA[key]


def _train_kwargs(config, job) -> dict:
    s = config["series"][job["series"]]
    kw = {
        "arch": s["arch"],
        "optimizer": s["optimizer"],
        "momentum": float(s.get("momentum", 0.0)),
        **config["train"],
    }
    if job["arm"] == "C":
        kw[job["comparator"]] = job["value"]
    return kw


def bestval_checkpoint(paths, val_images, val, test_images, test) -> dict:
    """Among the run's checkpoints (early ones and the final), the one with the best val WGA, ties
    broken by val group-balanced accuracy, then the earliest; its test WGA and GBA (spec 11.2: 'at
    the best-val checkpoint'). The tie-break matters on Double-MNIST: val is 10 % of train with
    train's correlation, so some of its 100 groups hold one or two rows and val WGA is often 0 at
    every checkpoint."""
    from embedkit.backbones.train_backbone import load_checkpoint, predict_logits
    from embedkit.metrics import evaluate_split

    best = None
    for p in paths:
        model, ck = load_checkpoint(p)
        rep = evaluate_split(predict_logits(model, val_images, ck["preprocess"]), val)
        score = (rep["worst_group_acc"], rep["group_balanced_acc"])
        if best is None or score > best[0]:
            best = (score, ck["train"]["steps"], model, ck)
    score, step, model, ck = best
    rep = evaluate_split(predict_logits(model, test_images, ck["preprocess"]), test)
    return {
        "bestval_step": step,
        "bestval_val_wga": score[0],
        "bestval_val_gba": score[1],
        "bestval_wga": rep["worst_group_acc"],
        "bestval_gba": rep["group_balanced_acc"],
        "bestval_rule": "val_wga, ties: val_gba, then earliest",
    }


def run_job(
    config, job: dict, out, *, root=None, device: str = "cpu", threads: int | None = 1, log=print
) -> dict:
    """Train, extract and measure one job; writes and returns its row (skipped when its row.json
    exists: a restarted array task resumes)."""
    from embedkit.backbones.train_backbone import TrainingDiverged, step_path, train_erm
    from embedkit.cache import Cache
    from embedkit.determinism import cpu_threads
    from embedkit.extract import extract
    from embedkit.studies.lr.attribution import core_utilisation, spurious_mask
    from embedkit.studies.lr.pipeline import backbone_row

    log = log or (lambda m: None)
    run_dir = Path(out) / "runs" / job["name"]
    row_file = run_dir / "row.json"
    if row_file.is_file():
        return json.loads(row_file.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    d = _dataset(config, job["data"], root)
    ds = d["ds"]
    s = config["series"][job["series"]]
    base = {
        k: job.get(k)
        for k in ("arm", "data", "lr", "seed", "comparator", "value", "config", "name")
    }
    base.update(
        series=series_name(s), arch=s["arch"], optimizer=s["optimizer"], momentum=s.get("momentum")
    )
    kw = _train_kwargs(config, job)
    ckpt = run_dir / "model.pt"
    t0 = time.perf_counter()
    with cpu_threads(threads):
        try:
            train_erm(
                ds,
                lr=job["lr"],
                seed=job["seed"],
                out=ckpt,
                device=device,
                threads=threads,
                log=None,
                **kw,
            )
        except TrainingDiverged as e:
            row = {
                **base,
                "status": "diverged",
                "diverged_at_step": e.step,
                "seconds": time.perf_counter() - t0,
            }
            write_json(row_file, row, indent=None)
            log(f"[lr-protocol] {job['name']}: diverged at step {e.step}")
            return row
        res = extract(
            ds,
            f"checkpoint:{ckpt}",
            run_dir / "cache.h5",
            batch_size=512,
            workers=0,
            device=device,
            overwrite=True,
            log=lambda m: None,
        )
        samples = ds.samples()
        row = {
            **base,
            **backbone_row(
                ckpt,
                run_dir / "cache.h5",
                res.key,
                test_images=d["test_images"],
                train_images=d["train_images"],
                train_b=samples.a[d["train_pick"]],
                train_y=samples.y[d["train_pick"]],
                dfr_seeds=config["dfr_seeds"],
                sparsities=config["sparsities"],
            ),
        }
        from embedkit.backbones.train_backbone import load_checkpoint

        model, ck = load_checkpoint(ckpt)
        images = d["attr_images"]
        mask = spurious_mask(ds.meta, images.shape[2], images.shape[3])
        row.update(
            core_utilisation(
                model,
                images,
                samples.y[d["attr_rows"]],
                ck["preprocess"],
                mask,
                config["attribution"],
            )
        )
        cache = Cache.open(run_dir / "cache.h5")
        paths = [step_path(ckpt, k) for k in ck["train"]["checkpoint_steps"]] + [ckpt]
        row.update(
            bestval_checkpoint(
                paths,
                d["val_images"],
                cache.split("val", backbone=res.key),
                d["test_images"],
                cache.split("test", backbone=res.key),
            )
        )
    row["seconds"] = time.perf_counter() - t0
    write_json(row_file, row, indent=None)
    log(
        f"[lr-protocol] {job['name']}: WGA {row['erm_wga']:.3f} acc_bc "
        f"{row.get('erm_acc_bc', float('nan')):.3f} comp0.1 {row['net_comp_0.1']:.3f} sparsity "
        f"{row['act_sparsity']:.3f} csep {row['csep']:.3f} core util {row['core_util']:.3f} "
        f"({row['seconds']:.0f} s)"
    )
    return row


# ----------------------------------------------------------------------------------------------
# Merge: arm A, tables, hypotheses, figures
# ----------------------------------------------------------------------------------------------


def reference_job(config, dkey, si) -> dict | None:
    """Arm A's fixed cache: the series' backbone at its comparator LR (else its smallest), seed
    of the first seed."""
    s = config["series"][si]
    lr = float(s.get("comparator_lr") or min(s["lrs"]))
    for j in jobs(config):
        if (
            j["arm"] == "B"
            and j["data"] == dkey
            and j["series"] == si
            and j["lr"] == lr
            and j["seed"] == config["seeds"][0]
        ):
            return j
    return None


def arm_a(config, out, rows, log=print) -> list[dict]:
    """Heads at every LR of config['heads'] on the reference backbone's cache of each (dataset,
    series) with comparators; one head_study per (model, momentum, weight decay)."""
    from embedkit.studies.lr.pipeline import head_study

    log = log or (lambda m: None)
    h = config["heads"]
    out_rows = []
    for dkey in config["datasets"]:
        for si, s in enumerate(config["series"]):
            ref = reference_job(config, dkey, si)
            if ref is None or s.get("comparator_lr") is None:
                continue
            row = next((r for r in rows if r["name"] == ref["name"]), None)
            if row is None or row["status"] != "ok":
                log(
                    f"[lr-protocol] arm A: reference run {ref['name']} missing or diverged; skipped"
                )
                continue
            cache = Path(out) / "runs" / ref["name"] / "cache.h5"
            for model in h["models"]:
                for mom in h["momenta"]:
                    for wd in h["weight_decays"]:
                        variant = f"{model}-m{mom:g}-wd{wd:g}"
                        res = head_study(
                            cache,
                            h["lrs"],
                            Path(out) / "armA" / f"{dkey}_{variant}",
                            backbone=row["backbone"],
                            model=model,
                            hidden=h["hidden"],
                            momentum=mom,
                            weight_decay=wd,
                            steps=h["steps"],
                            eval_every=h["eval_every"],
                            batch_size=h["batch_size"],
                            seeds=config["seeds"],
                            sparsities=config["sparsities"],
                            plot=False,
                            log=None,
                        )
                        for r in res["rows"]:
                            out_rows.append(
                                {
                                    **r,
                                    "arm": "A",
                                    "data": dkey,
                                    "variant": variant,
                                    "backbone_run": ref["name"],
                                }
                            )
                        log(f"[lr-protocol] arm A {dkey} {variant}: {len(res['rows'])} heads")
    return out_rows


def merge(config, out, *, log=print, heads: bool = True) -> dict:
    """Read every job's row (missing jobs are listed, never invented), run arm A, and write
    `lr_protocol.md` / `.json`, one CSV table and one PNG figure per arm."""
    from embedkit.studies.lr import hypotheses as H
    from embedkit.studies.lr import tables as T
    from embedkit.tables import write_csv
    from embedkit.viz.lr import lr_figure

    log = log or (lambda m: None)
    out = Path(out)
    all_jobs = jobs(config)
    rows, missing = [], []
    for j in all_jobs:
        f = out / "runs" / j["name"] / "row.json"
        if f.is_file():
            rows.append(json.loads(f.read_text()))
        else:
            missing.append(j["name"])
    head_rows = arm_a(config, out, rows, log=log) if heads else []
    sections, results, files = [], {}, {}
    backbone_keys = [k for k, _ in T.BACKBONE_METRICS]
    head_keys = [k for k, _ in T.HEAD_METRICS]
    title = (
        f"LR study ({config['name']}): {', '.join(config['datasets'])}; seeds {config['seeds']}; "
        f"{config['train']['steps']} steps of batch {config['train']['batch_size']}"
    )
    sections.append(
        f"# {title}\n\nRuns: {len(rows)} of {len(all_jobs)} backbone jobs"
        + (f" (missing: {', '.join(missing)})" if missing else "")
        + f"; {len(head_rows)} heads."
    )
    # Arm B: one table per (dataset, series) inside the arm's section, one figure for the arm.
    b_series, c_series = {}, {}
    lines_b, lines_c = [], []
    for dkey in config["datasets"]:
        for s in config["series"]:
            tag = f"{dkey} / {series_name(s)}"
            b = [
                r
                for r in rows
                if r["arm"] == "B" and r["data"] == dkey and r["series"] == series_name(s)
            ]
            c = [
                r
                for r in rows
                if r["arm"] == "C" and r["data"] == dkey and r["series"] == series_name(s)
            ]
            if b:
                summ = T.summarize(b, "lr", backbone_keys)
                b_series[tag] = summ
                lines_b.append(T.table_markdown(summ, "lr", T.BACKBONE_METRICS, tag))
                res = H.evaluate_claims(b, H.BACKBONE_CLAIMS, comparator_rows=c or None)
                results[f"B {tag}"] = res
            if c:
                base_lr = float(s["comparator_lr"])
                at_base = [
                    {**r, "config": f"lr={base_lr:g} (no comparator)"}
                    for r in b
                    if r["lr"] == base_lr
                ]
                summ_c = T.summarize(at_base + c, "config", backbone_keys)
                c_series[tag] = summ_c
                lines_c.append(
                    T.table_markdown(
                        summ_c,
                        "config",
                        T.BACKBONE_METRICS,
                        f"{tag}: comparators at lr {base_lr:g}, same budget",
                    )
                )
    a_series, lines_a = {}, []
    for dkey in config["datasets"]:
        for variant in dict.fromkeys(r["variant"] for r in head_rows if r["data"] == dkey):
            a = [r for r in head_rows if r["data"] == dkey and r["variant"] == variant]
            tag = f"{dkey} / {variant} heads"
            summ = T.summarize(a, "lr", head_keys)
            a_series[tag] = summ
            lines_a.append(T.table_markdown(summ, "lr", T.HEAD_METRICS, tag))
            results[f"A {tag}"] = H.evaluate_claims(a, H.HEAD_CLAIMS)
    panels_b, panels_a = T.BACKBONE_PANELS, T.HEAD_PANELS
    for arm, text, series, panels, comps in (
        ("A", lines_a, a_series, panels_a, None),
        ("B", lines_b, b_series, panels_b, None),
        (
            "C",
            lines_c,
            b_series,
            panels_b,
            {
                k: [ln for ln in v if ln["config"].startswith(("bs", "wd", "dropout", "l1"))]
                for k, v in c_series.items()
            },
        ),
    ):
        if not text:
            continue
        png = out / f"arm{arm}.png"
        lr_figure(
            T.figure_panels(series, panels, comps),
            png,
            f"arm {arm}: {title}",
            max_cols=4,
            panel_px=(380, 300),
            legend="first",
        )
        csv = out / f"arm{arm}.csv"
        src = a_series if arm == "A" else (b_series if arm == "B" else c_series)
        write_csv(csv, [{"series": k, **ln} for k, v in src.items() for ln in v])
        files[f"arm{arm}_png"], files[f"arm{arm}_csv"] = str(png), str(csv)
        name = {
            "A": "A. heads on a fixed cache",
            "B": "B. small backbones",
            "C": "C. comparators at matched budget",
        }
        sections.append(
            f"## Arm {name[arm]}\n\n" + "\n\n".join(text) + f"\n\n![arm {arm}]({png.name})"
        )
    sections.append(
        "## Claims of spec 11.1 as hypotheses\n\n"
        + "\n\n".join(H.summary_markdown(res, key) for key, res in results.items())
    )
    report = "\n\n".join(sections) + "\n"
    (out / "lr_protocol.md").write_text(report)
    write_csv(out / "runs.csv", rows + head_rows)
    write_json(
        out / "lr_protocol.json",
        {
            "config": config,
            "missing": missing,
            "runs": rows,
            "heads": head_rows,
            "tables": {"A": a_series, "B": b_series, "C": c_series},
            "hypotheses": results,
        },
        indent=1,
    )
    files.update(
        md=str(out / "lr_protocol.md"),
        json=str(out / "lr_protocol.json"),
        runs_csv=str(out / "runs.csv"),
    )
    return {
        "rows": rows,
        "heads": head_rows,
        "missing": missing,
        "hypotheses": results,
        "report": report,
        "tables": {"A": a_series, "B": b_series, "C": c_series},
        "files": files,
    }


def run_protocol(
    config,
    out,
    *,
    job: int | None = None,
    merge_only: bool = False,
    root=None,
    device: str = "cpu",
    threads: int | None = 1,
    log=print,
) -> dict:
    """All jobs then the merge; or only job `job` (a SLURM array task); or only the merge."""
    config = get_config(config)
    log = log or (lambda m: None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config, indent=1)
    todo = jobs(config)
    if job is not None:
        if not 0 <= job < len(todo):
            raise EmbedkitError(f"--job {job}: this protocol has jobs 0..{len(todo) - 1}")
        return {
            "row": run_job(
                config, todo[job], out, root=root, device=device, threads=threads, log=log
            )
        }
    t0 = time.perf_counter()
    if not merge_only:
        for k, j in enumerate(todo):
            log(f"[lr-protocol] job {k + 1}/{len(todo)}: {j['name']}")
            run_job(config, j, out, root=root, device=device, threads=threads, log=log)
    res = merge(config, out, log=log)
    res["seconds"] = time.perf_counter() - t0
    return res


REPLACED = (
    "datasets",
    "series",
    "comparators",
)  # collections of entries: an override replaces them


def with_overrides(config, overrides: dict | None) -> dict:
    """A copy of `config` with `overrides` merged in: settings dicts (`train`, `heads`) merge key
    by key; `datasets`, `series`, `comparators` and every other value replace. An unknown
    top-level key is an error."""
    out = get_config(config)
    for key, value in (overrides or {}).items():
        if key not in out:
            raise EmbedkitError(f"protocol override {key!r}: known keys are {', '.join(out)}")
        out[key] = copy.deepcopy(value) if key in REPLACED else _merge(out[key], value)
    return out


def _merge(base, new):
    if isinstance(base, dict) and isinstance(new, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in new.items()}}
    return copy.deepcopy(new)
