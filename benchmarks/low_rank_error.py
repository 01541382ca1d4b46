"""Error of the ``low-rank`` solver against the exact Cholesky solve, by rank.

FC1 NTK (``fc``, kind="ntk", depth=1) on scikit-learn's digits (8x8, standardized per
pixel), 1000 random support points, the other 797 as test points, relative ridge 1e-6,
centered one-hot labels. For each method (``nystrom``, ``eig``) and rank m, prints the
relative Frobenius error of the test predictions against Cholesky's, the test accuracy,
and the seconds of one ``fit`` + prediction including the kernel evaluations (best of
``--repeats``, after a warm-up): Nystrom evaluates the kernel only against its ``m``
landmarks.

    python benchmarks/low_rank_error.py [--backend jax] [--ranks 8 16 ...] [--ridge 1e-6]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
from sklearn.datasets import load_digits

from kdistill.core.registry import get_registry
from kdistill.core.sampling import centered_one_hot
from kdistill.plugins.kernels.fc import FCKernel
from kdistill.plugins.solvers.cholesky import CholeskySolver
from kdistill.plugins.solvers.low_rank import LowRankSolver


def load(n_support: int, seed: int = 0):
    x, labels = load_digits(return_X_y=True)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    perm = np.random.default_rng(seed).permutation(len(x))
    s, t = perm[:n_support], perm[n_support:]
    return x[s], centered_one_hot(labels[s], 10).astype(np.float64), x[t], labels[t]


def timed_fit(b, solver, kernel, xs, y, xt, ridge, repeats: int):
    """``(test predictions as numpy, best seconds of fit + predict)`` after one warm-up."""
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        pred = b.to_numpy(solver.fit(kernel, xs, y, ridge)(xt))
        times.append(time.perf_counter() - start)
    return pred, min(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="jax")
    ap.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512])
    ap.add_argument("--support", type=int, default=1000)
    ap.add_argument("--ridge", type=float, default=1e-6)
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    b = get_registry().backend(args.backend)
    x_s, y_s, x_t, labels_t = load(args.support)
    kernel = FCKernel(kind="ntk", depth=1).bind(b)
    xs, xt = b.asarray(x_s, "float64"), b.asarray(x_t, "float64")
    y = b.asarray(y_s, "float64")

    exact, t_exact = timed_fit(b, CholeskySolver().bind(b), kernel, xs, y, xt, args.ridge, args.repeats)
    acc_exact = float(np.mean(exact.argmax(1) == labels_t))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; backend {args.backend}; FC1 NTK on digits, "
          f"{len(x_s)} support / {len(x_t)} test, relative ridge {args.ridge:g}")
    print(f"cholesky (exact): test acc {acc_exact:.4f}, {t_exact:.4f} s per fit + predict")
    print(f"{'method':>8} {'m':>5} {'rel err':>10} {'test acc':>9} {'s/fit':>9}")
    for method in ("nystrom", "eig"):
        for m in args.ranks:
            solver = LowRankSolver(method=method, rank=m).bind(b)
            pred, secs = timed_fit(b, solver, kernel, xs, y, xt, args.ridge, args.repeats)
            err = np.linalg.norm(pred - exact) / np.linalg.norm(exact)
            acc = float(np.mean(pred.argmax(1) == labels_t))
            print(f"{method:>8} {m:>5} {err:>10.3e} {acc:>9.4f} {secs:>9.4f}", flush=True)


if __name__ == "__main__":
    main()
