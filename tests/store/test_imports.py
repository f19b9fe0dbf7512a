"""The store's modules form no import cycle and call nothing private across modules.

The façade (``_store.py``) imports the maintenance modules (``_check``, ``_compact``, ``_gc``);
they share schemas and commit predicates through ``_commit.py`` and never import the façade back.
Read with :mod:`ast`, so a cycle hidden in a function body or under ``TYPE_CHECKING`` counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import trajlib.store

PKG = "trajlib.store"
ROOT = Path(trajlib.store.__file__).parent


def _module_name(path: Path) -> str:
    return PKG if path.name == "__init__.py" else f"{PKG}.{path.stem}"


MODULES = {_module_name(p): p for p in sorted(ROOT.glob("*.py"))}


def _imports(name: str) -> set[str]:
    """Modules of ``trajlib.store`` imported anywhere in module ``name`` (any nesting depth)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    package = PKG if name == PKG else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from pkg import sub` imports the submodule when ``sub`` is one
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        found |= {t for t in targets if t in MODULES and t != name}
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (as a path that returns to its start), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_walk_sees_the_facade_importing_the_maintenance_modules():
    assert {f"{PKG}._check", f"{PKG}._compact", f"{PKG}._gc", f"{PKG}._commit"} <= GRAPH[
        f"{PKG}._store"
    ]


def test_no_import_cycle_inside_trajlib_store():
    cycle = _cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_name_used_across_store_modules(name):
    """``from trajlib.store._x import _private`` and ``obj._private`` on a non-``self`` object are
    both reaching into another module's internals (``_gc`` once called ``store._committed``)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PKG):
            bad += [
                f"imports {a.name} from {node.module}"
                for a in node.names
                if a.name.startswith("_") and f"{node.module}.{a.name}" not in MODULES
            ]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id not in ("self", "cls")
            and f"{PKG}.{node.value.id}" not in MODULES  # a module alias: its public names only
        ):
            bad.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    assert bad == [], f"{name}: " + "; ".join(bad)
