"""Data fingerprints: is the data an artifact is evaluated on the data it was distilled from?

At distillation, :func:`dataset_fingerprint` of the raw dataset (before preprocessing)
is stored in the artifact's ``dataset`` info (``dataset["fingerprint"]``). Evaluation
(KRR, finite networks, baselines) fingerprints the data it loaded and
:func:`data_differences` lists what differs, so that, for example, inverted images or
swapped train/test files are refused instead of scored.

A split's fingerprint holds its size, the per-channel mean and standard deviation of a
fixed sample of its images (to describe a difference in words) and a SHA-256 of all of
its images and labels (dtype, shape and bytes: any change of a pixel or label is seen).
Artifacts written before fingerprints existed record only the split sizes and image
shape; those are compared.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

FINGERPRINT_VERSION = 1
#: Images per block while hashing (bounds the temporary memory).
_CHUNK = 4096
#: Images of the fixed, evenly spaced sample whose channel statistics are recorded.
STATS_SAMPLE = 2048


def split_fingerprint(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Fingerprint of one split: raw images ``x [n, H, W, C]`` and labels ``y [n]``.

    Returns:
        ``{"n", "mean" [C], "std" [C], "sha256"}``; mean/std are over a fixed evenly
        spaced sample of at most :data:`STATS_SAMPLE` images, in raw pixel units.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    h = hashlib.sha256()
    for a in (x, y.astype(np.int64)):
        h.update(f"{a.dtype.str}{a.shape}".encode())
    for start in range(0, len(x), _CHUNK):
        h.update(np.ascontiguousarray(x[start:start + _CHUNK]).tobytes())
    h.update(np.ascontiguousarray(y, np.int64).tobytes())
    if len(x):
        idx = np.unique(np.linspace(0, len(x) - 1, min(len(x), STATS_SAMPLE)).round().astype(np.int64))
        pix = x[idx].reshape(-1, x.shape[-1]).astype(np.float64)
        mean, std = pix.mean(axis=0), pix.std(axis=0)
    else:
        mean = std = np.zeros(x.shape[-1] if x.ndim else 0)
    return {"n": int(len(x)), "mean": [round(float(v), 4) for v in mean],
            "std": [round(float(v), 4) for v in std], "sha256": h.hexdigest()}


def dataset_fingerprint(ds) -> dict[str, Any]:
    """Fingerprint of a raw :class:`kdistill.datasets.Dataset` (train and test splits).

    Returns:
        ``{"version": 1, "train": split, "test": split}`` (see :func:`split_fingerprint`),
        JSON-able, stored by artifacts in ``dataset["fingerprint"]``.
    """
    return {"version": FINGERPRINT_VERSION, "train": split_fingerprint(ds.x_train, ds.y_train),
            "test": split_fingerprint(ds.x_test, ds.y_test)}


def _channels(values) -> str:
    return ", ".join(f"{float(v):.1f}" for v in values)


def data_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between the dataset info an artifact recorded and the data loaded now.

    Args:
        recorded: the artifact's ``dataset`` info; current: ``PreparedData.info`` of
            the data loaded for evaluation. Both may hold ``n_train``, ``n_test``,
            ``image_shape`` and ``fingerprint``; only fields present in both are compared
            (an artifact from before fingerprints is checked on sizes and shape).
    Returns:
        One sentence per difference (empty: the data match as far as recorded).
    """
    diffs: list[str] = []
    if "image_shape" in recorded and "image_shape" in current and list(recorded["image_shape"]) != list(
            current["image_shape"]):
        diffs.append(f"image shape {tuple(current['image_shape'])} now, {tuple(recorded['image_shape'])} "
                     "when distilled")
    fp_old, fp_new = recorded.get("fingerprint"), current.get("fingerprint")
    usable = (isinstance(fp_old, dict) and isinstance(fp_new, dict)
              and fp_old.get("version") == fp_new.get("version") == FINGERPRINT_VERSION)
    for split in ("train", "test"):
        key = f"n_{split}"
        n_old, n_new = recorded.get(key), current.get(key)
        if usable and isinstance(fp_old.get(split), dict):
            n_old = fp_old[split].get("n", n_old)
        if n_old is not None and n_new is not None and n_old != n_new:
            diffs.append(f"{split} split: {n_new} images now, {n_old} when distilled")
            continue
        if not usable or not isinstance(fp_old.get(split), dict):
            continue
        old, new = fp_old[split], fp_new[split]
        if old.get("sha256") == new["sha256"]:
            continue
        m_old, s_old = old.get("mean"), old.get("std")
        if m_old is not None and s_old is not None and (
                len(m_old) != len(new["mean"])
                or not np.allclose(m_old, new["mean"], rtol=1e-3, atol=1e-3)
                or not np.allclose(s_old, new["std"], rtol=1e-3, atol=1e-3)):
            diffs.append(f"{split} split: per-channel pixel mean {_channels(new['mean'])} and std "
                         f"{_channels(new['std'])} now, {_channels(m_old)} and {_channels(s_old)} when "
                         "distilled (e.g. inverted, rescaled or other images)")
        else:
            diffs.append(f"{split} split: same size and pixel statistics, but different images or labels "
                         f"(SHA-256 {new['sha256'][:12]}… now, {str(old.get('sha256'))[:12]}… when distilled)")
    return diffs
