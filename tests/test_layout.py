"""The package layout of ARCHITECTURE.md: imports run one way (later stage -> earlier
stage), there are no import cycles, each shared helper has one home, library modules log
(only the command line prints), and only run_dir/ names a run directory's files."""

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
    "init",
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


# A generous guard against a module that holds several concepts, not a style budget: a
# module should be one concept, whatever its length.
MAX_LINES = 500


def test_no_module_is_longer_than_the_size_guard():
    long = {
        module_name(p): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


# Primitives that one module wraps for everyone: (the text that gives them away, their home).
PRIMITIVE_HOMES = {
    "get_close_matches": {"segarena.util.text"},  # did-you-mean hints
    "os.replace": {"segarena.util.files"},  # atomic writes
    "FileLock": {"segarena.util.files"},  # locks between processes (util.files.file_lock)
    "fcntl": set(),  # POSIX-only locks: file_lock (filelock) replaces them everywhere
}


def test_shared_helpers_have_one_home():
    """did-you-mean, atomic writes and file locks are written once (segarena/util)."""
    found: dict[str, set[str]] = {needle: set() for needle in PRIMITIVE_HOMES}
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for needle, where in found.items():
            if needle in text:
                where.add(module_name(path))
    assert found == PRIMITIVE_HOMES


def top_level_names(path: Path) -> list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    """The public functions and classes a module defines at its top level."""
    return [
        node
        for node in ast.parse(path.read_text()).body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and not node.name.startswith("_")
    ]


def is_command(node: ast.AST) -> bool:
    """A `segarena` command: a function of cli/ wrapped in friendly_errors."""
    decorators = getattr(node, "decorator_list", [])
    return any(isinstance(d, ast.Name) and d.id == "friendly_errors" for d in decorators)


# Public names that several modules define on purpose, each with its reason. (A command of
# cli/ may take the name of the library function it runs, e.g. cli.training.train over
# train.experiment.train: commands are left out of the check.)
SAME_NAME_ALLOWED = {
    "Plan": "two concepts: an ablation's checked arms (ablate.plan), a fold's budget "
    "schedule (train.budget)",
    "print_table": "two tables: the ablation's arms (ablate.table), the runs (report.runs_table)",
    "write_csv": "two tables: the ablation's arms (ablate.table), the runs (report.runs_table)",
    "write_report": "one page each: the ablation, the audit, the run",
    "read_manifest": "two manifests, each checked its own way: audit.json, pseudo.json",
}


def test_each_public_helper_is_defined_in_one_module():
    """No two modules define the same public top-level name (one home per helper)."""
    homes: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in top_level_names(path):
            if not is_command(node):
                homes.setdefault(node.name, []).append(module_name(path))
    duplicated = {name: where for name, where in homes.items() if len(where) > 1}
    unexplained = set(duplicated) - set(SAME_NAME_ALLOWED)
    assert unexplained == set(), {name: duplicated[name] for name in unexplained}
    # an allowance that no longer applies goes too (keeps the lists honest)
    assert set(SAME_NAME_ALLOWED) <= set(duplicated)


def calls_print(path: Path) -> list[int]:
    """Lines where `path` uses the builtin print (called, or passed on as a function)."""
    return [
        node.lineno
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Name) and node.id == "print" and isinstance(node.ctx, ast.Load)
    ]


# Modules outside cli/ that still print; the lead converts them to logging and empties this.
PRINTS_ALLOWED: set[str] = set()


def test_library_modules_log_and_only_the_cli_prints():
    """Outside segarena/cli/ a module logs (logging.getLogger(__name__)); the command line
    shows the records (cli.common.show_logs). A rich Console passed in by the caller is fine."""
    printing = {
        module_name(path): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if stage(module_name(path)) != "cli" and (lines := calls_print(path))
    }
    assert set(printing) - PRINTS_ALLOWED == set(), printing
    assert PRINTS_ALLOWED <= set(printing)  # a module that stopped printing leaves the list


# A run directory's files, which segarena.run_dir names (RunDir and its constants).
RUN_FILES = ("run.json", "summary.json", "result.json", "config.yaml")
# Modules outside run_dir/ allowed to name a run file in a literal: none since the typed
# records (run_dir/schema.py); a module that needs one asks RunDir instead.
RUN_FILE_LITERALS_ALLOWED: set[str] = set()


def run_file_literals(path: Path) -> list[str]:
    """String literals of `path` that are a run file's name or a path ending in one (prose
    that mentions a file, as in an error message, is not a file name)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if any(text == name or text.endswith("/" + name) for name in RUN_FILES):
                found.append(f"{node.lineno}: {text!r}")
    return found


def test_run_file_names_live_in_run_dir():
    named = {
        module_name(path): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if stage(module_name(path)) != "run_dir" and (found := run_file_literals(path))
    }
    assert set(named) - RUN_FILE_LITERALS_ALLOWED == set(), named
    assert RUN_FILE_LITERALS_ALLOWED <= set(named)  # a module that no longer does leaves
