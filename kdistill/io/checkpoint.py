"""Checkpoints of a KIP run: one ``checkpoint.npz`` in the run directory.

A checkpoint holds everything needed to continue a run bit-for-bit: the step
state (parameters: support images ``x_s``, learned labels ``y_s``, loss parameters;
and the optimizer state), the fixed support labels and class ids, the numpy
generator state that draws target batches, the step, the per-step history, the
numerical guard's state (effective ridge and learning rate) and the config.

Layout (written by :func:`kdistill.io.safeio.write_npz`, read with
``allow_pickle=False``):

- ``trainer/<key>`` — the step state as arrays
  (:meth:`kdistill.core.backend.TrainStep.to_arrays`: ``params/<name>`` and ``opt/...``;
  the layout is unchanged since the stateful trainer it replaced, so older checkpoints
  resume);
- ``labels`` ``[n_s, C]`` float32, ``class_ids`` ``[n_s]`` int64;
- ``best/<name>`` — the best support set so far under validation (``x_s``, ``y_s``,
  ``loss/<k>``; only for runs with a validation split), with ``best_step`` and
  ``best_acc`` in ``meta``;
- ``meta`` — JSON: ``format`` (``kdistill-checkpoint``), ``format_version``,
  ``kdistill_version``, ``config``, ``step``, ``rng_state`` (the generator's
  ``bit_generator.state``, integers as decimal strings since PCG64's are 128-bit),
  ``history``, ``guard``, ``data_fingerprint``, ``elapsed_seconds``, ``best_step``,
  ``best_acc`` and ``integrity``: the record of
  :func:`kdistill.io.safeio.integrity_record`, one SHA-256 digest over every other
  metadata field and every array.

Files are written atomically (temp file, fsync, rename), so a kill or a full disk
at any moment leaves either the previous checkpoint or the new one, never a mix.
:func:`load_checkpoint` refuses a file without the integrity record or whose content
differs from it, then validates every field (types, ranges, the guard's and the
history's keys, array shapes), so a malformed checkpoint fails at load, before any
step runs. Format version 2 added the record; version-1 checkpoints are refused
unless the caller passes ``allow_legacy=True`` (then only their arrays are checked).
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from kdistill.errors import CheckpointError, KdistillError
from kdistill.io.safeio import read_npz, verify_checksums, verify_legacy_checksums, write_npz

FORMAT = "kdistill-checkpoint"
FORMAT_VERSION = 2
#: The last format version without an integrity record over the metadata.
LEGACY_VERSION = 1
#: Keys of the per-step history, each a list.
HISTORY_KEYS = ("step", "loss", "eval_step", "eval_acc", "eval_seconds")
FILENAME = "checkpoint.npz"

#: Config fields that may differ on resume: they do not change the trajectory.
RESUME_MAY_CHANGE = ("checkpoint_every", "time_limit", "threads", "callbacks", "device")


def checkpoint_path(run_dir: str | os.PathLike) -> Path:
    """``run_dir / "checkpoint.npz"``."""
    return Path(run_dir) / FILENAME


@attrs.define(kw_only=True)
class Checkpoint:
    """The state of a KIP run after ``step`` completed steps.

    Attributes:
        step: completed steps (>= 0).
        config: the run config as a dict (``DistillConfig.to_dict``).
        trainer_state: :meth:`TrainStep.to_arrays` of the run's state (``params/...``,
            ``opt/...`` arrays).
        labels: ``[n_s, C]`` float32 fixed support labels; class_ids: ``[n_s]`` int64.
        rng_state: ``numpy.random.Generator.bit_generator.state`` (a dict).
        history: per-step records so far; guard: :class:`NumericalGuard` as a dict.
        data_fingerprint: :func:`data_fingerprint` of the prepared training data.
        elapsed_seconds: training time spent so far (all sessions).
        best, best_step, best_acc: the support set with the highest validation accuracy
            so far (parameter name -> array), its step and accuracy; empty / None without
            a validation split.
    """

    step: int
    config: dict[str, Any]
    trainer_state: dict[str, np.ndarray]
    labels: np.ndarray
    class_ids: np.ndarray
    rng_state: dict[str, Any]
    history: dict[str, list]
    guard: dict[str, Any]
    data_fingerprint: str
    elapsed_seconds: float = 0.0
    version: str = ""
    best: dict[str, np.ndarray] = attrs.field(factory=dict)
    best_step: int | None = None
    best_acc: float | None = None

    def params(self) -> dict[str, np.ndarray]:
        """The trainer's parameters (``params/<name>`` entries without the prefix)."""
        return {k[7:]: v for k, v in self.trainer_state.items() if k.startswith("params/")}

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically; creates the parent directory.

        Raises:
            CheckpointError: the write failed (e.g. disk full); the file at ``path``
                still holds the previous checkpoint, if there was one.
        """
        from kdistill.version import __version__

        path = Path(path)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kdistill_version": self.version or __version__,
            "step": int(self.step),
            "config": self.config,
            "rng_state": encode_rng_state(self.rng_state),
            "history": self.history,
            "guard": self.guard,
            "data_fingerprint": self.data_fingerprint,
            "elapsed_seconds": float(self.elapsed_seconds),
            "best_step": self.best_step,
            "best_acc": self.best_acc,
        }
        arrays = {f"trainer/{k}": v for k, v in self.trainer_state.items()}
        arrays.update({f"best/{k}": v for k, v in self.best.items()})
        arrays["labels"] = np.asarray(self.labels, np.float32)
        arrays["class_ids"] = np.asarray(self.class_ids, np.int64)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return write_npz(path, arrays, meta)
        except OSError as exc:
            raise CheckpointError(
                f"could not write checkpoint {str(path)!r} at step {self.step}: "
                f"{exc.strerror or exc} (errno {exc.errno}); the file was not changed"
            ) from exc


def load_checkpoint(path: str | os.PathLike, *, allow_legacy: bool = False) -> Checkpoint:
    """Read a checkpoint written by :meth:`Checkpoint.save`. Never unpickles.

    Args:
        allow_legacy: accept a format-version-1 checkpoint (written before integrity
            records; only its arrays can be verified) with a warning, instead of
            refusing it. A file can never turn this on itself.
    Raises:
        CheckpointError: missing, truncated, tampered or corrupted (no integrity record,
            or metadata / arrays that differ from it: the message names them), of a
            newer format version, a version-1 file without ``allow_legacy``, or
            malformed (the message names the field: e.g. ``guard.ridge``).
    """
    name = str(path)
    arrays, meta = read_npz(
        path, fmt=FORMAT, max_version=FORMAT_VERSION, required=("labels", "class_ids"),
        error=CheckpointError, what="checkpoint",
    )
    if meta["format_version"] <= LEGACY_VERSION:
        if not allow_legacy:
            raise CheckpointError(
                f"{name!r} is a format-version-{meta['format_version']} checkpoint: it predates integrity "
                "records, so its config, history and state cannot be verified and kdistill refuses to "
                "resume from it. Start the run again in a new directory, or, if you trust this file, "
                "re-save it once with `load_checkpoint(path, allow_legacy=True).save(path)`"
            )
        warnings.warn(f"loading {name!r} without verifying its metadata (format version 1, no integrity "
                      "record; allow_legacy=True)", stacklevel=2)
        verify_legacy_checksums(path, arrays, meta, CheckpointError, required=True)
    else:
        verify_checksums(path, arrays, meta, CheckpointError, what="checkpoint",
                         legacy_hint="start the run again in a new directory")
    _validate(name, arrays, meta)
    try:
        rng_state = decode_rng_state(meta["rng_state"])
        np.random.Generator(np.random.PCG64()).bit_generator.state = rng_state
    except Exception as exc:  # numpy raises several types for a malformed state
        raise CheckpointError(f"{name!r} has an invalid random generator state (field rng_state): {exc}") from exc
    return Checkpoint(
        step=meta["step"],
        config=meta["config"],
        trainer_state={k[8:]: v for k, v in arrays.items() if k.startswith("trainer/")},
        labels=arrays["labels"],
        class_ids=arrays["class_ids"],
        rng_state=rng_state,
        history=meta["history"],
        guard=meta["guard"],
        data_fingerprint=meta["data_fingerprint"],
        elapsed_seconds=float(meta.get("elapsed_seconds", 0.0)),
        version=str(meta.get("kdistill_version", "")),
        best={k[5:]: v for k, v in arrays.items() if k.startswith("best/")},
        best_step=meta.get("best_step"),
        best_acc=meta.get("best_acc"),
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _validate(name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Every field a resume uses, before any work (after the integrity check, so a
    consistent but malformed file still fails here).

    Raises:
        CheckpointError: naming the first malformed field or entry.
    """
    missing = object()

    def bad(field: str, expected: str, value: Any = None, show: bool = True) -> CheckpointError:
        got = f", got {value!r}" if show and len(repr(value)) <= 80 else f", got a {type(value).__name__}"
        got = ", but it is missing" if value is missing else got
        return CheckpointError(f"{name!r} has a malformed field {field}: expected {expected}{got}")

    kinds = {"kdistill_version": (str, "a string"), "step": (int, "an integer >= 0"),
             "config": (dict, "a JSON object"), "rng_state": (dict, "a JSON object"),
             "history": (dict, "a JSON object"), "guard": (dict, "a JSON object"),
             "data_fingerprint": (str, "a string")}
    for field, (kind, expected) in kinds.items():
        if field not in meta:
            raise CheckpointError(f"{name!r} metadata lacks the field {field}")
        if not isinstance(meta[field], kind) or isinstance(meta[field], bool):
            raise bad(field, expected, meta[field])
    step = meta["step"]
    if step < 0:
        raise bad("step", "an integer >= 0", step)
    from kdistill.core.config import DistillConfig

    try:
        DistillConfig.from_dict(meta["config"])
    except KdistillError as exc:
        raise CheckpointError(f"{name!r} has a malformed field config: {exc}") from exc
    hist = meta["history"]
    for key in HISTORY_KEYS:
        if not isinstance(hist.get(key), list):
            raise bad(f"history.{key}", "a list", hist.get(key, missing))
    for group in (("step", "loss"), ("eval_step", "eval_acc", "eval_seconds")):
        lengths = {k: len(hist[k]) for k in group}
        if len(set(lengths.values())) > 1:
            raise CheckpointError(f"{name!r} has a malformed field history: lists of different lengths {lengths}")
    guard = meta["guard"]
    for key in ("ridge", "lr"):
        if not (_is_finite(guard.get(key)) and guard[key] > 0):
            raise bad(f"guard.{key}", "a finite number > 0", guard.get(key, missing))
    if not (_is_int(guard.get("retries")) and guard["retries"] >= 0):
        raise bad("guard.retries", "an integer >= 0", guard.get("retries", missing))
    if not isinstance(guard.get("events", []), list):
        raise bad("guard.events", "a list", guard.get("events"))
    elapsed = meta.get("elapsed_seconds", 0.0)
    if not (_is_finite(elapsed) and elapsed >= 0):
        raise bad("elapsed_seconds", "a finite number >= 0", elapsed)
    best_step, best_acc = meta.get("best_step"), meta.get("best_acc")
    if best_step is not None and not (_is_int(best_step) and 0 <= best_step <= step):
        raise bad("best_step", f"null or an integer in 0..{step}", best_step)
    if best_acc is not None and not (_is_finite(best_acc) and 0 <= best_acc <= 1):
        raise bad("best_acc", "null or an accuracy in [0, 1]", best_acc)
    if (best_step is None) != (best_acc is None):
        raise CheckpointError(f"{name!r} has a malformed field best_step/best_acc: both or neither must be set")
    if best_step is not None and "best/x_s" not in arrays:
        raise CheckpointError(f"{name!r} has best_step {best_step} but lacks the entry best/x_s")

    labels, class_ids = arrays["labels"], arrays["class_ids"]
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.floating):
        raise CheckpointError(f"{name!r}: entry labels must be floats [n_s, C], got {labels.dtype} {labels.shape}")
    if class_ids.shape != labels.shape[:1] or not np.issubdtype(class_ids.dtype, np.integer):
        raise CheckpointError(f"{name!r}: entry class_ids must be integers [{len(labels)}], got "
                              f"{class_ids.dtype} {class_ids.shape}")
    if class_ids.size and (int(class_ids.min()) < 0 or int(class_ids.max()) >= labels.shape[1]):
        raise CheckpointError(f"{name!r}: class_ids must lie in 0..{labels.shape[1] - 1}, found "
                              f"{int(class_ids.min())}..{int(class_ids.max())}")
    unknown = sorted(k for k in arrays if k not in ("labels", "class_ids") and not k.startswith(("trainer/", "best/")))
    if unknown:
        raise CheckpointError(f"{name!r} has unknown entries {', '.join(unknown)}")
    for prefix in ("trainer/params/", "best/"):
        if prefix == "best/" and best_step is None:
            continue
        x_s, y_s = arrays.get(f"{prefix}x_s"), arrays.get(f"{prefix}y_s")
        if x_s is None:
            raise CheckpointError(f"{name!r} lacks the entry {prefix}x_s (the support images)")
        if x_s.ndim < 2 or len(x_s) != len(labels) or not np.issubdtype(x_s.dtype, np.floating):
            raise CheckpointError(f"{name!r}: entry {prefix}x_s must be floats [{len(labels)}, ...], got "
                                  f"{x_s.dtype} {x_s.shape}")
        if y_s is not None and (y_s.shape != labels.shape or not np.issubdtype(y_s.dtype, np.floating)):
            raise CheckpointError(f"{name!r}: entry {prefix}y_s must be floats {labels.shape}, got "
                                  f"{y_s.dtype} {y_s.shape}")


