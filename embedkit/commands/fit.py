"""embedkit fit: fit one head on a cache for one or more seeds and write its run records."""


def parse_seeds(text: str) -> list[int]:
    from embedkit.errors import EmbedkitError

    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise EmbedkitError(
            f"--seeds {text!r}: expected comma-separated integers such as 0,1,2"
        ) from None


def parse_budgets(text: str) -> list[float]:
    from embedkit.errors import EmbedkitError

    try:
        return [float(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise EmbedkitError(
            f"--label-budget {text!r}: expected fractions such as 1.0 or 0.1,1.0"
        ) from None


def add_common(p):
    p.add_argument("--cache", required=True, help="cache file (.h5)")
    p.add_argument("--backbone", help="backbone key in the cache (needed when it holds several)")
    p.add_argument("--seeds", default="0", help="comma-separated head seeds (default: 0)")
    p.add_argument(
        "--label-budget",
        default="1.0",
        help="fraction(s) of val rows whose attribute the heads may see, e.g. 0.1 or 0.05,1.0 "
        "(the same rows for every method at a given seed; default 1.0)",
    )
    p.add_argument(
        "--val-reserved",
        type=float,
        default=0.0,
        help="group-stratified fraction of val no method fits or tunes on (default 0)",
    )
    p.add_argument(
        "--allow-overlap",
        action="store_true",
        help="tag instead of refusing a run whose selection reads rows it was fitted on",
    )
    p.add_argument("--force", action="store_true", help="refit runs that are already done")
    p.add_argument(
        "--groups",
        choices=("jtt", "eiil", "george"),
        default=None,
        help="train and select on inferred pseudo-groups instead of the true attributes: the JTT "
        "error set, EIIL environments or GEORGE clusters (the record and tables say so)",
    )


def add_arguments(p):
    add_common(p)
    p.add_argument("--method", required=True, help="head name (`embedkit heads` lists them)")
    p.add_argument(
        "--param",
        action="append",
        metavar="KEY=VALUE",
        help="head parameter (repeatable), checked against the head's declared parameters "
        "(`embedkit heads NAME` lists them), e.g. --param n_refits=10 --param C_grid=1,0.1",
    )
    p.add_argument("--out", default=None, help="runs folder (default: runs/<cache name>)")


def default_out(cache: str) -> str:
    from pathlib import Path

    return str(Path("runs") / Path(cache).stem)


def summary_line(rec: dict) -> str:
    t = rec["metrics"]["test"] or {}

    def pct(v):
        return "—" if v is None else f"{100 * v:.1f}%"

    s = rec["selection"]
    chosen = f"{s['config']} step {s['step']}" if s.get("config") else "no hyperparameters"
    how = f"{s['rule']} on {s['split']}" if s.get("rule") else "no selection"
    return (
        f"{rec['method']} seed {rec['seed']}: test WGA {pct(t.get('worst_group_acc'))}, mean {pct(t.get('mean_acc'))} "
        f"(plain), {pct(t.get('weighted_mean_acc'))} (trainw) | {chosen} by {how} | {rec['fit_seconds']:.2f} s"
    )


def run(args):
    from embedkit import heads, runs
    from embedkit.cli import parse_key_values

    params = parse_key_values(args.param, "--param")
    heads.create(args.method, **params)  # a bad name or value: one line, exit 2, nothing written
    out = args.out or default_out(args.cache)
    splits = runs.load_splits(args.cache, args.backbone)
    fingerprint = splits[0].fingerprint(splits[1].backbone)
    for budget in parse_budgets(args.label_budget):
        for seed in parse_seeds(args.seeds):
            d = runs.run_dir(out, args.method, params, seed, budget, args.val_reserved, args.groups)
            done = None if args.force else runs.finished(d, fingerprint)
            if done:
                print(summary_line(done) + "  (done before; --force refits)")
                continue
            rec = runs.fit_record(
                args.cache,
                args.method,
                params,
                seed,
                out,
                args.backbone,
                budget,
                allow_overlap=args.allow_overlap,
                val_reserved=args.val_reserved,
                splits=splits,
                groups=args.groups,
            )
            print(summary_line(rec) + f" -> {d / 'record.json'}")
    runs.write_results(out)
    return 0
