"""Plugin registry: loads the ``kdistill`` entry-point group through pluggy.

Built-in components and third-party ones arrive the same way: each entry point of
the group names a module with ``@hookimpl`` functions from
:mod:`kdistill.core.hookspecs`. Setting the environment variable
``KDISTILL_DISABLE_PLUGINS=1`` loads only entry points of the ``kdistill``
distribution itself (the built-ins).
"""

from __future__ import annotations

import os
import warnings
from importlib import metadata
from typing import Any, Callable

import attrs
import pluggy

from kdistill.core import hookspecs
from kdistill.core.errors import ConfigError, UnknownComponentError

KINDS = ("backends", "kernels", "solvers", "losses", "datasets")
SINGULAR = {"backends": "backend", "kernels": "kernel", "solvers": "solver", "losses": "loss", "datasets": "dataset"}
DISABLE_ENV = "KDISTILL_DISABLE_PLUGINS"
SELF_DIST = "kdistill"


@attrs.frozen
class Registration:
    """One registered component.

    Attributes:
        kind: one of :data:`KINDS`; name: the name users select it by;
        factory: class or callable (see :mod:`kdistill.core.hookspecs`);
        description: one line; plugin: the module that registered it;
        package / version: the distribution that provides the module.
    """

    kind: str
    name: str
    factory: Callable[..., Any]
    description: str
    plugin: str
    package: str
    version: str


def _autoload_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


class Registry:
    """Resolves component names to factories; lists what is installed.

    Args:
        third_party: load entry points of other distributions (default: unless
            ``KDISTILL_DISABLE_PLUGINS`` is set).
    """

    def __init__(self, third_party: bool | None = None):
        self.third_party = (not _autoload_disabled()) if third_party is None else third_party
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._entries: dict[str, dict[str, Registration]] = {k: {} for k in KINDS}
        self._dists: dict[str, tuple[str, str]] = {}
        self._backends: dict[str, Any] = {}
        self._load_entry_points()
        self._collect()

    def _load_entry_points(self) -> None:
        eps = metadata.entry_points(group=hookspecs.PROJECT)
        if not any(ep.dist is not None and ep.dist.name == SELF_DIST for ep in eps):
            raise ConfigError(
                "kdistill's built-in plugins are not registered: the package is not "
                "installed. Install it (see README: pip install -e '.[all]' -c constraints.txt)."
            )
        for ep in sorted(eps, key=lambda e: (e.dist.name != SELF_DIST if e.dist else True, e.name)):
            dist = ep.dist.name if ep.dist is not None else "?"
            if dist != SELF_DIST and not self.third_party:
                continue
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not break kdistill
                warnings.warn(f"kdistill plugin {ep.name!r} from {dist} failed to load: {exc}", stacklevel=2)
                continue
            if self.pm.is_registered(module):
                continue
            self.pm.register(module, name=f"{dist}:{ep.name}")
            self._dists[self.pm.get_name(module)] = (dist, ep.dist.version if ep.dist else "?")

    def register_plugin(self, module: Any, package: str = "<local>", version: str = "") -> None:
        """Register a plugin object/module directly (tests, notebooks)."""
        self.pm.register(module, name=f"{package}:{getattr(module, '__name__', id(module))}")
        self._dists[self.pm.get_name(module)] = (package, version)
        self._collect()

    def _collect(self) -> None:
        for kind in KINDS:
            hook = getattr(self.pm.hook, f"kdistill_register_{kind}")
            # pluggy calls the last-registered first; reverse so built-ins win name clashes
            for impl in reversed(hook.get_hookimpls()):
                plugin_name = impl.plugin_name
                package, version = self._dists.get(plugin_name, ("?", "?"))

                def register(name, factory, description="", _p=plugin_name, _k=kind,
                             _pkg=package, _v=version):
                    self._add(Registration(_k, name, factory, description, _p, _pkg, _v))

                impl.function(register=register)

    def _add(self, reg: Registration) -> None:
        existing = self._entries[reg.kind].get(reg.name)
        if existing is not None and existing.plugin != reg.plugin:
            warnings.warn(
                f"{SINGULAR[reg.kind]} {reg.name!r} from {reg.package} ignored: already provided by "
                f"{existing.package}",
                stacklevel=2,
            )
            return
        self._entries[reg.kind][reg.name] = reg

    # -- lookup ---------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        """Sorted registered names of ``kind``."""
        return sorted(self._entries[kind])

    def entries(self, kind: str | None = None) -> list[Registration]:
        """All registrations (of one kind, or all kinds in :data:`KINDS` order)."""
        kinds = KINDS if kind is None else (kind,)
        return [self._entries[k][n] for k in kinds for n in self.names(k)]

    def get(self, kind: str, name: str) -> Registration:
        """The registration of ``name``.

        Raises:
            UnknownComponentError: with the available names of that kind.
        """
        if kind not in self._entries:
            raise ConfigError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
        try:
            return self._entries[kind][name]
        except KeyError:
            raise UnknownComponentError(
                f"unknown {SINGULAR[kind]} {name!r}; available {kind}: {', '.join(self.names(kind))}"
                f" (run `kdistill plugins` to see where each comes from)"
            ) from None

    def create(self, kind: str, name: str, /, **params: Any) -> Any:
        """Instantiate a kernel, solver or loss with hyperparameters ``params``.

        Raises:
            UnknownComponentError: unknown name.
            ConfigError: unknown or invalid hyperparameter (the message lists the
                accepted ones).
        """
        factory = self.get(kind, name).factory
        accepted = (
            [f.name for f in attrs.fields(factory) if f.init] if attrs.has(factory) else None
        )
        if accepted is not None:
            unknown = sorted(set(params) - set(accepted))
            if unknown:
                raise ConfigError(
                    f"{SINGULAR[kind]} {name!r} has no parameter(s) {', '.join(unknown)}; "
                    f"accepted: {', '.join(accepted) or '(none)'}"
                )
        try:
            return factory(**params)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"invalid parameters for {SINGULAR[kind]} {name!r}: {exc}") from exc

    def backend(self, name: str) -> Any:
        """The (cached) backend instance ``name``.

        Raises:
            UnknownComponentError: unknown name.
            ConfigError: the backend's array library is not installed.
        """
        if name not in self._backends:
            factory = self.get("backends", name).factory
            try:
                self._backends[name] = factory()
            except ImportError as exc:
                raise ConfigError(
                    f"backend {name!r} needs a library that is not installed ({exc}); "
                    f"install it with: pip install 'kdistill[{name}]' -c constraints.txt"
                ) from exc
        return self._backends[name]


_default: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, created on first use."""
    global _default
    if _default is None:
        _default = Registry()
    return _default


def reset_registry() -> None:
    """Forget the process-wide registry (re-reads entry points on next use)."""
    global _default
    _default = None
