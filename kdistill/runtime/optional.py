"""Imports of optional heavy dependencies, with install instructions on failure."""

from __future__ import annotations

import sys
import types

from kdistill.errors import ConfigError

NT_INSTALL = (
    "pip install --no-deps neural-tangents==0.6.5 frozendict  "
    "(lean install: no TensorFlow; needs jax<=0.5.3, pinned in constraints.txt)"
)


def import_neural_tangents():
    """Import ``neural_tangents`` without TensorFlow (the lean install).

    neural-tangents 0.6.5 imports TensorFlow only through
    ``neural_tangents.experimental``; a placeholder module is put in ``sys.modules``
    first, after which ``stax``, ``batch``, ``monte_carlo`` and empirical kernels work.

    Returns:
        The ``neural_tangents`` module.
    Raises:
        ConfigError: not installed or incompatible with the installed JAX (the message
            says how to install it).
    """
    sys.modules.setdefault("neural_tangents.experimental", types.ModuleType("neural_tangents.experimental"))
    try:
        import neural_tangents
    except Exception as exc:  # ImportError, or AttributeError under a too-new jax
        raise ConfigError(f"neural-tangents is not usable here ({exc!r}); install it with: {NT_INSTALL}") from exc
    return neural_tangents
