"""The layers of deploy/ (docs/architecture.md): commands above stages above vocabulary, read from the source.

Imports are read with `ast`, not by importing: a module-level import runs when its module loads, one inside a
function (lazy) only when called, one under `if TYPE_CHECKING:` never. Importing `a.b.c` also runs the package
inits `a` and `a.b`, so they count as module-level imports for the cycle check.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "deploy"

COMMANDS = ("deploy.flows", "deploy.cli", "deploy.__main__")
# Modules every layer may use: what a measurement, a table, a target or an error is. They import no stage.
VOCABULARY = (
    "deploy.errors",
    "deploy.io",
    "deploy.registry",
    "deploy.workspace",
    "deploy.families.base",
    "deploy.latency.stats",
    "deploy.latency.table",
    "deploy.latency.transfer_record",
    "deploy.search.space",
    "deploy.targets",
    "deploy.runners.specs",
)
# Lazy imports (inside a function) from a vocabulary module to a stage, each with why it is not module-level.
VOCABULARY_LAZY = {
    ("deploy.targets", "deploy.backends"): "the backend registry, to check a target's backend when it loads",
    ("deploy.targets", "deploy.runners"): "the runner registry, to check a target's runners when it loads",
    ("deploy.runners.specs", "deploy.runners"): "the runner registry, to find the spec model of a kind",
    ("deploy.workspace", "deploy.latency.lock"): "the lock timeout a workspace's settings override",
}
# Lazy imports between deploy/latency modules, each with why it is not module-level.
LATENCY_LAZY = {
    ("deploy.latency.estimate", "deploy.latency.anchors"): "the anchor models import torch",
    ("deploy.latency.estimate", "deploy.latency.session"): "only an estimate that measures its anchor opens one",
    ("deploy.latency.transfer", "deploy.latency.predictor"): "transfer.py is pure numpy; tables need pydantic",
}


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a deploy module, resolved to its file)
    kind: str  # "module" (runs on load), "lazy" (inside a function) or "typing" (under TYPE_CHECKING)
    line: int


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The deploy module `name` is, or is inside (`deploy.x.y.Class` → `deploy.x.y`); None outside deploy."""
    known = modules()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, source: str) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the importing module's package
            package = source if modules()[source].name == "__init__.py" else source.rpartition(".")[0]
            base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], *filter(None, [base])])
        names = [f"{base}.{a.name}" for a in node.names]  # a submodule, or a name _resolve cuts back to base
    return [t for t in map(_resolve, names) if t is not None]


def _scan(source: str, text: str) -> list[Import]:
    """The deploy imports of module `source` whose code is `text`, each with its kind."""
    found: list[Import] = []

    def visit(node: ast.AST, kind: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.extend(Import(source, t, kind, child.lineno) for t in _targets(child, source))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, "lazy")
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(ast.Module(body=[stmt], type_ignores=[]), "typing" if kind == "module" else kind)
                for stmt in child.orelse:
                    visit(ast.Module(body=[stmt], type_ignores=[]), kind)
            else:
                visit(child, kind)

    visit(ast.parse(text), "module")
    return found


@cache
def imports() -> tuple[Import, ...]:
    return tuple(i for m, path in modules().items() for i in _scan(m, path.read_text(encoding="utf-8")))


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _packages(module: str) -> list[str]:
    """The package inits that importing `module` runs first (deploy.a.b → deploy, deploy.a)."""
    parts = module.split(".")
    return [p for p in (".".join(parts[:i]) for i in range(1, len(parts))) if p in modules()]


def _on_load() -> dict[str, set[str]]:
    """Module → the deploy modules its loading runs: its module-level imports and their package inits."""
    graph: dict[str, set[str]] = {m: set() for m in modules()}
    for imp in imports():
        if imp.kind == "module" and imp.target != imp.source:
            graph[imp.source].update(t for t in (*_packages(imp.target), imp.target) if t != imp.source)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_layers_scanner_reads_module_lazy_and_typing_imports():
    text = (
        "from typing import TYPE_CHECKING\n"
        "from deploy.latency import table\n"
        "from deploy.latency.stats import LatencyStats\n"
        "if TYPE_CHECKING:\n    from deploy.targets import Target\n"
        "def f():\n    import deploy.latency.session\n"
    )
    found = {(i.target, i.kind) for i in _scan("deploy.latency.drift", text)}
    assert found == {
        ("deploy.latency.table", "module"),
        ("deploy.latency.stats", "module"),
        ("deploy.targets", "typing"),
        ("deploy.latency.session", "lazy"),
    }
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_layers_no_stage_or_vocabulary_module_imports_a_command():
    wrong = [
        f"{i.source}:{i.line} imports {i.target} ({i.kind})"
        for i in imports()
        if _in(i.target, COMMANDS) and not _in(i.source, COMMANDS) and i.kind != "typing"
    ]
    assert not wrong, "stages never import deploy.flows or deploy.cli (docs/architecture.md):\n" + "\n".join(wrong)


def test_layers_no_import_cycle_through_deploy_latency_at_module_level():
    cycles = [c for c in _cycles(_on_load()) if any(m.startswith("deploy.latency.") for m in c)]
    assert not cycles, f"module-level import cycles through deploy/latency: {cycles}"


def test_layers_lazy_imports_inside_deploy_latency_are_the_listed_ones():
    lazy = {
        (i.source, i.target)
        for i in imports()
        if i.kind == "lazy" and _in(i.source, ("deploy.latency",)) and _in(i.target, ("deploy.latency",))
    }
    unlisted = sorted(lazy - LATENCY_LAZY.keys())
    assert not unlisted, f"lazy imports between latency modules not in LATENCY_LAZY (say why there): {unlisted}"


@pytest.mark.parametrize("module", VOCABULARY)
def test_layers_vocabulary_module_imports_no_stage(module):
    assert module in modules(), f"{module} is listed as vocabulary but does not exist"
    wrong = [
        f"{i.target} ({i.kind}, line {i.line})"
        for i in imports()
        if i.source == module
        and i.kind != "typing"
        and not _in(i.target, VOCABULARY)
        and i.target != "deploy"
        and (i.kind == "module" or (module, i.target) not in VOCABULARY_LAZY)
    ]
    assert not wrong, f"{module} is vocabulary (docs/architecture.md) but imports stages: {wrong}"
