"""Other tools' preprocessing, refitted on a kdistill dataset, so foreign images can be
mapped back to pixel space and re-expressed in kdistill's own preprocessed space.

A foreign distilled set lives in the space its tool preprocessed the data into. That
space is a function of the training split, so kdistill refits it here (numpy, float64)
on the named dataset's raw training images ``[n, H, W, C]`` (0..255 scale) and inverts
it. The declared transforms (see :data:`SOURCE_PREPROCESS`):

``none``
    Raw pixels on the 0..255 scale (or 0..1 with ``pixel_scale=1``).
``standardize``
    Per-channel ``(x - mean_c) / std_c`` over the training split; ``ddof`` 0 (numpy,
    KIP) or 1 (``torch.std``, RFAD).
``zca``
    Standardize, then ZCA with the *uncentered* second-moment matrix
    ``C = X^T X / n`` and no mean subtraction: RFAD's CIFAR-10/100 preprocessing
    (yolky/RFAD ``data.py``: ``get_zca_matrix``, ``transform_data``).
``zca-centered``
    Standardize, subtract the per-feature training mean, ZCA with the centered
    covariance: RCIG's (yolky/RCIG ``ops.py``, after FRePo).
``layernorm-zca``
    Standardize, per-image layer norm to zero mean and unit *L2 norm*, then uncentered
    ZCA: KIP's ``zca_normalize`` (google-research ``kip/nn_training.ipynb``) and RFAD's
    SVHN preprocessing.

In every ZCA variant the regularizer is ``reg * trace(C) / d`` added to the
eigenvalues (``reg`` 0.1 by default), i.e. ``W = U diag((lam + reg * mean(lam))^-1/2) U^T``:
the same convention as kdistill's :class:`kdistill.datasets.preprocess.RegularizedZCA`
(``strength``). What differs from kdistill's ZCA is the layer norm (kdistill always
applies one, to unit *standard deviation*, on raw pixels before whitening; RFAD-CIFAR
and RCIG apply none, KIP applies one after channel standardization) and centering.

:meth:`ForeignTransform.inverse` undoes the transform exactly (to float rounding)
where it is invertible: everything but the layer norm. With a layer norm, the
per-image mean and norm an image had before it are gone; the inverse puts back the
training split's average per-image mean and norm, so a real image comes back as an
affine copy of its standardized self, not its exact pixels (documented in the import
provenance as ``exact_inverse: false``).
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from kdistill.errors import ConfigError, DataError

#: Declared source preprocessings and whether each whitens.
SOURCE_PREPROCESS = {"none": False, "standardize": False, "zca": True, "zca-centered": True,
                     "layernorm-zca": True}
#: Training images per block while fitting (bounds the float64 temporaries).
CHUNK = 4096


def _l2_layer_norm(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: subtract the mean, divide by the L2 norm (KIP's layer norm); zero rows
    keep norm 1. Returns ``(normalized, means [n], norms [n])``."""
    m = flat.mean(axis=1)
    c = flat - m[:, None]
    norm = np.linalg.norm(c, axis=1)
    norm = np.where(norm > 0, norm, 1.0)
    return c / norm[:, None], m, norm


