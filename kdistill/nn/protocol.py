"""The finite-network evaluation protocol: one declared, versioned, validated object.

A result is only comparable to another under the same protocol, so every result
file stores ``NNProtocol.to_dict()`` and ``NNProtocol.from_dict`` rebuilds it
exactly (unknown fields and newer versions are refused). ``protocol_id`` is a short
hash of the dict, printed next to every number.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import attrs
import numpy as np

from kdistill.core.validators import fail, float_range, int_at_least, is_int, one_of
from kdistill.errors import ConfigError

PROTOCOL_VERSION = 1
MODELS = ("convnet", "fc")
NORMS = ("none", "instance", "layer")
LOSSES = ("mse", "ce")
OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")
LABEL_MODES = ("artifact", "argmax", "class")


def _int(value):
    """numpy integers as Python ints (other values are left for the validator)."""
    return int(value) if isinstance(value, np.integer) else value


def _seeds_converter(value):
    value = _int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, (str, bytes, dict)):
        return value  # iterable, but not a list of seeds: the validator rejects it
    try:
        return tuple(_int(v) for v in value)
    except TypeError:
        return value


def _seeds(inst, attr, value):
    if (
        not isinstance(value, tuple) or not value
        or any(not is_int(s) or s < 0 for s in value)
        or len(set(value)) != len(value)
    ):
        fail(inst, attr, "a non-empty list of distinct integers >= 0", value)


def _float(value):
    if isinstance(value, np.generic) and not isinstance(value, np.bool_):
        value = value.item()
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


@attrs.frozen(kw_only=True)
class NNProtocol:
    """How a finite network is trained on a support set and scored on the test set.

    Attributes:
        model: ``convnet`` (depth x [conv3x3 -> norm -> ReLU -> avgpool2] -> linear)
            or ``fc`` (MLP: depth x [linear -> ReLU] -> linear).
        width: channels (convnet) or hidden units (fc). depth: blocks / hidden layers.
        norm: ``none``, ``instance`` (convnet only) or ``layer``.
        loss: ``mse`` (``0.5 * mean_n sum_c (f_c - y_c)^2`` against the targets) or
            ``ce`` (cross-entropy against hard class targets).
        optimizer: ``sgd`` (with ``momentum``) or ``adam``; lr, momentum,
            weight_decay (L2 coupled into the gradient, torch semantics).
        schedule: ``constant`` or ``cosine`` (lr decays to 0 at the last step).
        steps: optimizer steps. batch_size: examples per step (capped at the support
            size: full batch for small sets); each epoch is a fresh permutation.
        seeds: one independent run (init and batch order) per seed.
        label_mode: ``artifact`` (the stored, possibly learned, labels as regression
            targets), ``argmax`` (one-hot of their argmax) or ``class`` (one-hot of the
            class each example was initialized from). One-hot targets are centered
            (one-hot - 1/C) for ``mse``; ``ce`` needs ``argmax`` or ``class``.
        eval_every: also score on the first ``curve_test_size`` test images every this
            many steps (for accuracy curves; 0 = off). The reported accuracy always
            uses the full test set after the last step.
        version: protocol version; results of different versions are not comparable.
    Raises:
        ConfigError: on any invalid field or combination.
    """

    model: str = attrs.field(default="convnet", validator=one_of(MODELS))
    width: int = attrs.field(default=128, converter=_int, validator=int_at_least(1))
    depth: int = attrs.field(default=3, converter=_int, validator=int_at_least(1))
    norm: str = attrs.field(default="instance", validator=one_of(NORMS))
    loss: str = attrs.field(default="mse", validator=one_of(LOSSES))
    optimizer: str = attrs.field(default="sgd", validator=one_of(OPTIMIZERS))
    lr: float = attrs.field(default=0.01, converter=_float, validator=float_range(0.0, lo_open=True))
    momentum: float = attrs.field(default=0.9, converter=_float, validator=float_range(0.0, 1.0))
    weight_decay: float = attrs.field(default=5e-4, converter=_float, validator=float_range(0.0))
    schedule: str = attrs.field(default="cosine", validator=one_of(SCHEDULES))
    steps: int = attrs.field(default=300, converter=_int, validator=int_at_least(1))
    batch_size: int = attrs.field(default=256, converter=_int, validator=int_at_least(1))
    seeds: tuple = attrs.field(default=(0, 1, 2), converter=_seeds_converter, validator=_seeds)
    label_mode: str = attrs.field(default="artifact", validator=one_of(LABEL_MODES))
    eval_every: int = attrs.field(default=100, converter=_int, validator=int_at_least(0))
    curve_test_size: int = attrs.field(default=1000, converter=_int, validator=int_at_least(1))
    version: int = attrs.field(default=PROTOCOL_VERSION, converter=_int, validator=int_at_least(1))

    def __attrs_post_init__(self):
        if self.version > PROTOCOL_VERSION:
            raise ConfigError(f"NNProtocol version {self.version} is newer than this kdistill ({PROTOCOL_VERSION}); upgrade")
        if self.loss == "ce" and self.label_mode == "artifact":
            raise ConfigError("loss='ce' needs hard targets: set label_mode='argmax' or 'class' "
                              "(label_mode='artifact' regresses on the stored labels with loss='mse')")
        if self.model == "fc" and self.norm == "instance":
            raise ConfigError("model='fc' has no spatial axes: use norm='none' or 'layer'")

    @classmethod
    def default(cls, model: str = "convnet", **overrides: Any) -> "NNProtocol":
        """Our CPU default for ``model``: ConvNet width 128, depth 3, instance norm,
        or MLP width 1024, depth 1; both SGD momentum 0.9, lr 0.01, cosine, 300 steps,
        MSE on the artifact's labels, seeds 0, 1, 2. ``overrides`` are field values."""
        base = {"model": model}
        if model == "fc":
            base.update(width=1024, depth=1, norm="none")
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-able dict (``seeds`` as a list)."""
        d = attrs.asdict(self)
        d["seeds"] = list(self.seeds)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NNProtocol":
        """Inverse of :meth:`to_dict`. Raises ConfigError on unknown fields or bad values."""
        if not isinstance(data, dict):
            raise ConfigError(f"an NN protocol must be a dict, got {type(data).__name__}")
        valid = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ConfigError(f"unknown NN protocol fields: {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
        return cls(**data)

    def with_overrides(self, overrides: dict[str, Any] | list[str]) -> "NNProtocol":
        """A copy with fields replaced; ``overrides`` is a dict or ``["key=value"]``
        strings (values parsed as TOML scalars/arrays: ``seeds=[0,1,2]``, ``lr=0.1``)."""
        if isinstance(overrides, list):
            from kdistill.core.config import parse_override

            overrides = dict(parse_override(s) for s in overrides)
        return self.from_dict({**self.to_dict(), **overrides})

    @property
    def protocol_id(self) -> str:
        """First 10 hex digits of the SHA-256 of the canonical JSON of :meth:`to_dict`."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:10]

    def describe(self) -> str:
        """One line for tables and logs."""
        arch = f"{self.model} w{self.width} d{self.depth}" + (f" {self.norm}" if self.norm != "none" else "")
        opt = f"{self.optimizer} lr{self.lr:g}" + (f" m{self.momentum:g}" if self.optimizer == "sgd" else "")
        return (f"{arch}, {self.loss} on {self.label_mode} labels, {opt} wd{self.weight_decay:g} {self.schedule}, "
                f"{self.steps} steps x batch {self.batch_size}, seeds {list(self.seeds)} (v{self.version}, id {self.protocol_id})")
