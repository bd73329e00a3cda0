"""embedkit report: tables and PNG figures from a run or sweep folder (nothing is refitted)."""


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
        "--include-flagged",
        action="store_true",
        help="also tabulate runs selected on test (oracle) or on rows they were fitted on",
    )


def run(args):
    from embedkit import runs
    from embedkit.pipelines.report import write_report

    rep = write_report(
        args.runs, args.out, include_flagged=args.include_flagged, analysis=args.analysis
    )
    print(runs.markdown_table(rep["rows"]))
    for f in rep["files"]:
        print(f"wrote {f}")
    return 0
