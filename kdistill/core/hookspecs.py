"""The one hookspec module of kdistill.

Every component kind has one hook. A plugin module implements any of them with
``@hookimpl`` and calls ``register(name, factory, description)`` once per component::

    from kdistill.core.hookspecs import hookimpl

    @hookimpl
    def kdistill_register_kernels(register):
        register("laplace", LaplaceKernel, "exp(-||x-x'||/l)")

The module is exposed to kdistill through the ``kdistill`` entry-point group in the
plugin package's ``pyproject.toml``::

    [project.entry-points.kdistill]
    laplace = "my_package.kernels"

The built-in components are registered through exactly this group by kdistill's own
``pyproject.toml``. Set ``KDISTILL_DISABLE_PLUGINS=1`` to load only the built-ins.

Factories:

- backends: a zero-argument callable returning a :class:`kdistill.core.backend.Backend`.
- kernels / solvers / losses: a class whose keyword constructor takes the component's
  hyperparameters (subclasses of :class:`~kdistill.core.contracts.Kernel`,
  :class:`~kdistill.core.contracts.Solver`, :class:`~kdistill.core.contracts.Loss`).
- datasets: ``loader(data_dir: str | None) -> kdistill.datasets.base.Dataset``.
"""

from __future__ import annotations

import pluggy

PROJECT = "kdistill"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def kdistill_register_backends(register):
    """Register array backends: ``register(name, factory, description)``."""


@hookspec
def kdistill_register_kernels(register):
    """Register kernels: ``register(name, kernel_class, description)``."""


@hookspec
def kdistill_register_solvers(register):
    """Register KRR solvers: ``register(name, solver_class, description)``."""


@hookspec
def kdistill_register_losses(register):
    """Register losses: ``register(name, loss_class, description)``."""


@hookspec
def kdistill_register_datasets(register):
    """Register datasets: ``register(name, loader, description)``."""
