"""Any neural-tangents ``stax`` architecture as a kdistill kernel (JAX backend only).

``arch`` names a built-in architecture (:data:`CATALOGUE`: ``convnet``, ``fc``) or a
Python import path ``"package.module:function"`` (or ``"package.module.function"``) of a
function returning ``(init_fn, apply_fn, kernel_fn)`` (e.g. ``stax.serial(...)``), called
with ``arch_params`` as keyword arguments::

    [kernel]
    name = "nt"
    arch = "my_package.archs:wide_resnet"
    kind = "ntk"
    arch_params = { depth = 4 }

neural-tangents is imported only when the kernel is bound to a backend (through
:func:`kdistill.core.optional.import_neural_tangents`, the lean, TensorFlow-free import);
if it is missing or incompatible with the installed JAX, :meth:`NTKernel.bind` raises a
:class:`~kdistill.core.errors.ConfigError` that says how to install it. Importing kdistill
never needs it. neural-tangents is the reference, not the fast path: for the ConvNet use
the ``convnet`` kernel (``benchmarks/convnet_kernel_speed.py``).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any

import attrs

from kdistill.core.contracts import Kernel
from kdistill.core.errors import ConfigError
from kdistill.core.validators import kernel_kind


def convnet_arch(depth: int = 3, sw2: float = 2.0, sb2: float = 0.01, pool: bool = True,
                 readout: str = "flatten", stem: bool = False, width: int = 1):
    """The architecture of :class:`~kdistill.plugins.kernels.convnet.ConvNetKernel` in stax."""
    stax = _stax()
    w, b = math.sqrt(sw2), math.sqrt(sb2)

    def conv():
        return stax.Conv(width, (3, 3), padding="SAME", W_std=w, b_std=b)

    layers = [conv(), stax.Relu()] if stem else []
    for _ in range(depth):
        layers += [conv(), stax.Relu()] + ([stax.AvgPool((2, 2), strides=(2, 2))] if pool else [])
    if readout not in ("flatten", "gap"):
        raise ConfigError(f"convnet readout must be 'flatten' or 'gap', got {readout!r}")
    layers += [stax.Flatten() if readout == "flatten" else stax.GlobalAvgPool(), stax.Dense(1, W_std=w, b_std=b)]
    return stax.serial(*layers)


def fc_arch(depth: int = 1, sw2: float = 2.0, sb2: float = 0.01, width: int = 1):
    """The architecture of :class:`~kdistill.plugins.kernels.fc.FCKernel` in stax (inputs flattened)."""
    stax = _stax()
    w, b = math.sqrt(sw2), math.sqrt(sb2)
    layers = [stax.Flatten()]
    for _ in range(depth):
        layers += [stax.Dense(width, W_std=w, b_std=b), stax.Relu()]
    return stax.serial(*layers, stax.Dense(1, W_std=w, b_std=b))


#: Built-in architectures, by name.
CATALOGUE: dict[str, Callable] = {"convnet": convnet_arch, "fc": fc_arch}


def _stax():
    from kdistill.core.optional import import_neural_tangents

    return import_neural_tangents().stax


def resolve_arch(arch: str) -> Callable:
    """The architecture function for a catalogue name or an import path.

    Raises:
        ConfigError: unknown name, or a path that does not import / name a callable.
    """
    if arch in CATALOGUE:
        return CATALOGUE[arch]
    module_name, sep, attr = arch.partition(":")
    if not sep:
        module_name, _, attr = arch.rpartition(".")
    if not module_name or not attr:
        raise ConfigError(
            f"nt kernel: arch {arch!r} is neither a built-in ({', '.join(CATALOGUE)}) nor an import "
            f"path like 'package.module:function'"
        )
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"nt kernel: cannot import architecture {arch!r}: {exc}") from exc
    if not callable(fn):
        raise ConfigError(f"nt kernel: {arch!r} is not callable")
    return fn


def _arch(inst, attr, value) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"NTKernel.arch must be a catalogue name or an import path, got {value!r}")


def _params(inst, attr, value) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"NTKernel.arch_params must be a table of keyword arguments, got {value!r}")


def _nonneg_int(inst, attr, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"NTKernel.{attr.name} must be an integer >= 0, got {value!r}")


@attrs.define(kw_only=True)
class NTKernel(Kernel):
    """A neural-tangents ``stax`` architecture's infinite-width NNGP or NTK.

    Args:
        arch: a name in :data:`CATALOGUE` or an import path ``"module:function"``; the
            function returns ``(init_fn, apply_fn, kernel_fn)``.
        arch_params: keyword arguments for the architecture function.
        kind: ``"ntk"`` (default) or ``"nngp"``.
        batch_size: rows of ``x1`` and ``x2`` per ``kernel_fn`` call (0: all at once).

    Inputs ``[n, ...]`` in the layout the architecture expects (NHWC images for the
    catalogue's convnet); output ``[n1, n2]`` in the input dtype; differentiable.
    Backends: JAX only.

    Raises:
        ConfigError: at :meth:`bind`, when neural-tangents is not importable (with the
            install command), or the architecture cannot be resolved or built.
    """

    backends = ("jax",)

    arch: str = attrs.field(default="convnet", validator=_arch)
    arch_params: dict = attrs.field(factory=dict, validator=_params)
    kind: str = attrs.field(default="ntk", validator=kernel_kind)
    batch_size: int = attrs.field(default=0, validator=_nonneg_int)
    _kernel_fn: Any = attrs.field(default=None, init=False, repr=False, eq=False)

    def bind(self, backend):
        """Bind, importing neural-tangents and building the architecture now, so that a
        missing dependency or a bad architecture fails before any work."""
        bound = super().bind(backend)
        _stax()  # ConfigError with the install command when missing or incompatible
        fn = resolve_arch(self.arch)
        try:
            built = fn(**self.arch_params)
            kernel_fn = built[2]
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"nt kernel: building architecture {self.arch!r} with {self.arch_params} failed: {exc}") from exc
        import jax

        bound._kernel_fn = jax.jit(kernel_fn, static_argnames="get")
        return bound

    def __call__(self, x1, x2):
        if self._kernel_fn is None:
            raise ConfigError("NTKernel is not bound to a backend; call .bind(backend)")
        xp = self.b.xp
        bs = self.batch_size
        if not bs or (x1.shape[0] <= bs and x2.shape[0] <= bs):
            return self._kernel_fn(x1, x2, get=self.kind)
        rows = []
        for i in range(0, x1.shape[0], bs):
            cols = [self._kernel_fn(x1[i:i + bs], x2[j:j + bs], get=self.kind) for j in range(0, x2.shape[0], bs)]
            rows.append(xp.concat(cols, axis=1))
        return xp.concat(rows, axis=0)
