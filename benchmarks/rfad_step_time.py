"""Seconds per distillation step: RFAD (rf-convnet + feature solver + Platt) against KIP
with the exact pooled ConvNet kernel, at the same target batch, on CIFAR-shaped inputs.

Each step is the full KIP step (kernels or random features of the support set and the
target batch, float64 solve, loss, gradient with respect to the support images and
labels, Adam update), after a warm-up step (JAX compilation excluded). RFAD draws new
network weights every step, as in a run. Exact-kernel points whose estimated time
exceeds ``--max-seconds`` are not run but extrapolated from the largest measured one in
proportion to the number of kernel entries of a step, ``n_t n_s + n_s^2`` (marked ``*``;
the exact kernel's cost is linear in pairs). The script prints the fitted scaling
exponents (``s/step ~ n_support^p``) and the speed-up at 100 support images. The
warm-up step of each shape includes its compilation (seconds; not timed).

    python benchmarks/rfad_step_time.py [--sizes 10 50 100 200 500] [--target-batch 256]
        [--n-models 4] [--width 64] [--backends jax torch] [--exact-backend jax]
        [--steps 3] [--max-seconds 600] [--shape 32x32x3] [--device auto] [--data-dir DIR]

``--device`` is the backends' device setting (``auto``: the first accelerator each
library sees, else the CPU; ``cpu``, ``cuda``, ``cuda:1``, ...); the device used is
printed. ``--data-dir`` (CIFAR-10's batches for 32x32x3, MNIST's files for 28x28x1, or a
folder holding ``cifar-10/`` / ``mnist/``) makes the support set and target batch
class-balanced real training images (``kip_step_time.image_source``); without it they
are standard-normal arrays. The RFAD paper's CIFAR-10 setting is ``--n-models 8
--width 256 --target-batch 5120``.

Run it on an otherwise idle machine: the numbers scale with free cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from kdistill.runtime.components import build_components
from kdistill.core.config import DistillConfig
from kdistill.core.loop import make_kip_loss
from kdistill.core.contracts import step_seed
from kdistill.core.sampling import centered_one_hot

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kip_step_time import image_source  # noqa: E402  (the benchmarks' shared input drawing)


def make_step(config: DistillConfig, n_support: int, target_batch: int, shape: tuple[int, int, int], draw=None):
    """A function running one KIP step per call (the first call compiles), on
    ``config.device``; ``draw``: :func:`kip_step_time.image_source`'s (default: random)."""
    comps = build_components(config)
    b = comps.backend
    draw = draw or image_source(shape)[0]
    rng = np.random.default_rng(0)
    x_s, ids_s = draw(n_support, rng)
    y_s = centered_one_hot(ids_s, 10)
    params = {"x_s": x_s, "y_s": y_s}
    params.update({f"loss/{k}": v for k, v in comps.loss.init_params().items()})
    train = b.make_step(make_kip_loss(comps, config, b.asarray(y_s, "float64")), "adam", lr=1e-3)
    state = [train.init(params)]
    x_t, ids_t = draw(target_batch, rng)
    x_t = b.asarray(x_t)
    y_t = b.asarray(centered_one_hot(ids_t, 10), "float64")
    counter = [0]

    def step():
        counter[0] += 1
        batch = (x_t, y_t)
        if comps.kernel.is_random:
            drawn = comps.kernel.sample_weights(step_seed(0, counter[0]), shape)
            batch += ({k: b.asarray(v, "float32") for k, v in drawn.items()},)
        state[0], metrics = train(state[0], *batch)
        return float(metrics["loss"])  # waits for the step (JAX dispatches asynchronously)

    return step


def seconds_per_step(step, steps: int) -> float:
    step()  # warm-up / compile
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def _by_pairs(measured: tuple[int, float], n: int, target_batch: int) -> float:
    """Exact-kernel step time at support ``n`` from a measured ``(n0, t0)``, in proportion
    to the kernel entries of a step (``K_ts`` and ``K_ss``)."""
    n0, t0 = measured
    return t0 * (target_batch * n + n * n) / (target_batch * n0 + n0 * n0)


