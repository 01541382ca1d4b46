"""Export a distilled set for PyTorch and Hugging Face workflows (safetensors).

Layout of the ``.safetensors`` file written by :func:`export_safetensors`:

- ``images`` float32, ``[n, C, H, W]`` (NCHW, the PyTorch convention; ``layout="nhwc"``
  keeps kdistill's ``[n, H, W, C]``), in the artifact's preprocessed space, or on the
  0..255 pixel scale with ``pixel_space=True`` (the transform's inverse, see
  :meth:`kdistill.io.artifact.DistilledSet.to_torch_dataset`);
- ``labels`` float32 ``[n, num_classes]``; ``class_ids`` int64 ``[n]``;
- ``preprocess/<name>`` the transform's state arrays (e.g. ``mean``, ``std``; for
  ``zca`` ``eigvecs`` ``[d, d]`` float32 and the rest float64), so the same transform can
  be applied to new images: ``kdistill.datasets.preprocess.preprocessor_from_state``;
- metadata (strings only, as safetensors requires): ``format``
  (``kdistill-distilled-set``), ``kdistill_version``, ``layout`` (``NCHW``/``NHWC``),
  ``space`` (``preprocessed``/``pixels``), ``preprocess`` (the transform's name) and
  JSON strings ``dataset``, ``config``, ``metrics``.

Read it back with ``safetensors.numpy.load_file`` / ``safetensors.torch.load_file`` and
``safetensors.safe_open(path, "np").metadata()``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from kdistill.errors import ArtifactError, ConfigError
from kdistill.io.artifact import FORMAT
from kdistill.version import __version__


def safetensors_payload(artifact, *, layout: str = "nchw", pixel_space: bool = False) -> tuple[dict, dict]:
    """``(tensors, metadata)`` as described in the module docstring.

    Raises:
        ConfigError: unknown layout.
    """
    if layout not in ("nchw", "nhwc"):
        raise ConfigError(f"layout must be 'nchw' or 'nhwc', got {layout!r}")
    images = np.asarray(artifact.transform.inverse(artifact.images) if pixel_space else artifact.images, np.float32)
    if layout == "nchw":
        images = images.transpose(0, 3, 1, 2)
    tensors = {"images": np.ascontiguousarray(images),
               "labels": np.ascontiguousarray(artifact.labels, np.float32),
               "class_ids": np.ascontiguousarray(artifact.class_ids, np.int64)}
    tensors.update({f"preprocess/{k}": np.ascontiguousarray(v) for k, v in artifact.transform.state().items()})

    metadata = {"format": FORMAT, "kdistill_version": artifact.version or __version__, "layout": layout.upper(),
                "space": "pixels" if pixel_space else "preprocessed", "preprocess": artifact.transform.name,
                "dataset": json.dumps(artifact.dataset), "config": json.dumps(artifact.config),
                "metrics": json.dumps(artifact.metrics)}
    return tensors, metadata


def export_safetensors(artifact, path: str | os.PathLike, *, layout: str = "nchw", pixel_space: bool = False) -> Path:
    """Write ``artifact`` as a ``.safetensors`` file atomically; returns the path.

    Raises:
        ImportError: ``safetensors`` is not installed (``pip install 'kdistill[interop]'``).
        ConfigError: unknown layout. ArtifactError: the write failed (the previous file,
            if any, is unchanged).
    """
    try:
        from safetensors.numpy import save
    except ImportError as exc:
        raise ImportError("exporting to safetensors needs the safetensors package: "
                          "pip install 'kdistill[interop]'") from exc
    from kdistill.io.safeio import atomic_write

    tensors, metadata = safetensors_payload(artifact, layout=layout, pixel_space=pixel_space)
    data = save(tensors, metadata=metadata)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, lambda fh: fh.write(data))
    except OSError as exc:
        raise ArtifactError(f"could not write {str(path)!r}: {exc.strerror or exc}; the file was not changed") from exc
