"""Plugin registry: loads the ``kdistill`` entry-point group through pluggy.

Built-in components and third-party ones arrive the same way: each entry point of
the group names a module with ``@hookimpl`` functions from
:mod:`kdistill.core.hookspecs`. Setting the environment variable
``KDISTILL_DISABLE_PLUGINS=1`` loads only entry points of the ``kdistill``
distribution itself (the built-ins).

Safety rules (each one reported, never fatal to kdistill):

- A plugin that fails to import (an exception, or ``SystemExit`` from
  ``sys.exit()`` at import), that pluggy refuses (a malformed hook implementation),
  whose hook raises, or that registers an invalid name (not a string matching
  :data:`NAME_PATTERN`), a factory that is not callable, a non-string description,
  or one name twice, is *broken*: a :class:`PluginWarning` names it and the reason,
  none of its components is registered, and ``kdistill plugins`` lists it.
- A third-party component whose name is a built-in's (e.g. a ``fc`` kernel) is
  refused: the built-in stays, a :class:`PluginWarning` names both distributions, and
  ``kdistill plugins`` lists the clash.
- Two third-party components of one kind with the same name are both refused (the
  name is ambiguous): asking for it raises :class:`AmbiguousComponentError` naming
  both distributions.

Each registration records the distribution (name and version) that supplied it;
:func:`component_provenance` gives it for every component of a run config, and runs
record it in their metrics (``metrics["components"]``).
"""

from __future__ import annotations

import os
import re
import warnings
from importlib import metadata
from typing import Any, Callable

import attrs
import pluggy

from kdistill.core import hookspecs
from kdistill.errors import ConfigError, UnknownComponentError

KINDS = ("backends", "kernels", "solvers", "losses", "datasets", "architectures", "methods", "callbacks",
         "optimizers", "schedules")
SINGULAR = {"backends": "backend", "kernels": "kernel", "solvers": "solver", "losses": "loss",
            "datasets": "dataset", "architectures": "architecture", "methods": "method", "callbacks": "callback",
            "optimizers": "optimizer", "schedules": "schedule"}
DISABLE_ENV = "KDISTILL_DISABLE_PLUGINS"
SELF_DIST = "kdistill"
#: What a registered name must look like: a letter or digit, then letters, digits,
#: ``_`` or ``-`` (at most 64 characters). No ``.`` or ``:``, so a name can never be
#: mistaken for an import path.
NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}"
_NAME_RE = re.compile(NAME_PATTERN)


class PluginWarning(UserWarning):
    """A plugin was skipped (broken) or one of its components refused (name clash)."""


class AmbiguousComponentError(UnknownComponentError):
    """Two third-party packages register the same name, so kdistill uses neither."""


class _BadRegistration(Exception):
    """A hook called ``register`` with invalid arguments (internal)."""


@attrs.frozen
class Registration:
    """One registered component.

    Attributes:
        kind: one of :data:`KINDS`; name: the name users select it by;
        factory: class or callable (see :mod:`kdistill.core.hookspecs`);
        description: one line; plugin: the plugin (``"<distribution>:<entry point>"``)
        that registered it; package / version: the distribution that provides it;
        builtin: whether it is one of kdistill's own components.
    """

    kind: str
    name: str
    factory: Callable[..., Any]
    description: str
    plugin: str
    package: str
    version: str
    builtin: bool = False


@attrs.frozen
class PluginProblem:
    """A plugin kdistill skipped, or a component it refused.

    Attributes:
        status: ``"broken"`` (the whole plugin was skipped) or ``"clash"`` (one
            component was refused because its name is taken).
        plugin: ``"<distribution>:<entry point>"``; package / version: its distribution.
        reason: what was wrong and what to do, one line.
    """

    status: str
    plugin: str
    package: str
    version: str
    reason: str

    def message(self) -> str:
        """The warning text."""
        what = "skipped" if self.status == "broken" else "component refused"
        return f"kdistill plugin {self.plugin!r} ({self.package} {self.version}) {what}: {self.reason}"


@attrs.frozen
class _Plugin:
    name: str
    module: Any
    package: str
    version: str
    builtin: bool