def fit_power(sizes, times) -> tuple[float, float]:
    """``(p, c)`` with ``time ~ c * size^p`` (least squares in log-log)."""
    p, logc = np.polyfit(np.log(sizes), np.log(times), 1)
    return float(p), float(np.exp(logc))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10, 50, 100, 200, 500])
    ap.add_argument("--target-batch", type=int, default=256)
    ap.add_argument("--n-models", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--backends", nargs="+", default=["jax", "torch"])
    ap.add_argument("--exact-backend", default="jax", help="backend of the exact-kernel KIP ('none' to skip)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--max-seconds", type=float, default=600.0, help="longest exact step to measure")
    ap.add_argument("--shape", default="32x32x3")
    ap.add_argument("--device", default="auto",
                    help="device setting of the backends: auto (default), cpu, cuda, cuda:1, gpu, ...")
    ap.add_argument("--data-dir", help="the dataset of --shape (CIFAR-10 / MNIST files, or a folder holding "
                                       "cifar-10/ / mnist/): real images instead of random arrays")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.split("x"))
    if len(args.sizes) < 2:
        ap.error("--sizes needs at least two support sizes (for the fitted exponents)")
    from kdistill.core.registry import get_registry

    draw, source = image_source(shape, args.data_dir)
    used = list(dict.fromkeys(args.backends + ([args.exact_backend] if args.exact_backend != "none" else [])))
    devices = ", ".join(f"{b} {get_registry().backend(b, args.device).describe_devices()}" for b in used)
    print(f"device {args.device!r}: {devices}; inputs: {source}")
    rf = {"name": "rf-convnet", "n_models": args.n_models, "width": args.width}
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; inputs {args.shape}, target batch "
          f"{args.target_batch}, learned labels, Platt loss; RFAD: rf-convnet N={args.n_models} C={args.width} + "
          f"feature solver; exact: convnet NNGP (3 blocks, avg-pool) + cholesky; mean of {args.steps} steps after warm-up")
    rows: dict[str, list[float]] = {}
    for backend in args.backends:
        cfg = DistillConfig(backend=backend, kernel=rf, solver="feature", loss="platt", learn_labels=True,
                            device=args.device)
        rows[f"rfad-{backend}"] = []
        for n in args.sizes:
            rows[f"rfad-{backend}"].append(
                seconds_per_step(make_step(cfg, n, args.target_batch, shape, draw), args.steps))
            print(f"  rfad {backend:>5} support {n:>4}: {rows[f'rfad-{backend}'][-1]:.4f} s/step", flush=True)
    exact_measured: list[tuple[int, float]] = []
    if args.exact_backend != "none":
        cfg = DistillConfig(backend=args.exact_backend, kernel={"name": "convnet", "kind": "nngp"}, loss="platt",
                            learn_labels=True, device=args.device)
        for n in args.sizes:
            if exact_measured and _by_pairs(exact_measured[-1], n, args.target_batch) > args.max_seconds:
                break
            t = seconds_per_step(make_step(cfg, n, args.target_batch, shape, draw), 1)
            exact_measured.append((n, t))
            print(f"  exact {args.exact_backend:>5} support {n:>4}: {t:.2f} s/step", flush=True)
    print()
    header = f"{'support':>8} " + " ".join(f"{k + ' s/step':>18}" for k in rows)
    if exact_measured:
        header += f" {'exact s/step':>16} {'speed-up':>10}"
    print(header)
    fits = {k: fit_power(args.sizes, v) for k, v in rows.items()}
    measured = dict(exact_measured)
    exact_times = [measured[n] if n in measured else _by_pairs(exact_measured[-1], n, args.target_batch)
                   for n in args.sizes] if exact_measured else []
    exact_fit = fit_power(args.sizes, exact_times) if exact_measured else None
    for i, n in enumerate(args.sizes):
        line = f"{n:>8} " + " ".join(f"{v[i]:>18.4f}" for v in rows.values())
        if exact_measured:
            first = next(iter(rows.values()))[i]
            mark = " " if n in measured else "*"
            line += f" {exact_times[i]:>15.2f}{mark} {exact_times[i] / first:>10.0f}x"
        print(line)
    print("fitted exponents p (s/step ~ support^p): " + ", ".join(f"{k} {v[0]:.2f}" for k, v in fits.items())
          + (f", exact {exact_fit[0]:.2f}" if exact_fit else ""))
    if exact_measured:
        print("* extrapolated from the largest measured exact point in proportion to kernel entries per step")
    if 100 in args.sizes and exact_measured:
        first_key, i = next(iter(rows)), args.sizes.index(100)
        how = "measured" if 100 in measured else "extrapolated"
        print(f"speed-up at 100 support images ({first_key} vs exact, {how}): {exact_times[i] / rows[first_key][i]:.0f}x")


if __name__ == "__main__":
    main()
