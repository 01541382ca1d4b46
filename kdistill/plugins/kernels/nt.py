"""Any neural-tangents ``stax`` architecture as a kdistill kernel (JAX backend only).

``arch`` names a *registered architecture*: a built-in one (``convnet``, ``fc``) or one
that an installed package registers through the ``kdistill_register_architectures``
hook of :mod:`kdistill.core.hookspecs` (an entry point of the ``kdistill`` group, like
any other plugin). The architecture function returns ``(init_fn, apply_fn,
kernel_fn)`` (e.g. ``stax.serial(...)``) and is called with ``arch_params`` as keyword
arguments::

    [kernel]
    name = "nt"
    arch = "convnet"
    kind = "ntk"
    arch_params = { depth = 4 }

Import paths (``"package.module:function"``) are not accepted: a config can come from
an artifact or a checkpoint, and nothing read from a file may import or call code. To
use your own architecture, register it from a package::

    # my_package/archs.py
    from kdistill.core.hookspecs import hookimpl

    def wide_resnet(depth=4):
        from kdistill.runtime.optional import import_neural_tangents
        stax = import_neural_tangents().stax
        return stax.serial(...)

    @hookimpl
    def kdistill_register_architectures(register):
        register("wide-resnet", wide_resnet, "WideResNet for the nt kernel")

    # pyproject.toml
    [project.entry-points.kdistill]
    archs = "my_package.archs"

neural-tangents is imported only when the kernel is bound to a backend (through
:func:`kdistill.runtime.optional.import_neural_tangents`, the lean, TensorFlow-free import);
if it is missing or incompatible with the installed JAX, :meth:`NTKernel.bind` raises a
:class:`~kdistill.errors.ConfigError` that says how to install it. Importing kdistill
never needs it. neural-tangents is the reference, not the fast path: for the ConvNet use
the ``convnet`` kernel (``benchmarks/convnet_kernel_speed.py``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, ClassVar

import attrs

from kdistill.core.contracts import Kernel
from kdistill.errors import ConfigError
from kdistill.core.hookspecs import hookimpl
from kdistill.core.validators import kernel_kind
from kdistill.ops.convnet import AvgPool, Conv, ConvNetSpec, Readout, Relu


def convnet_arch(depth: int = 3, sw2: float = 2.0, sb2: float = 0.01, pool: bool = True,
                 readout: str = "flatten", stem: bool = False, width: int = 1):
    """The architecture of :class:`~kdistill.plugins.kernels.convnet.ConvNetKernel` in stax:
    the steps of :class:`~kdistill.ops.convnet.ConvNetSpec` with ``width`` channels.

    Raises:
        ConfigError: invalid spec parameters or ``width``.
    """
    stax = _stax()
    spec = ConvNetSpec(depth=depth, sw2=sw2, sb2=sb2, pool=pool, readout=readout, stem=stem)
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ConfigError(f"convnet width must be an integer >= 1, got {width!r}")
    layers = []
    for step in spec.layers():
        if isinstance(step, Conv):
            layers.append(stax.Conv(width, (step.size, step.size), padding="SAME",
                                    W_std=math.sqrt(step.sw2), b_std=math.sqrt(step.sb2)))
        elif isinstance(step, Relu):
            layers.append(stax.Relu())
        elif isinstance(step, AvgPool):
            layers.append(stax.AvgPool((step.size, step.size), strides=(step.size, step.size)))
        elif isinstance(step, Readout):
            layers += [stax.Flatten() if step.kind == "flatten" else stax.GlobalAvgPool(),
                       stax.Dense(1, W_std=math.sqrt(step.sw2), b_std=math.sqrt(step.sb2))]
    return stax.serial(*layers)


def fc_arch(depth: int = 1, sw2: float = 2.0, sb2: float = 0.01, width: int = 1):
    """The architecture of :class:`~kdistill.plugins.kernels.fc.FCKernel` in stax (inputs flattened)."""
    stax = _stax()
    w, b = math.sqrt(sw2), math.sqrt(sb2)
    layers = [stax.Flatten()]
    for _ in range(depth):
        layers += [stax.Dense(width, W_std=w, b_std=b), stax.Relu()]
    return stax.serial(*layers, stax.Dense(1, W_std=w, b_std=b))


#: Built-in architectures, by name (registered through :func:`kdistill_register_architectures`).
CATALOGUE: dict[str, Callable] = {"convnet": convnet_arch, "fc": fc_arch}


@hookimpl
def kdistill_register_architectures(register):
    """The built-in architectures, registered like any third-party one."""
    register("convnet", convnet_arch, "the convnet kernel's ConvNet in stax (conv3x3+ReLU+avg-pool blocks)")
    register("fc", fc_arch, "the fc kernel's fully-connected ReLU network in stax")


def _stax():
    from kdistill.runtime.optional import import_neural_tangents

    return import_neural_tangents().stax


def _how_to_register(registry) -> str:
    return (
        f"registered architectures: {', '.join(registry.names('architectures')) or '(none)'} "
        f"(`kdistill plugins` lists them); import paths are not accepted. To add one, register it from "
        f"an installed package with the kdistill_register_architectures hook "
        f"(see kdistill.core.hookspecs)"
    )


def resolve_arch(arch: str, registry=None) -> Callable:
    """The registered architecture function named ``arch``.

    Only registered names resolve: nothing is imported here, so an ``arch`` read from
    an artifact, a checkpoint or a config file cannot run code.

    Args:
        registry: default: :func:`kdistill.core.registry.get_registry`.
    Raises:
        ConfigError: ``arch`` is not a registered architecture (the message lists the
            registered ones and says how a package registers one), or is registered
            by two packages.
    """
    from kdistill.core.registry import AmbiguousComponentError, get_registry

    registry = registry or get_registry()
    try:
        return registry.get("architectures", arch).factory
    except AmbiguousComponentError as exc:
        raise ConfigError(f"nt kernel: {exc}") from None
    except ConfigError:
        raise ConfigError(f"nt kernel: arch {arch!r} is not a registered architecture; {_how_to_register(registry)}") from None


def _arch(inst, attr, value) -> None:
    from kdistill.core.registry import NAME_PATTERN, get_registry

    if not isinstance(value, str) or not re.fullmatch(NAME_PATTERN, value):
        raise ConfigError(
            f"NTKernel.arch must be the name of a registered architecture, got {value!r}; "
            f"{_how_to_register(get_registry())}"
        )


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
        arch: the name of a registered architecture (``kdistill plugins`` lists them:
            built-in ``convnet`` and ``fc``, plus any an installed package registers);
            its function returns ``(init_fn, apply_fn, kernel_fn)``. Import paths are
            refused.
        arch_params: keyword arguments for the architecture function.
        kind: ``"ntk"`` (default) or ``"nngp"``.
        batch_size: rows of ``x1`` and ``x2`` per ``kernel_fn`` call (0: all at once).

    Inputs ``[n, ...]`` in the layout the architecture expects (NHWC images for the
    catalogue's convnet); output ``[n1, n2]`` in the input dtype; differentiable.
    Backends: JAX only.

    Raises:
        ConfigError: at construction, when ``arch`` is not a name (e.g. an import path
            ``"os:system"``); at :meth:`bind`, when neural-tangents is not importable
            (with the install command), or the architecture is not registered or
            cannot be built.
    """

    backends = ("jax",)
    #: parameters naming registered components (recorded in a run's provenance)
    registry_refs: ClassVar[dict[str, str]] = {"arch": "architectures"}

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
