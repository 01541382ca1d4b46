"""Built-in KRR solvers, registered through the ``kdistill`` entry-point group."""

from __future__ import annotations

from kdistill.core.hookspecs import hookimpl
from kdistill.plugins.solvers.cholesky import CholeskySolver
from kdistill.plugins.solvers.exact import ExactSolver


@hookimpl
def kdistill_register_solvers(register):
    register("cholesky", CholeskySolver, "Cholesky with bounded jitter retry, float64, O(n^3)")
    register("exact", ExactSolver, "LU solve (linalg.solve), float64, O(n^3)")