def _autoload_disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _describe_exception(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})"
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class Registry:
    """Resolves component names to factories; lists what is installed, what was
    skipped and why (:attr:`problems`).

    Args:
        third_party: load entry points of other distributions (default: unless
            ``KDISTILL_DISABLE_PLUGINS`` is set).

    Raises:
        ConfigError: kdistill itself is not installed (its entry points are missing).
    """

    def __init__(self, third_party: bool | None = None):
        self.third_party = (not _autoload_disabled()) if third_party is None else third_party
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._plugins: list[_Plugin] = []
        self._load_problems: list[PluginProblem] = []
        self._warned: set[str] = set()
        self._entries: dict[str, dict[str, Registration]] = {k: {} for k in KINDS}
        self._ambiguous: dict[str, dict[str, list[Registration]]] = {k: {} for k in KINDS}
        self.problems: list[PluginProblem] = []
        self._backends: dict[str, Any] = {}
        self._load_entry_points()
        self._collect()

    # -- loading ----------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        eps = metadata.entry_points(group=hookspecs.PROJECT)
        if not any(ep.dist is not None and ep.dist.name == SELF_DIST for ep in eps):
            raise ConfigError(
                "kdistill's built-in plugins are not registered: the package is not "
                "installed. Install it (see README: pip install -e '.[all]' -c constraints.txt)."
            )
        for ep in sorted(eps, key=lambda e: (e.dist.name != SELF_DIST if e.dist else True, e.name)):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            if dist != SELF_DIST and not self.third_party:
                continue
            name = f"{dist}:{ep.name}"
            try:
                module = ep.load()
            except (Exception, SystemExit) as exc:  # a broken plugin must not take kdistill down
                self._load_problems.append(PluginProblem(
                    "broken", name, dist, version,
                    f"importing {ep.value!r} failed ({_describe_exception(exc)}); "
                    f"fix or uninstall {dist}",
                ))
                continue
            self._add_plugin(module, name, dist, version, builtin=dist == SELF_DIST)

    def _add_plugin(self, module: Any, name: str, package: str, version: str, builtin: bool) -> None:
        if self.pm.is_registered(module):
            return
        try:
            self.pm.register(module, name=name)
        except Exception as exc:  # pluggy.PluginValidationError, a duplicate name
            self._load_problems.append(PluginProblem(
                "broken", name, package, version,
                f"pluggy refused its hook implementations ({_describe_exception(exc)}); "
                f"fix or uninstall {package}",
            ))
            return
        self._plugins.append(_Plugin(name, module, package, version, builtin))

    def register_plugin(self, module: Any, package: str = "<local>", version: str = "") -> None:
        """Register a plugin object/module directly (tests, notebooks), as a third-party
        plugin: the same checks apply as to an installed one (problems are warned
        about and listed in :attr:`problems`, never raised)."""
        self._add_plugin(module, f"{package}:{getattr(module, '__name__', id(module))}", package, version,
                         builtin=False)
        self._collect()

    def _run_hooks(self, plugin: _Plugin) -> tuple[list[Registration], str | None]:
        """Every registration of one plugin, or the reason it is broken."""
        staged: list[Registration] = []
        seen: set[tuple[str, str]] = set()
        for kind in KINDS:
            hook_name = f"kdistill_register_{kind}"
            impls = [i for i in getattr(self.pm.hook, hook_name).get_hookimpls() if i.plugin is plugin.module]
            for impl in impls:
                if impl.hookwrapper or impl.wrapper:
                    return [], (f"{hook_name} is a hook wrapper; register components with a plain @hookimpl; "
                                f"fix or uninstall {plugin.package}")
                bad: list[str] = []

                def register(name=None, factory=None, description="", *_extra, _kind=kind, _bad=bad):
                    what = SINGULAR[_kind]
                    if _extra:
                        _bad.append(f"register() takes (name, factory, description), got {3 + len(_extra)} arguments")
                    elif not isinstance(name, str) or not _NAME_RE.fullmatch(name):
                        _bad.append(f"it registers a {what} named {name!r}; a name must be a string of letters, "
                                    f"digits, '_' and '-' starting with a letter or digit (at most 64 characters)")
                    elif (_kind, name) in seen:
                        _bad.append(f"it registers {what} {name!r} twice")
                    elif not callable(factory):
                        _bad.append(f"its {what} {name!r} has a factory that is not callable ({factory!r})")
                    elif description is not None and not isinstance(description, str):
                        _bad.append(f"its {what} {name!r} has a description that is not a string ({description!r})")
                    if _bad:
                        raise _BadRegistration(_bad[0])
                    seen.add((_kind, name))
                    line = " ".join((description or "").split())
                    staged.append(Registration(_kind, name, factory, line, plugin.name, plugin.package,
                                               plugin.version, plugin.builtin))

                try:
                    impl.function(register=register)
                except (Exception, SystemExit) as exc:
                    if bad:
                        return [], f"{bad[0]}; fix or uninstall {plugin.package}"
                    return [], f"{hook_name} raised ({_describe_exception(exc)}); fix or uninstall {plugin.package}"
                if bad:  # the hook swallowed our exception: still broken
                    return [], f"{bad[0]}; fix or uninstall {plugin.package}"
        return staged, None

    def _collect(self) -> None:
        self._entries = {k: {} for k in KINDS}
        self._ambiguous = {k: {} for k in KINDS}
        problems = list(self._load_problems)
        # built-ins first, whatever pluggy's call order (tryfirst/trylast) would say
        for plugin in sorted(self._plugins, key=lambda p: not p.builtin):
            staged, reason = self._run_hooks(plugin)
            if reason is not None:
                problems.append(PluginProblem("broken", plugin.name, plugin.package, plugin.version, reason))
                continue
            for reg in staged:
                problem = self._add(reg)
                if problem is not None:
                    problems.append(problem)
        self.problems = problems
        for problem in problems:
            text = problem.message()
            if text not in self._warned:
                self._warned.add(text)
                # no source location: the problem is in the plugin, not in the caller's code
                warnings.warn_explicit(text, PluginWarning, filename="kdistill", lineno=0,
                                       module="kdistill.core.registry")

    def _add(self, reg: Registration) -> PluginProblem | None:
        what = f"{SINGULAR[reg.kind]} {reg.name!r}"
        clashing = self._ambiguous[reg.kind].get(reg.name)
        if clashing is not None:
            clashing.append(reg)
            others = ", ".join(f"{r.package} {r.version}" for r in clashing[:-1])
            return PluginProblem("clash", reg.plugin, reg.package, reg.version,
                                 f"{what} is also provided by {others}; kdistill uses none of them "
                                 f"(uninstall all but one)")
        existing = self._entries[reg.kind].get(reg.name)
        if existing is None:
            self._entries[reg.kind][reg.name] = reg
            return None
        if existing.builtin:
            return PluginProblem("clash", reg.plugin, reg.package, reg.version,
                                 f"{what} is a built-in of {existing.package} {existing.version}, which stays; "
                                 f"{reg.package} must register it under another name")
        del self._entries[reg.kind][reg.name]
        self._ambiguous[reg.kind][reg.name] = [existing, reg]
        return PluginProblem("clash", reg.plugin, reg.package, reg.version,
                             f"{what} is also provided by {existing.package} {existing.version}; kdistill uses "
                             f"neither (uninstall one, or have one renamed)")

    # -- lookup -----------------------------------------------------------------------
    def names(self, kind: str) -> list[str]:
        """Sorted registered names of ``kind`` (ambiguous names excluded)."""
        return sorted(self._entries[kind])

    def entries(self, kind: str | None = None) -> list[Registration]:
        """All registrations (of one kind, or all kinds in :data:`KINDS` order)."""
        kinds = KINDS if kind is None else (kind,)
        return [self._entries[k][n] for k in kinds for n in self.names(k)]

    def get(self, kind: str, name: str) -> Registration:
        """The registration of ``name``.

        Raises:
            UnknownComponentError: with the available names of that kind.
            AmbiguousComponentError: two third-party packages register ``name``.
        """
        if kind not in self._entries:
            raise ConfigError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
        if isinstance(name, str) and name in self._ambiguous[kind]:
            packages = " and ".join(f"{r.package} {r.version}" for r in self._ambiguous[kind][name])
            raise AmbiguousComponentError(
                f"{SINGULAR[kind]} {name!r} is registered by both {packages}, so kdistill uses neither; "
                f"uninstall one of them (see `kdistill plugins`)"
            )
        try:
            return self._entries[kind][name]
        except (KeyError, TypeError):
            available = ", ".join(self.names(kind)) or "(none)"
            raise UnknownComponentError(
                f"unknown {SINGULAR[kind]} {name!r}; available {kind}: {available}"
                f" (run `kdistill plugins` to see where each comes from)"
            ) from None

    def provenance(self, kind: str, name: str) -> dict[str, str]:
        """Where the component ``name`` of ``kind`` comes from.

        Returns:
            ``{"package": distribution name, "version": its version, "plugin":
            "<distribution>:<entry point>"}``, e.g. ``{"package": "kdistill",
            "version": "0.1.0", "plugin": "kdistill:kernels"}``.
        Raises:
            UnknownComponentError, AmbiguousComponentError: as :meth:`get`.
        """
        reg = self.get(kind, name)
        return {"package": reg.package, "version": reg.version, "plugin": reg.plugin}

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

    def backend(self, name: str, device: str = "auto") -> Any:
        """The (cached) backend instance ``name`` on ``device`` (see
        :func:`kdistill.core.backend.parse_device`; ``"auto"``: the first accelerator
        the array library sees, else the CPU).

        Raises:
            UnknownComponentError: unknown name.
            ConfigError: the backend's array library is not installed, or ``device`` is
                malformed or not present (the message says what is).
        """
        key = (name, device)
        if key not in self._backends:
            factory = self.get("backends", name).factory
            try:
                self._backends[key] = factory(device) if device != "auto" else factory()
            except ImportError as exc:
                raise ConfigError(
                    f"backend {name!r} needs a library that is not installed ({exc}); "
                    f"install it with: pip install 'kdistill[{name}]' -c constraints.txt"
                ) from exc
        return self._backends[key]


