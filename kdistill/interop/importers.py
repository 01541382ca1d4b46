"""Bring a distilled set made by another tool into a kdistill :class:`DistilledSet`.

:func:`import_set` reads the file (data only, see :mod:`kdistill.interop.readers`),
puts the images in NHWC order, declares the foreign tool's preprocessing, refits it on
the named dataset's training split (:class:`kdistill.interop.transforms.ForeignTransform`),
maps the images back to pixel space with its inverse and into kdistill's own
preprocessed space (:func:`kdistill.datasets.preprocess.fit_preprocessor`, fitted on the
same training split). The artifact's transform is therefore the one its images live
in, and ``kdistill evaluate`` / ``--nn`` / ``baseline`` / ``report`` treat the set as
any other. Labels are kept as stored (KIP, RFAD and RCIG all use one-hot minus
``1/C`` for MSE, learned or not); ``class_ids`` are their row-wise argmax.

Formats (:data:`FORMATS`):

``kip``
    The npz files released with "Dataset Meta-Learning from Kernel Ridge-Regression"
    (Nguyen, Chen, Lee, ICLR 2021) and "Dataset Distillation with Infinitely Wide
    Convolutional Networks" (Nguyen, Novak, Xiao, Lee, NeurIPS 2021), listed by
    google-research ``kip/dataset.ipynb``: keys ``images`` ``[n, H, W, C]`` (NHWC,
    float32) and ``labels`` ``[n, C]``. Preprocessing: per-channel standardization
    (numpy std, ddof 0) of the 0..255 images; files named ``*_zca_*`` are then layer
    normalized (unit L2 norm) and ZCA-whitened with regularization 0.1 (``*_nozca_*``
    files are not) -- taken from the released ``kip/nn_training.ipynb``. Uncertain:
    that notebook fits the ZCA on the training split less its last 5000 images; kdistill
    fits it on the whole training split.
``rfad``
    ``best.npz`` of yolky/RFAD (Loo et al., NeurIPS 2022): ``images`` ``[n, C, H, W]``
    (NCHW, float32), ``labels`` ``[n, C]``, ``jit`` (0-d, the relative ridge,
    ``K + jit * tr(K)/n * I``, the same convention as kdistill's ``ridge``; 5e-3 when
    absent), plus ``k`` and ``valid_loss`` (kept in the provenance). Preprocessing
    (RFAD ``data.py``): per-channel standardization with ``torch.std`` (ddof 1); for
    CIFAR-10/100 then uncentered ZCA with regularization 0.1 and no layer norm; for SVHN
    layer norm then ZCA; MNIST/Fashion-MNIST standardization only.
``rcig``
    yolky/RCIG's flax msgpack checkpoint (``checkpoint_<step>``; Loo et al., ICML 2023):
    ``ema_average/x_proto`` ``[n, H, W, C]`` (NHWC) and ``ema_average/y_proto``
    ``[n, C]`` (falling back to ``params/...``). Preprocessing (RCIG ``dataloader.py`` /
    ``ops.py``): images / 255, per-channel standardization with fixed published
    statistics (kdistill refits them; they agree to the published 4 digits on CIFAR-10),
    then, for RGB data, subtraction of the per-feature training mean and centered ZCA
    with regularization 0.1; MNIST/Fashion-MNIST standardization only. RCIG trains with
    horizontally flipped copies (``use_flip``) added at use time; the file holds the
    unflipped set, which is what is imported.
``npz``
    A plain npz with ``images`` (``--layout nhwc`` or ``nchw``; ``auto`` guesses from
    which axis has 1 or 3 entries) and ``labels`` (``[n]`` integer class ids, turned into
    one-hot minus ``1/C``, or ``[n, C]`` float). The images' space is declared with
    ``source_preprocess`` (default ``none``: raw pixels, 0..255 or 0..1 with
    ``pixel_scale=1``).

Choice of kdistill space (``preprocess="auto"``): ``standardize`` for a source without
whitening (exact: the imported images equal kdistill's standardization of the same
pixels), ``zca`` (kdistill's layer norm + ZCA 0.1, the convention of its ConvNet and RFAD
runs) for a whitened source. kdistill's ZCA differs from RFAD's and RCIG's (it layer
normalizes first) and from KIP's (layer norm on raw, not standardized, pixels, to unit
std rather than unit norm; centered), so a whitened foreign set is re-expressed
through its pixel-space preimage rather than stored in the foreign space: a real image
lands exactly where kdistill puts that image (exactly for RFAD/RCIG; for KIP-ZCA up to
the lost per-image mean/norm, see :mod:`kdistill.interop.transforms`), and scores are
kdistill's evaluation of the set, which can differ from the foreign tool's own numbers
for learned (non-natural) images because the layer norm is not linear.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np

from kdistill.errors import ConfigError, DataError
from kdistill.interop.readers import ForeignFormatError, flatten, read_flax_msgpack, read_npz_arrays
from kdistill.interop.transforms import SOURCE_PREPROCESS, ForeignTransform

#: Supported formats and the tool each comes from.
FORMATS = {"kip": "KIP (Nguyen et al. 2021) released npz", "rfad": "RFAD best.npz (yolky/RFAD)",
           "rcig": "RCIG flax msgpack checkpoint (yolky/RCIG)", "npz": "plain images/labels npz"}
LAYOUTS = ("auto", "nhwc", "nchw")
#: RFAD's default relative ridge when ``jit`` is absent (its eval script's default).
RFAD_DEFAULT_JIT = 5e-3


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _need(arrays: dict[str, Any], keys: tuple[str, ...], path: Path, fmt: str) -> None:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ForeignFormatError(
            f"{str(path)!r} is not a {FORMATS[fmt]}: it lacks {', '.join(missing)}; expected keys "
            f"{', '.join(keys)}; found {', '.join(sorted(arrays)) or 'none'}")


def _scalar(arrays: dict[str, Any], key: str) -> float | None:
    v = arrays.get(key)
    if v is None:
        return None
    v = np.asarray(v)
    if v.size != 1 or v.dtype.kind not in "fiu" or not np.isfinite(v).all():
        raise ForeignFormatError(f"entry {key!r} must be one finite number, got shape {v.shape} {v.dtype}")
    return float(v.reshape(()))


def read_foreign(path: str | os.PathLike, fmt: str, layout: str = "auto") -> dict[str, Any]:
    """Read ``path`` as format ``fmt``: ``{"images" [n, ...] (as stored), "labels",
    "layout" ("nhwc"/"nchw"/"auto"), "extras" {name: number}, "keys" [found]}``.

    Raises:
        ForeignFormatError: unreadable file or missing keys (naming found and expected).
        ConfigError: unknown format or layout.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown import format {fmt!r}; available: {', '.join(FORMATS)}")
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; available: {', '.join(LAYOUTS)}")
    path = Path(path)
    if fmt == "rcig":
        tree = read_flax_msgpack(path)
        flat = flatten(tree)
        for group in ("ema_average", "params"):
            if f"{group}/x_proto" in flat and f"{group}/y_proto" in flat:
                extras = {}
                lt = flat.get(f"{group}/log_temp")
                if isinstance(lt, np.ndarray) and lt.size == 1 and np.isfinite(lt).all():
                    extras["log_temp"] = float(lt.reshape(()))
                return {"images": flat[f"{group}/x_proto"], "labels": flat[f"{group}/y_proto"],
                        "layout": "nhwc", "extras": extras, "keys": sorted(flat), "group": group}
        shown = sorted(flat)
        raise ForeignFormatError(
            f"{str(path)!r} is not an RCIG checkpoint: expected ema_average/x_proto and ema_average/y_proto "
            f"(or params/x_proto, params/y_proto); found {', '.join(shown[:20]) or 'none'}"
            + (f" and {len(shown) - 20} more" if len(shown) > 20 else ""))
    arrays = read_npz_arrays(path)
    _need(arrays, ("images", "labels"), path, fmt)
    extras: dict[str, float] = {}
    if fmt == "rfad":
        for k in ("jit", "k", "valid_loss"):
            v = _scalar(arrays, k)
            if v is not None:
                extras[k] = v
        return {"images": arrays["images"], "labels": arrays["labels"], "layout": "nchw", "extras": extras,
                "keys": sorted(arrays)}
    return {"images": arrays["images"], "labels": arrays["labels"], "layout": "nhwc" if fmt == "kip" else layout,
            "extras": extras, "keys": sorted(arrays)}


