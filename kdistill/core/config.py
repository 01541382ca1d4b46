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

import math
import tomllib
from pathlib import Path
from typing import Any

import attrs

from kdistill.core.errors import ConfigError

PREPROCESS = ("standardize", "none", "zca")
INITS = ("real", "noise")
METHODS = ("kip", "label-solve")
DTYPES = ("float32", "float64")


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


def _optional_spec():
    return attrs.field(
        default=None, converter=lambda v: None if v in (None, "") else ComponentSpec.from_value(v)
    )


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _int_at_least(lo: int):
    def validate(inst, attr, value):
        _check(
            isinstance(value, int) and not isinstance(value, bool) and value >= lo,
            f"{attr.name} must be an integer >= {lo}, got {value!r}",
        )

    return validate


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int_to_float(value):
    """Integers (not bools) become floats; anything else is left for the validator."""
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _positive_float(inst, attr, value):
    _check(
        _is_number(value) and value > 0,
        f"{attr.name} must be a finite number > 0, got {value!r}",
    )


def _nonneg_float(inst, attr, value):
    _check(
        _is_number(value) and value >= 0,
        f"{attr.name} must be a finite number >= 0, got {value!r}",
    )


def _bool(inst, attr, value):
    _check(isinstance(value, bool), f"{attr.name} must be true or false, got {value!r}")


def _name(inst, attr, value):
    _check(isinstance(value, str) and value.strip() != "", f"{attr.name} must be a non-empty name, got {value!r}")


def _optional_str(inst, attr, value):
    _check(value is None or isinstance(value, str), f"{attr.name} must be a string (a path), got {value!r}")


def _one_of(options):
    def validate(inst, attr, value):
        _check(value in options, f"{attr.name} must be one of {', '.join(options)}; got {value!r}")

    return validate


@attrs.define(kw_only=True)
class DistillConfig:
    """Everything that defines a KIP / Label Solve run.

    Attributes:
        method: ``kip`` (learn the support set) or ``label-solve`` (closed-form labels
            for class-balanced real support images; ``target_batch`` targets).
        dataset, data_dir: registered dataset name and its files' directory (None for
            embedded datasets such as ``digits``).
        preprocess: ``standardize`` (per-channel, fitted on the train split), ``zca``
            (per-image layer norm + ZCA with strength 0.1, fitted on the train split; see
            ``kdistill.core.preprocess.RegularizedZCA``) or ``none``.
        backend: ``jax`` or ``torch`` (or a plugin's).
        kernel, solver, loss: components (name + hyperparameters).
        eval_kernel: kernel for KRR evaluation; None means the training kernel.
        ipc: support images per class (support size = ipc * num_classes).
        steps: outer-loop optimizer steps (0 = just evaluate the initialization).
        lr, optimizer: learning rate and ``adam``/``sgd``.
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
            (see ``kdistill.core.threads``). May change on resume.
    """

    method: str = attrs.field(default="kip", validator=_one_of(METHODS))
    dataset: str = attrs.field(default="digits", validator=_name)
    data_dir: str | None = attrs.field(default=None, validator=_optional_str)
    preprocess: str = attrs.field(default="standardize", validator=_one_of(PREPROCESS))
    backend: str = attrs.field(default="jax", validator=_name)
    kernel: ComponentSpec = _spec("fc", kind="ntk", depth=1)
    solver: ComponentSpec = _spec("cholesky")
    loss: ComponentSpec = _spec("mse")
    eval_kernel: ComponentSpec | None = _optional_spec()
    ipc: int = attrs.field(default=10, validator=_int_at_least(1))
    steps: int = attrs.field(default=200, validator=_int_at_least(0))
    lr: float = attrs.field(default=0.01, validator=_positive_float)
    optimizer: str = attrs.field(default="adam", validator=_one_of(("adam", "sgd")))
    target_batch: int = attrs.field(default=5000, validator=_int_at_least(1))
    ridge: float = attrs.field(default=1e-6, validator=_nonneg_float)
    learn_labels: bool = attrs.field(default=False, validator=_bool)
    init: str = attrs.field(default="real", validator=_one_of(INITS))
    dtype: str = attrs.field(default="float32", validator=_one_of(DTYPES))
    seed: int = attrs.field(default=0, validator=_int_at_least(0))
    eval_every: int = attrs.field(default=50, validator=_int_at_least(0))
    eval_test_size: int | None = attrs.field(
        default=None, validator=attrs.validators.optional(_int_at_least(1))
    )
    test_size: int | None = attrs.field(default=None, validator=attrs.validators.optional(_int_at_least(1)))
    checkpoint_every: int = attrs.field(default=0, validator=_int_at_least(0))
    nonfinite_retries: int = attrs.field(default=2, validator=_int_at_least(0))
    valid_size: int = attrs.field(default=0, validator=_int_at_least(0))
    valid_kernel: ComponentSpec | None = _optional_spec()
    patience: int = attrs.field(default=0, validator=_int_at_least(0))
    time_limit: float = attrs.field(default=0.0, converter=_int_to_float, validator=_nonneg_float)
    threads: int | None = attrs.field(default=None, validator=attrs.validators.optional(_int_at_least(1)))

    # -- dict / TOML ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (TOML-serializable; None values are omitted)."""
        out: dict[str, Any] = {}
        for f in attrs.fields(type(self)):
            value = getattr(self, f.name)
            if value is None:
                continue
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
        """Load a TOML file. Raises ConfigError if missing or malformed."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        return cls.from_toml(p.read_text())

    def with_overrides(self, overrides: dict[str, Any] | list[str]) -> "DistillConfig":
        """A new config with ``{"kernel.depth": 2}`` or ``["kernel.depth=2"]`` applied."""
        if isinstance(overrides, (list, tuple)):
            overrides = dict(parse_override(o) for o in overrides)
        data = self.to_dict()
        for key, value in overrides.items():
            head, _, sub = key.partition(".")
            if sub:
                table = data.get(head)
                if table is None and head in ("eval_kernel", "valid_kernel"):
                    # starts as the kernel it defaults to
                    base = data.get("eval_kernel", data["kernel"]) if head == "valid_kernel" else data["kernel"]
                    table = data[head] = dict(base)
                if not isinstance(table, dict):
                    raise ConfigError(f"{head!r} is not a component table; cannot set {key!r}")
                if sub == "name" and table.get("name") != value:
                    table.clear()  # a new component starts from its own defaults
                table[sub] = value
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
