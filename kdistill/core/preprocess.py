"""Preprocessing fitted on the training split; it travels with the distilled artifact.

A preprocessor maps raw images ``[n, H, W, C]`` (uint8 or float, 0-255 scale) to the
float32 space the support set lives in, and back (for image grids). Its state is a
dict of numpy arrays, so artifacts store it without pickle.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from kdistill.core.errors import ArtifactError, ConfigError


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


PREPROCESSORS: dict[str, Any] = {"none": Identity, "standardize": ChannelStandardizer}


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
