"""Flags that several commands declare: one declaration each, with the command's own purpose in
the help text."""


def add_device_argument(p, default: str = "auto") -> None:
    where = (
        "auto (cuda if present), cpu, cuda or cuda:N"
        if default == "auto"
        else ("cpu, cuda or cuda:N")
    )
    p.add_argument("--device", default=default, help=f"{where} (default {default})")


def add_prompts_argument(p, purpose: str, metavar: str = "NAME_OR_FILE") -> None:
    """--prompts, repeatable: a built-in prompt set name or a `TAG | PROMPT` file."""
    p.add_argument(
        "--prompts",
        action="append",
        default=[],
        metavar=metavar,
        help=f"prompt set (a built-in set name, or a file of 'TAG | PROMPT' lines, tags = class "
        f"or attribute names) {purpose}; repeatable",
    )


def add_allow_random_init_argument(p, what: str = "the backbone") -> None:
    p.add_argument(
        "--allow-random-init",
        action="store_true",
        help=f"build {what} randomly initialised when its weights are absent (recorded; "
        f"mechanics only)",
    )


def add_root_argument(p) -> None:
    """--root: where the dataset's images are, for the thumbnails of the figures."""
    p.add_argument(
        "--root",
        help="dataset folder for image thumbnails (default: the folder recorded in the cache, "
        "else the adapter's own default)",
    )
