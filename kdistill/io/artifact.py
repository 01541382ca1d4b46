"""Distilled-set artifact: one ``.npz`` file, no pickle, versioned.

Layout (all entries plain numpy arrays, loaded with ``allow_pickle=False``):

- ``images`` ``[n_s, H, W, C]`` float32 — support set in preprocessed space;
- ``labels`` ``[n_s, C]`` float32 — support labels (learned or centered one-hot);
- ``class_ids`` ``[n_s]`` int64 — class each support example was initialized from;
- ``loss/<name>`` — the loss's trained parameters (e.g. Platt ``log_tau``);
- ``preprocess/<name>`` — preprocessing state (e.g. channel ``mean``, ``std``);
- ``meta`` — a 0-d unicode array holding JSON: ``format``, ``format_version``,
  ``kdistill_version``, ``preprocess`` (name), ``config``, ``metrics``, ``history``,
  ``seed``, ``dataset`` info, and ``integrity``: the record of
  :func:`kdistill.io.safeio.integrity_record`, one SHA-256 digest over every other
  metadata field and every array entry (with a per-field and per-entry breakdown).

Integrity: :func:`load` refuses a file without the record or whose content differs
from it (naming the differing fields and entries), then validates every field's
type and the arrays' shapes, so a malformed file fails at load, before any work.

Compatibility: format version 2 added the integrity record. Version-1 files (whose
metadata was never covered) are refused with a message saying so; a caller who
trusts such a file can load it once with ``load(path, allow_legacy=True)`` (a
warning is issued; per-array checksums are checked where present) and ``save`` it
again to get a verified file. A file of a newer format version is refused with a
message to upgrade. Fields are only added, never renamed or removed, within a
format version.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from kdistill.errors import ArtifactError
from kdistill.datasets.preprocess import preprocessor_from_state
from kdistill.io.safeio import read_npz, verify_checksums, verify_legacy_checksums, write_npz

FORMAT = "kdistill-distilled-set"
FORMAT_VERSION = 2
#: The last format version without an integrity record over the metadata.
LEGACY_VERSION = 1
#: Metadata fields every artifact of the current format holds, and their JSON types.
META_FIELDS = {"format": str, "format_version": int, "kdistill_version": str, "preprocess": str,
               "config": dict, "metrics": dict, "history": dict, "seed": int, "dataset": dict}


@attrs.define(kw_only=True)
class DistilledSet:
    """A distilled support set with everything needed to use and reproduce it.

    Attributes:
        images: ``[n_s, H, W, C]`` float32 in preprocessed space.
        labels: ``[n_s, C]`` float32.
        class_ids: ``[n_s]`` int64.
        transform: the fitted preprocessor (``.transform(raw)``, ``.inverse(x)``).
        config: the full run config as a dict (see ``DistillConfig.to_dict``).
        metrics: final metrics (accuracies, seconds, ...).
        history: per-step records (``step``, ``loss``, ``eval_step``, ``eval_acc``,
            ``eval_seconds``).
        loss_params: trained loss parameters (numpy).
        seed: the run's seed; version: the kdistill version that wrote it.
        dataset: dataset info (``name``, ``num_classes``, ``class_names``, shape).
    """

    images: np.ndarray
    labels: np.ndarray
    class_ids: np.ndarray
    transform: Any
    config: dict[str, Any]
    metrics: dict[str, Any] = attrs.field(factory=dict)
    history: dict[str, list] = attrs.field(factory=dict)
    loss_params: dict[str, np.ndarray] = attrs.field(factory=dict)
    seed: int = 0
    version: str = ""
    dataset: dict[str, Any] = attrs.field(factory=dict)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the artifact atomically (temp file, fsync, rename); returns the path.

        Raises:
            ArtifactError: the write failed (e.g. disk full); a previous file at
                ``path`` is unchanged and no partial file is left.
        """
        from kdistill.version import __version__

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kdistill_version": self.version or __version__,
            "preprocess": self.transform.name,
            "config": self.config,
            "metrics": self.metrics,
            "history": self.history,
            "seed": self.seed,
            "dataset": self.dataset,
        }
        arrays = {
            "images": np.asarray(self.images, np.float32),
            "labels": np.asarray(self.labels, np.float32),
            "class_ids": np.asarray(self.class_ids, np.int64),
        }
        arrays.update({f"loss/{k}": np.asarray(v) for k, v in self.loss_params.items()})
        arrays.update({f"preprocess/{k}": np.asarray(v) for k, v in self.transform.state().items()})
        try:
            return write_npz(path, arrays, meta)
        except OSError as exc:
            raise ArtifactError(
                f"could not write artifact {str(path)!r}: {exc.strerror or exc} (errno {exc.errno}); "
                "the file was not changed"
            ) from exc

    def to_torch_dataset(self, *, pixel_space: bool = False, label_mode: str = "soft"):
        """The set as a ``torch.utils.data.TensorDataset`` of ``(image, label)`` pairs.

        Args:
            pixel_space: False (default): images in the artifact's preprocessed space (what
                kdistill's kernels and ``--nn`` see); True: mapped back to the 0..255 pixel
                scale with ``transform.inverse`` (for display or another pipeline's own
                preprocessing; for ``zca`` the layer norm is not invertible, see
                :class:`kdistill.datasets.preprocess.RegularizedZCA`).
            label_mode: ``soft``: the stored labels ``[n, num_classes]`` float32 (learned
                or centered one-hot); ``class``: ``class_ids`` ``[n]`` int64.
        Returns:
            ``TensorDataset(images, labels)`` with images ``[n, C, H, W]`` (NCHW) float32
            (CPU tensors copied from the arrays).
        Raises:
            ImportError: PyTorch is not installed (``pip install 'kdistill[torch]'``).
            ConfigError: unknown ``label_mode``.
        """
        from kdistill.errors import ConfigError

        if label_mode not in ("soft", "class"):
            raise ConfigError(f"label_mode must be 'soft' or 'class', got {label_mode!r}")
        try:
            import torch
            from torch.utils.data import TensorDataset
        except ImportError as exc:
            raise ImportError("to_torch_dataset needs PyTorch: pip install 'kdistill[torch]'") from exc
        images = self.transform.inverse(self.images) if pixel_space else self.images
        x = torch.from_numpy(np.ascontiguousarray(np.asarray(images, np.float32).transpose(0, 3, 1, 2)))
        y = (torch.from_numpy(np.array(self.labels, np.float32)) if label_mode == "soft"
             else torch.from_numpy(np.array(self.class_ids, np.int64)))
        return TensorDataset(x, y)


