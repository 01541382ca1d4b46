"""Layout metrics of the kdistill package, from its source alone (nothing is imported).

Prints: lines and code lines per package (core, plugins, io, runtime, ops, datasets, nn, the top-level
modules), the 5 largest functions, the import cycles among kdistill modules
(module-level imports, which run at import time, and function-level ones, which run
when the function is called), the plugin modules that import a private name (``_x``)
from another module, the plugin modules that import another plugin's module, and what
``kdistill.core`` imports from the front ends (``cli``, ``api``, ``report``)::

    python benchmarks/code_metrics.py

``tests/test_layout.py`` asserts on the same analysis (loaded from this file).

An import ``from a.b import c`` is an edge to ``a.b.c`` when that is a kdistill module,
else to ``a.b``; the package ``__init__`` that importing ``a.b.c`` runs implicitly is
not an edge (every package whose ``__init__`` registers its submodules would otherwise
be a cycle). Imports under ``if TYPE_CHECKING:`` never run and are left out.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kdistill"
#: Packages whose line counts are reported; other files directly in kdistill/ are "top-level".
PACKAGES = ("core", "plugins", "io", "runtime", "ops", "datasets", "nn")
#: Plugin modules that other modules of the same plugin package may import: shared bases.
SHARED_PLUGIN_BASES = frozenset({"kdistill.plugins.kernels.random_features"})
#: Modules that kdistill.core must not import (the front ends built on it).
FRONT_ENDS = ("kdistill.cli", "kdistill.api", "kdistill.report")


@dataclass(frozen=True)
class Import:
    """One import statement's edge from ``source`` to the kdistill module ``target``."""

    source: str
    target: str
    names: tuple[str, ...]  # the names of a ``from`` import (empty for ``import x``)
    scope: str  # "module" (runs at import time) or "function"
    lineno: int

    def where(self) -> str:
        return f"{self.source}:{self.lineno}"


