"""Built-in KRR solvers, registered through the ``kdistill`` entry-point group."""

from __future__ import annotations

from kdistill.core.hookspecs import hookimpl
from kdistill.plugins.solvers.cholesky import CholeskySolver
from kdistill.plugins.solvers.exact import ExactSolver
from kdistill.plugins.solvers.feature import FeatureSolver
from kdistill.plugins.solvers.low_rank import LowRankSolver


@hookimpl
def kdistill_register_solvers(register):
    register("cholesky", CholeskySolver, "Cholesky with bounded jitter retry, float64, O(n^3)")
    register("exact", ExactSolver, "LU solve (linalg.solve), float64, O(n^3)")
    register("feature", FeatureSolver, "primal/Woodbury solve on kernel.features, float64, O(n D^2 + D^3)")
    register("low-rank", LowRankSolver, "Nystrom (or truncated eigh) approximation, float64, O(n m^2 + m^3)")
