"""No import cycles among the project's modules, imports inside functions included: a
module-level cycle breaks at import time, and one hidden in a function still ties two
rooms together. Every module of workbench/, analyses/, app/ and kernels/ is parsed with
``ast`` (nothing is imported), under the name it installs as (pyproject's package-dir)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# folder -> the package it installs as (pyproject.toml [tool.setuptools.package-dir])
PACKAGES = {"workbench": "workbench", "analyses": "workbench.analyses", "app": "workbench.app",
            "kernels/patching": "workbench.kernels.patching"}


def module_files() -> dict[str, Path]:
    """Every project module by its dotted name."""
    out = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


def imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The project modules ``module`` imports anywhere in its file (relative imports resolved;
    ``from pkg import name`` counts the submodule ``pkg.name`` when there is one, else ``pkg``)."""
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            stem = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            names = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # ``import workbench.cache.x`` -> the deepest project module
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
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
            visit(v)
    return sorted(out)


def project_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    # a package's __init__ importing its own submodules is not a cycle of rooms: drop child -> parent-package edges
    graph = {m: imported(m, p, known) for m, p in files.items()}
    return {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph.items()}


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_parser_sees_imports_inside_functions(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    from .other import g\n    import workbench.x\n")
    assert imported("workbench.mod", path, {"workbench.mod", "workbench.other", "workbench.x"}) == \
        {"workbench.other", "workbench.x"}


def test_no_import_cycles_among_project_modules():
    found = cycles(project_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)