def load(path: str | os.PathLike, *, allow_legacy: bool = False) -> DistilledSet:
    """Load an artifact written by :meth:`DistilledSet.save`. Never unpickles.

    Args:
        allow_legacy: load a format-version-1 file (written before integrity records;
            its metadata cannot be verified) with a warning instead of refusing it. Use
            it once to re-save a file you trust; a file can never turn this on itself.
    Returns:
        The :class:`DistilledSet` (images ``[n_s, H, W, C]`` float, labels ``[n_s, C]``
        float, class_ids ``[n_s]`` int, the fitted transform, config, metrics, history).
    Raises:
        ArtifactError: missing, truncated or malformed file; object (pickled) arrays; an
            archive member larger than its stored bytes justify; a newer format version;
            a version-1 file without ``allow_legacy``; no integrity record, or metadata
            or arrays that differ from it (tampered or corrupted; the message names
            them); or a field of the wrong type or shape (the message names the field).
    """
    path = Path(path)
    name = str(path)
    arrays, meta = read_npz(
        path, fmt=FORMAT, max_version=FORMAT_VERSION, required=("images", "labels", "class_ids", "meta"),
        error=ArtifactError, what="artifact",
    )
    legacy = meta["format_version"] <= LEGACY_VERSION
    if legacy and not allow_legacy:
        raise ArtifactError(
            f"{name!r} is a format-version-{meta['format_version']} artifact: it predates integrity records, "
            "so its config, metrics and history cannot be verified and kdistill refuses it. Re-run the "
            "distillation, or, if you trust this file, re-save it once with "
            "`kdistill.load(path, allow_legacy=True).save(new_path)`"
        )
    if legacy:
        warnings.warn(f"loading {name!r} without verifying its metadata (format version 1, no integrity "
                      "record; allow_legacy=True); re-save it to protect it", stacklevel=2)
        verify_legacy_checksums(path, arrays, meta, ArtifactError, required=False)
    else:
        verify_checksums(path, arrays, meta, ArtifactError, what="artifact",
                         legacy_hint="re-run the distillation (or re-save a copy you trust)")
    _validate(name, arrays, meta, legacy)
    prep_state = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("preprocess/")}
    return DistilledSet(
        images=arrays["images"],
        labels=arrays["labels"],
        class_ids=arrays["class_ids"],
        transform=preprocessor_from_state(meta["preprocess"], prep_state),
        config=meta.get("config", {}),
        metrics=meta.get("metrics", {}),
        history=meta.get("history", {}),
        loss_params={k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("loss/")},
        seed=int(meta.get("seed", 0)),
        version=str(meta.get("kdistill_version", "")),
        dataset=meta.get("dataset", {}),
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _validate(name: str, arrays: dict[str, np.ndarray], meta: dict[str, Any], legacy: bool) -> None:
    """Every metadata field's type and the arrays' shapes (after the integrity check,
    so a consistent but malformed file still fails here, naming the field).

    Raises:
        ArtifactError: naming the first malformed field or entry.
    """
    def bad(field: str, expected: str, value: Any = None, show: bool = True) -> ArtifactError:
        got = f", got {value!r}" if show and len(repr(value)) <= 80 else f", got a {type(value).__name__}"
        return ArtifactError(f"{name!r} has a malformed metadata field {field}: expected {expected}{got}")

    names = {str: "a string", int: "an integer", dict: "a JSON object"}
    for field, kind in META_FIELDS.items():
        if field not in meta:
            if legacy and field != "preprocess":
                continue
            raise ArtifactError(f"{name!r} metadata lacks the field {field}")
        value = meta[field]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise bad(field, names[kind], value)
    if not legacy:
        unknown = sorted(set(meta) - set(META_FIELDS) - {"integrity"})
        if unknown:
            raise ArtifactError(f"{name!r} has unknown metadata fields {', '.join(unknown)}")
    for key, value in meta.get("history", {}).items():
        if not isinstance(value, list):
            raise bad(f"history.{key}", "a list", value)
    hist = meta.get("history", {})
    for group in (("step", "loss"), ("eval_step", "eval_acc", "eval_seconds")):
        lengths = {k: len(hist[k]) for k in group if k in hist}
        if len(set(lengths.values())) > 1:
            raise ArtifactError(f"{name!r} has a malformed metadata field history: lists of different "
                                f"lengths {lengths}")
    for key, value in meta.get("metrics", {}).items():
        if key.endswith("_acc") and value is not None and not (
                _is_number(value) and math.isfinite(value) and 0 <= value <= 1):
            raise bad(f"metrics.{key}", "an accuracy in [0, 1] or null", value)
    dataset = meta.get("dataset", {})
    num_classes = dataset.get("num_classes")
    if num_classes is not None and not (_is_int(num_classes) and num_classes >= 1):
        raise bad("dataset.num_classes", "an integer >= 1", num_classes)
    if "name" in dataset and not isinstance(dataset["name"], str):
        raise bad("dataset.name", "a string", dataset["name"])
    names_ = dataset.get("class_names")
    if names_ is not None and not (isinstance(names_, list) and all(isinstance(n, str) for n in names_)
                                   and (num_classes is None or len(names_) == num_classes)):
        raise bad("dataset.class_names", f"a list of {num_classes or 'the'} class names", names_, show=False)

    images, labels, class_ids = arrays["images"], arrays["labels"], arrays["class_ids"]
    if (
        images.ndim != 4 or labels.ndim != 2 or class_ids.ndim != 1
        or not (len(images) == len(labels) == len(class_ids))
        or not np.issubdtype(images.dtype, np.floating) or not np.issubdtype(labels.dtype, np.floating)
        or not np.issubdtype(class_ids.dtype, np.integer)
    ):
        raise ArtifactError(
            f"{name!r} has inconsistent shapes or dtypes: images {images.shape} {images.dtype}, labels "
            f"{labels.shape} {labels.dtype}, class_ids {class_ids.shape} {class_ids.dtype}"
        )
    if num_classes is not None and not legacy:
        if labels.shape[1] != num_classes:
            raise ArtifactError(f"{name!r}: labels have {labels.shape[1]} columns but dataset.num_classes is "
                                f"{num_classes}")
        if class_ids.size and (int(class_ids.min()) < 0 or int(class_ids.max()) >= num_classes):
            raise ArtifactError(f"{name!r}: class_ids must lie in 0..{num_classes - 1}, found "
                                f"{int(class_ids.min())}..{int(class_ids.max())}")
    extra = sorted(k for k in arrays if k not in ("images", "labels", "class_ids")
                   and not k.startswith(("loss/", "preprocess/")))
    if extra and not legacy:
        raise ArtifactError(f"{name!r} has unknown entries {', '.join(extra)}")
    for k, v in arrays.items():
        if k.startswith("preprocess/") and not (np.issubdtype(v.dtype, np.floating) and np.isfinite(v).all()):
            raise ArtifactError(f"{name!r}: preprocessing entry {k} must hold finite floats, got {v.dtype}")
