"""Built-in backends, registered through the ``kdistill`` entry-point group.

The array libraries are imported only when a backend is created, so listing plugins
or importing kdistill never needs JAX or PyTorch installed.
"""

from __future__ import annotations

from kdistill.core.hookspecs import hookimpl


def _jax(device: str = "auto"):
    from kdistill.plugins.backends.jax_backend import JaxBackend

    return JaxBackend(device)


def _torch(device: str = "auto"):
    from kdistill.plugins.backends.torch_backend import TorchBackend

    return TorchBackend(device)


@hookimpl
def kdistill_register_backends(register):
    register("jax", _jax, "JAX + optax; jit-compiled steps; install with kdistill[jax]")
    register("torch", _torch, "PyTorch + torch.optim, eager; install with kdistill[torch]")
