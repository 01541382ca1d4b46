"""Built-in optimizers and learning-rate schedules, registered through the ``kdistill``
entry-point group (kinds ``optimizers`` and ``schedules``).

Each optimizer is a :class:`~kdistill.core.contracts.Optimizer` that declares its optax
and ``torch.optim`` counterparts; each schedule a
:class:`~kdistill.core.contracts.Schedule` written against the backend namespace.
"""

from __future__ import annotations

from kdistill.core.hookspecs import hookimpl
from kdistill.plugins.optimizers.adam import Adam
from kdistill.plugins.optimizers.adamw import AdamW
from kdistill.plugins.optimizers.constant import Constant
from kdistill.plugins.optimizers.cosine import Cosine
from kdistill.plugins.optimizers.sgd import SGD
from kdistill.plugins.optimizers.warmup_cosine import WarmupCosine


@hookimpl
def kdistill_register_optimizers(register):
    register("adam", Adam, "Adam (b1, b2, eps); optax.adam / torch.optim.Adam")
    register("adamw", AdamW, "Adam with decoupled weight decay (b1, b2, eps, weight_decay)")
    register("sgd", SGD, "SGD with momentum (default 0.9) or Nesterov momentum")


@hookimpl
def kdistill_register_schedules(register):
    register("constant", Constant, "the run's lr at every step (default)")
    register("cosine", Cosine, "cosine decay from lr to alpha * lr over the run's steps")
    register("warmup-cosine", WarmupCosine, "linear warm-up over `warmup` steps, then cosine decay to alpha * lr")
