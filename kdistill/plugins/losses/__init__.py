"""Built-in losses, registered through the ``kdistill`` entry-point group."""

from __future__ import annotations

from kdistill.core.hookspecs import hookimpl
from kdistill.plugins.losses.mse import MSELoss
from kdistill.plugins.losses.platt import PlattLoss


@hookimpl
def kdistill_register_losses(register):
    register("mse", MSELoss, "half mean squared error (KIP)")
    register("platt", PlattLoss, "cross-entropy with learned temperature (RFAD)")
