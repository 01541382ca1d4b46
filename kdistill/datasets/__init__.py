"""Dataset loaders. Each is ``loader(data_dir: str | None) -> Dataset`` and is registered
with kdistill through the ``kdistill_register_datasets`` hook below.

Importing this package is cheap: scikit-learn and scipy are imported only inside the
loaders that need them.
"""

from __future__ import annotations

from kdistill.core.hookspecs import hookimpl
from kdistill.core.contracts import Dataset
from kdistill.datasets.base import resolve_dir
from kdistill.datasets.cifar import load_cifar10, load_cifar100
from kdistill.datasets.digits import load_digits
from kdistill.datasets.mnist import load_fashion_mnist, load_mnist, read_idx
from kdistill.datasets.svhn import load_svhn

__all__ = [
    "Dataset",
    "resolve_dir",
    "read_idx",
    "load_digits",
    "load_mnist",
    "load_fashion_mnist",
    "load_cifar10",
    "load_cifar100",
    "load_svhn",
    "kdistill_register_datasets",
]


@hookimpl
def kdistill_register_datasets(register):
    """Register the built-in datasets (names as used by `--dataset`)."""
    register("digits", load_digits, "scikit-learn digits, 8x8x1, 10 classes, embedded (no files)")
    register("mnist", load_mnist, "MNIST, 28x28x1, 10 classes, 60000/10000, 4 IDX .gz files")
    register("fashion-mnist", load_fashion_mnist,
             "Fashion-MNIST, 28x28x1, 10 classes, 60000/10000, 4 IDX .gz files")
    register("cifar10", load_cifar10,
             "CIFAR-10, 32x32x3, 10 classes, 50000/10000, cifar-10-batches-py pickles")
    register("cifar100", load_cifar100,
             "CIFAR-100 (fine labels), 32x32x3, 100 classes, 50000/10000, cifar-100-python")
    register("svhn", load_svhn, "SVHN cropped digits, 32x32x3, 10 classes, *_32x32.mat files")
