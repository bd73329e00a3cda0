"""The import rule (README "Where each idea lives"): every module's embedkit imports, top-level and
inside functions alike, point down the layering below, and no set of modules imports itself round
in a cycle. A new arrow against the flow fails here, naming the file, line and both layers."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "embedkit"

# Lowest first. A module may import its own layer and the layers before it, never a later one.
LAYERS = [
    # shared vocabulary and small rules: no cache, no torch at import time
    (
        "foundation",
        {
            "version",
            "errors",
            "seeds",
            "determinism",
            "schema",
            "jsonsafe",
            "devices",
            "tables",
            "locking",
            "prompts",
            "configs",
        },
    ),
    ("numerics", {"metrics", "selection", "geometry"}),  # numpy: scores, selection, FAISS
    ("viz", {"viz"}),  # draws what it is given: no cache, no analysis, no records
    ("cache", {"cache"}),
    ("data", {"data"}),
    ("backbones", {"backbones"}),  # models, and the trainer of small backbones
    ("extract", {"extract", "interop"}),  # into a cache: extraction, other tools' formats
    ("heads", {"heads"}),
    ("analysis", {"analysis"}),  # computes only: takes splits and arrays, returns results
    ("runs", {"runs"}),  # records, execution of fits and sweeps, result tables
    ("studies", {"studies"}),
    ("pipelines", {"pipelines"}),  # opens caches, calls analysis and viz, writes outputs
    ("commands", {"commands", "cli", "__main__", ""}),  # "" = the package itself: the API facade
]
RANK = {top: i for i, (_, tops) in enumerate(LAYERS) for top in tops}

# Exceptions to the rule: none are left. An arrow or cycle listed here is tolerated (and the test
# fails once it is fixed but still listed), so a migration can land in steps; keep them empty.
KNOWN_ARROWS: set[tuple[str, str]] = set()
KNOWN_CYCLES: list[list[str]] = []


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> list[tuple[str, int]]:
    """(imported embedkit module, line) for every import statement in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            # `from pkg import mod` imports the submodule; `from mod import name` the module
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `import embedkit.x.y` of a symbol path: its module
                t = t.rpartition(".")[0]
            if t.startswith("embedkit") and t != name:
                out.append((t, node.lineno))
    return out


def top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def graph() -> dict[str, list[tuple[str, int]]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def test_every_module_has_a_layer():
    missing = sorted({top(m) for m in modules()} - set(RANK))
    assert not missing, f"modules outside the layering (add them to LAYERS): {missing}"


def test_imports_point_down_the_layering():
    mods = modules()
    wrong, seen = [], set()
    for m, deps in graph().items():
        for d, line in deps:
            if RANK[top(d)] > RANK[top(m)]:
                seen.add((m, d))
                if (m, d) in KNOWN_ARROWS:
                    continue
                wrong.append(
                    f"{mods[m].relative_to(PACKAGE.parent)}:{line}: {m} ({LAYERS[RANK[top(m)]][0]}) "
                    f"imports {d} ({LAYERS[RANK[top(d)]][0]})"
                )
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)
    stale = sorted(KNOWN_ARROWS - seen)
    assert not stale, f"fixed arrows still listed in KNOWN_ARROWS (delete them): {stale}"


def test_no_import_cycles():
    g = {m: sorted({d for d, _ in deps}) for m, deps in graph().items()}
    # Tarjan's strongly connected components; any component of more than one module is a cycle.
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    new = [c for c in cycles if c not in KNOWN_CYCLES]
    stale = [c for c in KNOWN_CYCLES if c not in cycles]
    assert not stale, f"fixed cycles still listed in KNOWN_CYCLES (delete them): {stale}"
    cycles = new
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_nothing_imports_pipelines_or_commands():
    for m, deps in graph().items():
        if top(m) in ("pipelines", "commands", "cli", "__main__"):
            continue
        bad = [d for d, _ in deps if top(d) in ("pipelines", "commands", "cli")]
        assert not bad, f"{m} imports {bad}"


def test_the_rule_catches_an_upward_arrow(tmp_path):
    # The checker itself: a heads module importing runs is an arrow against the flow.
    f = tmp_path / "embedkit" / "heads" / "x.py"
    f.parent.mkdir(parents=True)
    f.write_text("def g():\n    from embedkit.runs import records\n")
    deps = imports("embedkit.heads.x", f, {"embedkit.runs", "embedkit.runs.records"})
    assert deps == [("embedkit.runs.records", 2)]
    assert RANK[top("embedkit.runs.records")] > RANK[top("embedkit.heads.x")]
