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
- datasets: ``loader(data_dir: str | None) -> kdistill.core.contracts.Dataset``.
- methods: ``run(config, comps, data, callback=None, run_dir=None, resume=False) ->
  DistilledSet`` (built in: ``kip``, ``label-solve`` in :mod:`kdistill.plugins.methods`);
  an attribute ``resumable = True`` if it can continue from a checkpoint.
- callbacks: a :class:`kdistill.core.loop.RunHook` subclass whose keyword constructor
  takes its parameters (no work in ``__init__``); a run config lists them
  (``callbacks = [{name = "my-tracker", dir = "logs"}]``) and the KIP driver calls
  ``after_step(run, info)`` after every step and ``after_run(run, result)`` once after
  the final evaluation (built in: ``jsonl``, ``tensorboard``, ``mlflow``).
- optimizers: a :class:`kdistill.core.contracts.Optimizer` subclass whose keyword
  constructor takes its hyperparameters; it declares the optax function and the
  ``torch.optim`` class of its algorithm (no import of either), and the backend builds
  the real optimizer (``optimizer = {name = "adam", b1 = 0.8}`` in a run config).
- schedules: a :class:`kdistill.core.contracts.Schedule` subclass (learning-rate
  multiplier as a function of the update count, written against ``self.b.xp``).
- architectures: a function of keyword hyperparameters returning a neural-tangents
  ``stax`` triple ``(init_fn, apply_fn, kernel_fn)``, e.g. ``stax.serial(...)``; the
  ``nt`` kernel selects it by name (``kernel = {name = "nt", arch = "my-resnet"}``).

Names are strings matching :data:`kdistill.core.registry.NAME_PATTERN` (letters,
digits, ``_``, ``-``). A name that a built-in already uses is refused (the built-in
stays); a name two installed packages both register is refused for both. A plugin
whose import or hook fails is skipped with a warning; ``kdistill plugins`` lists
every component with its package and every skipped plugin with the reason.
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


@hookspec
def kdistill_register_architectures(register):
    """Register neural-tangents architectures for the ``nt`` kernel:
    ``register(name, arch_function, description)``; ``arch_function(**arch_params)``
    returns ``(init_fn, apply_fn, kernel_fn)``. Import neural-tangents inside the
    function (through :func:`kdistill.runtime.optional.import_neural_tangents`), not at
    module import, so that kdistill starts without it."""


@hookspec
def kdistill_register_methods(register):
    """Register outer-loop methods: ``register(name, run_function, description)``."""


@hookspec
def kdistill_register_callbacks(register):
    """Register run callbacks (tracking, logging): ``register(name, hook_class, description)``."""


@hookspec
def kdistill_register_optimizers(register):
    """Register optimizers of the KIP step: ``register(name, optimizer_class, description)``."""


@hookspec
def kdistill_register_schedules(register):
    """Register learning-rate schedules: ``register(name, schedule_class, description)``."""
