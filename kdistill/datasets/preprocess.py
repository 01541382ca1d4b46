"""Preprocessing fitted on the training split; it travels with the distilled artifact.

A preprocessor maps raw images ``[n, H, W, C]`` (uint8 or float, 0-255 scale) to the
float32 space the support set lives in, and back (for image grids). Its state is a
dict of numpy arrays, so artifacts store it without pickle.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from kdistill.errors import ArtifactError, ConfigError


@attrs.define
class Identity:
    """No preprocessing: images cast to float32."""

    name = "none"

    def transform(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {}


@attrs.define
class ChannelStandardizer:
    """Per-channel standardization ``(x - mean_c) / std_c`` (KIP's preprocessing).

    Attributes:
        mean, std: ``[C]`` float64, fitted on the training split.
    """

    mean: np.ndarray
    std: np.ndarray
    name = "standardize"

    @classmethod
    def fit(cls, x_train: np.ndarray) -> "ChannelStandardizer":
        """Fit on ``x_train [n, H, W, C]``. Constant channels get std 1."""
        x = np.asarray(x_train, dtype=np.float64)
        axes = tuple(range(x.ndim - 1))
        mean = x.mean(axis=axes)
        std = x.std(axis=axes)
        return cls(mean=mean, std=np.where(std > 0, std, 1.0))

    def transform(self, x: np.ndarray) -> np.ndarray:
        """``[n, H, W, C]`` -> standardized float32, same shape."""
        return ((np.asarray(x, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def inverse(self, x: np.ndarray) -> np.ndarray:
        """Back to the raw scale (float32), e.g. for image grids."""
        return (np.asarray(x, dtype=np.float64) * self.std + self.mean).astype(np.float32)

    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "std": self.std}


def _layer_norm(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image layer normalization of ``x [n, ...]`` (float64): ``(x - m_i) / s_i`` with the
    mean ``m_i`` and standard deviation ``s_i`` over all of image ``i``'s values (constant
    images: ``s_i = 1``). Returns ``(normalized [n, d], m [n], s [n])``."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    m = flat.mean(axis=1)
    s = flat.std(axis=1)
    s = np.where(s > 1e-12 * np.maximum(np.abs(m), 1.0), s, 1.0)
    return (flat - m[:, None]) / s[:, None], m, s


@attrs.define(eq=False)
class RegularizedZCA:
    """Per-image layer normalization, then regularized ZCA whitening (the preprocessing of
    KIP with ConvNet kernels and of RFAD for RGB data: Nguyen et al. 2021, NeurIPS, sec. 3;
    Loo et al. 2022, sec. 4).

    Fitted on the training images ``x [n, H, W, C]`` flattened to ``d = H W C`` features::

        u = LN(x)                              # per image: subtract its mean, divide by its std
        Sigma = cov(u) = U diag(lam) U^T        # over the training split (centered by ``mean``)
        eps = strength * mean(lam)              # strength 0.1: "ZCA regularization 0.1"
        W = U diag((lam + eps)^-1/2) U^T        # symmetric whitening (lam + eps -> 1)
        transform(x) = (u - mean) W             # float32, shape of x

    ``inverse(z) = (z W^-1 + mean) * pixel_std + pixel_mean``: the ZCA part is inverted
    exactly (``W^-1`` is the matrix inverse of the ``W`` used by :meth:`transform`); the
    layer normalization is not invertible (each image's own mean and scale are gone), so
    images are mapped back to a displayable pixel scale with the training set's average
    per-image mean ``pixel_mean`` and standard deviation ``pixel_std``. Hence
    ``transform(inverse(z)) == z`` (to float rounding) for every ``z`` that is a transform
    of some image; a learned (distilled) ``z`` is displayed through the same map.

    State (stored in artifacts, numpy only): ``mean [d]`` float64, ``eigvecs [d, d]``
    float32 (half the size; ``W`` and ``W^-1`` are recomputed from these stored values, so a
    reloaded artifact reproduces the transform exactly), ``eigvals [d]`` float64, and 0-d
    float64 ``strength``, ``pixel_mean``, ``pixel_std``.

    Raises:
        ArtifactError: state arrays of inconsistent shapes.
        DataError: images with a different number of features than fitted.
    """

    mean: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, np.float64))
    eigvecs: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, np.float32))
    eigvals: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, np.float64))
    strength: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, np.float64))
    pixel_mean: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, np.float64))
    pixel_std: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, np.float64))
    _w: np.ndarray = attrs.field(init=False, repr=False)
    _w_inv: np.ndarray = attrs.field(init=False, repr=False)
    name = "zca"

    #: rows per chunk of the [n, d] x [d, d] products (bounds float64 temporaries)
    CHUNK = 4096

    def __attrs_post_init__(self) -> None:
        d = self.mean.shape[0] if self.mean.ndim == 1 else -1
        if (self.mean.ndim != 1 or self.eigvecs.shape != (d, d) or self.eigvals.shape != (d,)
                or any(np.ndim(v) != 0 for v in (self.strength, self.pixel_mean, self.pixel_std))):
            raise ArtifactError(
                f"zca state has inconsistent shapes: mean {self.mean.shape}, eigvecs {self.eigvecs.shape}, "
                f"eigvals {self.eigvals.shape}, strength/pixel_mean/pixel_std must be scalars"
            )
        lam = np.clip(self.eigvals, 0.0, None)
        eps = float(self.strength) * float(lam.mean())
        if not eps > 0:
            raise ArtifactError(f"zca regularization strength * mean eigenvalue must be > 0, got {eps!r}")
        u = self.eigvecs.astype(np.float64)
        self._w = (u * (lam + eps) ** -0.5) @ u.T
        self._w_inv = np.linalg.inv(self._w)

    @classmethod
    def fit(cls, x_train: np.ndarray, strength: float = 0.1) -> RegularizedZCA:
        """Fit on ``x_train [n, H, W, C]`` (raw pixels). ``strength`` > 0: the regularizer
        as a fraction of the mean eigenvalue (0.1 as in KIP/RFAD; small values whiten
        fully)."""
        if not strength > 0:
            shown = strength.item() if isinstance(strength, np.generic) else strength
            raise ConfigError(f"zca strength must be > 0, got {shown!r}")
        n = len(x_train)
        d = int(np.prod(x_train.shape[1:]))
        total, gram, means, stds = np.zeros(d), np.zeros((d, d)), [], []
        for i in range(0, n, cls.CHUNK):
            u, m, s = _layer_norm(x_train[i:i + cls.CHUNK])
            total += u.sum(axis=0)
            gram += u.T @ u
            means.append(m)
            stds.append(s)
        mean = total / n
        cov = gram / n - np.outer(mean, mean)
        lam, vecs = np.linalg.eigh((cov + cov.T) / 2)
        return cls(mean=mean, eigvecs=vecs, eigvals=lam, strength=strength,
                   pixel_mean=np.concatenate(means).mean(), pixel_std=np.concatenate(stds).mean())

    def _check(self, x: np.ndarray) -> None:
        from kdistill.errors import DataError

        if int(np.prod(np.shape(x)[1:])) != self.mean.shape[0]:
            raise DataError(f"zca was fitted on images of {self.mean.shape[0]} values, got shape {np.shape(x)}")

    def zca(self, u: np.ndarray) -> np.ndarray:
        """The whitening part: ``(u - mean) W`` for layer-normalized ``u [n, d]`` (float64)."""
        return np.concatenate([(u[i:i + self.CHUNK] - self.mean) @ self._w
                               for i in range(0, len(u), self.CHUNK)] or [u.reshape(0, len(self.mean))])

    def zca_inverse(self, z: np.ndarray) -> np.ndarray:
        """Exact inverse of :meth:`zca`: ``z W^-1 + mean`` (float64)."""
        z = np.asarray(z, np.float64).reshape(len(z), -1)
        return np.concatenate([z[i:i + self.CHUNK] @ self._w_inv + self.mean
                               for i in range(0, len(z), self.CHUNK)] or [z])

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Raw images ``[n, H, W, C]`` -> layer-normalized, whitened float32, same shape."""
        self._check(x)
        out = np.empty((len(x), self.mean.shape[0]), np.float32)
        for i in range(0, len(x), self.CHUNK):
            out[i:i + self.CHUNK] = self.zca(_layer_norm(x[i:i + self.CHUNK])[0])
        return out.reshape(np.shape(x))

    def inverse(self, z: np.ndarray) -> np.ndarray:
        """Whitened ``[n, H, W, C]`` -> approximate raw pixel scale (float32) for display."""
        self._check(z)
        u = self.zca_inverse(z)
        return (u * float(self.pixel_std) + float(self.pixel_mean)).astype(np.float32).reshape(np.shape(z))

    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "eigvecs": self.eigvecs, "eigvals": self.eigvals, "strength": self.strength,
                "pixel_mean": self.pixel_mean, "pixel_std": self.pixel_std}


PREPROCESSORS: dict[str, Any] = {"none": Identity, "standardize": ChannelStandardizer, "zca": RegularizedZCA}


def fit_preprocessor(name: str, x_train: np.ndarray):
    """Fit the preprocessor ``name`` on the training images."""
    if name not in PREPROCESSORS:
        raise ConfigError(f"unknown preprocessing {name!r}; available: {', '.join(PREPROCESSORS)}")
    cls = PREPROCESSORS[name]
    return cls() if cls is Identity else cls.fit(x_train)


def preprocessor_from_state(name: str, state: dict[str, np.ndarray]):
    """Rebuild a fitted preprocessor from :meth:`state` arrays (artifact loading)."""
    if name not in PREPROCESSORS:
        raise ArtifactError(f"artifact uses unknown preprocessing {name!r}; available: {', '.join(PREPROCESSORS)}")
    cls = PREPROCESSORS[name]
    try:
        return cls(**state)
    except TypeError as exc:
        raise ArtifactError(f"artifact preprocessing state for {name!r} is malformed: {exc}") from exc
