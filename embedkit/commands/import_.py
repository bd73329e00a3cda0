"""embedkit import: bring your own embeddings into a cache.

embedkit import --out C.h5 --npz FILE | --embeddings X.npy --labels Y.npy --splits S.npy ...
embedkit import --out C.h5 --from subpopbench DIR [--metadata CSV] [--test-split VALUE]
embedkit import --out C.h5 --from clip-retrieval DIR --label-col COL [--attr-col COL]
                (--split-col COL | --split NAME) [--id-col COL]
embedkit import --out C.h5 --from dfr FILE.npz [FILE.npz ...] [--split NAME ...]
                (FILE: DFR follow-up's dfr_test.npz, or <dataset>_<model>_<split>_embeddings.npz)
"""

from embedkit.errors import EmbedkitError

FORMATS = ("subpopbench", "clip-retrieval", "dfr")


def add_arguments(p):
    p.add_argument(
        "source", nargs="*", help="with --from: the peer tool's folder (dfr: its .npz files)"
    )
    p.add_argument("--out", required=True, help="cache file to create (or add a backbone to)")
    p.add_argument(
        "--from",
        dest="fmt",
        choices=FORMATS,
        help="a peer tool's format: subpopbench (DPE's feats_{train,val,test}.npy + SubpopBench "
        "metadata CSV), clip-retrieval (img_emb/*.npy + metadata/*.parquet), dfr (DFR's "
        "saved embeddings: the follow-up's embeddings_<split>/y_/g_/p_ npz, or per-split "
        "<dataset>_<model>_<split>_embeddings.npz with embeddings + labels)",
    )
    p.add_argument(
        "--npz", help="an .npz with Z or embeddings, y, split (names or 0/1/2), optional a, ids"
    )
    p.add_argument(
        "--embeddings",
        help=".npy (or plain-tensor .pt) float matrix [N, D] (with --labels, "
        "--splits, optional --attrs)",
    )
    p.add_argument("--labels", help=".npy int labels [N]")
    p.add_argument("--attrs", help=".npy int spurious attributes [N]; -1 = unknown")
    p.add_argument("--splits", help=".npy split names or codes 0/1/2 [N]")
    p.add_argument("--ids", help=".npy sample ids [N] (strings)")
    p.add_argument(
        "--metadata",
        help="--from subpopbench: the metadata CSV (default: the one metadata*.csv in DIR)",
    )
    p.add_argument(
        "--test-split",
        default="",
        help="--from subpopbench: metadata split value used as test (default 2 / test)",
    )
    p.add_argument(
        "--label-col", help="--from clip-retrieval: metadata column with the class label"
    )
    p.add_argument(
        "--attr-col", help="--from clip-retrieval: metadata column with the spurious attribute"
    )
    p.add_argument(
        "--split-col", help="--from clip-retrieval: metadata column with train/val/test or 0/1/2"
    )
    p.add_argument(
        "--id-col",
        default="image_path",
        help="--from clip-retrieval: metadata column with a unique id (default image_path)",
    )
    p.add_argument(
        "--split",
        action="append",
        default=None,
        help="--from clip-retrieval: one split for every row; --from dfr: the split of each "
        "file, repeated in file order (default: read from the file name)",
    )
    p.add_argument(
        "--seen",
        metavar="SEEN.npy",
        help=".npy bool [N], row-aligned: True where the backbone was trained on the row (AFR and "
        "JTT refuse such held-out rows); without it the cache records 'unknown'. An .npz may hold "
        "'seen'. "
        "With --from: aligned with the rows as read (subpopbench: feats_train, _val, _test; "
        "clip-retrieval: parts in order; dfr: files, then train/val/test), or a 'seen' column "
        "of a SubpopBench metadata file that embedkit exported",
    )
    p.add_argument(
        "--name", default="imported", help="backbone key for these embeddings (default: imported)"
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="dataset name recorded in the cache (default: imported, "
        "or the SubpopBench metadata name)",
    )
    p.add_argument("--class-names", help="comma-separated class names; labels must lie in 0..len-1")
    p.add_argument("--attr-names", help="comma-separated attribute names")
    p.add_argument(
        "--dtype",
        default=None,
        choices=["float32", "float16"],
        help="on-disk dtype (default float32; peer formats keep float16 sources in float16)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing backbone key")
    from embedkit.cli import add_wait_argument

    add_wait_argument(p)
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="keep rows with NaN/inf embeddings, flagged invalid in /samples/valid",
    )


