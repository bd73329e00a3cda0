"""embedkit merge: extraction shards into one cache, rows in the order given."""


def add_arguments(p):
    p.add_argument("shards", nargs="+", help="shard cache files, in row order")
    p.add_argument("--out", required=True, help="merged cache (created, or gains the backbone)")
    p.add_argument("--backbone", help="backbone key to merge (default: the shards' only one)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace the backbone if --out already has it"
    )
    from embedkit.cli import add_wait_argument

    add_wait_argument(p)


def run(args):
    from embedkit.cache import merge

    out = merge(
        args.shards, args.out, backbone=args.backbone, overwrite=args.overwrite, wait=args.wait
    )
    print(f"wrote {out}")
    return 0
