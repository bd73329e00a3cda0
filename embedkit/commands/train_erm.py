"""embedkit train-erm: train a small ERM backbone on a dataset's train split (methods spec 11.4).

The checkpoint it writes is read by `embedkit extract --backbone checkpoint:PATH`.
"""

from embedkit.commands.datasets import add_dataset_arguments
from embedkit.commands.options import add_device_argument

BATCH_SIZE = 64
WEIGHT_DECAY = 1e-4


def add_training_arguments(p):
    """Flags shared with `embedkit lr-study` (everything but the learning rate and the seed)."""
    p.add_argument(
        "--arch",
        default="small_cnn",
        help="small_cnn, resnet_cifar[:DEPTH], mlp[:DEPTHxWIDTH] (MLP 5x2000 ReLU by default) or "
        "resnet18[:WEIGHTS.pth] (torchvision; random init, or a local state dict) "
        "(default small_cnn)",
    )
    p.add_argument("--width", type=int, default=None, help="small_cnn channel width (default 16)")
    p.add_argument("--no-batchnorm", action="store_true", help="small_cnn without BatchNorm layers")
    p.add_argument(
        "--epochs",
        type=int,
        default=8,
        help="passes over the train split (default 8; --steps wins)",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        help="iteration budget instead of --epochs "
        "(lr-study --cache: SGD steps per head, default 2000)",
    )
    p.add_argument(
        "--checkpoint-steps",
        default="",
        metavar="N,N,...",
        help="also write a checkpoint OUT_stepN.pt at these steps (early checkpoints)",
    )
    p.add_argument(
        "--optimizer", choices=("sgd", "adam"), default="sgd", help="sgd (with --momentum) or adam"
    )
    p.add_argument(
        "--l1",
        type=float,
        default=0.0,
        help="L1 penalty on weight tensors added to the loss (default 0)",
    )
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="dropout after each hidden ReLU (mlp only; default 0)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"mini-batch size (default {BATCH_SIZE}; 128 for lr-study head sweeps)",
    )
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    p.add_argument(
        "--weight-decay",
        type=float,
        default=None,
        help=f"weight decay on weight tensors, not biases "
        f"(default {WEIGHT_DECAY:g}; 0 for lr-study head sweeps)",
    )
    p.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="learning-rate schedule (default constant)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        help="linear warm-up as a fraction of the steps (default 0; a flagged deviation)",
    )
    add_device_argument(p, "cpu")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads while training (default 1: reproducible across machines, fastest on "
        "shared cores; 0 = torch's default)",
    )


def dataset_kwargs(args) -> dict:
    from embedkit.cli import parse_key_values

    return {
        "root": args.root,
        "dataset_options": parse_key_values(args.dataset_opt, "--dataset-opt"),
    }


def _steps_list(text: str) -> list[int]:
    from embedkit.errors import EmbedkitError

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise EmbedkitError(
            f"--checkpoint-steps {text!r}: expected comma-separated integers"
        ) from None


def training_kwargs(args) -> dict:
    return {
        "arch": args.arch,
        "width": args.width,
        "steps": args.steps,
        "optimizer": args.optimizer,
        "l1": args.l1,
        "dropout": args.dropout,
        "checkpoint_steps": _steps_list(args.checkpoint_steps),
        "arch_kwargs": {"batchnorm": False} if args.no_batchnorm else None,
        "epochs": args.epochs,
        "batch_size": BATCH_SIZE if args.batch_size is None else args.batch_size,
        "momentum": args.momentum,
        "weight_decay": WEIGHT_DECAY if args.weight_decay is None else args.weight_decay,
        "schedule": args.schedule,
        "warmup": args.warmup,
        "device": args.device,
        "threads": args.threads or None,
    }


def add_arguments(p):
    add_dataset_arguments(p)
    p.add_argument(
        "--lr", type=float, default=0.02, help="learning rate of SGD or Adam (default 0.02)"
    )
    p.add_argument("--seed", type=int, default=0, help="init and batch-order seed (default 0)")
    add_training_arguments(p)
    p.add_argument(
        "--init",
        default=None,
        metavar="CHECKPOINT",
        help="start from this train-erm checkpoint (same --arch) instead of a random init",
    )
    p.add_argument(
        "--holdout",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="leave the last FRACTION of the train split out of training (AFR's official protocol: "
        "0.2); the checkpoint lists the rows it trained on, so `extract` marks the rest unseen",
    )
    p.add_argument("--out", required=True, metavar="CKPT.pt", help="checkpoint file to write")
    p.add_argument(
        "--save-early",
        default="",
        metavar="EPOCHS",
        help="also write the checkpoint after these epochs (comma-separated, e.g. 1,2) to "
        "CKPT-epochE.pt: SELF's early-stopped models; extract each into the same cache",
    )


def train_config(args):
    """The TrainConfig of the flags (its own checks give the flags' one-line errors)."""
    from embedkit.backbones.train_backbone import TrainConfig
    from embedkit.errors import EmbedkitError

    try:
        early = [int(e) for e in args.save_early.split(",") if e.strip()]
    except ValueError:
        raise EmbedkitError(
            f"--save-early {args.save_early!r}: expected comma-separated epochs such as 1,2"
        ) from None
    return TrainConfig(
        lr=args.lr,
        seed=args.seed,
        init=args.init,
        save_early=early,
        holdout=args.holdout,
        **training_kwargs(args),
    )


def run(args):
    from embedkit.backbones.train_backbone import train_erm

    train_erm(args.dataset, train_config(args), out=args.out, **dataset_kwargs(args))
    return 0