def _names(text):
    return [s.strip() for s in text.split(",")] if text else None


def _import_peer(args, kw):
    from embedkit.interop import peers

    if args.npz or args.embeddings:
        raise EmbedkitError("give --from FORMAT SOURCE or --npz / --embeddings, not both")
    if not args.source:
        raise EmbedkitError(
            f"--from {args.fmt}: give the source {'files' if args.fmt == 'dfr' else 'folder'}"
        )
    if args.fmt != "dfr" and len(args.source) != 1:
        raise EmbedkitError(f"--from {args.fmt}: give one folder, got {len(args.source)} paths")
    names = dict(class_names=_names(args.class_names), attr_names=_names(args.attr_names))
    from embedkit.interop.arrays import _seen_arg

    kw.update(_seen_arg(args.seen))  # row-aligned with the rows in the order they are read
    if args.fmt == "subpopbench":
        return peers.import_subpopbench(
            args.source[0],
            args.out,
            metadata=args.metadata,
            test_split=args.test_split,
            dataset=args.dataset,
            **names,
            **kw,
        )
    if args.fmt == "clip-retrieval":
        if not args.label_col:
            raise EmbedkitError(
                "--from clip-retrieval: --label-col names the metadata column with the labels"
            )
        if args.split and len(args.split) != 1:
            raise EmbedkitError("--from clip-retrieval: give --split once (or --split-col)")
        return peers.import_clip_retrieval(
            args.source[0],
            args.out,
            label_col=args.label_col,
            attr_col=args.attr_col,
            split_col=args.split_col,
            split=args.split[0] if args.split else None,
            id_col=args.id_col,
            dataset=args.dataset or "imported",
            **names,
            **kw,
        )
    return peers.import_dfr(
        args.source, args.out, splits=args.split, dataset=args.dataset or "imported", **names, **kw
    )


def run(args):
    from embedkit.interop import arrays as io

    kw = dict(
        key=args.name,
        dtype=args.dtype,
        overwrite=args.overwrite,
        allow_nonfinite=args.allow_nonfinite,
        wait=args.wait,
    )
    if args.fmt:
        path = _import_peer(args, kw)
    else:
        if args.source:
            raise EmbedkitError(
                f"unexpected argument {args.source[0]!r} (a source folder needs --from FORMAT)"
            )
        kw.update(dataset=args.dataset or "imported", dtype=args.dtype or "float32")
        if args.class_names:
            kw["class_names"] = _names(args.class_names)
        if args.attr_names:
            kw["attr_names"] = _names(args.attr_names)
        if args.npz:
            if args.embeddings:
                raise EmbedkitError("give either --npz or --embeddings/--labels/--splits, not both")
            path = io.import_npz(args.npz, args.out, seen=args.seen, **kw)
        else:
            missing = [
                f
                for f, v in (
                    ("--embeddings", args.embeddings),
                    ("--labels", args.labels),
                    ("--splits", args.splits),
                )
                if not v
            ]
            if missing:
                raise EmbedkitError(
                    f"missing {', '.join(missing)} (or pass --npz, or --from FORMAT)"
                )
            path = io.import_npy(
                args.out,
                args.embeddings,
                args.labels,
                args.splits,
                attrs=args.attrs,
                ids=args.ids,
                seen=args.seen,
                **kw,
            )
    from embedkit.cache import Cache

    print(f"wrote {path} ({Cache.open(path).n} rows, backbone {args.name!r})")
    return 0
