"""embedkit report: tables and PNG figures from a run or sweep folder (nothing is refitted)."""

from embedkit.commands.options import add_root_argument


def add_arguments(p):
    p.add_argument(
        "runs", help="a run folder (…/seed0) or a folder of runs (the --out of fit or sweep)"
    )
    p.add_argument(
        "--out", required=True, help="folder for results.md, results.csv and the figures"
    )
    p.add_argument(
        "--analysis",
        metavar="DIR",
        help="output folder of `embedkit analyze` on the records' cache: its analysis is drawn "
        "instead of being recomputed (default: analyse the cache here)",
    )
    p.add_argument(
        "--cache",
        metavar="PATH",
        help="cache file (.h5) the run records name, when it has moved (default: the path "
        "recorded in the records)",
    )
    add_root_argument(p)
    p.add_argument(
        "--include-flagged",
        action="store_true",
        help="also tabulate runs selected on test (oracle) or on rows they were fitted on",
    )


def run(args):
    from pathlib import Path

    from embedkit import runs
    from embedkit.errors import EmbedkitError
    from embedkit.pipelines.report import write_report

    if args.cache is not None and not Path(args.cache).is_file():
        raise EmbedkitError(f"--cache {args.cache}: no such cache file")
    rep = write_report(
        args.runs,
        args.out,
        include_flagged=args.include_flagged,
        cache=args.cache,
        analysis=args.analysis,
        image_root=args.root,
    )
    print(runs.markdown_table(rep["rows"]))
    for f in rep["files"]:
        print(f"wrote {f}")
    return 0
