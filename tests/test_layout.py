"""The package layout: no import cycles, plugins independent of each other's internals,
a core that does not depend on its front ends.

The analysis (``ast`` over ``kdistill/**/*.py``, nothing imported) is that of
``benchmarks/code_metrics.py``, which also prints it.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


_SPEC = importlib.util.spec_from_file_location(
    "code_metrics", Path(__file__).resolve().parents[1] / "benchmarks" / "code_metrics.py")
metrics = sys.modules.setdefault("code_metrics", importlib.util.module_from_spec(_SPEC))
_SPEC.loader.exec_module(metrics)  # registered first: its dataclass looks its module up

EDGES = metrics.imports()


def _cross_plugin_pairs() -> set[tuple[str, str]]:
    pairs = set()
    for line in metrics.cross_plugin_imports(EDGES):
        where, _, rest = line.partition(" imports ")
        pairs.add((where.rpartition(":")[0], rest.split(" ")[0]))
    return pairs


# ---------------------------------------------------------------- the analysis itself


def test_the_import_graph_sees_module_and_function_level_imports():
    pairs = {(e.source, e.target, e.scope) for e in EDGES}
    assert ("kdistill.core.config", "kdistill.core.validators", "module") in pairs
    assert ("kdistill.plugins.methods.label_solve", "kdistill.core.krr", "module") in pairs
    assert any(scope == "function" for _, _, scope in pairs)
    modules = metrics.modules()
    assert "kdistill.core.contracts" in modules and "kdistill" in modules


def test_cycle_finder_finds_cycles_and_only_them():
    edge = metrics.Import
    edges = [edge("a", "b", (), "module", 1), edge("b", "c", (), "module", 1), edge("c", "a", (), "function", 1),
             edge("d", "d", (), "module", 1), edge("e", "f", (), "module", 1)]
    assert metrics.cycles(edges) == [["d"]]
    assert metrics.cycles(edges, ("module", "function")) == [["a", "b", "c"], ["d"]]


def test_private_import_finder(tmp_path):
    mod = tmp_path / "mod.py"
    mod.write_text("from kdistill.core.krr import _check_ties, accuracy\nimport numpy as np\nx = np._private\n"
                   "from kdistill.io import _hidden\n")
    found = metrics.private_imports({"kdistill.plugins.fake.mod": mod, "kdistill.io": mod})
    assert any("imports _check_ties from kdistill.core.krr" in f for f in found)
    assert any("uses numpy._private" in f for f in found) and any("imports _hidden" in f for f in found)
    assert not metrics.private_imports({"kdistill.io.other": mod})  # only plugins are checked


# ---------------------------------------------------------------- (a) import cycles


def test_no_module_level_import_cycles():
    found = metrics.cycles(EDGES)
    assert not found, "import cycles among module-level imports:\n" + "\n".join(
        " <-> ".join(c) + "\n    " + "\n    ".join(metrics.cycle_edges(EDGES, c, ("module",))) for c in found)


def test_no_import_cycles_through_function_level_imports_either():
    """Imports inside functions run late and break no import, but a cycle through them
    still ties two modules together (e.g. a command module importing the CLI that imports
    it): none is allowed."""
    scopes = ("module", "function")
    found = metrics.cycles(EDGES, scopes)
    assert not found, "import cycles through function-level imports:\n" + "\n".join(
        " <-> ".join(c) + "\n    " + "\n    ".join(metrics.cycle_edges(EDGES, c, scopes)) for c in found)


# ---------------------------------------------------------------- (b) plugins


def test_plugins_import_no_private_names():
    found = metrics.private_imports()
    assert not found, "plugins use other modules' private names:\n" + "\n".join(found)


def test_plugins_import_no_other_plugin_modules():
    unexpected = sorted(_cross_plugin_pairs())
    assert not unexpected, (
        "plugin modules import other plugins' modules (share code through kdistill.ops, or list a shared "
        "base in benchmarks/code_metrics.py SHARED_PLUGIN_BASES):\n"
        + "\n".join(f"{a} -> {b}" for a, b in unexpected))


def test_shared_plugin_bases_exist():
    modules = metrics.modules()
    missing = sorted(metrics.SHARED_PLUGIN_BASES - set(modules))
    assert not missing, f"SHARED_PLUGIN_BASES lists modules that do not exist: {missing}"


# ---------------------------------------------------------------- (c) core


def test_core_imports_no_front_end():
    found = metrics.core_front_end_imports(EDGES)
    assert not found, "kdistill.core imports the front ends:\n" + "\n".join(found)


def test_dataset_contract_and_label_solve_live_where_the_layout_says():
    import kdistill.core.krr as krr
    from kdistill.core.contracts import Dataset
    from kdistill.datasets import Dataset as Reexported

    assert Dataset is Reexported
    assert not hasattr(krr, "label_solve")