def encode_rng_state(state: dict[str, Any]) -> dict[str, Any]:
    """``bit_generator.state`` -> JSON-safe dict: every int becomes a decimal string."""
    if isinstance(state, dict):
        return {k: encode_rng_state(v) for k, v in state.items()}
    if isinstance(state, (int, np.integer)) and not isinstance(state, bool):
        return str(int(state))
    return state


def decode_rng_state(obj: Any, key: str = "") -> Any:
    """Inverse of :func:`encode_rng_state` (decimal strings back to ints, except the
    ``bit_generator`` name)."""
    if isinstance(obj, dict):
        return {k: decode_rng_state(v, k) for k, v in obj.items()}
    if isinstance(obj, str) and key != "bit_generator" and re.fullmatch(r"-?\d+", obj):
        return int(obj)
    return obj


def data_fingerprint(x_train: np.ndarray, y_train: np.ndarray) -> str:
    """BLAKE2b (hex) of the prepared training images and labels (dtype, shape, bytes).

    Resume compares it, so a run never continues on different data.
    """
    h = hashlib.blake2b(digest_size=16)
    for a in (x_train, y_train):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.data if a.size else b"")
    return h.hexdigest()


def config_differences(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Fields (other than :data:`RESUME_MAY_CHANGE`) whose values differ, one line each.

    ``steps`` may grow (extending a run, see :func:`extension_problem`): a larger
    requested ``steps`` is not a difference; a smaller one is.
    Both dicts are normalized through ``DistillConfig`` first, so fields added to the
    config after the checkpoint was written compare at their defaults.
    """
    from kdistill.core.config import DistillConfig

    a = DistillConfig.from_dict(stored).to_dict()
    b = DistillConfig.from_dict(requested).to_dict()
    keys = [k for k in dict.fromkeys([*a, *b]) if k not in RESUME_MAY_CHANGE]
    diffs = [f"{k}: checkpoint has {a.get(k)!r}, requested {b.get(k)!r}" for k in keys
             if a.get(k) != b.get(k) and not (k == "steps" and b["steps"] > a["steps"])]
    if any(line.startswith("steps:") for line in diffs):
        diffs = [line + " (steps may only grow: a run is extended, never shortened)" if line.startswith("steps:")
                 else line for line in diffs]
    return diffs


def extension_problem(stored: dict[str, Any], requested: dict[str, Any]) -> str | None:
    """Why a run of config ``stored`` cannot be extended to ``requested["steps"]`` steps
    (None when it can, or when ``steps`` did not grow).

    Extending continues from the checkpoint, so the result equals an uninterrupted run
    of the larger ``steps`` only if no earlier step depended on the total: a
    learning-rate schedule other than a constant one (``cosine`` decays over ``steps``)
    cannot be extended.
    """
    from kdistill.core.config import DistillConfig
    from kdistill.core.registry import get_registry

    a, b = DistillConfig.from_dict(stored), DistillConfig.from_dict(requested)
    if b.steps <= a.steps:
        return None
    schedule = get_registry().get("schedules", b.schedule.name).factory
    if not getattr(schedule, "constant", False):
        return (f"steps: checkpoint has {a.steps!r}, requested {b.steps!r}: the run's learning-rate schedule "
                f"{b.schedule.name!r} depends on the total number of steps, so its first {a.steps} steps would "
                f"differ in a {b.steps}-step run; only runs with a constant schedule can be extended. Start a "
                f"new run with --steps {b.steps} instead")
    return None


def open_for_resume(run_dir: str | os.PathLike, config_dict: dict[str, Any], fingerprint: str) -> Checkpoint:
    """Load ``run_dir``'s checkpoint and check it belongs to this run.

    Raises:
        CheckpointError: no (readable) checkpoint; the config differs (the message lists
            every differing field); or the training data differs.
    """
    ckpt = read_checkpoint(run_dir)
    check_same_config(ckpt, config_dict, run_dir)
    if ckpt.data_fingerprint != fingerprint:
        raise CheckpointError(
            f"refusing to resume {str(run_dir)!r}: the training data differs from the data "
            "the checkpoint was written with (same config, different files or arrays)"
        )
    return ckpt


def check_same_config(ckpt: Checkpoint, config_dict: dict[str, Any], run_dir: str | os.PathLike) -> None:
    """Refuse to resume with a config other than the checkpoint's; a larger ``steps``
    extends the run (constant learning-rate schedules only, see :func:`extension_problem`).

    Raises:
        CheckpointError: listing every differing field (stored vs requested value), or
            why the run cannot be extended.
    """
    try:
        diffs = config_differences(ckpt.config, config_dict)
        problem = None if diffs else extension_problem(ckpt.config, config_dict)
    except Exception as exc:  # a stored config this version cannot parse
        raise CheckpointError(
            f"the checkpoint in {str(run_dir)!r} holds a config this kdistill cannot read: {exc}"
        ) from exc
    if diffs:
        raise CheckpointError(
            f"refusing to resume {str(run_dir)!r}: the requested config differs from the "
            f"checkpoint's in {len(diffs)} field(s): " + "; ".join(diffs)
            + ". Resume with no config flags (or the same ones; a larger --steps extends the run) to "
            "continue this run, or start a new run in another directory"
        )
    if problem:
        raise CheckpointError(f"refusing to extend {str(run_dir)!r}: {problem}")


def ensure_no_checkpoint(run_dir: str | os.PathLike) -> None:
    """Refuse to start a fresh run over an existing checkpoint.

    Raises:
        CheckpointError: ``run_dir`` already holds a checkpoint (the message says how
            to resume it).
    """
    path = checkpoint_path(run_dir)
    if path.exists():
        raise CheckpointError(
            f"{str(run_dir)!r} already holds a checkpoint ({FILENAME}) of a previous run; "
            f"continue it with `kdistill distill --resume {run_dir}` (Python: "
            "resume=True), or choose another run directory"
        )


def read_checkpoint(run_dir: str | os.PathLike) -> Checkpoint:
    """The checkpoint of ``run_dir`` (its ``.config`` is what resuming without flags uses).

    Raises:
        CheckpointError: no readable checkpoint.
    """
    path = checkpoint_path(run_dir)
    if not path.is_file() and (Path(run_dir) / "distilled.npz").is_file():
        raise CheckpointError(
            f"cannot resume or extend {str(run_dir)!r}: the run finished and its checkpoint was removed "
            "(checkpoint_every = 0 keeps none after the results are written). To extend runs later, "
            "distill with --checkpoint-every N (then the last checkpoint stays); here, start a new run"
        )
    if not path.is_file():
        raise CheckpointError(
            f"cannot resume: no checkpoint {str(path)!r} (a run writes one every "
            "checkpoint_every steps and when interrupted by SIGINT/SIGTERM; a finished run keeps its last "
            "one only with checkpoint_every > 0: distill with --checkpoint-every N to extend it later)"
        )
    return load_checkpoint(path)
