"""scikit-learn's embedded 8x8 digits (no files needed)."""

from __future__ import annotations

import numpy as np

from kdistill.core.contracts import Dataset

DIGIT_NAMES = tuple(str(d) for d in range(10))


def load_digits(data_dir=None) -> Dataset:
    """Load scikit-learn's digits data set with a fixed stratified 80/20 split.

    ``data_dir`` is ignored (the data ships with scikit-learn). The split is
    ``train_test_split(test_size=0.2, random_state=0, stratify=y)``: 1437 train and
    360 test images.

    Returns:
        Dataset ``"digits"``: x float32 ``[N, 8, 8, 1]`` on the 0..255 scale (the raw
        0..16 intensities times 255/16), y int64 in 0..9, 10 classes named "0".."9".
    """
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_load_digits()
    x = (bunch.images.astype(np.float64) * (255.0 / 16.0)).astype(np.float32)[..., None]
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    return Dataset(
        name="digits",
        x_train=np.ascontiguousarray(x_train),
        y_train=y_train,
        x_test=np.ascontiguousarray(x_test),
        y_test=y_test,
        num_classes=10,
        class_names=DIGIT_NAMES,
    )
