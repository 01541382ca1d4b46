"""Class-balanced sampling of support initializations and target batches (numpy).

All randomness is drawn on the host from ``numpy.random.Generator`` seeded by the
run's seed, so the JAX and torch backends see identical batches.
"""

from __future__ import annotations

import numpy as np

from kdistill.errors import DataError


def centered_one_hot(y: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels ``[n]`` int -> ``[n, C]`` float32 one-hot minus 1/C (rows sum to 0)."""
    out = np.full((len(y), num_classes), -1.0 / num_classes, dtype=np.float32)
    out[np.arange(len(y)), y] += 1.0
    return out


def class_indices(y: np.ndarray, num_classes: int) -> list[np.ndarray]:
    """Indices of each class, ``[C]`` arrays of int64."""
    return [np.flatnonzero(y == c) for c in range(num_classes)]


def balanced_subset(y: np.ndarray, num_classes: int, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` distinct random indices of every class, grouped by class.

    Raises:
        DataError: a class has fewer than ``per_class`` examples (names the class).
    """
    out = []
    for c, idx in enumerate(class_indices(y, num_classes)):
        if len(idx) < per_class:
            raise DataError(
                f"class {c} has only {len(idx)} training examples but {per_class} per class "
                f"were requested; lower ipc / target_batch"
            )
        out.append(rng.choice(idx, size=per_class, replace=False))
    return np.concatenate(out)


class TargetSampler:
    """Draws a class-balanced target batch of ``batch_size`` indices per call.

    Each class contributes ``batch_size // C`` examples (the remainder goes to
    randomly chosen classes), without replacement within a batch. When
    ``batch_size`` >= the training set size, every call returns all indices.
    """

    def __init__(self, y: np.ndarray, num_classes: int, batch_size: int, rng: np.random.Generator):
        self.by_class = class_indices(y, num_classes)
        self.n = len(y)
        self.batch_size = batch_size
        self.rng = rng

    def __call__(self) -> np.ndarray:
        if self.batch_size >= self.n:
            return np.arange(self.n)
        num_classes = len(self.by_class)
        counts = np.full(num_classes, self.batch_size // num_classes)
        counts[self.rng.choice(num_classes, self.batch_size % num_classes, replace=False)] += 1
        parts = [
            self.rng.choice(idx, size=min(k, len(idx)), replace=False)
            for idx, k in zip(self.by_class, counts)
        ]
        return np.concatenate(parts)
