"""embedkit datasets: list the adapters, or describe one (options, group counts per split).

    embedkit datasets                               one line per dataset
    embedkit datasets NAME --options                its options with defaults
    embedkit datasets NAME --layout                 the files and columns it expects (its docstring)
    embedkit datasets NAME [--root PATH] [--dataset-opt KEY=VALUE ...] [--check]
                                                    build it and print the group-count table

`add_dataset_arguments` and `dataset_from_args` give other commands (extract, train-erm) the same
`--dataset NAME --root PATH --dataset-opt KEY=VALUE` flags.
"""

from __future__ import annotations


def add_dataset_arguments(p, required: bool = True) -> None:
    p.add_argument(
        "--dataset",
        required=required,
        metavar="NAME",
        help="dataset adapter (`embedkit datasets` lists them)",
    )
    p.add_argument(
        "--root",
        default=None,
        metavar="PATH",
        help="the dataset's folder (offline benchmarks: the shared data folder; default "
        "$EMBEDKIT_DATA, else ../shared/data)",
    )
    p.add_argument(
        "--dataset-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="adapter option, repeatable (`embedkit datasets NAME --options` lists them)",
    )


def dataset_from_args(args):
    from embedkit import data
    from embedkit.cli import parse_key_values

    return data.create(
        args.dataset, root=args.root, **parse_key_values(args.dataset_opt, "--dataset-opt")
    )


def add_arguments(p):
    p.add_argument("name", nargs="?", help="describe this dataset instead of listing all")
    p.add_argument("--root", default=None, metavar="PATH", help="the dataset's folder")
    p.add_argument(
        "--dataset-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="adapter option, repeatable",
    )
    p.add_argument("--options", action="store_true", help="list the dataset's options and defaults")
    p.add_argument(
        "--layout",
        action="store_true",
        help="print the folder layout and columns the adapter expects",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="also read every image once and count the unreadable ones",
    )


def run(args):
    from embedkit import data

    if args.name is None:
        entries = data.available()
        width = max(len(n) for n in entries)
        for name, line in entries.items():
            print(f"{name:<{width}}  {line}")
        return 0
    cls = data.dataset_class(args.name)
    if args.layout:
        import sys

        print((sys.modules[cls.__module__].__doc__ or cls.description).strip())
        return 0
    if args.options:
        width = max([len(k) for k in cls.OPTIONS] + [6])
        for k, opt in cls.OPTIONS.items():
            print(f"{k:<{width}}  {opt.kind.__name__:<5}  default {opt.default!s:<10}  {opt.help}")
        return 0
    args.dataset = args.name
    ds = dataset_from_args(args)
    print(ds.summary())
    if args.check:
        valid, reasons = ds.scan()
        print(f"\nunreadable images: {int((~valid).sum())} of {len(valid)}")
        for why in reasons[:20]:
            print(f"  {why}")
        if len(reasons) > 20:
            print(f"  ... and {len(reasons) - 20} more")
    return 0
