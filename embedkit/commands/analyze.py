"""embedkit analyze: FAISS centroids, kNN purity, clusters and directions of one backbone of a
cache; writes summary.json and PNG figures (with figures.json listing them and any skipped)."""

from embedkit.commands.options import (
    add_allow_random_init_argument,
    add_prompts_argument,
    add_root_argument,
)


def add_arguments(p):
    p.add_argument("--cache", required=True, help="cache file (.h5)")
    p.add_argument("--backbone", help="backbone key (needed when the cache holds several)")
    p.add_argument("--out", required=True, help="output folder for summary.json and the figures")
    p.add_argument(
        "--split", default="train", help="split whose structure is analysed (default train)"
    )
    p.add_argument(
        "--eval-split",
        default="test",
        help="split whose worst-group errors are looked up among the analysed split's rows "
        "(default test; '' to skip)",
    )
    p.add_argument(
        "--k",
        type=int,
        default=10,
        help="neighbours per row for purity and error neighbours (default 10)",
    )
    p.add_argument(
        "--metric",
        default="cosine",
        choices=("cosine", "ip", "l2"),
        help="neighbour metric (default cosine)",
    )
    p.add_argument(
        "--max-queries",
        type=int,
        default=20000,
        help="purity is averaged over a group-stratified sample of this many rows (default 20000)",
    )
    p.add_argument(
        "--no-clusters",
        action="store_true",
        help="skip the per-class k-means (GEORGE) group inference",
    )
    p.add_argument(
        "--cluster-reduce",
        default="none",
        choices=("none", "margin", "pca"),
        help="features clustered per class: raw embeddings, ERM margin (needs stored logits) "
        "or PCA",
    )
    p.add_argument(
        "--cluster-k", default="2-10", help="k grid for the per-class k-means, e.g. 2-10 or 2,3,4"
    )
    p.add_argument(
        "--overcluster",
        action="store_true",
        help="GEORGE over-clustering step (needs stored logits)",
    )
    p.add_argument(
        "--text-backbone",
        metavar="SPEC",
        help="CLIP text tower for the text probe (openclip:MODEL:PRETRAINED); "
        "default: the cache's /text",
    )
    add_allow_random_init_argument(p, "the --text-backbone")
    add_prompts_argument(p, "for the text probe")
    add_root_argument(p)
    p.add_argument(
        "--map", default="pca", choices=("pca", "umap", "auto"), help="2-D map method (default pca)"
    )
    p.add_argument(
        "--store",
        action="store_true",
        help="also write centroids, directions and inferred groups to "
        "/derived/analysis_<backbone> in the cache",
    )
    p.add_argument("--no-figures", action="store_true", help="write summary.json only")
    p.add_argument(
        "--seed", type=int, default=0, help="seed for subsamples and k-means (default 0)"
    )


def _k_grid(text: str) -> list[int]:
    from embedkit.errors import EmbedkitError

    try:
        if "-" in text:
            lo, hi = (int(t) for t in text.split("-", 1))
            grid = list(range(lo, hi + 1))
        else:
            grid = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise EmbedkitError(
            f"--cluster-k {text!r}: expected a range like 2-10 or a list like 2,3,4"
        ) from None
    if not grid or min(grid) < 1:
        raise EmbedkitError(f"--cluster-k {text!r}: needs at least one k >= 1")
    return grid


def run(args):
    from embedkit.errors import EmbedkitError
    from embedkit.pipelines.analyze import run_analysis

    if args.k < 1:
        raise EmbedkitError(f"--k {args.k}: must be at least 1")
    run_analysis(
        args.cache,
        args.out,
        backbone=args.backbone,
        split=args.split,
        eval_split=args.eval_split or None,
        k=args.k,
        metric=args.metric,
        max_queries=args.max_queries,
        george=not args.no_clusters,
        george_params={
            "reduce": args.cluster_reduce,
            "k_grid": _k_grid(args.cluster_k),
            "overcluster": args.overcluster,
        },
        text_backbone=args.text_backbone,
        allow_random_init=args.allow_random_init,
        prompt_sets=args.prompts,
        root=args.root,
        map_method=args.map,
        store=args.store,
        figures=not args.no_figures,
        seed=args.seed,
        log=print,
    )
    return 0