def to_nhwc(images: np.ndarray, layout: str, image_shape: tuple[int, ...], where: str) -> np.ndarray:
    """``images`` in ``layout`` -> NHWC, checked against the dataset's ``(H, W, C)``.

    Raises:
        ForeignFormatError: not 4-D, not a float/int array, or a shape that fits neither
            layout (the message gives both).
    """
    if images.ndim != 4:
        raise ForeignFormatError(f"{where}: images must be 4-D [n, H, W, C] or [n, C, H, W], got shape {images.shape}")
    if images.dtype.kind not in "fiu":
        raise ForeignFormatError(f"{where}: images must be numbers, got dtype {images.dtype}")
    h, w, c = image_shape
    nhwc_ok = images.shape[1:] == (h, w, c)
    nchw_ok = images.shape[1:] == (c, h, w)
    if layout == "auto":
        if nhwc_ok and nchw_ok:
            raise ForeignFormatError(f"{where}: images of shape {images.shape} fit both NHWC and NCHW; pass --layout")
        layout = "nhwc" if nhwc_ok else "nchw"
    if layout == "nchw":
        if not nchw_ok:
            raise ForeignFormatError(f"{where}: expected NCHW images [n, {c}, {h}, {w}] for this dataset, got "
                                     f"{images.shape}" + (" (that is NHWC: pass --layout nhwc)" if nhwc_ok else ""))
        return np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    if not nhwc_ok:
        raise ForeignFormatError(f"{where}: expected NHWC images [n, {h}, {w}, {c}] for this dataset, got "
                                 f"{images.shape}" + (" (that is NCHW: pass --layout nchw)" if nchw_ok else ""))
    return np.ascontiguousarray(images)


