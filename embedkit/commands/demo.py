"""embedkit demo: the whole pipeline (train-erm, extract, analyze, sweep, report) on the embedded
default data, printing the table of every head's worst-group accuracy beside the ERM head's."""


def add_arguments(p):
    p.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    p.add_argument(
        "--dataset",
        default="colored_digits",
        help="dataset adapter (default colored_digits: no files needed)",
    )
    p.add_argument("--root", default=None, help="dataset folder, for adapters that read files")
    p.add_argument(
        "--dataset-opt",
        action="append",
        metavar="KEY=VALUE",
        default=[],
        help="dataset option (repeatable)",
    )
    p.add_argument(
        "--backbone",
        default=None,
        help="backbone SPEC to extract with instead of training a small ERM backbone, "
        "e.g. torchvision:mobilenet_v2:PATH",
    )
    p.add_argument("--cache", default=None, help="cache file (default cache/demo.h5)")
    p.add_argument("--seeds", default="0,1,2", help="head seeds (default 0,1,2)")
    p.add_argument("--methods", default="all", help="heads to fit: all or a comma-separated list")
    p.add_argument(
        "--epochs", type=int, default=None, help="ERM backbone epochs (default: train-erm's)"
    )
    p.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers for extraction (default 0)"
    )


def run(args):
    from embedkit.cli import parse_key_values
    from embedkit.errors import EmbedkitError
    from embedkit.pipelines.demo import run_demo

    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise EmbedkitError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
    methods = (
        "all"
        if args.methods == "all"
        else [m.strip() for m in args.methods.split(",") if m.strip()]
    )
    training = {} if args.epochs is None else {"epochs": args.epochs}
    run_demo(
        args.out,
        dataset=args.dataset,
        root=args.root,
        dataset_options=parse_key_values(args.dataset_opt, "--dataset-opt"),
        backbone=args.backbone,
        cache=args.cache,
        seeds=seeds,
        methods=methods,
        training=training,
        workers=args.workers,
    )
    return 0
