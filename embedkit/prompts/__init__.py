"""Prompt sets: plain text files beside this module, one `TAG | PROMPT` per line (`#` comments).
The built-in ones are named by their file stem; any path works too. Extraction embeds them with a
text tower, zero-shot and text-projection heads read them back from the cache, and edit probes
score feature edits against them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from embedkit.errors import EmbedkitError

PROMPT_DIR = Path(__file__).resolve().parent
# Built-in prompt sets per dataset family: (attribute prompts, class prompts).
DEFAULT_PROMPT_SETS = {
    "waterbirds": ("backgrounds", "birds"),
    "waterbirds_like": ("backgrounds", "birds"),
    "celeba": ("gender", "hair"),
    "colored_mnist": ("colors", "digits"),
    "colored_digits": ("colors", "digits"),
}


@dataclass
class PromptSet:
    name: str
    tags: list[str]
    prompts: list[str]
    source: str = ""  # the file it was read from
    lines: list[int] = field(default_factory=list)  # line number of each prompt there

    def __len__(self):
        return len(self.prompts)


def available_prompt_sets() -> list[str]:
    return sorted(p.stem for p in PROMPT_DIR.glob("*.txt"))


def load_prompt_set(name_or_path) -> PromptSet:
    """A built-in set by name (see `available_prompt_sets()`) or a `TAG | PROMPT` text file."""
    p = Path(name_or_path)
    if not p.suffix and not p.exists():
        p = PROMPT_DIR / f"{name_or_path}.txt"
    if not p.exists():
        raise EmbedkitError(
            f"prompt set {name_or_path!r}: no such file (built-in sets: "
            f"{', '.join(available_prompt_sets())})"
        )
    tags, prompts, lines = [], [], []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "|" not in line:
            raise EmbedkitError(f"{p}:{n}: expected 'TAG | PROMPT', got {line!r}")
        tag, prompt = (s.strip() for s in line.split("|", 1))
        if not tag or not prompt:
            raise EmbedkitError(f"{p}:{n}: empty tag or prompt in {line!r}")
        tags.append(tag)
        prompts.append(prompt)
        lines.append(n)
    if not prompts:
        raise EmbedkitError(f"{p}: holds no prompts")
    return PromptSet(p.stem, tags, prompts, str(p), lines)


def prompt_sets_from_names(class_names, attr_names) -> tuple[PromptSet, PromptSet]:
    """Fallback prompt sets written from a cache's own class and attribute names."""
    attrs = PromptSet(
        "attributes", list(attr_names), [f"a photo with {t.replace('_', ' ')}." for t in attr_names]
    )
    classes = PromptSet(
        "classes", list(class_names), [f"a photo of a {c.replace('_', ' ')}." for c in class_names]
    )
    return attrs, classes


def stored_prompt_set(text: dict, class_names, attr_names, kind: str) -> PromptSet | None:
    """The prompts of one kind ('class' or 'attr') stored in a cache's /text group, tagged by the
    class or attribute name they describe."""
    names = class_names if kind == "class" else attr_names
    rows = [i for i, k in enumerate(text["kind"]) if k == kind]
    if not rows:
        return None
    return PromptSet(
        f"cache_{kind}",
        [
            names[int(text["index"][i])]
            if 0 <= text["index"][i] < len(names)
            else str(text["index"][i])
            for i in rows
        ],
        [text["prompts"][i] for i in rows],
    )
