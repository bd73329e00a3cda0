"""embedkit sweep: fit every head (or a list) with several seeds and write the results table; in
worker processes (--jobs) or as one slice of a SLURM job array (--shard)."""

from embedkit.commands.fit import add_common, parse_seeds, sweep_options


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
        help="parameter for one method being run (repeatable), e.g. --param dfr.n_refits=10",
    )
    p.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="fit only the I-th of N disjoint slices of the planned runs (0 <= I < N; for job "
        "arrays on a shared --out; `embedkit report` tabulates every shard's records)",
    )
    p.add_argument(
        "--out", required=True, help="runs folder; finished runs in it are skipped unless --force"
    )


def sweep_params(items) -> dict:
    """--param METHOD.KEY=VALUE as {method: {key: value}}."""
    from embedkit.cli import parse_key_values
    from embedkit.errors import EmbedkitError

    params = {}
    for key, value in parse_key_values(items, "--param").items():
        if "." not in key:
            raise EmbedkitError(f"--param {key}={value}: name the method, as METHOD.KEY=VALUE")
        method, name = key.split(".", 1)
        params.setdefault(method, {})[name] = value
    return params


def run(args):
    from embedkit import runs

    params = sweep_params(args.param)
    methods = (
        "all"
        if args.methods == "all"
        else [m.strip() for m in args.methods.split(",") if m.strip()]
    )
    shard = runs.parse_shard(args.shard) if args.shard else None
    entries = runs.sweep(
        args.cache,
        methods,
        parse_seeds(args.seeds),
        args.out,
        params=params,
        shard=shard,
        **sweep_options(args),
    )
    print()
    if shard and shard[1] > 1:
        print(
            f"shard {shard[0]}/{shard[1]}: {len(entries)} runs; when every shard has ended, "
            f"`embedkit report {args.out} --out REPORT` makes the one table of all of them"
        )
    else:
        print(runs.markdown_table(runs.results_table(runs.collect(args.out))))
        print(f"tables: {args.out}/results.md, results.csv, results_per_seed.csv")
    return 1 if any(e.get("status") == "error" for e in entries) else 0
