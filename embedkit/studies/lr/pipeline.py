"""The LR study's two pipelines (methods spec 11.3), each a sweep of learning rates:

- `backbone_study` (11.3 B, the paper's regime): one small backbone per (learning rate, seed),
  trained with `embedkit.backbones.train_backbone.train_erm`, extracted through
  `embedkit.extract` and measured by `backbone_row`;
- `head_study` (11.3 A): linear or MLP heads at every learning rate on a fixed cache with the
  shared SGD trainer.

Both write `runs.csv` (one row per run), `lr_study.csv` / `lr_study.md` (one line per LR, mean
and std over seeds, `embedkit.studies.lr.tables`), `lr_study.png` (`embedkit.viz.lr`) and
`lr_study.json`. `embedkit.studies.lr.protocol` reuses `backbone_row` for each of its jobs and
`head_study` for its arm A; `embedkit lr-study` runs either pipeline. What each column means:
`embedkit.studies.lr.metrics` and `.pruning`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embedkit.errors import EmbedkitError
from embedkit.jsonsafe import write_json
from embedkit.studies.lr import tables as T
from embedkit.studies.lr.metrics import (
    KAPPAS,
    bias_labels,
    eff_bcr,
    head_activations,
    head_metrics,
    layer_compressibility,
    network_compressibility,
    pq_index,
    representation_metrics,
    spurious_alignment,
)
from embedkit.studies.lr.pruning import PRUNE_SPARSITIES, head_pruning_curve, pruning_curve
from embedkit.tables import write_csv


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


# ----------------------------------------------------------------------------------------------
# B. Small backbones, one per learning rate
# ----------------------------------------------------------------------------------------------


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
    """Train one ERM backbone per (learning rate, seed) with
    `embedkit.backbones.train_backbone.train_erm`, extract each into `out_dir/cache.h5` through
    the extractor (one backbone key per run, so the cache carries each one's provenance), and
    measure every run with `backbone_row`. A run whose loss turns non-finite is recorded as
    `diverged`, never dropped. Writes the pipeline's outputs (module docstring); returns {rows,
    summary, table, files}."""
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
                r = {
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
                rows.append(r)
                log(
                    f"[lr-study] {name}: ERM WGA {r['erm_wga']:.3f} mean {r['erm_mean']:.3f} | "
                    f"DFR WGA {r.get('dfr_wga', float('nan')):.3f} | net comp 0.1 "
                    f"{r.get('net_comp_0.1', float('nan')):.3f} | act sparsity "
                    f"{r['act_sparsity']:.3f} | csep {r['csep']:.3f}"
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
        T.STUDY_BACKBONE_COLUMNS,
        T.STUDY_BACKBONE_PANELS,
        title=f"LR study: {ds.name}, {train_kwargs.get('arch', 'small_cnn')} backbones",
    )


def write_outputs(rows, config, out, columns, panels, title: str) -> dict:
    """runs.csv, lr_study.csv / .md / .json and (unless `panels` is None) lr_study.png: the
    summary covers every numeric column of the rows; the markdown table and the figure show
    those of `columns` / `panels` that were measured."""
    from embedkit.viz.lr import lr_figure

    out = Path(out)
    keys = [
        k for k in dict.fromkeys(k for r in rows for k in r) if k not in ("lr", "seed", "status")
    ]
    numeric = [
        k
        for k in keys
        if any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rows)
    ]
    summary = T.summarize(rows, "lr", numeric)
    files = {
        "runs_csv": out / "runs.csv",
        "csv": out / "lr_study.csv",
        "md": out / "lr_study.md",
        "png": out / "lr_study.png",
        "json": out / "lr_study.json",
    }
    write_csv(files["runs_csv"], rows)
    write_csv(files["csv"], summary)
    table = T.table_markdown(summary, "lr", columns)
    files["md"].write_text(f"# {title}\n\n{table}")
    if panels is not None:
        lr_figure(T.figure_panels({"": summary}, panels), files["png"], title)
    else:
        del files["png"]
    write_json(files["json"], {"config": config, "runs": rows, "summary": summary}, indent=1)
    return {
        "rows": rows,
        "summary": summary,
        "table": table,
        "files": {k: str(v) for k, v in files.items()},
    }


# ----------------------------------------------------------------------------------------------
# A. Heads on a fixed cache
# ----------------------------------------------------------------------------------------------


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
    shared SGD trainer (`embedkit.heads.trainer.fit_grid`, all LRs in one vectorised run per
    seed, same init and batches for every LR) and report, per LR: test WGA / mean at the last
    step and at the step selected on validation (val WGA, or val worst-class accuracy without
    attributes), the compressibility of the head's weight matrices, and activation sparsity (MLP)
    and csep / bsep on the head's activations. Non-finite weights mark a run `diverged`. Same
    outputs as `backbone_study`."""
    from embedkit import selection
    from embedkit.cache import Cache
    from embedkit.heads.monitor import Monitor
    from embedkit.heads.trainer import fit_grid
    from embedkit.seeds import spawn_seeds

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
            f"[lr-study] heads ({model}) seed {seed}: {len(lrs)} learning rates x {steps} steps "
            f"on {train.backbone}"
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
                f"[lr-study] lr {cfg['lr']:g} seed {seed}: final WGA {row['final_wga']:.3f}, "
                f"best-val WGA {row['best_wga']:.3f}, comp 0.1 "
                f"{row.get('comp_0.1', float('nan')):.3f}, csep {row['csep']:.3f}"
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
        T.STUDY_HEAD_COLUMNS,
        T.STUDY_HEAD_PANELS if plot else None,
        title=f"LR study: {model} heads on {Path(cache_path).name} [{train.backbone}]",
    )
