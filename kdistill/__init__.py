"""kdistill: kernel-based dataset distillation (KIP, Label Solve, RFAD).

Python API::

    import kdistill
    result = kdistill.distill(dataset="mnist", data_dir="data/mnist", ipc=10)
    result.save("mnist_kip.npz")
    ds = kdistill.load("mnist_kip.npz")   # ds.images, ds.labels, ds.transform
"""

from __future__ import annotations

from kdistill.version import __version__  # noqa: E402

from kdistill.api import distill, label_solve, load, make_config  # noqa: E402
from kdistill.io.artifact import DistilledSet  # noqa: E402
from kdistill.core.config import DistillConfig  # noqa: E402

__all__ = ["distill", "label_solve", "load", "make_config", "DistillConfig", "DistilledSet", "__version__"]
