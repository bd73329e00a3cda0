"""embedkit export: one backbone of a cache to an .npz (the import layout) or to a peer tool's
layout.

embedkit export CACHE.h5 --out FILE.npz
embedkit export CACHE.h5 --to subpopbench --out DIR    feats_{train,val,test}.npy +
metadata_<dataset>.csv
"""


def add_arguments(p):
    p.add_argument("cache", help="cache file")
    p.add_argument("--out", required=True, help=".npz to write (--to subpopbench: the folder)")
    p.add_argument(
        "--to",
        default="npz",
        choices=["npz", "subpopbench"],
        help="npz (default; `embedkit import --npz` reads it back) or subpopbench (DPE's "
        "feats_<split>.npy on a SubpopBench metadata CSV; `embedkit import --from subpopbench`)",
    )
    p.add_argument("--backbone", help="backbone key (needed when the cache holds several)")


def run(args):
    if args.to == "subpopbench":
        from embedkit.interop.peers import export_subpopbench

        print(f"wrote {export_subpopbench(args.cache, args.out, args.backbone)}")
        return 0
    from embedkit.interop.arrays import export_npz

    print(f"wrote {export_npz(args.cache, args.out, args.backbone)}")
    return 0
