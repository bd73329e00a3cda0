"""`embedkit demo`: the whole pipeline on the embedded default data, in a few minutes on a CPU.

1. train a small ERM backbone on `colored_digits` (scikit-learn's bundled handwritten digits,
   coloured so that colour is spurious) with `embedkit train-erm`;
2. extract its penultimate embeddings (and its own head's logits) to `cache/demo.h5`;
3. map the cache with FAISS (centroids, k-NN purity, per-class clusters, directions);
4. fit every head with 3 seeds (`embedkit sweep`), selection on validation only;
5. write the report (tables and figures) and print the table with the ERM head's worst-group
   accuracy beside every method's.

Another dataset or backbone runs the same pipeline: `--dataset waterbirds_like --backbone
torchvision:mobilenet_v2:PATH` skips step 1 and extracts with the given backbone.
"""

from __future__ import annotations

import time
from pathlib import Path

from embedkit.errors import EmbedkitError
from embedkit.jsonsafe import write_json

DEFAULT_DATASET = "colored_digits"
# train-erm's defaults (a small CNN, SGD at lr 0.02 for 8 epochs) learn the colour shortcut
# before the digit shapes: the backbone's own head is spurious-biased while its features still
# hold the core signal, the situation DFR-style heads are built for.
DEFAULT_TRAINING: dict = {}


def _step(log, i: int, n: int, text: str) -> float:
    log(f"\n[{i}/{n}] {text}")
    return time.perf_counter()


def run_demo(
    out="runs/demo",
    *,
    dataset: str = DEFAULT_DATASET,
    root=None,
    dataset_options: dict | None = None,
    backbone: str | None = None,
    cache=None,
    seeds=(0, 1, 2),
    methods="all",
    training: dict | None = None,
    workers: int = 0,
    log=print,
) -> dict:
    """Run the demo pipeline; returns {'table': rows, 'paths': {...}, 'seconds': float}."""
    from embedkit import runs
    from embedkit.extract import extract
    from embedkit.pipelines.analyze import run_analysis
    from embedkit.pipelines.report import write_report

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(
        cache or Path("cache") / ("demo.h5" if dataset == DEFAULT_DATASET else f"demo_{dataset}.h5")
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    n = 5
    paths = {
        "cache": str(cache),
        "runs": str(out / "runs"),
        "report": str(out / "report"),
        "analysis": str(out / "analysis"),
    }

    if backbone is None:
        from embedkit.backbones.train_backbone import train_erm

        t = _step(log, 1, n, f"training a small ERM backbone on {dataset} (embedkit train-erm)")
        cfg = {**DEFAULT_TRAINING, **(training or {})}
        ckpt = train_erm(
            dataset,
            root=root,
            dataset_options=dataset_options,
            out=out / "backbone.pt",
            log=log,
            **cfg,
        )
        backbone = f"checkpoint:{ckpt}"
        paths["backbone"] = str(ckpt)
        log(f"      done in {time.perf_counter() - t:.1f} s -> {ckpt}")
    else:
        _step(log, 1, n, f"using the given backbone {backbone} (no training)")

    t = _step(log, 2, n, f"extracting embeddings to {cache} (embedkit extract)")
    extract(
        dataset,
        backbone,
        cache,
        root=root,
        dataset_options=dataset_options,
        workers=workers,
        overwrite=True,
        log=log,
    )
    log(f"      done in {time.perf_counter() - t:.1f} s")

    t = _step(log, 3, n, f"FAISS analysis of the cache (embedkit analyze) -> {paths['analysis']}")
    run_analysis(cache, paths["analysis"], root=root, log=lambda m: log(f"      {m}"))
    log(f"      done in {time.perf_counter() - t:.1f} s")

    t = _step(
        log,
        4,
        n,
        f"fitting every head with seeds {list(seeds)} (embedkit sweep) -> {paths['runs']}",
    )
    runs.sweep(cache, methods, list(seeds), paths["runs"], log=lambda m: log(f"      {m}"))
    log(f"      done in {time.perf_counter() - t:.1f} s")

    t = _step(log, 5, n, f"writing the report (embedkit report) -> {paths['report']}")
    # the step-3 analysis is drawn as it is: the report does not compute it again
    report = write_report(paths["runs"], paths["report"], analysis=paths["analysis"])
    log(f"      {len(report['files'])} files in {time.perf_counter() - t:.1f} s")

    table = demo_table(report["rows"])
    seconds = time.perf_counter() - t0
    log("\n" + format_table(table))
    log(
        f"\nWall time {seconds:.0f} s. Outputs: cache {cache}, runs {paths['runs']}, "
        f"report {paths['report']} (results.md, figures), analysis {paths['analysis']}."
    )
    write_json(out / "demo_table.json", {"table": table, "seconds": seconds, "paths": paths})
    return {"table": table, "paths": paths, "seconds": seconds}


def demo_table(rows: list[dict]) -> list[dict]:
    """One row per method, in sweep order: test WGA and plain mean (mean ± std over seeds) beside
    the WGA of the backbone's own ERM head (`erm_native`) and of a retrained linear ERM head."""
    from embedkit import heads

    def cell(row, short):
        if row is None or row.get("status") != "ok" or row.get(f"test_{short}_mean") is None:
            return None
        std = row.get(f"test_{short}_std")
        return f"{100 * row[f'test_{short}_mean']:.1f}" + (
            "" if std is None else f" ± {100 * std:.1f}"
        )

    by_method = {r["method"]: r for r in rows}
    order = {m: i for i, m in enumerate(heads.DEFAULT_SWEEP)}
    table = []
    for r in sorted(rows, key=lambda r: (order.get(r["method"], len(order)), r["run"])):
        table.append(
            {
                "method": r["run"],
                "native_wga": cell(by_method.get("erm_native"), "wga"),
                "erm_wga": cell(by_method.get("erm"), "wga"),
                "wga": cell(r, "wga"),
                "mean": cell(r, "plain"),
                "seeds": r.get("n_seeds", 0),
                "status": r.get("status"),
                "note": r.get("notes") or "",
            }
        )
    return table


def format_table(table: list[dict]) -> str:
    w = max([12] + [len(r["method"]) for r in table])  # the longest method name sets the column
    head = (
        f"{'method':<{w}} {'ERM (own head)':>15} {'ERM (linear)':>13} {'method WGA':>13} "
        f"{'mean acc':>13} {'seeds':>5}  note"
    )
    lines = [
        "Test worst-group accuracy (%), mean ± std over seeds; selection on validation only",
        head,
        "-" * len(head),
    ]
    for r in table:
        note = r["note"] if r["status"] != "ok" else ("" if not r["note"] else f"({r['note']})")
        lines.append(
            f"{r['method']:<{w}} {_fmt(r['native_wga']):>15} {_fmt(r['erm_wga']):>13} "
            f"{_fmt(r['wga']):>13} {_fmt(r['mean']):>13} {r['seeds']:>5}  {note}".rstrip()
        )
    lines += [
        "ERM (own head): the backbone's own classifier on the cached logits (one head, so the same",
        "for every seed); ERM (linear): a linear ERM head refitted on the cached features; method",
        "WGA and mean acc: the row's head. A worst-group accuracy of 0.0 means that every test row",
        "of some group is misclassified (the report's group_accuracy.png shows which).",
    ]
    return "\n".join(lines)


def _fmt(v) -> str:
    return "-" if v in (None, "") else str(v)


def check_outputs(result: dict) -> None:
    missing = [k for k, p in result["paths"].items() if not Path(p).exists()]
    if missing:
        raise EmbedkitError(f"demo outputs missing: {', '.join(missing)}")