def module_name(path: Path) -> str:
    """``kdistill/a/b.py`` -> ``kdistill.a.b``; ``kdistill/a/__init__.py`` -> ``kdistill.a``."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every kdistill module by dotted name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.Module):
    """``(node, scope)`` for every import statement outside ``if TYPE_CHECKING:``."""
    def walk(node, scope):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    yield from walk_one(sub, scope)
                continue
            yield from walk_one(child, scope)

    def walk_one(node, scope):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, scope
        inner = "function" if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) else scope
        yield from walk(node, inner)

    yield from walk(tree, "module")


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mods: dict[str, Path] | None = None) -> list[Import]:
    """Every import of a kdistill module by a kdistill module."""
    mods = modules() if mods is None else mods
    out = []
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for node, scope in _import_nodes(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = alias.name
                    while target and target not in mods:
                        target = target.rpartition(".")[0]
                    if target:
                        out.append(Import(name, target, (), scope, node.lineno))
                continue
            base = _resolve(name, path.name == "__init__.py", node)
            by_target: dict[str, list[str]] = defaultdict(list)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in mods:
                    by_target[sub].append(alias.name)
                elif base in mods:
                    by_target[base].append(alias.name)
            for target, names in by_target.items():
                out.append(Import(name, target, tuple(names), scope, node.lineno))
    return out


def cycles(edges: list[Import], scopes: tuple[str, ...] = ("module",)) -> list[list[str]]:
    """The import cycles: strongly connected components of more than one module (or a
    module importing itself) of the graph of ``edges`` in ``scopes``, each sorted."""
    graph: dict[str, set[str]] = defaultdict(set)
    for e in edges:
        if e.scope in scopes:
            graph[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def cycle_edges(edges: list[Import], cycle: list[str], scopes: tuple[str, ...]) -> list[str]:
    """The import statements inside one cycle, as ``source:line -> target``."""
    members = set(cycle)
    return sorted(f"{e.where()} -> {e.target}" for e in edges
                  if e.scope in scopes and e.source in members and e.target in members)


def _plugin_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) >= 3 and parts[:2] == ["kdistill", "plugins"] else None


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_imports(mods: dict[str, Path] | None = None) -> list[str]:
    """Plugin modules' uses of another module's private names: ``from m import _x``,
    ``import m._x``, ``m._x`` on an imported module ``m``, and ``from m._p import x``
    where ``m._p`` is a private module of another package."""
    mods = modules() if mods is None else mods
    found = []
    for name, path in mods.items():
        if _plugin_package(name) is None and name != "kdistill.plugins":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        bound: dict[str, str] = {}  # local name -> imported module
        for node, _ in _import_nodes(tree):
            if isinstance(node, ast.ImportFrom):
                base = _resolve(name, path.name == "__init__.py", node)
                if base == name:
                    continue
                own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
                if any(_private(p) for p in base.split(".")) and base.rpartition(".")[0] != own_package:
                    found.append(f"{name}:{node.lineno} imports from the private module {base}")
                for alias in node.names:
                    if _private(alias.name):
                        found.append(f"{name}:{node.lineno} imports {alias.name} from {base}")
                    elif f"{base}.{alias.name}" in mods:
                        bound[alias.asname or alias.name] = f"{base}.{alias.name}"
            else:
                for alias in node.names:
                    if any(_private(p) for p in alias.name.split(".")):
                        found.append(f"{name}:{node.lineno} imports the private module {alias.name}")
                    local = alias.asname or alias.name.split(".")[0]
                    bound[local] = alias.name if alias.asname else local
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                    and node.value.id in bound):
                found.append(f"{name}:{node.lineno} uses {bound[node.value.id]}.{node.attr}")
    return sorted(found)


def cross_plugin_imports(edges: list[Import]) -> list[str]:
    """Imports of a plugin module by a module of another plugin package, or of a sibling
    module in the same package (the package's ``__init__``, which registers its modules,
    and the shared bases in :data:`SHARED_PLUGIN_BASES` excepted)."""
    found = []
    for e in edges:
        src, dst = _plugin_package(e.source), _plugin_package(e.target)
        if src is None or dst is None or e.source == e.target:
            continue
        if src == dst and (e.source == f"kdistill.plugins.{src}" or e.target in SHARED_PLUGIN_BASES):
            continue
        names = f" ({', '.join(e.names)})" if e.names else ""
        found.append(f"{e.where()} imports {e.target}{names}")
    return sorted(found)


def core_front_end_imports(edges: list[Import]) -> list[str]:
    """Imports of :data:`FRONT_ENDS` by ``kdistill.core`` modules."""
    return sorted(f"{e.where()} imports {e.target}" for e in edges
                  if e.source.startswith("kdistill.core")
                  and any(e.target == f or e.target.startswith(f + ".") for f in FRONT_ENDS))


def code_lines(path: Path) -> int:
    """Lines of ``path`` that are code: not blank, not a comment, not part of a docstring
    (of the module, a class or a function)."""
    src = path.read_text(encoding="utf-8")
    docs: set[int] = set()
    for node in ast.walk(ast.parse(src, str(path))):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                docs.update(range(first.lineno, first.end_lineno + 1))
    return sum(1 for i, line in enumerate(src.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#") and i not in docs)


def lines_per_package() -> dict[str, tuple[int, int]]:
    """``(lines, code lines)`` of the ``.py`` files of each of :data:`PACKAGES`, and of the
    top-level modules (:func:`code_lines`)."""
    counts = {p: (0, 0) for p in PACKAGES}
    counts["top-level"] = (0, 0)
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).parts
        key = rel[0] if len(rel) > 1 else "top-level"
        lines, code = counts.get(key, (0, 0))
        counts[key] = (lines + len(path.read_text(encoding="utf-8").splitlines()), code + code_lines(path))
    return counts


def largest_functions(n: int = 5) -> list[tuple[int, str]]:
    """The ``n`` longest functions and methods (lines, ``module:Qual.name``), longest first."""
    found = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))

        def visit(node, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    qual = f"{prefix}{child.name}"
                    found.append((child.end_lineno - child.lineno + 1, f"{name}:{qual}"))
                    visit(child, qual + ".")
                elif isinstance(child, ast.ClassDef):
                    visit(child, f"{prefix}{child.name}.")
                else:
                    visit(child, prefix)

        visit(tree, "")
    return sorted(found, key=lambda t: (-t[0], t[1]))[:n]


def main() -> int:
    mods = modules()
    edges = imports(mods)
    print("lines per package (all lines / code lines: no blank, comment or docstring lines):")
    counts = lines_per_package()
    for key, (lines, code) in counts.items():
        print(f"  {key:10s} {lines:6d} {code:6d}")
    print(f"  {'total':10s} {sum(c[0] for c in counts.values()):6d} {sum(c[1] for c in counts.values()):6d}")
    core = sorted(PACKAGE.glob("core/*.py"))
    print("kdistill/core/*.py (all lines / code lines):")
    for path in core:
        print(f"  {len(path.read_text(encoding='utf-8').splitlines()):5d} {code_lines(path):5d} "
              f"{path.relative_to(ROOT)}")
    print("largest functions:")
    for size, qual in largest_functions(5):
        print(f"  {size:5d} {qual}")
    for title, scopes in (("module-level", ("module",)), ("with function-level", ("module", "function"))):
        found = cycles(edges, scopes)
        print(f"import cycles ({title} imports): {len(found)}")
        for cyc in found:
            print("  " + " <-> ".join(cyc))
            for line in cycle_edges(edges, cyc, scopes):
                print(f"      {line}")
    for title, found in (("cross-plugin private-name imports", private_imports(mods)),
                         ("cross-plugin module imports", cross_plugin_imports(edges)),
                         ("kdistill.core imports of cli/api/report", core_front_end_imports(edges))):
        print(f"{title}: {len(found)}")
        for line in found:
            print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
