"""embedkit extract: run a dataset through a frozen backbone into an HDF5 cache.

Single process, a job array (`--shard i/n`), or one process per GPU with
`torchrun --nproc_per_node=N -m embedkit extract ...`; an interrupted run resumes from its
finished parts. See embedkit/extract/extractor.py for the rules.
"""

from embedkit.commands.datasets import add_dataset_arguments
from embedkit.commands.options import (
    add_allow_random_init_argument,
    add_device_argument,
    add_prompts_argument,
)


def add_arguments(p):
    add_dataset_arguments(p)
    p.add_argument(
        "--backbone",
        required=True,
        metavar="SPEC",
        help="openclip:MODEL:PRETRAINED | torchvision:MODEL[:CHECKPOINT] "
        "| resnet_cifar:DEPTH:CHECKPOINT | checkpoint:PATH | timm:MODEL[:WEIGHTS] | hf:PATH "
        "| sbert:PATH (see `embedkit backbones`)",
    )
    p.add_argument(
        "--backbone-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backbone option, repeatable (hf:/sbert: pooling=cls|mean|pooler, "
        "normalize=true|false, max_length=N, modality=text|image; recorded in the provenance "
        "and the key)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="CACHE.h5",
        help="cache to write (or to add this backbone to, if it holds the same samples)",
    )
    p.add_argument(
        "--splits", default="train,val,test", help="comma-separated splits to extract (default all)"
    )
    p.add_argument(
        "--batch-size", type=int, default=256, help="images or texts per forward pass (default 256)"
    )
    add_device_argument(p)
    p.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16", "fp16"),
        help="fp32, or bf16/fp16 autocast (default fp32)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader worker processes (default: min(8, cores) on GPU, min(4, cores-1) on CPU)",
    )
    p.add_argument(
        "--dtype",
        default=None,
        choices=("float32", "float16"),
        help="stored feature dtype (default float16 for open_clip, float32 otherwise)",
    )
    p.add_argument(
        "--layer",
        default=None,
        help="representation to embed: default penultimate (input of the last Linear) or "
        "image_embeds for open_clip; a module name such as layer3 (pooled), or pre_proj for "
        "open_clip ViTs",
    )
    p.add_argument(
        "--shard",
        default="0/1",
        metavar="i/n",
        help="do job i of n (0-based; SLURM arrays: --shard $SLURM_ARRAY_TASK_ID/N); the job that "
        "finishes the last part merges",
    )
    p.add_argument(
        "--part-rows",
        type=int,
        default=16384,
        help="rows per resumable part file, at most (default 16384)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        default=True,
        help="skip parts finished by an earlier run with the same configuration (default)",
    )
    p.add_argument(
        "--no-resume", dest="resume", action="store_false", help="recompute every part of this job"
    )
    add_prompts_argument(p, "to embed with the text tower (openclip:...) into /text/<key>", "FILE")
    add_allow_random_init_argument(p)
    p.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first unreadable image instead of flagging it",
    )
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="flag rows with NaN/inf features invalid instead of stopping",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the backbone if --out already holds it"
    )
    p.add_argument("--keep-shards", action="store_true", help="keep the part files after the merge")
    from embedkit.cli import add_wait_argument

    add_wait_argument(p)


def extract_config(args):
    """The ExtractConfig of the flags (its own checks give the flags' one-line errors)."""
    from embedkit.cli import parse_key_values
    from embedkit.extract import ExtractConfig

    return ExtractConfig(
        splits=[s.strip() for s in args.splits.split(",") if s.strip()],
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        dtype=args.dtype,
        layer=args.layer,
        allow_random_init=args.allow_random_init,
        backbone_options=parse_key_values(args.backbone_opt, "--backbone-opt"),
        shard=args.shard,
        resume=args.resume,
        strict=args.strict,
        allow_nonfinite=args.allow_nonfinite,
        prompts=args.prompts,
        part_rows=args.part_rows,
        overwrite=args.overwrite,
        keep_shards=args.keep_shards,
        wait=args.wait,
    )


def run(args):
    from embedkit.commands.train_erm import dataset_kwargs
    from embedkit.extract import extract

    res = extract(
        args.dataset, args.backbone, args.out, extract_config(args), **dataset_kwargs(args)
    )
    if res.path is not None:
        print(res.path)
    return 0
