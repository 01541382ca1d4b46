"""Kernel entries per second of the exact ConvNet NTK/NNGP: ours (JAX, torch) vs neural-tangents.

Architecture: 3 blocks of conv3x3 (SAME) + ReLU + 2x2 average pool, Flatten, Dense
(``W_std = sqrt(2)``, ``b_std = 0.1``), the ConvNet of KIP/RFAD's kernel evaluations, on
28x28x1 (MNIST) and 32x32x3 (CIFAR) inputs. Each row reports entries per second measured
after a warm-up call (JIT compilation excluded) and the largest relative difference from
neural-tangents on a common block of pairs ("equal values"). ``--profile`` adds where the
time of one JAX tile goes (first conv as a matrix product, the ReLU arc-cosine map with
pooling, the later layers).

    python benchmarks/convnet_kernel_speed.py [--kind ntk] [--pairs 16 32] [--nt-pairs 4 4]
        [--sizes 28x28x1 32x32x3] [--backends jax torch torch-compiled nt] [--dtype float32]
        [--depth 3] [--no-pool] [--torch-threads N] [--profile] [--device auto] [--data-dir DIR]

``--depth`` and ``--no-pool`` change the architecture (a :class:`~kdistill.ops.convnet.ConvNetSpec`,
which both our kernel and the neural-tangents network are built from).

``--device`` is our backends' device setting (``auto``: the first accelerator each
library sees, else the CPU; ``cpu``, ``cuda``, ``cuda:1``, ...; neural-tangents runs on
JAX's default device); the device used is printed. ``--data-dir`` (a folder holding
``mnist/`` and ``cifar-10/``, e.g. ``../shared/data``) pairs real standardized training
images (``kip_step_time.image_source``) instead of standard-normal arrays; the cost does
not depend on the values.

Run it on an otherwise idle machine: the numbers scale with free cores.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from kdistill.errors import ConfigError


def _shape(text: str) -> tuple[int, int, int]:
    h, w, c = (int(v) for v in text.lower().split("x"))
    return h, w, c


def nt_kernel_fn(depth: int = 3, pool: bool = True):
    """The same architecture in neural-tangents ``stax`` (the ``nt`` kernel's ``convnet``
    network of the spec; jitted kernel_fn)."""
    import jax

    from kdistill.plugins.kernels.nt import convnet_arch

    return jax.jit(convnet_arch(depth=depth, pool=pool)[2], static_argnames="get")


def time_ours(name: str, x1: np.ndarray, x2: np.ndarray, kind: str, dtype: str, repeats: int,
              depth: int = 3, pool: bool = True, device: str = "auto"):
    """``name``: ``jax``, ``torch`` (eager) or ``torch-compiled`` (``compile=True``), on
    ``device`` (the backends' device setting)."""
    from kdistill.core.registry import get_registry
    from kdistill.plugins.kernels.convnet import ConvNetKernel

    b = get_registry().backend(name.split("-")[0], device)
    k = ConvNetKernel(kind=kind, depth=depth, pool=pool, compile=name.endswith("compiled")).bind(b)
    a1, a2 = b.asarray(x1, dtype), b.asarray(x2, dtype)
    start = time.perf_counter()
    b.to_numpy(k(a1, a2))  # warm-up: compile, variance cache of x2 (as in evaluation)
    print(f"  ({name} on {b.describe_devices()}: first call incl. compilation {time.perf_counter() - start:.0f} s)",
          flush=True)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = b.to_numpy(k(a1, a2))
        best = min(best, time.perf_counter() - start)
    return out, x1.shape[0] * x2.shape[0] / best


def time_nt(x1: np.ndarray, x2: np.ndarray, kind: str, dtype: str, repeats: int,
            depth: int = 3, pool: bool = True):
    import jax.numpy as jnp

    fn = nt_kernel_fn(depth, pool)
    a1, a2 = jnp.asarray(x1, dtype), jnp.asarray(x2, dtype)
    np.asarray(fn(a1, a2, get=kind))
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = np.asarray(fn(a1, a2, get=kind))
        best = min(best, time.perf_counter() - start)
    return out, x1.shape[0] * x2.shape[0] / best


def profile_jax(shape, kind: str, dtype: str, device: str = "auto") -> None:
    """Milliseconds per image pair of the pieces of one tile (1 x 4 pairs), JAX."""
    import jax

    from kdistill.core.registry import get_registry
    from kdistill.plugins.kernels import convnet as cn
    from kdistill.ops.arccos import relu_layer

    b = get_registry().backend("jax", device)
    xp = b.xp
    k = cn.ConvNetKernel(kind=kind).bind(b)
    rng = np.random.default_rng(0)
    h, w, c = shape
    x1 = b.asarray(rng.standard_normal((1, h, w, c)), dtype)
    x2 = b.asarray(rng.standard_normal((4, h, w, c)), dtype)
    v1, v2 = k._variances(x1), k._variances(x2)
    p1, p2 = cn._patches(xp, x1), cn._patches(xp, x2)
    step = k._chunk_rows(4, h, w)
    pc, vc = p1[:, :step], v1[0][:, :step]
    chunks = (h // 2) * 2 // step
    with_ntk = kind == "ntk"

    def first_conv(p, q):
        return k._first_conv(p, q, False)

    def relu(kk, v, vv):
        kxx = xp.reshape(v, v.shape + (1, 1, 1))
        kyy = xp.reshape(vv, (1, 1, 1) + tuple(vv.shape))
        kn, kd, _, _ = relu_layer(b, kk, kxx, kyy, 2.0, 0.0)
        return cn._pool_full(xp, kn, kd * kk if with_ntk else None)

    k0 = jax.jit(first_conv)(pc, p2)
    l0, n0 = k._layer0(p1, p2, v1[0], v2[0], False, with_ntk)

    def rest(kk, nn):
        for layer in range(1, 3):
            kk, nn = cn._conv_pair(xp, cn._conv_full, kk, nn, 0.01)
            kk, nn = k._relu(kk, nn, v1[layer], v2[layer], False)
            kk, nn = cn._pool_full(xp, kk, nn)
        return k._readout_full(kk), (None if nn is None else k._readout_full(nn))

    def clock(fn, *args):
        fn = jax.jit(fn)
        jax.block_until_ready(fn(*args))
        best = math.inf
        for _ in range(5):
            start = time.process_time()
            jax.block_until_ready(fn(*args))
            best = min(best, time.process_time() - start)
        return best * 1e3 / 4  # ms CPU per pair

    parts = {
        "first conv (matmul of 3x3 patches)": clock(first_conv, pc, p2) * chunks,
        "ReLU arc-cosine map + 2x2 pool (full resolution)": clock(relu, k0, vc, v2[0]) * chunks,
        "conv/ReLU/pool of blocks 2-3 + readout": clock(rest, l0, n0),
        "whole tile (sum of the pieces, fused)": clock(lambda a, bb: k._full_block(a, bb, v1, v2), p1, p2),
    }
    print(f"  JAX CPU time per pair, {h}x{w}x{c} {kind} {dtype}:")
    for name, ms in parts.items():
        print(f"    {name:50s} {ms:8.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["28x28x1", "32x32x3"])
    ap.add_argument("--kind", default="ntk", choices=["ntk", "nngp"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--pairs", type=int, nargs=2, default=[16, 32], metavar=("N1", "N2"))
    ap.add_argument("--nt-pairs", type=int, nargs=2, default=[4, 4], metavar=("N1", "N2"))
    ap.add_argument("--backends", nargs="+", default=["jax", "torch", "torch-compiled", "nt"],
                    help="jax, torch (eager), torch-compiled (torch.compile), nt (neural-tangents)")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch.set_num_threads (0: torch's default); use 1 on a loaded machine, "
                         "where OpenMP threads contend with other processes")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--depth", type=int, default=3, help="conv blocks (default 3, the papers')")
    ap.add_argument("--no-pool", action="store_true", help="no average pooling (the convnet-nopool kernel)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--device", default="auto",
                    help="device setting of our backends: auto (default), cpu, cuda, cuda:1, gpu, ...")
    ap.add_argument("--data-dir", help="a folder holding mnist/ and cifar-10/: real images instead of random arrays")
    args = ap.parse_args()
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)

    pool = not args.no_pool
    if args.profile and (args.depth != 3 or not pool):
        ap.error("--profile measures the default architecture (depth 3, pooled)")
    block = "conv3x3+ReLU+avgpool" if pool else "conv3x3+ReLU"
    print(f"ConvNet {args.kind.upper()} ({args.depth} x {block}, Flatten, Dense), {args.dtype}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; device {args.device!r}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from kip_step_time import image_source

    for text in args.sizes:
        shape = _shape(text)
        draw, source = image_source(shape, args.data_dir)
        print(f"{text} inputs: {source}")
        rng = np.random.default_rng(0)
        if args.data_dir:
            x1, x2 = (draw(n, rng)[0].astype(np.float64) for n in args.pairs)
        else:  # float64 normals, as before --data-dir existed
            x1 = rng.standard_normal((args.pairs[0], *shape))
            x2 = rng.standard_normal((args.pairs[1], *shape))
        n1, n2 = args.nt_pairs
        results = {}
        for name in args.backends:
            if name == "nt":
                try:
                    out, rate = time_nt(x1[:n1], x2[:n2], args.kind, args.dtype, args.repeats, args.depth, pool)
                except ConfigError as exc:  # not installed / incompatible
                    print(f"  {text}: neural-tangents unavailable ({exc})")
                    continue
                results[name] = (out, rate, (n1, n2))
            else:
                out, rate = time_ours(name, x1, x2, args.kind, args.dtype, args.repeats, args.depth, pool,
                                      args.device)
                results[name] = (out, rate, x1.shape[:1] + x2.shape[:1])
        nt_rate = results["nt"][1] if "nt" in results else None
        print(f"\n{text}:")
        print(f"  {'implementation':24s} {'pairs':>9s} {'entries/s':>10s} {'vs NT':>7s} {'max rel diff vs NT':>19s}")
        for name, (out, rate, pairs) in results.items():
            label = "neural-tangents" if name == "nt" else f"kdistill {name}"
            speedup = f"{rate / nt_rate:6.1f}x" if nt_rate else "   -   "
            diff = "-"
            if "nt" in results and name != "nt":
                ref = results["nt"][0]
                diff = f"{np.max(np.abs(out[:n1, :n2] - ref) / np.abs(ref)):.1e}"
            print(f"  {label:24s} {pairs[0]:>4d}x{pairs[1]:<4d} {rate:10.1f} {speedup:>7s} {diff:>19s}")
        if args.profile:
            profile_jax(shape, args.kind, args.dtype, args.device)


if __name__ == "__main__":
    main()
