"""The attrs validators (and the converters that go with them) of every kdistill attrs
class: the run config, component hyperparameters, the NN protocol, plugins.

Each validator has the attrs signature ``validator(inst, attr, value)`` and raises
:class:`~kdistill.errors.ConfigError` with a message that names the field as its user
writes it (:func:`field_label`: ``FCKernel.depth`` for a component or the NN protocol,
the bare key ``ipc`` for the run config), the rule, and the value as given
(:func:`show`)::

    FCKernel.depth must be an integer >= 1, got 0
    ipc must be an integer >= 1, got 0
    preprocess must be one of standardize, none, zca; got 'pca'

Factories (:func:`int_at_least`, :func:`float_range`, :func:`one_of`) build validators
for a bound or a set of options; the others are validators themselves.
"""

from __future__ import annotations

import math
from typing import Any, NoReturn

import numpy as np

from kdistill.errors import ConfigError
from kdistill.io.paths import check_path_length


def plain(value: Any) -> Any:
    """``value`` with numpy scalars turned into Python ones (``np.int64(2)`` -> ``2``), so
    that messages show numbers as users wrote them."""
    return value.item() if isinstance(value, np.generic) else value


def show(value: Any) -> str:
    """``value`` for a message: numpy scalars as Python ones (``2``, ``-1.0``, ``inf``, not
    ``np.int64(2)``), lists and tuples element by element (``[1, 2]``), anything else by
    ``repr`` (strings quoted)."""
    value = plain(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(show(v) for v in value) + "]"
    return repr(value)


def field_label(inst: Any, attr: Any) -> str:
    """How a message names the field ``attr`` of ``inst``: ``Class.field``, or the bare
    field name for classes whose fields users write as top-level keys (those set the
    class attribute ``bare_field_names = True``, e.g. the run config)."""
    if getattr(type(inst), "bare_field_names", False):
        return attr.name
    return f"{type(inst).__name__}.{attr.name}"


def fail(inst: Any, attr: Any, rule: str, value: Any, sep: str = ",") -> NoReturn:
    """Raise ``ConfigError("<field> must be <rule><sep> got <value>")``."""
    raise ConfigError(f"{field_label(inst, attr)} must be {rule}{sep} got {show(value)}")


def is_number(value: Any) -> bool:
    """True for a finite int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any) -> bool:
    """True for an int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def int_to_float(value: Any) -> Any:
    """attrs converter: integers (not bools) become floats; anything else is left for the
    validator."""
    return float(value) if is_int(value) else value


# -- numbers ----------------------------------------------------------------------------

def float_range(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False):
    """Validator: a finite number (int or float, not bool) ``>= lo`` (``> lo`` when
    ``lo_open``) and, when ``hi`` is given, ``<= hi`` (``< hi`` when ``hi_open``), e.g.
    ``float_range(0.0, 1.0)`` for a fraction, ``float_range(0.0, 1.0, hi_open=True)`` for
    a decay rate."""
    rule = f"a finite number {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        rule += f" and {'<' if hi_open else '<='} {hi:g}"

    def validate(inst, attr, value) -> None:
        ok = is_number(value) and (value > lo if lo_open else value >= lo)
        ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
        if not ok:
            fail(inst, attr, rule, value)

    return validate


def positive(inst, attr, value) -> None:
    """A finite number > 0 (int or float, not bool)."""
    if not (is_number(value) and value > 0):
        fail(inst, attr, "a finite number > 0", value)


def nonneg(inst, attr, value) -> None:
    """A finite number >= 0 (int or float, not bool)."""
    if not (is_number(value) and value >= 0):
        fail(inst, attr, "a finite number >= 0", value)


def finite(inst, attr, value) -> None:
    """A finite number (int or float, not bool)."""
    if not is_number(value):
        fail(inst, attr, "a finite number", value)


def int_at_least(lo: int):
    """Validator: an int (not bool) ``>= lo``."""

    def validate(inst, attr, value) -> None:
        if not (is_int(value) and value >= lo):
            fail(inst, attr, f"an integer >= {lo}", value)

    return validate


#: An int (not bool) >= 1.
positive_int = int_at_least(1)
#: An int (not bool) >= 0 (seeds, counts that may be 0).
nonneg_int = int_at_least(0)


# -- choices and strings ----------------------------------------------------------------

def one_of(options):
    """Validator: one of ``options`` (a tuple of strings); the message lists them."""
    rule = f"one of {', '.join(options)}"

    def validate(inst, attr, value) -> None:
        if not (isinstance(value, str) and value in options):
            fail(inst, attr, rule, value, sep=";")

    return validate


def kernel_kind(inst, attr, value) -> None:
    """``"nngp"`` or ``"ntk"``."""
    if value not in ("nngp", "ntk"):
        fail(inst, attr, "'nngp' or 'ntk'", value)


def boolean(inst, attr, value) -> None:
    """``True`` or ``False`` (not 0/1)."""
    if not isinstance(value, bool):
        fail(inst, attr, "true or false", value)


def name(inst, attr, value) -> None:
    """A string that is not empty or blank (a registered name)."""
    if not (isinstance(value, str) and value.strip() != ""):
        fail(inst, attr, "a non-empty name", value)


def optional_str(inst, attr, value) -> None:
    """None or a string (a path)."""
    if not (value is None or isinstance(value, str)):
        fail(inst, attr, "a string (a path)", value)


def optional_dir_path(inst, attr, value) -> None:
    """None or a directory path short enough for the filesystem to open files in it
    (:func:`kdistill.io.paths.check_path_length`, whose message names the field)."""
    optional_str(inst, attr, value)
    if value:
        check_path_length(value, field_label(inst, attr), directory=True)


#: Device kinds of the ``device`` setting; each may carry an index, ``"cuda:1"``.
DEVICE_KINDS = ("auto", "cpu", "gpu", "cuda", "tpu", "mps")


def parse_device(spec: str) -> tuple[str, int | None]:
    """``(kind, index)`` of a ``device`` setting: ``"auto"``, ``"cpu"``, ``"gpu"`` (=
    ``"cuda"``), ``"tpu"``, ``"mps"``, optionally with a local device index (``"cuda:1"``).

    Raises:
        ConfigError: any other text (the message lists the accepted forms).
    """
    kind, sep, index = str(spec).strip().lower().partition(":")
    if kind not in DEVICE_KINDS or (sep and not index.isdigit()) or (kind == "auto" and sep):
        raise ConfigError(
            f"device must be one of {', '.join(DEVICE_KINDS)}, optionally with a device index such as "
            f"'cuda:1' (not for 'auto'); got {spec!r}")
    return ("gpu" if kind == "cuda" else kind), (int(index) if index else None)
