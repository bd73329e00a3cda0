"""The `embedkit` command. Thin: parses, calls the library, prints.

Each subcommand lives in `embedkit/commands/<name>.py` with `add_arguments(parser)` and
`run(args) -> int`. Only the module of the command being run is imported, so `embedkit info`
does not pay for importing torch. Any `EmbedkitError` becomes one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from embedkit.errors import EmbedkitError

# name -> (module under embedkit.commands, one-line help)
COMMANDS = {
    "extract": ("extract", "run a dataset through a frozen backbone into an HDF5 cache"),
    "import": (
        "import_",
        "bring your own embeddings (.npz/.npy, or --from subpopbench|clip-retrieval|dfr) into a "
        "cache",
    ),
    "export": ("export", "write one backbone of a cache to an .npz file (or --to subpopbench)"),
    "info": ("info", "provenance, shapes and per-split group counts of a cache"),
    "merge": ("merge", "merge extraction shard files into one cache"),
    "datasets": ("datasets", "list the dataset adapters"),
    "backbones": ("backbones_", "list the backbone SPEC forms"),
    "heads": ("heads_", "list the heads (methods)"),
    "fit": ("fit", "fit one head on a cache for one or more seeds"),
    "sweep": ("sweep", "fit every head (or a list) with several seeds; write a results table"),
    "report": ("report", "tables and PNG figures from a run or sweep folder"),
    "analyze": ("analyze", "FAISS centroids, kNN purity, clusters and directions of a cache"),
    "train-erm": ("train_erm", "train a small ERM backbone on a dataset (checkpoint for extract)"),
    "lr-study": (
        "lr_study",
        "large-learning-rate study: train backbones over an LR grid and compare",
    ),
    "demo": ("demo", "the whole pipeline on the embedded default data"),
}


def _command_module(name: str):
    return importlib.import_module(f"embedkit.commands.{COMMANDS[name][0]}")


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {n:<10} {h}" for n, (_, h) in COMMANDS.items())
    p = argparse.ArgumentParser(
        prog="embedkit",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Frozen-backbone embedding workbench for worst-group robustness research.",
        epilog=f"commands:\n{lines}\n\n`embedkit COMMAND --help` documents each command's flags.",
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    p.add_argument("command", nargs="?", help="one of the commands below")
    return p


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        top = _top_parser()
        ns = top.parse_args(argv)
        if ns.version:
            from embedkit.version import __version__

            print(__version__)
            return 0
        top.print_help()
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        sys.stderr.write(
            f"embedkit: error: unknown command {name!r}; run `embedkit --help` for the list\n"
        )
        return 2
    parser = _Parser(prog=f"embedkit {name}", description=COMMANDS[name][1])
    module = _command_module(name)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except EmbedkitError as e:
        sys.stderr.write(f"embedkit {name}: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write(f"embedkit {name}: interrupted\n")
        return 130


def add_wait_argument(p) -> None:
    """--wait, for every command that writes a cache (embedkit/locking.py)."""
    p.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="if another process is writing the same cache, wait up to SECONDS for it "
        "(default 0: refuse at once, naming it)",
    )


def parse_key_values(items: list[str] | None, flag: str) -> dict:
    """Parse repeated KEY=VALUE flags; values are read as JSON when they parse, else kept as
    text."""
    import json

    out = {}
    for item in items or []:
        if "=" not in item:
            raise EmbedkitError(f"{flag} {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except ValueError:
            out[k.strip()] = v
    return out


if __name__ == "__main__":
    sys.exit(main())
