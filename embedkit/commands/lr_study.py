"""embedkit lr-study: the large-learning-rate study (methods spec section 11).

Three modes:
  --protocol quick|full  the three-arm study of spec 11.3 (A heads on a fixed cache, B small
                  backbones, C comparators at matched budget) with one table and figure per arm and
                  the claims of spec 11.1 tested as hypotheses (OUT/lr_protocol.md); `--job I` runs
                  only job I (a SLURM array task), `--merge` builds the tables from finished jobs;
  --dataset NAME  train one small ERM backbone per learning rate (and seed), extract each into
                  OUT/cache.h5, and compare the ERM head, DFR on its features, compressibility,
                  activation sparsity and class separation across learning rates;
  --cache FILE    train linear (or MLP) heads at every learning rate on a fixed cache with the
                  shared SGD trainer and report the same metrics on the heads.
The last two (embedkit.studies.lr.pipeline) write OUT/lr_study.md, lr_study.csv (one line per
LR), runs.csv (one per run), lr_study.png and lr_study.json.
"""

from embedkit.commands.train_erm import (
    add_dataset_arguments,
    add_training_arguments,
    dataset_kwargs,
    training_kwargs,
)
from embedkit.errors import EmbedkitError

HEAD_BATCH_SIZE = 128


def _ints(text: str, flag: str) -> list[int]:
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EmbedkitError(
            f"{flag} {text!r}: expected comma-separated integers such as 0,1,2"
        ) from None
    if not out:
        raise EmbedkitError(f"{flag} {text!r}: give at least one seed")
    return out


def add_arguments(p):
    mode = p.add_argument_group("what to study (one of)")
    add_dataset_arguments(mode, required=False)
    mode.add_argument(
        "--cache", default=None, help="head-level sweep on this cache instead of training backbones"
    )
    mode.add_argument(
        "--protocol",
        choices=("quick", "full"),
        default=None,
        help="the three-arm study: quick (Double-MNIST, MLP 5x256, 4 LRs, 2 seeds; ~5 CPU-minutes) "
        "or full (the spec's grids; a GPU job or SLURM array)",
    )
    mode.add_argument(
        "--quick",
        action="store_const",
        const="quick",
        dest="protocol",
        help="shorthand for --protocol quick",
    )
    p.add_argument(
        "--lrs",
        default=None,
        help="comma-separated learning rates, e.g. 0.01,0.03,0.1,0.3 (--dataset and --cache modes)",
    )
    p.add_argument(
        "--seeds", default="0", help="comma-separated seeds per learning rate (default 0)"
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    b = p.add_argument_group(
        "training (backbone study; --momentum, --weight-decay and --batch-size also "
        "apply to the head study)"
    )
    add_training_arguments(b)
    b.add_argument("--dfr-seeds", default="0", help="DFR seeds per backbone, averaged (default 0)")
    b.add_argument("--no-prune", action="store_true", help="skip the magnitude-pruning curve")
    pr = p.add_argument_group("protocol (--protocol)")
    pr.add_argument(
        "--job",
        type=int,
        default=None,
        metavar="I",
        help="run only job I of the protocol (0-based; e.g. $SLURM_ARRAY_TASK_ID), then stop",
    )
    pr.add_argument(
        "--merge", action="store_true", help="only merge the finished jobs' rows into the report"
    )
    pr.add_argument(
        "--list-jobs", action="store_true", help="print the protocol's jobs (index, name) and stop"
    )
    h = p.add_argument_group("head study (--cache)")
    h.add_argument(
        "--backbone", default=None, help="backbone key in the cache (default: its only one)"
    )
    h.add_argument(
        "--head", choices=("linear", "mlp"), default="linear", help="head model (default linear)"
    )
    h.add_argument("--hidden", type=int, default=512, help="MLP hidden width (default 512)")
    h.add_argument(
        "--eval-every", type=int, default=200, help="evaluate every N steps (default 200)"
    )
    h.add_argument(
        "--standardize", action="store_true", help="standardise features on the train rows"
    )


def run(args):
    from embedkit.studies.lr import pipeline

    if sum(v is not None for v in (args.dataset, args.cache, args.protocol)) != 1:
        raise EmbedkitError(
            "give exactly one of --dataset (train backbones), --cache (head sweep) or "
            "--protocol (the three-arm study)"
        )
    if args.protocol is not None:
        return _protocol(args)
    if args.lrs is None:
        raise EmbedkitError("--lrs is required with --dataset and --cache")
    seeds = _ints(args.seeds, "--seeds")
    if args.dataset is not None:
        from embedkit.studies.lr.pruning import PRUNE_SPARSITIES

        result = pipeline.backbone_study(
            args.dataset,
            args.lrs,
            args.out,
            seeds=seeds,
            dfr_seeds=_ints(args.dfr_seeds, "--dfr-seeds"),
            sparsities=() if args.no_prune else PRUNE_SPARSITIES,
            **dataset_kwargs(args),
            **training_kwargs(args),
        )
    else:
        result = pipeline.head_study(
            args.cache,
            args.lrs,
            args.out,
            backbone=args.backbone,
            model=args.head,
            hidden=args.hidden,
            momentum=args.momentum,
            weight_decay=0.0 if args.weight_decay is None else args.weight_decay,
            steps=2000 if args.steps is None else args.steps,
            eval_every=args.eval_every,
            batch_size=HEAD_BATCH_SIZE if args.batch_size is None else args.batch_size,
            seeds=seeds,
            standardize=args.standardize,
        )
    print(result["table"])
    print("\n" + "\n".join(f"wrote {path}" for path in result["files"].values()))
    return 0


def _protocol(args):
    from embedkit.studies.lr import protocol as P

    config = P.get_config(args.protocol)
    if args.list_jobs:
        for k, j in enumerate(P.jobs(config)):
            print(f"{k}\t{j['name']}")
        return 0
    result = P.run_protocol(
        config,
        args.out,
        job=args.job,
        merge_only=args.merge,
        root=args.root,
        device=args.device,
        threads=args.threads or None,
    )
    if args.job is not None:
        print(f"job {args.job}: {result['row']['name']} {result['row']['status']}")
        return 0
    print(result["report"])
    print(f"wall time {result['seconds']:.0f} s")
    print("\n".join(f"wrote {path}" for path in result["files"].values()))
    return 0
