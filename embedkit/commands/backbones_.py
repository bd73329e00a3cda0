"""embedkit backbones: the backbone SPEC forms, and the details of one SPEC."""

import json


def add_arguments(p):
    p.add_argument(
        "spec", nargs="?", help="build this SPEC on the CPU and print its key, dim and provenance"
    )
    p.add_argument(
        "--allow-random-init",
        action="store_true",
        help="build it randomly initialised without weights",
    )
    p.add_argument(
        "--layer", default=None, help="representation to embed (see `embedkit extract --help`)"
    )
    p.add_argument(
        "--backbone-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="backbone option, repeatable (hf:/sbert:; see `embedkit extract --help`)",
    )


def run(args):
    from embedkit import backbones

    if not args.spec:
        width = max(len(u) for u, _ in backbones.forms().values())
        for usage, desc in backbones.forms().values():
            print(f"{usage:<{width}}  {desc}")
        return 0
    from embedkit.cli import parse_key_values

    bb = backbones.create(
        args.spec,
        device="cpu",
        allow_random_init=args.allow_random_init,
        layer=args.layer,
        options=parse_key_values(args.backbone_opt, "--backbone-opt"),
    )
    print(
        f"key: {bb.key}\ndim: {bb.dim}\nclasses: {bb.num_classes or '-'}\nmodality: {bb.modality}\n"
        f"text tower: {'yes' if bb.has_text else 'no'}"
    )
    print(json.dumps(bb.provenance(), indent=2, sort_keys=True, default=str))
    return 0
