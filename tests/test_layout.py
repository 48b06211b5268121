"""The package layout of ARCHITECTURE.md: imports run one way (later stage -> earlier
stage), there are no import cycles, and the shared helpers have one home each."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "segarena"

# Earliest first. A module may import its own package and any package listed before it.
STAGES = [
    "errors",
    "util",
    "metrics",
    "config",
    "data",
    "model",
    "submission",
    "run_dir",
    "records",
    "train",
    "infer",
    "report",
    "labels",
    "ablate",
    "compete",
    "cli",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def stage(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def imports_of(path: Path) -> set[str]:
    """Every segarena module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("segarena"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("segarena.")}
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_package_has_a_stage():
    packages = {stage(m) for m in import_graph()} - {""}
    assert packages <= set(STAGES), packages - set(STAGES)


def test_imports_run_from_later_stages_to_earlier_ones():
    backwards = []
    for module, targets in import_graph().items():
        if stage(module) == "":
            continue
        rank = STAGES.index(stage(module))
        for target in targets:
            if stage(target) and stage(target) != stage(module):
                if STAGES.index(stage(target)) > rank:
                    backwards.append(f"{module} -> {target}")
    assert backwards == []


def test_no_import_cycles():
    graph = import_graph()
    # a module also imports its packages' __init__ when it imports a submodule
    resolved = {m: {t for t in targets if t in graph} for m, targets in graph.items()}
    done: set[str] = set()
    cycles = []

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            cycles.append(" -> ".join(path[path.index(module) :] + [module]))
            return
        if module in done:
            return
        for target in sorted(resolved[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert cycles == []


def test_no_module_is_longer_than_the_budget():
    long = {
        module_name(p): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 320
    }
    assert long == {}


def test_shared_helpers_have_one_home():
    """did-you-mean, atomic writes and the examples helper are defined once (segarena/util)."""
    definitions = {"get_close_matches": [], "os.replace": []}
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for needle, where in definitions.items():
            if needle in text:
                where.append(module_name(path))
    assert definitions["get_close_matches"] == ["segarena.util.text"]
    assert definitions["os.replace"] == ["segarena.util.files"]
