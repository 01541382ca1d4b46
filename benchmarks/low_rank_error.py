"""Error of the ``low-rank`` solver against the exact Cholesky solve, by rank.

FC1 NTK (``fc``, kind="ntk", depth=1) on scikit-learn's digits (8x8, standardized per
pixel), 1000 random support points, the other 797 as test points, relative ridge 1e-6,
centered one-hot labels. For each method (``nystrom``, ``eig``) and rank m, prints the
relative Frobenius error of the test predictions ``K_ts alpha`` against Cholesky's, the
test accuracy, and the seconds per ``solve`` (best of ``--repeats``, jitted and
compiled beforehand on JAX; ``K_ss`` precomputed). The ``SoR`` columns are a reference, not the solver: the
consistent Nystrom (subset-of-regressors) predictor ``F_t (F^T F + lam I)^-1 F^T y``
that also approximates ``K_ts`` by the same landmarks (numpy).

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


def timed_solve(b, solver, k_ss, y, ridge, repeats: int):
    """``(alpha as numpy, best seconds of `repeats` solves)``. Under JAX the solve is
    jitted and compiled ahead of time (compile not timed, nor run twice)."""
    fn = b.jit(lambda k, yy: solver.solve(k, yy, ridge))
    if hasattr(fn, "lower"):  # jax.jit: compile without running
        fn = fn.lower(k_ss, y).compile()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        alpha = b.to_numpy(fn(k_ss, y))
        times.append(time.perf_counter() - start)
    return alpha, min(times)


def sor_predict(k_ss, k_ts, y, ridge, idx, jitter=1e-10):
    """Consistent Nystrom predictor with landmarks ``idx`` (numpy reference)."""
    w = k_ss[np.ix_(idx, idx)]
    chol = np.linalg.cholesky(w + jitter * np.mean(np.diag(w)) * np.eye(len(idx)))
    f, f_t = (np.linalg.solve(chol, k[:, idx].T).T for k in (k_ss, k_ts))
    lam = ridge * np.trace(k_ss) / len(k_ss)
    return f_t @ np.linalg.solve(f.T @ f + lam * np.eye(len(idx)), f.T @ y)


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
    k_ss, k_ts = kernel(xs, xs), b.to_numpy(kernel(xt, xs))
    y = b.asarray(y_s, "float64")

    alpha, t_exact = timed_solve(b, CholeskySolver().bind(b), k_ss, y, args.ridge, args.repeats)
    exact = k_ts @ alpha
    acc_exact = float(np.mean(exact.argmax(1) == labels_t))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; backend {args.backend}; FC1 NTK on digits, "
          f"{len(x_s)} support / {len(x_t)} test, relative ridge {args.ridge:g}")
    print(f"cholesky (exact): test acc {acc_exact:.4f}, {t_exact:.4f} s/solve")
    print(f"{'method':>8} {'m':>5} {'rel err':>10} {'test acc':>9} {'s/solve':>9} {'SoR err':>10} {'SoR acc':>8}")
    k_ss_np = b.to_numpy(k_ss)
    for method in ("nystrom", "eig"):
        for m in args.ranks:
            solver = LowRankSolver(method=method, rank=m).bind(b)
            alpha, secs = timed_solve(b, solver, k_ss, y, args.ridge, args.repeats)
            pred = k_ts @ alpha
            err = np.linalg.norm(pred - exact) / np.linalg.norm(exact)
            acc = float(np.mean(pred.argmax(1) == labels_t))
            sor = ""
            if method == "nystrom":
                p = sor_predict(k_ss_np, k_ts, y_s, args.ridge, solver.landmarks(len(x_s)))
                sor = (f" {np.linalg.norm(p - exact) / np.linalg.norm(exact):>10.3e}"
                       f" {np.mean(p.argmax(1) == labels_t):>8.4f}")
            print(f"{method:>8} {m:>5} {err:>10.3e} {acc:>9.4f} {secs:>9.4f}{sor}", flush=True)


if __name__ == "__main__":
    main()
