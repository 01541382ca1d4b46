"""Run configuration: attrs classes, TOML round-trip, ``key=value`` overrides.

A config file looks like::

    dataset = "mnist"
    data_dir = "../shared/data/mnist"
    backend = "jax"
    ipc = 10
    steps = 1000
    learn_labels = true

    [kernel]            # a component table: "name" plus its hyperparameters
    name = "fc"
    kind = "ntk"
    depth = 1

    [solver]
    name = "cholesky"

Overrides use dotted keys with TOML values: ``ipc=1``, ``kernel.depth=2``,
``kernel.name="rbf"``, ``data_dir="../shared/data/mnist"`` (bare words are strings).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, ClassVar

import attrs

from kdistill.core.validators import (
    boolean,
    int_at_least,
    int_to_float,
    name as nonempty_name,
    nonneg,
    one_of,
    optional_dir_path,
    parse_device,
    plain,
    positive,
)
from kdistill.errors import ConfigError
from kdistill.io.paths import check_path_length, path_error_message, short_path

PREPROCESS = ("standardize", "none", "zca")


def device_setting(instance, attribute, value) -> None:
    """attrs validator of ``device`` (:func:`kdistill.core.validators.parse_device`)."""
    if not isinstance(value, str):
        raise ConfigError(f"device must be a string such as 'auto', 'cpu' or 'cuda:0', got {plain(value)!r}")
    parse_device(value)
INITS = ("real", "noise")
#: Fields that concern only the run itself, not the set it made (dropped when an
#: artifact's config is used to evaluate it).
RUN_ONLY = ("callbacks", "threads", "device")
METHODS = ("kip", "label-solve")  # the built-in methods; plugins add more (registry kind "methods")
DTYPES = ("float32", "float64")
#: DistillConfig fields that hold a component (a name plus its parameters)
_COMPONENT_FIELDS = ("kernel", "solver", "loss", "eval_kernel", "valid_kernel", "optimizer", "schedule")


@attrs.define(kw_only=True)
class ComponentSpec:
    """A component by registry name plus its hyperparameters."""

    name: str
    params: dict[str, Any] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params}

    @classmethod
    def from_value(cls, value: Any) -> "ComponentSpec":
        """From a name, a ``{"name": ..., **params}`` table, or a ComponentSpec."""
        if isinstance(value, ComponentSpec):
            return value
        if isinstance(value, str):
            return cls(name=value)
        if isinstance(value, dict):
            if "name" not in value:
                raise ConfigError(f"component table {value!r} needs a 'name' key")
            params = {k: v for k, v in value.items() if k != "name"}
            return cls(name=str(value["name"]), params=params)
        raise ConfigError(f"a component is a name or a table with 'name', got {value!r}")


def _spec(default_name: str, **params):
    return attrs.field(
        factory=lambda: ComponentSpec(name=default_name, params=dict(params)),
        converter=ComponentSpec.from_value,
    )


def _spec_list(value: Any) -> list[ComponentSpec]:
    """A list of components (names or ``{"name": ..., **params}`` tables)."""
    if isinstance(value, (str, dict, ComponentSpec)):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"callbacks must be a list of names or tables with 'name', got {value!r}")
    return [ComponentSpec.from_value(v) for v in value]


def _optional_spec():
    return attrs.field(
        default=None, converter=lambda v: None if v in (None, "") else ComponentSpec.from_value(v)
    )


def _plain_fields(cls, fields):
    """attrs field transformer: every field first turns numpy scalars into Python ones
    (an ``ipc`` of ``np.int64(2)`` is 2, and an error says "got 2")."""
    out = []
    for f in fields:
        conv = plain if f.converter is None else attrs.converters.pipe(plain, f.converter)
        out.append(f.evolve(converter=conv))
    return out


@attrs.define(kw_only=True, field_transformer=_plain_fields)
class DistillConfig:
    """Everything that defines a KIP / Label Solve run.

    Attributes:
        method: a registered method (``kdistill plugins``), built in: ``kip`` (learn
            the support set) or ``label-solve`` (closed-form labels
            for class-balanced real support images; ``target_batch`` targets).
        dataset, data_dir: registered dataset name and its files' directory (None for
            embedded datasets such as ``digits``).
        preprocess: ``standardize`` (per-channel, fitted on the train split), ``zca``
            (per-image layer norm + ZCA with strength 0.1, fitted on the train split; see
            ``kdistill.datasets.preprocess.RegularizedZCA``) or ``none``.
        backend: ``jax`` or ``torch`` (or a plugin's).
        kernel, solver, loss: components (name + hyperparameters).
        eval_kernel: kernel for KRR evaluation; None means the training kernel.
        ipc: support images per class (support size = ipc * num_classes).
        steps: outer-loop optimizer steps (0 = just evaluate the initialization).
        lr: the base learning rate.
        optimizer: a registered optimizer (``kdistill plugins``) with its
            hyperparameters: built in ``adam`` (default), ``sgd`` (momentum 0.9 by
            default), ``adamw``; e.g. ``[optimizer] name = "sgd"`` and
            ``nesterov = true``. The plain string form ``optimizer = "adam"`` of older
            configs, artifacts and checkpoints means the same as the table.
        schedule: a registered learning-rate schedule (the step's learning rate is
            ``lr * schedule(step)``): ``constant`` (default), ``cosine`` (to
            ``alpha * lr`` over ``steps``), ``warmup-cosine``.
        target_batch: target examples per step, class-balanced, resampled each step
            (capped at the training set size).
        ridge: relative ridge ``lam`` (absolute ridge ``lam * tr(K_ss)/n_s``).
        learn_labels: also learn the support labels.
        init: support initialization, ``real`` (class-balanced real examples) or
            ``noise`` (standard normal in preprocessed space).
        dtype: dtype of support images and kernels (the solve is always float64).
        seed: seeds support init, target batches and everything random.
        eval_every: evaluate every this many steps (0 = only at the end).
        eval_test_size: test examples used for the intermediate evaluations (None =
            all).
        test_size: test examples of the final evaluation (the first ``test_size`` of the
            test split; None = all). For slow evaluation kernels (the exact pooled
            ConvNet kernel on a CPU); results then say how many were used.
        checkpoint_every: KIP only: write a checkpoint to the run directory every this
            many steps and after the last step (0 = off; SIGINT/SIGTERM still write
            one). It and ``time_limit`` are the only fields that may change on resume.
        nonfinite_retries: automatic recoveries per run from a NaN/Inf step or a
            failed Cholesky: retry the step with a 10x ridge and half the learning
            rate (see ``kdistill.core.guard``); 0 = stop at the first failure.
        valid_size: KIP only: training examples held out, class-balanced, as a validation
            split (never used as targets or initialization). With it, the intermediate
            evaluations score the support set on this split (not the test set) and the
            run returns the support set with the best validation accuracy (0 = off:
            intermediate evaluations use the test set and the last support set is kept).
        valid_kernel: kernel of the validation evaluations; None means ``eval_kernel``.
        patience: with a validation split, stop when this many evaluations in a row
            did not improve on the best validation accuracy (0 = never stop early).
        time_limit: KIP only: stop after the step during which the training time
            (evaluations included) passed this many seconds (0 = no limit). The number of
            steps then depends on the machine: the run's metrics record ``steps_run``.
        threads: threads for torch, the BLAS libraries and (for 1) XLA; None = the
            cores this process may use (``os.sched_getaffinity``). On a machine whose
            cores are shared with other CPU-bound work, 1 is often several times faster
            (see ``kdistill.runtime.threads``). May change on resume.
        callbacks: run callbacks (registered plugins, e.g. ``[{name = "jsonl"}]``) the
            KIP driver calls after every step: tracking and logging. May change on resume.
        device: where the backend computes: ``auto`` (default: the accelerators the
            backend sees, else the CPU), ``cpu``, ``cuda`` (= ``gpu``), ``tpu``, or one
            device such as ``cuda:1``. On JAX, ``auto`` and a platform name use every
            device of that platform as one data-parallel mesh; on torch each process
            uses one device (``cuda:LOCAL_RANK`` under ``torchrun``). May change on resume.
    """

    #: validator messages name fields as users write them in a config (``ipc``)
    bare_field_names: ClassVar[bool] = True

    method: str = attrs.field(default="kip", validator=nonempty_name)
    dataset: str = attrs.field(default="digits", validator=nonempty_name)
    data_dir: str | None = attrs.field(default=None, validator=optional_dir_path)
    preprocess: str = attrs.field(default="standardize", validator=one_of(PREPROCESS))
    backend: str = attrs.field(default="jax", validator=nonempty_name)
    kernel: ComponentSpec = _spec("fc", kind="ntk", depth=1)
    solver: ComponentSpec = _spec("cholesky")
    loss: ComponentSpec = _spec("mse")
    eval_kernel: ComponentSpec | None = _optional_spec()
    ipc: int = attrs.field(default=10, validator=int_at_least(1))
    steps: int = attrs.field(default=200, validator=int_at_least(0))
    lr: float = attrs.field(default=0.01, validator=positive)
    optimizer: ComponentSpec = _spec("adam")
    schedule: ComponentSpec = _spec("constant")
    target_batch: int = attrs.field(default=5000, validator=int_at_least(1))
    ridge: float = attrs.field(default=1e-6, validator=nonneg)
    learn_labels: bool = attrs.field(default=False, validator=boolean)
    init: str = attrs.field(default="real", validator=one_of(INITS))
    dtype: str = attrs.field(default="float32", validator=one_of(DTYPES))
    seed: int = attrs.field(default=0, validator=int_at_least(0))
    eval_every: int = attrs.field(default=50, validator=int_at_least(0))
    eval_test_size: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(int_at_least(1))
    )
    test_size: int | None = attrs.field(default=None, validator=attrs.validators.optional(int_at_least(1)))
    checkpoint_every: int = attrs.field(default=0, validator=int_at_least(0))
    nonfinite_retries: int = attrs.field(default=2, validator=int_at_least(0))
    valid_size: int = attrs.field(default=0, validator=int_at_least(0))
    valid_kernel: ComponentSpec | None = _optional_spec()
    patience: int = attrs.field(default=0, validator=int_at_least(0))
    time_limit: float = attrs.field(default=0.0, converter=int_to_float, validator=nonneg)
    threads: int | None = attrs.field(default=None, validator=attrs.validators.optional(int_at_least(1)))
    callbacks: list[ComponentSpec] = attrs.field(factory=list, converter=_spec_list)
    device: str = attrs.field(default="auto", validator=device_setting)

    # -- dict / TOML ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (TOML-serializable; None values are omitted)."""
        out: dict[str, Any] = {}
        for f in attrs.fields(type(self)):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, list):
                value = [v.to_dict() if isinstance(v, ComponentSpec) else v for v in value]
            out[f.name] = value.to_dict() if isinstance(value, ComponentSpec) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DistillConfig":
        """Build from a dict; unknown keys raise ConfigError listing the valid ones."""
        valid = [f.name for f in attrs.fields(cls)]
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(valid)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"invalid config: {exc}") from exc

    @classmethod
    def from_artifact(cls, data: dict[str, Any]) -> "DistillConfig":
        """The config recorded in an artifact, for evaluating it: as :meth:`from_dict`, less
        what only concerned the run that made it (``callbacks``, ``threads``), so that
        scoring a set needs none of that run's plugins and uses this machine's threads."""
        return cls.from_dict({k: v for k, v in data.items() if k not in RUN_ONLY})

    def to_toml(self) -> str:
        """TOML text; ``DistillConfig.from_toml(c.to_toml()) == c``."""
        import tomli_w

        return tomli_w.dumps(self.to_dict())

    @classmethod
    def from_toml(cls, text: str) -> "DistillConfig":
        try:
            return cls.from_dict(tomllib.loads(text))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"malformed TOML config: {exc}") from exc

    @classmethod
    def from_file(cls, path: str | Path) -> "DistillConfig":
        """Load a UTF-8 TOML file.

        A relative ``data_dir`` in the file is relative to the file's directory (as
        paths in most config formats are), so a config works from any working
        directory; it is returned as an absolute, normalized path (``..`` folded, links
        not resolved). An absolute ``data_dir`` is kept as written. (Only files: a
        ``data_dir`` given by ``--data-dir``, ``-s data_dir=...``, a dict or
        :meth:`from_toml` text is used as given, relative to the working directory.)

        Raises:
            ConfigError: the file is missing or unreadable, its path too long, its bytes
                not UTF-8, its TOML malformed or its values invalid.
        """
        p = Path(path)
        check_path_length(p, "config file")
        try:
            if not p.is_file():
                raise ConfigError(f"config file {short_path(p)} does not exist")
            raw = p.read_bytes()
        except OSError as exc:
            raise ConfigError(path_error_message(exc, p, "read config file")) from exc
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(
                f"config file {short_path(p)} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                f"{exc.start}); TOML files are UTF-8: re-save it as UTF-8"
            ) from exc
        cfg = cls.from_toml(text)
        if cfg.data_dir is not None and not Path(cfg.data_dir).is_absolute():
            cfg = attrs.evolve(cfg, data_dir=os.path.normpath(os.path.abspath(p.parent / cfg.data_dir)))
        return cfg

    def with_overrides(
        self, overrides: dict[str, Any] | list[str], notices: list[str] | None = None
    ) -> "DistillConfig":
        """A new config with ``{"kernel.depth": 2}`` or ``["kernel.depth=2"]`` applied.

        A component given by name (``{"kernel": "fc"}``, ``kernel.name=fc``, the CLI's
        ``--kernel fc``) keeps this config's parameters when it names the component the
        config already has, and starts from that component's own defaults when it names
        another one; a table (``{"kernel": {"name": "fc", "depth": 2}}``) replaces the
        component as given.

        Args:
            notices: if given, a sentence is appended for every component whose
                configured parameters a new name dropped (the CLI prints them).
        Raises:
            ConfigError: unknown keys, invalid values, or a dotted key into a field that
                is not a component.
        """
        if isinstance(overrides, (list, tuple)):
            overrides = dict(parse_override(o) for o in overrides)
        data = self.to_dict()

        def inherited(head: str) -> dict | None:  # what an unset eval/valid kernel means
            if head == "eval_kernel":
                return data["kernel"]
            if head == "valid_kernel":
                return data.get("eval_kernel", data["kernel"])
            return None

        def renamed(head: str, table: dict, name: Any, explicit: bool) -> None:
            dropped = {k: v for k, v in table.items() if k != "name"}
            if notices is not None and explicit and dropped:
                settings = ", ".join(f"{k}={plain(v)!r}" for k, v in dropped.items())
                notices.append(
                    f"{head} {name!r} replaces the configured {head} {table.get('name')!r} and drops its "
                    f"settings ({settings}); {name!r} starts from its own defaults (set its parameters "
                    f"with -s {head}.PARAM=VALUE)"
                )

        for key, value in overrides.items():
            head, _, sub = key.partition(".")
            if sub:
                table = data.get(head)
                explicit = table is not None
                if table is None and head in _COMPONENT_FIELDS:
                    table = data[head] = dict(inherited(head))  # starts as the kernel it defaults to
                if not isinstance(table, dict):
                    raise ConfigError(f"{head!r} is not a component table; cannot set {key!r}")
                if sub == "name" and table.get("name") != value:
                    renamed(head, table, value, explicit)
                    table.clear()  # a new component starts from its own defaults
                table[sub] = value
            elif key in _COMPONENT_FIELDS and isinstance(value, str) and value.strip():
                table = data.get(key)
                explicit = table is not None
                current = table if explicit else inherited(key)
                if current is not None and current.get("name") == value:
                    data[key] = dict(current)  # the same component keeps its parameters
                else:
                    if current is not None:
                        renamed(key, current, value, explicit)
                    data[key] = {"name": value}
            else:
                data[key] = value
        return DistillConfig.from_dict(data)


def parse_override(text: str) -> tuple[str, Any]:
    """``"kernel.depth=2"`` -> ``("kernel.depth", 2)``; values are TOML, bare words strings."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. kernel.depth=2)")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key, value