def to_labels(labels: np.ndarray, n: int, num_classes: int, where: str) -> np.ndarray:
    """Stored labels -> ``[n, C]`` float32 (integer ids -> one-hot minus ``1/C``).

    Raises:
        ForeignFormatError: wrong count or width, ids out of range, NaN/Inf.
    """
    from kdistill.core.sampling import centered_one_hot

    if labels.ndim == 1 and labels.dtype.kind in "iu":
        if len(labels) != n:
            raise ForeignFormatError(f"{where}: {len(labels)} labels for {n} images")
        if n and (labels.min() < 0 or labels.max() >= num_classes):
            raise ForeignFormatError(f"{where}: class ids must lie in 0..{num_classes - 1}, found "
                                     f"{int(labels.min())}..{int(labels.max())}")
        return centered_one_hot(labels.astype(np.int64), num_classes)
    if labels.ndim != 2 or labels.dtype.kind not in "fiu":
        raise ForeignFormatError(f"{where}: labels must be [n, {num_classes}] numbers or [n] class ids, got shape "
                                 f"{labels.shape} {labels.dtype}")
    if labels.shape != (n, num_classes):
        raise ForeignFormatError(f"{where}: labels have shape {labels.shape}, expected ({n}, {num_classes}) "
                                 f"({n} images, {num_classes} classes in the dataset)")
    labels = labels.astype(np.float32)
    if not np.isfinite(labels).all():
        raise ForeignFormatError(f"{where}: labels contain NaN or Inf")
    return labels


def default_source_preprocess(fmt: str, dataset: str, channels: int, file_name: str) -> str:
    """The preprocessing ``fmt`` applied to ``dataset`` (see the module docstring).

    Raises:
        ConfigError: a KIP file whose name says neither ``zca`` nor ``nozca``.
    """
    if fmt == "npz":
        return "none"
    if fmt != "kip" and channels == 1:
        return "standardize"
    if fmt == "rfad":
        return "layernorm-zca" if dataset == "svhn" else "zca"
    if fmt == "rcig":
        return "zca-centered"
    name = file_name.lower()
    if "nozca" in name:
        return "standardize"
    if "zca" in name:
        return "layernorm-zca"
    raise ConfigError(f"cannot tell from the name {file_name!r} whether this KIP set is ZCA-preprocessed (released "
                      "files say _zca_ or _nozca_); pass --source-preprocess layernorm-zca or standardize")


