"""The import graph of ``dpm_worker`` and ``pipelines``: no circle, and the tables know no memory.

Read from the source (``ast``), so it sees every import: at module level, inside functions
(lazy ones) and under ``TYPE_CHECKING``. Two graphs are checked:

- modules: ``a.b.c`` -> every project module it names (``from a.b import c`` names ``a.b.c``
  when that is a module, else ``a.b``);
- packages: each module counted as its stage package (``dpm_worker.corpus``,
  ``pipelines.train``, ...; a top-level module is its own node), edges within one package
  left out. A circle here is a circle of stages (corpus -> audio -> corpus), even when no two
  modules import each other.

A package's ``__init__`` importing its own modules is not an edge back: it is the one import
path of the package's names, never imported by its own modules' siblings (checked below).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("dpm_worker", "pipelines")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _package_of(module: str) -> str:
    """``__init__`` modules are their package; a module's package is its parent."""
    if (ROOT / Path(*module.split(".")) / "__init__.py").exists():
        return module
    return module.rpartition(".")[0]


def _imports(module: str, path: Path) -> set[str]:
    """Project modules ``module`` imports anywhere in its source."""
    tree = ast.parse(path.read_text(), str(path))
    package = _package_of(module)
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names]
            names = [n if n in MODULES else base for n in names]
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _stage(module: str) -> str:
    """The stage a module belongs to: ``dpm_worker.memory``, ``pipelines.train``, or itself."""
    parts = module.split(".")
    return ".".join(parts[:2])


def _circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` (its nodes in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 on the path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _without_init_reexports(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop a package ``__init__``'s edges to its own modules (its re-exports)."""
    out = {}
    for module, targets in graph.items():
        is_init = MODULES[module].name == "__init__.py"
        out[module] = {t for t in targets if not (is_init and t.startswith(module + "."))}
    return out


def test_the_graph_is_read() -> None:
    # a check that reads nothing passes anything: the known edges must be there
    assert "dpm_worker.memory.step" in GRAPH["dpm_worker.memory.slots"]
    assert "dpm_worker.memory" in GRAPH["dpm_worker.worker.conversation_worker"]
    assert "dpm_worker.model" in GRAPH["dpm_worker.memory.engine"]
    assert _circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _circle({"a": {"b"}, "b": set()}) is None


def test_no_module_circle() -> None:
    circle = _circle(_without_init_reexports(GRAPH))
    assert circle is None, " -> ".join(circle or [])


def test_no_stage_circle() -> None:
    stages: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        own = _stage(module)
        stages.setdefault(own, set()).update(_stage(t) for t in targets if _stage(t) != own)
    circle = _circle(stages)
    assert circle is None, " -> ".join(circle or [])


@pytest.mark.parametrize("package", ["dpm_worker.memory", "dpm_worker.model"])
def test_modules_import_siblings_not_their_package(package: str) -> None:
    # a module importing its own package's __init__ would make the re-exports a circle
    offenders = [m for m in GRAPH if m.startswith(package + ".") and package in GRAPH[m]]
    assert offenders == []


def test_tables_know_no_memory() -> None:
    tables = {m: t for m, t in GRAPH.items() if _stage(m) == "dpm_worker.tables"}
    assert tables, "no dpm_worker.tables modules found"
    memory = {
        m: sorted(t for t in ts if _stage(t) == "dpm_worker.memory") for m, ts in tables.items()
    }
    assert {m: t for m, t in memory.items() if t} == {}


def test_library_never_imports_ray() -> None:
    offenders = []
    for module, path in MODULES.items():
        if not module.startswith("dpm_worker"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            offenders += [module for n in names if n.split(".")[0] in ("ray", "boto3")]
    assert offenders == []
