"""Seconds per KIP step against support size, JAX and torch backends.

Measures the full step (kernels K_ss and K_ts, float64 Cholesky solve, loss,
gradient, Adam update) on MNIST-shaped inputs (28x28x1, 10 classes) with the FC1
NTK and a class-balanced target batch, after warm-up (JAX compile excluded).

    python benchmarks/kip_step_time.py [--sizes 10 100 500] [--target-batch 5000] [--steps 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from kdistill.runtime.components import build_components
from kdistill.core.config import DistillConfig
from kdistill.core.loop import make_kip_loss
from kdistill.core.sampling import centered_one_hot


def time_steps(backend: str, n_support: int, target_batch: int, steps: int, learn_labels: bool) -> float:
    cfg = DistillConfig(backend=backend, learn_labels=learn_labels)
    comps = build_components(cfg)
    b = comps.backend
    rng = np.random.default_rng(0)
    y_s = centered_one_hot(np.arange(n_support) % 10, 10)
    params = {"x_s": rng.standard_normal((n_support, 28, 28, 1)).astype(np.float32)}
    if learn_labels:
        params["y_s"] = y_s
    train = b.make_step(make_kip_loss(comps, cfg, b.asarray(y_s, "float64")), "adam", lr=1e-2)
    state = train.init(params)
    x_t = b.asarray(rng.standard_normal((target_batch, 28, 28, 1)).astype(np.float32))
    y_t = b.asarray(centered_one_hot(np.arange(target_batch) % 10, 10), "float64")
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
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; FC1 NTK, 28x28x1, "
          f"target batch {args.target_batch}, learned labels, mean of {args.steps} steps")
    print(f"{'support':>8} " + " ".join(f"{b + ' s/step':>14}" for b in args.backends))
    for n in args.sizes:
        row = [time_steps(b, n, args.target_batch, args.steps, True) for b in args.backends]
        print(f"{n:>8} " + " ".join(f"{t:>14.4f}" for t in row), flush=True)


if __name__ == "__main__":
    main()
