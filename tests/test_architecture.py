"""The package's import graph keeps DESIGN.md's one-way flow: lower layers never import higher
ones, and no import cycle exists anywhere (imports inside functions count too)."""

from __future__ import annotations

import ast
from pathlib import Path

import sublim

ROOT = Path(sublim.__file__).parent
LOWER = ("config", "data", "models", "engine")
HIGHER = ("store", "sweep", "analysis", "cli", "kd", "tracking", "outputs")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Every module of the package: dotted name -> (file, is a package __init__)."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ["sublim", *path.relative_to(ROOT).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


def _targets(module: str, is_pkg: bool, node: ast.AST, modules: dict) -> list[str]:
    """The sublim modules an import statement loads (the deepest module that exists)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        assert isinstance(node, ast.ImportFrom)
        base = node.module or ""
        if node.level:
            parts = module.split(".")[: None if is_pkg else -1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([base] if base else []))
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    out = []
    for name in names:
        if name != "sublim" and not name.startswith("sublim."):
            continue
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        out.append(name)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text())
        typing_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        graph[name] = {
            target
            for node in ast.walk(tree)
            if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in typing_only
            for target in _targets(name, is_pkg, node, modules)
            if target != name
        }
    return graph


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_lower_layers_never_import_higher_ones() -> None:
    bad = sorted(
        f"{mod} imports {dep}"
        for mod, deps in _graph().items()
        if _layer(mod) in LOWER
        for dep in deps
        if _layer(dep) in HIGHER
    )
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
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
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_the_checker_sees_relative_and_function_level_imports() -> None:
    # guard against a checker that silently finds nothing
    graph = _graph()
    assert "sublim.config" in graph["sublim.engine.run"]  # module level, relative
    assert "sublim.config.augmentspec" in graph["sublim.engine.run"]
    assert "sublim.engine" in graph["sublim.cli.run"]  # inside a function
    assert "sublim.cli.args" in graph["sublim.cli.main"]
