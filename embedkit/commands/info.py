"""embedkit info: provenance, shapes and per-split group counts."""

import json

SKIP = {"complete", "config", "backbone_key"}


def add_arguments(p):
    p.add_argument("cache", help="cache file")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def format_info(info: dict) -> str:
    lines = [
        f"{info['path']}  (embedkit cache, format version {info['format_version']})",
        f"dataset: {info['dataset']}   rows: {info['n_samples']}",
        f"classes: {', '.join(info['class_names'])}",
        f"attributes: {', '.join(info['attr_names'])}",
        f"groups: {info['group_definition']}",
    ]
    meta = info.get("dataset_meta") or {}
    if meta.get("group_definition", "g = y * n_attrs + a") != "g = y * n_attrs + a":
        lines.append(
            f"group definition: {meta['group_definition']}"
        )  # CivilComments' coarse groups
    for k in ("attribute", "split_rule"):  # text adapters record these
        if meta.get(k):
            lines.append(f"{k.replace('_', ' ')}: {meta[k]}")
    lines.append("")
    for key, b in info["backbones"].items():
        extras = [
            n
            for n, flag in (
                ("logits", b["has_logits"]),
                ("head", b["has_head"]),
                ("text", b["has_text"]),
            )
            if flag
        ]
        lines.append(
            f"backbone {key}: dim {b['dim']}, {b['dtype']}"
            + (f", with {', '.join(extras)}" if extras else "")
        )
        lines.append("    " + format_seen(b.get("seen"), info["splits"]))
        for k, v in sorted(b["provenance"].items()):
            if k not in SKIP:
                v = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else v
                lines.append(f"    {k}: {v}")
    names = info["group_names"]
    width = max([len(n) for n in names] + [6])
    lines += ["", f"{'group':<{width}}  " + "  ".join(f"{s:>7}" for s in info["splits"])]
    for gi, name in enumerate(names):
        lines.append(
            f"{name:<{width}}  "
            + "  ".join(f"{c['groups'][gi]:>7}" for c in info["splits"].values())
        )
    for label, key in (("unknown a", "unknown_attr"), ("invalid", "invalid"), ("total", "rows")):
        lines.append(
            f"{label:<{width}}  " + "  ".join(f"{c[key]:>7}" for c in info["splits"].values())
        )
    if info.get("eval_group_names"):
        eg = info["eval_group_names"]
        w = max([len(n) for n in eg] + [width])
        definition = (info.get("dataset_meta") or {}).get("eval_group_definition", "")
        lines += [
            "",
            f"overlapping evaluation groups: {definition}",
            f"{'eval group':<{w}}  " + "  ".join(f"{s:>7}" for s in info["splits"]),
        ]
        for j, name in enumerate(eg):
            lines.append(
                f"{name:<{w}}  "
                + "  ".join(f"{c['eval_groups'][j]:>7}" for c in info["splits"].values())
            )
    return "\n".join(lines)


def format_seen(seen: dict | None, splits: dict) -> str:
    """One line: rows the backbone was trained on, per split, or that nobody recorded them."""
    if seen is None:
        return "seen in training: unknown (not recorded; AFR/JTT cannot check their held-out rows)"
    return "seen in training: " + ", ".join(
        f"{name} {seen[name]}/{c['rows']}" for name, c in splits.items()
    )


def run(args):
    from embedkit.cache import Cache

    info = Cache.open(args.cache).info()
    print(json.dumps(info, indent=2, default=str) if args.json else format_info(info))
    return 0