@attrs.define(eq=False)
class ForeignTransform:
    """A foreign tool's preprocessing, fitted on raw NHWC training images.

    Attributes:
        kind: one of :data:`SOURCE_PREPROCESS`.
        ddof: degrees of freedom of the channel standard deviation (0 or 1).
        reg: ZCA regularization as a fraction of the mean eigenvalue.
        pixel_scale: 255 (images on the 0..255 scale) or 1 (0..1 scale: the foreign
            tool divided by 255 first; only changes ``none``, as standardization
            cancels the scale).
        shape: ``(H, W, C)`` fitted on; ``mean_c``, ``std_c``: ``[C]`` float64;
        w, w_inv: ``[d, d]`` whitening matrix and its inverse (ZCA kinds);
        zca_mean: ``[d]`` per-feature mean subtracted before ``w`` (``zca-centered``);
        ln_mean, ln_norm: training average per-image mean and L2 norm before the
            layer norm (``layernorm-zca``; used by :meth:`inverse`).
    """

    kind: str
    ddof: int = 0
    reg: float = 0.1
    pixel_scale: float = 255.0
    shape: tuple[int, ...] = ()
    mean_c: np.ndarray | None = None
    std_c: np.ndarray | None = None
    w: np.ndarray | None = None
    w_inv: np.ndarray | None = None
    zca_mean: np.ndarray | None = None
    ln_mean: float = 0.0
    ln_norm: float = 1.0

    @property
    def exact_inverse(self) -> bool:
        """True when :meth:`inverse` recovers the pixels exactly (no layer norm)."""
        return self.kind != "layernorm-zca"

    def describe(self) -> dict[str, Any]:
        """JSON-able description for the artifact's provenance."""
        return {"name": self.kind, "ddof": self.ddof, "zca_reg": self.reg if SOURCE_PREPROCESS[self.kind] else None,
                "layer_norm": "l2" if self.kind == "layernorm-zca" else None,
                "centered": self.kind == "zca-centered", "pixel_scale": self.pixel_scale,
                "exact_inverse": self.exact_inverse}

    @classmethod
    def fit(cls, kind: str, x_train: np.ndarray, *, ddof: int = 0, reg: float = 0.1,
            pixel_scale: float = 255.0) -> "ForeignTransform":
        """Fit ``kind`` on raw training images ``x_train [n, H, W, C]`` (0..255).

        Raises:
            ConfigError: unknown ``kind``, ``ddof`` not 0/1, ``reg`` not > 0.
            DataError: fewer than 2 training images, or a constant channel.
        """
        if kind not in SOURCE_PREPROCESS:
            raise ConfigError(f"unknown source preprocessing {kind!r}; known: {', '.join(SOURCE_PREPROCESS)}")
        if ddof not in (0, 1):
            raise ConfigError(f"ddof must be 0 or 1, got {ddof!r}")
        if not (isinstance(reg, (int, float)) and reg > 0):
            raise ConfigError(f"ZCA regularization must be > 0, got {reg!r}")
        t = cls(kind=kind, ddof=ddof, reg=float(reg), pixel_scale=float(pixel_scale),
                shape=tuple(int(s) for s in x_train.shape[1:]))
        if kind == "none":
            return t
        n = len(x_train)
        if n < 2:
            raise DataError("fitting a source preprocessing needs at least 2 training images")
        c = x_train.shape[-1]
        total, sq = np.zeros(c), np.zeros(c)
        for i in range(0, n, CHUNK):
            b = np.asarray(x_train[i:i + CHUNK], np.float64).reshape(-1, c)
            total += b.sum(axis=0)
            sq += (b * b).sum(axis=0)
        count = n * int(np.prod(x_train.shape[1:-1]))
        mean = total / count
        var = (sq - count * mean ** 2) / (count - ddof)
        std = np.sqrt(np.maximum(var, 0.0))
        if not np.all(std > 0):
            raise DataError(f"a channel of the training images is constant (std {std.tolist()}); cannot standardize")
        t.mean_c, t.std_c = mean, std
        if not SOURCE_PREPROCESS[kind]:
            return t
        d = int(np.prod(t.shape))
        gram, fsum, ln_m, ln_n = np.zeros((d, d)), np.zeros(d), [], []
        for i in range(0, n, CHUNK):
            u = t._pre_zca(x_train[i:i + CHUNK], ln_m, ln_n)
            gram += u.T @ u
            fsum += u.sum(axis=0)
        cov = gram / n
        if kind == "zca-centered":
            t.zca_mean = fsum / n
            cov = cov - np.outer(t.zca_mean, t.zca_mean)
        if ln_m:
            t.ln_mean = float(np.concatenate(ln_m).mean())
            t.ln_norm = float(np.concatenate(ln_n).mean())
        cov = (cov + cov.T) / 2
        lam, vecs = np.linalg.eigh(cov + reg * np.trace(cov) / d * np.eye(d))
        lam = np.maximum(lam, np.finfo(np.float64).tiny)
        t.w = (vecs * lam ** -0.5) @ vecs.T
        t.w_inv = (vecs * lam ** 0.5) @ vecs.T
        return t

    def _standardize(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, np.float64) - self.mean_c) / self.std_c

    def _pre_zca(self, x: np.ndarray, ln_m: list | None = None, ln_n: list | None = None) -> np.ndarray:
        """Standardized (and layer-normalized) images, flattened ``[n, d]`` float64."""
        u = self._standardize(x).reshape(len(x), -1)
        if self.kind == "layernorm-zca":
            u, m, s = _l2_layer_norm(u)
            if ln_m is not None:
                ln_m.append(m)
                ln_n.append(s)
        return u

    def _check(self, x: np.ndarray) -> None:
        if tuple(np.shape(x)[1:]) != self.shape:
            raise DataError(f"source preprocessing was fitted on images of shape {self.shape}, got "
                            f"{tuple(np.shape(x)[1:])}")

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Raw images ``[n, H, W, C]`` (0..255) -> the foreign tool's space, float64, same shape."""
        self._check(x)
        if self.kind == "none":
            return np.asarray(x, np.float64) * (self.pixel_scale / 255.0)
        if not SOURCE_PREPROCESS[self.kind]:
            return self._standardize(x)
        u = self._pre_zca(x)
        if self.zca_mean is not None:
            u = u - self.zca_mean
        return (u @ self.w).reshape(np.shape(x))

    def inverse(self, z: np.ndarray) -> np.ndarray:
        """Foreign-space images ``[n, H, W, C]`` -> raw pixel scale (0..255), float64.

        Exact for every kind but ``layernorm-zca`` (see the module docstring)."""
        self._check(z)
        z = np.asarray(z, np.float64)
        if self.kind == "none":
            return z * (255.0 / self.pixel_scale)
        if SOURCE_PREPROCESS[self.kind]:
            u = z.reshape(len(z), -1) @ self.w_inv
            if self.zca_mean is not None:
                u = u + self.zca_mean
            if self.kind == "layernorm-zca":
                u = u * self.ln_norm + self.ln_mean
            z = u.reshape(np.shape(z))
        return z * self.std_c + self.mean_c
