"""embedkit import: bring your own embeddings into a cache."""
from embedkit.errors import EmbedkitError


def add_arguments(p):
    p.add_argument("--out", required=True, help="cache file to create (or add a backbone to)")
    p.add_argument("--npz", help="an .npz with Z or embeddings, y, split (names or 0/1/2), optional a, ids")
    p.add_argument("--embeddings", help=".npy float matrix [N, D] (with --labels, --splits, optional --attrs)")
    p.add_argument("--labels", help=".npy int labels [N]")
    p.add_argument("--attrs", help=".npy int spurious attributes [N]; -1 = unknown")
    p.add_argument("--splits", help=".npy split names or codes 0/1/2 [N]")
    p.add_argument("--ids", help=".npy sample ids [N] (strings)")
    p.add_argument("--seen", metavar="SEEN.npy",
                   help=".npy bool [N], row-aligned: True where the backbone was trained on the row (AFR and JTT "
                        "refuse such held-out rows); without it the cache records 'unknown'. An .npz may hold 'seen'")
    p.add_argument("--name", default="imported", help="backbone key for these embeddings (default: imported)")
    p.add_argument("--dataset", default="imported", help="dataset name recorded in the cache")
    p.add_argument("--class-names", help="comma-separated class names; labels must lie in 0..len-1")
    p.add_argument("--attr-names", help="comma-separated attribute names")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="on-disk dtype")
    p.add_argument("--overwrite", action="store_true", help="replace an existing backbone key")
    from embedkit.cli import add_wait_argument
    add_wait_argument(p)
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="keep rows with NaN/inf embeddings, flagged invalid in /samples/valid")


def run(args):
    from embedkit import io
    kw = dict(key=args.name, dataset=args.dataset, dtype=args.dtype, overwrite=args.overwrite,
              allow_nonfinite=args.allow_nonfinite, wait=args.wait)
    if args.class_names:
        kw["class_names"] = [s.strip() for s in args.class_names.split(",")]
    if args.attr_names:
        kw["attr_names"] = [s.strip() for s in args.attr_names.split(",")]
    if args.npz:
        if args.embeddings:
            raise EmbedkitError("give either --npz or --embeddings/--labels/--splits, not both")
        path = io.import_npz(args.npz, args.out, seen=args.seen, **kw)
    else:
        missing = [f for f, v in (("--embeddings", args.embeddings), ("--labels", args.labels),
                                  ("--splits", args.splits)) if not v]
        if missing:
            raise EmbedkitError(f"missing {', '.join(missing)} (or pass --npz)")
        path = io.import_npy(args.out, args.embeddings, args.labels, args.splits, attrs=args.attrs,
                             ids=args.ids, seen=args.seen, **kw)
    from embedkit.cache import Cache
    print(f"wrote {path} ({Cache.open(path).n} rows, backbone {args.name!r})")
    return 0
