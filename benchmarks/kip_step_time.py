"""Seconds per KIP step against support size, JAX and torch backends.

Measures the full step (kernels K_ss and K_ts, float64 Cholesky solve, loss,
gradient, Adam update) on MNIST-shaped inputs (28x28x1, 10 classes) with the FC1
NTK and a class-balanced target batch, after warm-up (JAX compile excluded).

    python benchmarks/kip_step_time.py [--sizes 10 100 500] [--target-batch 5000] [--steps 10]
        [--backends jax torch] [--device auto] [--data-dir DIR]

``--device`` is the backends' device setting (``auto``: the first accelerator each
library sees, else the CPU; ``cpu``, ``cuda``, ``cuda:1``, ...); the device used is
printed. ``--data-dir`` (MNIST's files, or a folder holding ``mnist/``) makes the support
set and target batch class-balanced real training images, standardized per channel;
without it they are standard-normal arrays of the same shape (the step's cost does not
depend on the values). :func:`image_source` is shared with the other step-time and
kernel-speed benchmarks.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Callable

import numpy as np

from kdistill.runtime.components import build_components
from kdistill.core.config import DistillConfig
from kdistill.core.loop import make_kip_loss
from kdistill.core.sampling import centered_one_hot


#: The dataset of each image shape (``--data-dir`` of the benchmarks) and the folder
#: names it may have under a data root (e.g. ``../shared/data``).
DATASET_OF_SHAPE = {(28, 28, 1): ("mnist", ("mnist",)), (32, 32, 3): ("cifar10", ("cifar-10", "cifar10"))}

Draw = Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def image_source(shape: tuple[int, int, int], data_dir: str | None = None, classes: int = 10) -> tuple[Draw, str]:
    """``(draw, description)``: ``draw(n, rng)`` returns ``(images [n, H, W, C] float32,
    class ids [n] int64)`` with class ids ``arange(n) % classes``.

    Without ``data_dir`` the images are standard normal (``rng.standard_normal``, as these
    benchmarks always drew them). With it, they are real training images of the dataset
    of ``shape`` (MNIST for 28x28x1, CIFAR-10 for 32x32x3, read from ``data_dir`` or its
    ``mnist/`` / ``cifar-10/`` folder), scaled to [0, 1] and standardized per channel,
    drawn without replacement from each image's class.

    Raises:
        SystemExit: ``data_dir`` given for another shape, or its files are missing.
    """
    ids_of = lambda n: np.arange(n) % classes  # noqa: E731
    if data_dir is None:
        return (lambda n, rng: (rng.standard_normal((n, *shape)).astype(np.float32), ids_of(n)),
                f"random normal arrays of shape {'x'.join(map(str, shape))} (no --data-dir)")
    if tuple(shape) not in DATASET_OF_SHAPE:
        raise SystemExit(f"--data-dir: no dataset of shape {shape} (known: {list(DATASET_OF_SHAPE)})")
    from kdistill.datasets.cifar import load_cifar10
    from kdistill.datasets.mnist import load_mnist
    from kdistill.errors import DataFileError

    name, subdirs = DATASET_OF_SHAPE[tuple(shape)]
    loader = {"mnist": load_mnist, "cifar10": load_cifar10}[name]
    problems = []
    for where in [Path(data_dir)] + [Path(data_dir) / sub for sub in subdirs]:
        try:
            ds = loader(where)
            break
        except DataFileError as exc:
            problems.append(str(exc))
    else:
        raise SystemExit(f"--data-dir {data_dir}: no {name} files there: " + " | ".join(problems))
    x = ds.x_train.astype(np.float32) / 255.0
    x = (x - x.mean(axis=(0, 1, 2))) / x.std(axis=(0, 1, 2))
    pools = [np.flatnonzero(ds.y_train == c) for c in range(classes)]

    def draw(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        ids = ids_of(n)
        idx = np.empty(n, np.int64)
        for c in range(classes):
            where = np.flatnonzero(ids == c)
            idx[where] = rng.choice(pools[c], size=len(where), replace=False)
        return x[idx], ids

    return draw, f"real {name} training images from {data_dir} ({len(x)} images, standardized per channel)"


def time_steps(backend: str, n_support: int, target_batch: int, steps: int, learn_labels: bool,
               device: str = "auto", draw: Draw | None = None) -> float:
    """Seconds per KIP step (mean of ``steps`` after a warm-up step) on ``device``."""
    cfg = DistillConfig(backend=backend, learn_labels=learn_labels, device=device)
    comps = build_components(cfg)
    b = comps.backend
    draw = draw or image_source((28, 28, 1))[0]
    rng = np.random.default_rng(0)
    x_s, ids_s = draw(n_support, rng)
    y_s = centered_one_hot(ids_s, 10)
    params = {"x_s": x_s}
    if learn_labels:
        params["y_s"] = y_s
    train = b.make_step(make_kip_loss(comps, cfg, b.asarray(y_s, "float64")), "adam", lr=1e-2)
    state = train.init(params)
    x_t, ids_t = draw(target_batch, rng)
    x_t = b.asarray(x_t)
    y_t = b.asarray(centered_one_hot(ids_t, 10), "float64")
    state, metrics = train(state, x_t, y_t)  # warm-up / compile
    float(metrics["loss"])
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = train(state, x_t, y_t)
        float(metrics["loss"])  # waits for the step, as the driver does (JAX dispatches asynchronously)
    return (time.perf_counter() - start) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 500])
    ap.add_argument("--target-batch", type=int, default=5000)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--backends", nargs="+", default=["jax", "torch"])
    ap.add_argument("--device", default="auto",
                    help="device setting of the backends: auto (default), cpu, cuda, cuda:1, gpu, ...")
    ap.add_argument("--data-dir", help="MNIST's files (or a folder holding mnist/): real images instead of "
                                       "random arrays")
    args = ap.parse_args()
    from kdistill.core.registry import get_registry

    draw, source = image_source((28, 28, 1), args.data_dir)
    devices = ", ".join(f"{b} {get_registry().backend(b, args.device).describe_devices()}" for b in args.backends)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; device {args.device!r}: {devices}")
    print(f"FC1 NTK, 28x28x1, target batch {args.target_batch}, learned labels, mean of {args.steps} steps; "
          f"inputs: {source}")
    print(f"{'support':>8} " + " ".join(f"{b + ' s/step':>14}" for b in args.backends))
    for n in args.sizes:
        row = [time_steps(b, n, args.target_batch, args.steps, True, args.device, draw) for b in args.backends]
        print(f"{n:>8} " + " ".join(f"{t:>14.4f}" for t in row), flush=True)


if __name__ == "__main__":
    main()
