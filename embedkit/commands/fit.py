"""embedkit fit: fit one head on a cache for one or more seeds and write its run records. It is a
sweep of one method (`embedkit.runs.sweep`), except that a run that cannot run is an error."""


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
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="worker processes that fit runs side by side (default 1: in this process)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch and BLAS threads per run (default: as set with --jobs 1, else "
        "cpu_count // jobs); runs with the same --threads give bitwise-equal records",
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
        f"{rec['method']} seed {rec['seed']}: test WGA {pct(t.get('worst_group_acc'))}, "
        f"mean {pct(t.get('mean_acc'))} (plain), {pct(t.get('weighted_mean_acc'))} (trainw) | "
        f"{chosen} by {how} | {rec['fit_seconds']:.2f} s"
    )


def sweep_options(args) -> dict:
    """The keyword arguments of `runs.sweep` that fit and sweep share, from their common flags."""
    return dict(
        label_budgets=parse_budgets(args.label_budget),
        backbone=args.backbone,
        allow_overlap=args.allow_overlap,
        val_reserved=args.val_reserved,
        skip_existing=not args.force,
        groups=args.groups,
        jobs=args.jobs,
        threads=args.threads,
    )


def method_params(method: str, items) -> dict:
    """--param KEY=VALUE (or METHOD.KEY=VALUE naming the method fitted) as the head's parameters."""
    from embedkit.cli import parse_key_values
    from embedkit.errors import EmbedkitError

    params = {}
    for key, value in parse_key_values(items, "--param").items():
        m, dot, name = key.partition(".")
        if dot and m != method:
            raise EmbedkitError(
                f"--param {key}={value}: {m!r} is not being run (methods: {method})"
            )
        params[name if dot else key] = value
    return params


def run(args):
    from pathlib import Path

    from embedkit import runs

    params = method_params(args.method, args.param)
    out = args.out or default_out(args.cache)
    entries = runs.sweep(
        args.cache,
        [args.method],
        parse_seeds(args.seeds),
        out,
        **sweep_options(args),
        params={args.method: params},
        raise_errors=True,  # the one method asked for: a refusal is the command's error
    )
    for rec in entries:
        print(summary_line(rec) + f" -> {Path(out) / rec['run_id'] / 'record.json'}")
    return 0
