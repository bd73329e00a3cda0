"""The README's two commands are the ones the Makefile and CI run."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", section, re.S)
    return [
        line.strip()
        for b in blocks
        for line in b.splitlines()
        if line.strip() and not line.startswith("#")
    ]


def test_quick_start_is_exactly_two_commands():
    assert quick_start_commands() == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", ci, re.M), "CI must run the README's test command"


def test_makefile_targets_run_what_the_readme_says():
    mk = (ROOT / "Makefile").read_text()
    demo = mk.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    test = mk.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "embedkit demo" in demo and "$(STAMP)" in demo.splitlines()[0]
    assert "pytest" in test and "$(STAMP)" in test.splitlines()[0]
    # Each target installs into .venv on a fresh machine.
    assert "-m venv" in mk and "pip install" in mk
