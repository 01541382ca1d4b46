"""One thread setting for torch, XLA and the BLAS libraries.

torch and OpenBLAS start one busy-waiting thread per core; when the cores are shared
with another CPU-bound process, those threads wait on each other and a run slows down
5-10x (measured: ``kdistill distill --backend torch`` 108 s with the default against
16 s with one thread on a loaded 2-core machine). ``threads`` (config field,
``--threads``) sets all of them at once:

- torch: :func:`torch.set_num_threads` (intra-op), when torch is in use;
- BLAS/OpenMP libraries loaded into the process (numpy's OpenBLAS/MKL, scikit-learn):
  :func:`threadpoolctl.threadpool_limits`;
- XLA (JAX's CPU backend) has no thread-count option: with ``threads = 1`` its
  Eigen pool is switched off (``--xla_cpu_multi_thread_eigen=false
  intra_op_parallelism_threads=1`` in ``XLA_FLAGS``), which takes effect only if it is
  set before JAX's first computation; otherwise XLA uses the cores the process may run
  on (restrict them with ``taskset`` for other counts).

Results depend on the thread count in the last bits (summation order); the finite-
network evaluation records the count it ran with.
"""

from __future__ import annotations

import logging
import os
import sys

from kdistill.errors import ConfigError

log = logging.getLogger(__name__)

_XLA_ONE_THREAD = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")


def available_cores() -> int:
    """Cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count`` where
    affinity is unknown), >= 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def resolve_threads(threads: int | None) -> int:
    """``threads`` itself, or :func:`available_cores` for ``None``.

    Raises:
        ConfigError: not an integer >= 1.
    """
    if threads is None:
        return available_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1 (or absent: all {available_cores()} cores "
                          f"this process may use), got {threads!r}")
    return threads


def _jax_initialized() -> bool:
    """Whether JAX has created its backends (after which XLA flags are ignored)."""
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # private API moved: assume the worst
        return True


def apply_threads(threads: int | None) -> int:
    """Use ``threads`` threads in torch, the loaded BLAS libraries and (for 1) XLA.

    Args:
        threads: thread count >= 1, or ``None`` for :func:`available_cores`.
    Returns:
        The count applied.
    Raises:
        ConfigError: ``threads`` is not an integer >= 1.
    """
    n = resolve_threads(threads)
    if "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)  # stays in force (not used as a context manager)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        pass
    flags = os.environ.get("XLA_FLAGS", "")
    if n == 1 and not all(f in flags.split() for f in _XLA_ONE_THREAD):
        if _jax_initialized():
            log.warning("threads=1: JAX already ran a computation in this process, so XLA keeps "
                        "its thread pool; set threads before the first JAX call")
        else:
            os.environ["XLA_FLAGS"] = " ".join([flags, *_XLA_ONE_THREAD]).strip()
    return n