def component_provenance(config: Any, registry: Registry | None = None) -> dict[str, dict[str, str]]:
    """The distribution (name, version, plugin) that supplies each component of a run.

    Args:
        config: a :class:`~kdistill.core.config.DistillConfig`.
        registry: default: :func:`get_registry`.
    Returns:
        ``{role: {"kind", "name", "package", "version", "plugin"}}`` for the roles
        ``method``, ``backend``, ``dataset``, ``callbacks.<i>``, ``kernel``, ``eval_kernel``, ``valid_kernel`` (when
        set), ``solver``, ``loss``, ``optimizer``, ``schedule``, plus ``"<role>.<param>"`` for parameters that name
        registered components themselves (e.g. ``kernel.arch`` of the ``nt`` kernel).
        A name that is not registered (any more) gets ``package``/``version``/``plugin``
        ``None``, so recording provenance never fails a finished run.
    """
    registry = registry or get_registry()
    out: dict[str, dict[str, Any]] = {}

    def add(role: str, kind: str, name: Any) -> Registration | None:
        try:
            reg = registry.get(kind, name)
            out[role] = {"kind": SINGULAR[kind], "name": name, "package": reg.package,
                         "version": reg.version, "plugin": reg.plugin}
            return reg
        except ConfigError:
            out[role] = {"kind": SINGULAR[kind], "name": name, "package": None, "version": None, "plugin": None}
            return None

    add("method", "methods", config.method)
    add("backend", "backends", config.backend)
    add("dataset", "datasets", config.dataset)
    for i, spec in enumerate(getattr(config, "callbacks", ())):
        add(f"callbacks.{i}", "callbacks", spec.name)
    for role, kind in (("kernel", "kernels"), ("eval_kernel", "kernels"), ("valid_kernel", "kernels"),
                       ("solver", "solvers"), ("loss", "losses"), ("optimizer", "optimizers"),
                       ("schedule", "schedules")):
        spec = getattr(config, role, None)
        if spec is None:
            continue
        reg = add(role, kind, spec.name)
        refs = getattr(reg.factory, "registry_refs", {}) if reg is not None else {}
        for param, ref_kind in refs.items():
            default = _default_param(reg.factory, param)
            add(f"{role}.{param}", ref_kind, spec.params.get(param, default))
    return out


def _default_param(factory: Any, param: str) -> Any:
    if attrs.has(factory):
        for field in attrs.fields(factory):
            if field.name == param and field.default is not attrs.NOTHING and not isinstance(field.default, attrs.Factory):
                return field.default
    return None


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
