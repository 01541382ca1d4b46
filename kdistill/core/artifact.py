"""Distilled-set artifact: one ``.npz`` file, no pickle, versioned.

Layout (all entries plain numpy arrays, loaded with ``allow_pickle=False``):

- ``images`` ``[n_s, H, W, C]`` float32 — support set in preprocessed space;
- ``labels`` ``[n_s, C]`` float32 — support labels (learned or centered one-hot);
- ``class_ids`` ``[n_s]`` int64 — class each support example was initialized from;
- ``loss/<name>`` — the loss's trained parameters (e.g. Platt ``log_tau``);
- ``preprocess/<name>`` — preprocessing state (e.g. channel ``mean``, ``std``);
- ``meta`` — a 0-d unicode array holding JSON: ``format``, ``format_version``,
  ``kdistill_version``, ``preprocess`` (name), ``config``, ``metrics``, ``history``,
  ``seed``, ``dataset`` info, and ``checksums`` (SHA-256 of every array entry).

Compatibility: every later kdistill reads every earlier ``format_version`` (files
without ``checksums``, written before they were added, load unchecked); a file of a
newer format version is refused with a message to upgrade. Fields are only added,
never renamed or removed, within a format version.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from kdistill.core.errors import ArtifactError
from kdistill.core.preprocess import preprocessor_from_state
from kdistill.core.safeio import read_npz, verify_checksums, write_npz

FORMAT = "kdistill-distilled-set"
FORMAT_VERSION = 1


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
        from kdistill import __version__

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


def load(path: str | os.PathLike) -> DistilledSet:
    """Load an artifact written by :meth:`DistilledSet.save`. Never unpickles.

    Returns:
        The :class:`DistilledSet` (images ``[n_s, H, W, C]``, labels ``[n_s, C]``,
        class_ids ``[n_s]``, the fitted transform, config, metrics, history).
    Raises:
        ArtifactError: missing, truncated or malformed file, object (pickled) arrays,
            inconsistent shapes or dtypes, an array whose checksum does not match
            (tampered or corrupted), or a newer format version.
    """
    path = Path(path)
    arrays, meta = read_npz(
        path, fmt=FORMAT, max_version=FORMAT_VERSION, required=("images", "labels", "class_ids", "meta"),
        error=ArtifactError, what="artifact",
    )
    if not isinstance(meta.get("preprocess"), str):
        raise ArtifactError(f"{str(path)!r} metadata lacks the preprocessing name")
    kinds = {"config": dict, "metrics": dict, "history": dict, "dataset": dict, "seed": int}
    bad = [k for k, t in kinds.items() if k in meta and (not isinstance(meta[k], t) or isinstance(meta[k], bool))]
    if bad:
        raise ArtifactError(f"{str(path)!r} has malformed metadata fields: {', '.join(bad)}")
    images, labels, class_ids = arrays["images"], arrays["labels"], arrays["class_ids"]
    if (
        images.ndim != 4 or labels.ndim != 2 or class_ids.ndim != 1
        or not (len(images) == len(labels) == len(class_ids))
        or not np.issubdtype(images.dtype, np.floating) or not np.issubdtype(labels.dtype, np.floating)
        or not np.issubdtype(class_ids.dtype, np.integer)
    ):
        raise ArtifactError(
            f"{str(path)!r} has inconsistent shapes or dtypes: images {images.shape} {images.dtype}, labels "
            f"{labels.shape} {labels.dtype}, class_ids {class_ids.shape} {class_ids.dtype}"
        )
    verify_checksums(path, arrays, meta, ArtifactError, required=False)
    prep_state = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("preprocess/")}
    return DistilledSet(
        images=images,
        labels=labels,
        class_ids=class_ids,
        transform=preprocessor_from_state(meta["preprocess"], prep_state),
        config=meta.get("config", {}),
        metrics=meta.get("metrics", {}),
        history=meta.get("history", {}),
        loss_params={k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("loss/")},
        seed=int(meta.get("seed", 0)),
        version=str(meta.get("kdistill_version", "")),
        dataset=meta.get("dataset", {}),
    )
