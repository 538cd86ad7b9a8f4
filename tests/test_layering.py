"""The package import graph points down only, has no cycles, and the CLI starts without torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kenner"
BASE = {"kenner", "errors", "io", "registry", "paths", "device", "progress"}
# package -> the packages it may import (base modules are allowed everywhere)
ALLOWED = {
    "config": set(),
    "data": set(),
    "losses": set(),
    "evaluate": set(),
    "loop": {"config", "evaluate"},
    "encoders": {"config", "data"},
    "retrieval": {"evaluate"},
    "audit": {"evaluate", "retrieval"},
    "heads": {"config", "loop", "losses", "evaluate", "retrieval"},
    "train": {"config", "data", "encoders", "heads", "loop", "losses", "evaluate", "retrieval"},
    "methods": {"config", "data", "encoders", "heads", "loop", "losses", "evaluate", "retrieval", "train"},
    "runs": {
        "config",
        "data",
        "encoders",
        "heads",
        "loop",
        "losses",
        "evaluate",
        "retrieval",
        "train",
        "methods",
        "audit",
    },
    "serve": {"config", "data", "encoders", "evaluate", "methods", "runs", "retrieval"},
    "scale": {"config", "data", "encoders", "heads", "evaluate", "methods", "runs"},
    "cli": {"config", "methods", "runs", "data", "evaluate", "encoders", "serve"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kenner"


def imports() -> dict[str, set[str]]:
    """Module -> kenner modules it imports anywhere (module level, in functions, under TYPE_CHECKING)."""
    graph: dict[str, set[str]] = defaultdict(set)
    modules = {module_name(path) for path in SRC.rglob("*.py")}
    for path in SRC.rglob("*.py"):
        source = module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                if name.startswith("kenner"):
                    while name not in modules and "." in name:
                        name = name.rsplit(".", 1)[0]
                    if name != source:
                        graph[source].add(name)
    return graph


def test_packages_import_only_downwards() -> None:
    wrong = []
    for source, targets in imports().items():
        here = package(source)
        if here in BASE:
            allowed = BASE
        else:
            assert here in ALLOWED, f"new package {here!r}: give it a place in ALLOWED"
            allowed = BASE | ALLOWED[here] | {here}
        wrong += [f"{source} -> {target}" for target in targets if package(target) not in allowed]
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles_between_modules() -> None:
    graph = imports()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            # a package's __init__ importing its own modules is not a cycle between stages
            if len(component) > 1 and len({package(m) for m in component}) > 1:
                cycles.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    assert not cycles, f"import cycles: {cycles}"


def test_no_library_code_in_cli() -> None:
    """cli/ builds parsers and calls down; it defines no classes."""
    for path in (SRC / "cli").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
        assert not classes, f"{path.name} defines {classes}"


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "--help"],
        ["sweep", "--help"],
        ["compare", "--help"],
        ["train", "--data", "x", "--epochs", "many"],
        ["train", "--method", "nope"],
        ["train", "--data", "x", "--lr", "-1"],
    ],
)
def test_cli_parses_without_importing_torch(argv: list[str]) -> None:
    code = (
        "import sys\nimport kenner.cli\ntry:\n    code = kenner.cli.main(sys.argv[1:])\nexcept SystemExit as e:\n"
        "    code = e.code\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH', code, file=sys.stderr)"
    )
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("NO-TORCH"), done.stderr[-2000:]
    if argv[-1] != "--help":
        assert last.split()[1] == "2", done.stderr  # an argument error: exit code 2, one line
