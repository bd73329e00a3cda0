"""embedkit sweep: fit every head (or a list) with several seeds and write the results table."""

from embedkit.commands.fit import add_common, parse_budgets, parse_seeds


def add_arguments(p):
    add_common(p)
    p.set_defaults(seeds="0,1,2")
    p.add_argument(
        "--methods",
        default="all",
        help="'all' (the default sweep list of `embedkit heads`) or comma-separated head names",
    )
    p.add_argument(
        "--param",
        action="append",
        metavar="METHOD.KEY=VALUE",
        help="parameter for one method (repeatable), e.g. --param dfr.n_refits=10",
    )
    p.add_argument(
        "--out", required=True, help="runs folder; finished runs in it are skipped unless --force"
    )


def run(args):
    from embedkit import runs
    from embedkit.cli import parse_key_values
    from embedkit.errors import EmbedkitError

    params = {}
    for key, value in parse_key_values(args.param, "--param").items():
        if "." not in key:
            raise EmbedkitError(f"--param {key}={value}: name the method, as METHOD.KEY=VALUE")
        method, name = key.split(".", 1)
        params.setdefault(method, {})[name] = value
    methods = (
        "all"
        if args.methods == "all"
        else [m.strip() for m in args.methods.split(",") if m.strip()]
    )
    entries = runs.sweep(
        args.cache,
        methods,
        parse_seeds(args.seeds),
        args.out,
        params=params,
        label_budgets=parse_budgets(args.label_budget),
        backbone=args.backbone,
        allow_overlap=args.allow_overlap,
        val_reserved=args.val_reserved,
        skip_existing=not args.force,
        groups=args.groups,
    )
    rows = runs.results_table(runs.collect(args.out))
    print()
    print(runs.markdown_table(rows))
    print(f"tables: {args.out}/results.md, results.csv, results_per_seed.csv")
    return 1 if any(e.get("status") == "error" for e in entries) else 0
