"""The package's shape, read from its source with ``ast`` (nothing is imported): no function
longer than 60 lines and no import circle between its modules, lazy imports included (issue 18).

An edge is an import as written: ``from efficientvit_jax.zoo import base`` is an edge to the
module ``zoo.base``; ``from efficientvit_jax.zoo import create_model`` one to ``zoo/__init__``.
Python's implicit import of a module's parent packages is not an edge (every module would then
import its package's ``__init__``, which imports it back by design)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "efficientvit_jax"
MAX_LINES = 60


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package (``pkg.__init__`` as ``pkg``)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules that ``name`` imports anywhere in its file."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolved against the importing module's package
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # a submodule if one exists by that name, else the module the name comes from
            targets = [
                f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names
            ]
        else:
            continue
        out |= {t for t in targets if t in modules and t != name}
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_circle_and_resolves_relative_imports(tmp_path):
    # The checker itself: a circle through three modules (one import lazy, one relative) and a
    # module outside it.
    pkg = tmp_path / "efficientvit_jax"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import thing\n")
    (pkg / "a.py").write_text("def f():\n    from efficientvit_jax.sub import b\n")
    (pkg / "sub" / "b.py").write_text("from ..c import x\nthing = 1\n")
    (pkg / "c.py").write_text("import efficientvit_jax.a\nx = 1\n")
    (pkg / "d.py").write_text("from efficientvit_jax import a\n")
    modules = {}
    for path in pkg.rglob("*.py"):
        parts = path.relative_to(tmp_path).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    assert graph["efficientvit_jax.sub"] == {"efficientvit_jax.sub.b"}
    assert graph["efficientvit_jax.sub.b"] == {"efficientvit_jax.c"}
    assert _cycles(graph) == [
        ["efficientvit_jax.a", "efficientvit_jax.c", "efficientvit_jax.sub.b"]
    ]


def test_no_module_imports_a_module_that_imports_it_back():
    modules = _modules()
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    assert sum(len(v) for v in graph.values()) > 100  # the scan sees the package's imports
    assert _cycles(graph) == []


def test_no_function_is_longer_than_60_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name}")
    assert not long, long
