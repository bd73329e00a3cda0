"""embedkit heads [NAME]: list the heads (methods), their label regimes and which run in `sweep
--methods all`;
with NAME, the head's parameters as a table (name, kind, default, accepts, help)."""


def add_arguments(p):
    p.add_argument("name", nargs="?", help="a head name: print its parameters")
    p.add_argument(
        "--json", action="store_true", help="print the list (or the parameter table) as JSON"
    )


def _print_table(rows: list[dict], cols: tuple[str, ...]) -> None:
    width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols[:-1]}
    print("  ".join(f"{c:<{width[c]}}" for c in cols[:-1]) + "  " + cols[-1])
    for r in rows:
        print("  ".join(f"{str(r[c]):<{width[c]}}" for c in cols[:-1]) + "  " + str(r[cols[-1]]))


def run_one(name: str, as_json: bool) -> int:
    import json

    from embedkit import heads

    cls, preset = heads._cls(name)
    rows = cls.param_table(preset)
    rows.insert(
        0,
        {
            "name": "seed",
            "kind": "int",
            "default": "0",
            "accepts": "an integer",
            "help": "the run seed (child seeds per stream: init, sampler, subsample, pairs, infer)",
        },
    )
    rows.insert(
        1,
        {
            "name": "selection_rule",
            "kind": "choice",
            "default": "none",
            "accepts": "a rule of embedkit.selection.RULES or none",
            "help": "none = the label regime's default (val_wga, or val_worst_class without val "
            "attributes)",
        },
    )
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    doc = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())
    print(
        f"{name}: {doc}"
        + (f" ({', '.join(f'{k}={v}' for k, v in preset.items())})" if preset else "")
    )
    print()
    _print_table(rows, ("name", "kind", "default", "accepts", "help"))
    print("\nset with `embedkit fit --param NAME=VALUE` (lists as a,b,c; none for an unset value)")
    return 0


def run(args):
    import json

    from embedkit import heads

    if args.name:
        return run_one(args.name, args.json)
    rows = []
    for name in heads.names():
        try:
            cls, preset = heads._cls(name)
        except ImportError as e:
            rows.append(
                {
                    "name": name,
                    "description": f"(not available: {e})",
                    "regimes": [],
                    "default_sweep": name in heads.DEFAULT_SWEEP,
                }
            )
            continue
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        extra = f" ({', '.join(f'{k}={v}' for k, v in preset.items())})" if preset else ""
        regimes = heads.create(name).regimes
        rows.append(
            {
                "name": name,
                "description": doc + extra,
                "regimes": list(regimes),
                "default_sweep": name in heads.DEFAULT_SWEEP,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "*" if r["default_sweep"] else " "
        print(f"{mark} {r['name']:<{width}}  {','.join(r['regimes']) or '-':<9} {r['description']}")
    print(
        "\n* = in `embedkit sweep --methods all`; regimes: R1 attributes on train and val, R2 on "
        "val only, R3 none (methods spec 0.2); `embedkit heads NAME` prints a head's parameters"
    )
    return 0