def import_set(
    path: str | os.PathLike,
    fmt: str,
    dataset: str,
    data_dir: str | None = None,
    *,
    layout: str = "auto",
    source_preprocess: str = "auto",
    preprocess: str = "auto",
    zca_reg: float = 0.1,
    pixel_scale: float = 255.0,
    ridge: float | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
):
    """Import another tool's distilled set as a :class:`kdistill.io.artifact.DistilledSet`.

    Args:
        path: the file; fmt: one of :data:`FORMATS`.
        dataset, data_dir: the registered dataset the set was distilled from and where
            its files are (the preprocessing is refitted on its training split).
        layout: ``auto``, ``nhwc`` or ``nchw`` (``npz`` only; the others are fixed).
        source_preprocess: the space the stored images are in, one of
            :data:`kdistill.interop.transforms.SOURCE_PREPROCESS`, or ``auto`` for the
            format's own (see :func:`default_source_preprocess`).
        preprocess: kdistill's preprocessing for the artifact (``standardize``, ``zca``,
            ``none``) or ``auto`` (see the module docstring).
        zca_reg: the foreign ZCA's regularization (fraction of the mean eigenvalue).
        pixel_scale: 255 or 1, the pixel scale of ``source_preprocess="none"`` images.
        ridge: the relative ridge recorded for evaluation (default: RFAD's ``jit``, else
            kdistill's default).
        overrides: further config fields, e.g. ``{"eval_kernel": {"name": "convnet"}}``.
    Returns:
        The set; ``config`` names the dataset, preprocessing and evaluation settings,
        ``metrics["imported_from"]`` the format, file name, SHA-256, source
        preprocessing, the stored extras (e.g. RFAD's ``jit``) and the keys found.
    Raises:
        ForeignFormatError: unreadable or malformed file (see :func:`read_foreign`,
            :func:`to_nhwc`, :func:`to_labels`), NaN/Inf images.
        ConfigError: unknown format, layout or preprocessing.
        DataError, DataFileError: the dataset cannot be loaded.
    """
    from kdistill.core.config import PREPROCESS, DistillConfig
    from kdistill.datasets.fingerprint import dataset_fingerprint
    from kdistill.datasets.preprocess import fit_preprocessor
    from kdistill.io.artifact import DistilledSet
    from kdistill.runtime.components import load_dataset
    from kdistill.version import __version__

    path = Path(path)
    if pixel_scale not in (1, 255):
        raise ConfigError(f"pixel_scale must be 1 or 255, got {pixel_scale!r}")
    if source_preprocess != "auto" and source_preprocess not in SOURCE_PREPROCESS:
        raise ConfigError(f"unknown source preprocessing {source_preprocess!r}; available: auto, "
                          f"{', '.join(SOURCE_PREPROCESS)}")
    if preprocess != "auto" and preprocess not in PREPROCESS:
        raise ConfigError(f"unknown preprocessing {preprocess!r}; available: auto, {', '.join(PREPROCESS)}")
    raw = read_foreign(path, fmt, layout)
    where = repr(str(path))
    cfg = DistillConfig(dataset=dataset, data_dir=data_dir)
    ds = load_dataset(cfg)
    images = to_nhwc(raw["images"], raw["layout"], tuple(ds.image_shape), where)
    n = len(images)
    if n == 0:
        raise ForeignFormatError(f"{where} holds no images")
    if not np.isfinite(images).all():
        raise ForeignFormatError(f"{where}: images contain NaN or Inf")
    labels = to_labels(raw["labels"], n, ds.num_classes, where)
    source = (default_source_preprocess(fmt, dataset, ds.image_shape[-1], path.name)
              if source_preprocess == "auto" else source_preprocess)
    ddof = 1 if fmt == "rfad" else 0
    foreign = ForeignTransform.fit(source, ds.x_train, ddof=ddof, reg=zca_reg, pixel_scale=pixel_scale)
    target_name = preprocess if preprocess != "auto" else ("zca" if SOURCE_PREPROCESS[source] else "standardize")
    target = fit_preprocessor(target_name, ds.x_train)
    pixels = foreign.inverse(images)
    converted = target.transform(pixels)
    if not np.isfinite(converted).all():
        raise DataError(f"{where}: the images are not finite after re-expressing them in kdistill's space")
    extras = raw["extras"]
    if ridge is None:
        ridge = extras.get("jit", RFAD_DEFAULT_JIT) if fmt == "rfad" else DistillConfig().ridge
    class_ids = labels.argmax(axis=1).astype(np.int64)
    ipc = max(1, n // ds.num_classes)
    config = DistillConfig(dataset=dataset, data_dir=data_dir, preprocess=target_name, ipc=ipc, steps=0,
                           ridge=float(ridge))
    if overrides:
        config = config.with_overrides(overrides)
    provenance = {
        "format": fmt, "description": FORMATS[fmt], "file": path.name, "sha256": _sha256(path),
        "source_preprocess": foreign.describe(), "kdistill_preprocess": target_name, "stored_layout": raw["layout"]
        if raw["layout"] != "auto" else ("nchw" if raw["images"].shape[1:] != images.shape[1:] else "nhwc"),
        "stored_shape": list(raw["images"].shape), "stored_dtype": str(raw["images"].dtype),
        "extras": extras, "keys": raw["keys"][:100],
    }
    if "group" in raw:
        provenance["group"] = raw["group"]
    return DistilledSet(
        images=converted.astype(np.float32), labels=labels, class_ids=class_ids, transform=target,
        config=config.to_dict(),
        metrics={"method": f"{fmt} (imported)", "imported_from": provenance, "n_support": n},
        history={}, seed=0, version=__version__,
        dataset={"name": ds.name, "num_classes": ds.num_classes, "class_names": list(ds.class_names),
                 "image_shape": list(ds.image_shape), "n_train": int(len(ds.x_train)),
                 "n_test": int(len(ds.x_test)), "fingerprint": dataset_fingerprint(ds)},
    )
