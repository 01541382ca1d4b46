"""Kernel ridge regression on host data: input checks, blocked prediction, accuracy.

These functions take numpy inputs, move blocks to the backend of the (bound) kernel
and solver, and return numpy outputs. They are what evaluation and Label Solve
(:mod:`kdistill.plugins.methods.label_solve`) use;
the distillation loop calls ``solver.fit`` directly on backend arrays.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from kdistill.core.contracts import Kernel, Solver
from kdistill.core.validators import plain
from kdistill.errors import ConfigError, DataError, IncompatibleComponentsError, NumericalError

#: Default number of target rows per kernel block.
BLOCK_SIZE = 2048


def as_real_array(x, what: str, ndim: int | None = None, min_ndim: int = 1) -> np.ndarray:
    """``x`` as a numpy array of real numbers (integer or float), all finite.

    Args:
        what: names the argument in messages. ndim / min_ndim: required rank.
    Raises:
        DataError: not convertible, non-numeric dtype (bool, complex, object, str),
            wrong rank, or NaN/Inf values.
    """
    try:
        a = np.asarray(x)
    except Exception as exc:  # ragged lists, tensors that need .detach(), ...
        raise DataError(f"{what}: cannot be converted to a numpy array ({exc})") from exc
    if a.dtype.kind not in "iuf":
        raise DataError(f"{what}: expected real numbers (integer or float), got dtype {a.dtype}")
    if (ndim is not None and a.ndim != ndim) or a.ndim < min_ndim:
        rank = f"{ndim}" if ndim is not None else f">= {min_ndim}"
        raise DataError(f"{what}: expected an array with {rank} dimensions, got shape {a.shape}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise DataError(f"{what}: contains NaN or infinite values")
    return a


def check_support(kernel, solver, x_s, y_s, ridge, dtype, block_size):
    """Validate the arguments that KRR on a support set shares (:func:`krr_predict`,
    Label Solve) and return ``x_s`` ``[n_s, ...]`` and ``y_s`` ``[n_s, C]`` (or None) as
    numpy arrays.

    Raises:
        IncompatibleComponentsError: kernel and solver bound to different backends.
        ConfigError: ``ridge`` not a finite number >= 0, ``dtype`` not float32/float64,
            ``block_size`` not an integer >= 1.
        DataError: non-numeric or NaN/Inf inputs, an empty support set, ``y_s`` rows
            not matching ``x_s``.
    """
    if kernel.b.name != solver.b.name:
        raise IncompatibleComponentsError(
            f"kernel is bound to {kernel.b.name!r} but solver to {solver.b.name!r}; bind both to one backend"
        )
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not (np.isfinite(ridge) and ridge >= 0):
        raise ConfigError(f"ridge must be a finite number >= 0, got {plain(ridge)!r}")
    if dtype not in ("float32", "float64"):
        raise ConfigError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ConfigError(f"block_size must be an integer >= 1, got {plain(block_size)!r}")
    x_s = as_real_array(x_s, "x_s (support inputs [n_s, ...])", min_ndim=2)
    if len(x_s) == 0:
        raise DataError("x_s (support inputs): the support set is empty")
    if y_s is not None:
        y_s = as_real_array(y_s, "y_s (support labels [n_s, C])", ndim=2)
        if y_s.shape[0] != x_s.shape[0] or y_s.shape[1] == 0:
            raise DataError(
                f"y_s has shape {y_s.shape} but x_s has {x_s.shape[0]} rows: expected [{x_s.shape[0]}, C>=1]"
            )
    return x_s, y_s


def check_targets(x_t, x_s: np.ndarray) -> np.ndarray:
    """``x_t`` ``[n_t, ...]`` as a numpy array of finite reals whose example shape is that
    of ``x_s``. Raises DataError otherwise."""
    x_t = as_real_array(x_t, "x_t (targets [n_t, ...])", min_ndim=2)
    if x_t.shape[1:] != x_s.shape[1:]:
        raise DataError(
            f"x_t examples have shape {x_t.shape[1:]} but support examples {x_s.shape[1:]}; they must match"
        )
    return x_t


def check_finite(values: np.ndarray, what: str, ridge: float, dtype: str) -> np.ndarray:
    """``values`` unchanged if all finite. Raises NumericalError naming ``what`` and the
    remedies (a larger relative ``ridge``, float64 instead of ``dtype`` float32) otherwise."""
    if not np.isfinite(values).all():
        hint = ", use dtype='float64'" if dtype == "float32" else ""
        raise NumericalError(
            f"{what} are NaN/Inf: the kernel overflowed or K_ss + ridge*I is singular; raise the "
            f"relative ridge (now {ridge:g}){hint}, or rescale the inputs"
        )
    return values


#: Support examples whose kernel matrix :func:`check_kernel_matrix` inspects.
DEGENERACY_SAMPLE = 64
#: A kernel matrix is "constant" when max - min <= this many epsilons of the kernel
#: dtype times max |K|: the differences between pairs are rounding noise, so K is
#: numerically ``c * 1 1^T`` (rank 1) and every target gets the same prediction.
CONSTANT_EPS = 16


def _describe_kernel(kernel) -> str:
    try:
        params = ", ".join(f"{k}={v!r}" for k, v in kernel.get_params().items())
    except Exception:  # a third-party kernel without attrs fields
        params = ""
    return f"{type(kernel).__name__}({params})"


def kernel_degeneracy(k: np.ndarray, dtype: str) -> str | None:
    """Whether a (support) kernel matrix ``k [m, m]`` computed in ``dtype`` is numerically
    degenerate, and how.

    With ``eps`` and ``tiny`` the machine epsilon and smallest normal number of
    ``dtype``, and ``m >= 2``:

    - ``"constant"``: ``max(K) - min(K) <= CONSTANT_EPS * eps * max|K|`` (this includes
      an all-zero K): the pairs differ by rounding noise only, K is rank 1 and KRR
      predicts the same label vector for every target;
    - ``"diagonal"``: every off-diagonal ``|K_ij| <= tiny * max(diag)``: the kernel of
      every pair of distinct examples underflowed to zero, so it says nothing about
      any example but itself and predictions on new targets are zero (ties).

    Off-diagonals that are small but representable (e.g. ``1e-20`` against a diagonal
    of 1) are not degenerate: their ratios still rank the neighbours.

    Returns:
        ``"constant"``, ``"diagonal"`` or None.
    """
    k = np.asarray(k, np.float64)
    m = k.shape[0]
    if m < 2 or not np.isfinite(k).all():
        return None  # too small to tell; non-finite values are reported elsewhere
    info = np.finfo(np.dtype(dtype))
    scale = float(np.abs(k).max())
    if float(k.max() - k.min()) <= CONSTANT_EPS * float(info.eps) * scale:
        return "constant"
    diag = np.diagonal(k)
    off = np.abs(k[~np.eye(m, dtype=bool)])
    if float(diag.max()) > 0 and float(off.max()) <= float(info.tiny) * float(diag.max()):
        return "diagonal"
    return None


def check_kernel_matrix(kernel, x_s: np.ndarray, dtype: str) -> None:
    """Refuse a kernel that is numerically degenerate on the support set.

    Computes the kernel on up to :data:`DEGENERACY_SAMPLE` evenly spaced support
    examples (cheap next to the predictions) and applies :func:`kernel_degeneracy`.

    Raises:
        NumericalError: naming how K is degenerate and the kernel parameter to change
            (the kernel's ``degeneracy_hint(kind)`` where it has one, e.g. RBF's
            ``gamma``; otherwise its parameters are listed).
    """
    b = kernel.b
    idx = np.unique(np.linspace(0, len(x_s) - 1, min(len(x_s), DEGENERACY_SAMPLE)).round().astype(np.int64))
    if len(idx) < 2:
        return
    xs = b.asarray(x_s[idx], dtype)
    kind = kernel_degeneracy(b.to_numpy(b.cast(kernel(xs, xs), "float64")), dtype)
    if kind is None:
        return
    what = {
        "constant": "every entry of the support kernel matrix K_ss is the same value up to "
                    f"{dtype} rounding (K is numerically rank 1), so KRR would give every target the same "
                    "prediction",
        "diagonal": "the kernel between every two distinct support examples underflowed to 0 in "
                    f"{dtype} (K_ss is numerically diagonal), so KRR would predict 0 for every new target",
    }[kind]
    hint_fn = getattr(kernel, "degeneracy_hint", None)
    hint = hint_fn(kind) if callable(hint_fn) else (
        "change the kernel's parameters (or rescale the inputs)"
        + ("; if the support examples are identical, the set itself is degenerate" if kind == "constant" else ""))
    raise NumericalError(f"degenerate kernel {_describe_kernel(kernel)}: {what}; {hint}")


#: Largest fraction of targets whose predictions may tie across all classes.
MAX_TIED_FRACTION = 0.01


def _check_ties(pred: np.ndarray, kernel, y_s: np.ndarray) -> None:
    """Refuse predictions that tie across every class for more than
    :data:`MAX_TIED_FRACTION` of the targets: their argmax is an arbitrary tie-break
    (class 0), so an accuracy would be wrong. Real-valued predictions never tie
    exactly unless the kernel of a target with every support example is 0 (underflow)
    or the support labels are all 0."""
    if pred.shape[1] < 2 or not len(pred):
        return
    tied = int(np.count_nonzero(pred.max(axis=1) == pred.min(axis=1)))
    if tied <= MAX_TIED_FRACTION * len(pred):
        return
    share = f"{tied} of {len(pred)} targets ({100 * tied / len(pred):.0f}%)"
    if not np.any(y_s):
        raise DataError(f"the support labels are all 0, so the KRR predictions of {share} tie across every "
                        "class; give labels that encode the classes (e.g. centered one-hot)")
    hint_fn = getattr(kernel, "degeneracy_hint", None)
    hint = hint_fn("diagonal") if callable(hint_fn) else "change the kernel's parameters (or rescale the inputs)"
    raise NumericalError(
        f"degenerate kernel {_describe_kernel(kernel)}: for {share} the kernel with every support example is 0 "
        f"(underflow), so their predictions tie across all classes and an accuracy would count arbitrary "
        f"tie-breaks; {hint}")


def iter_blocks(n: int, block_size: int = BLOCK_SIZE) -> Iterator[slice]:
    """Consecutive slices covering ``range(n)``, each at most ``block_size`` long."""
    for start in range(0, n, block_size):
        yield slice(start, min(start + block_size, n))


def pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
    """``x [n, ...]`` with its last row repeated until ``n`` is a multiple of ``multiple``."""
    pad = -len(x) % multiple
    return np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x


def map_rows(b, fn, x: np.ndarray, dtype: str) -> np.ndarray:
    """``fn`` (rows of a backend array -> per-row outputs ``[m, ...]``) on ``x [n, ...]``
    split over the backend's data-parallel shards (:attr:`~kdistill.core.backend.Backend.shards`:
    devices of a JAX mesh or torch processes; ``x`` padded to a multiple of them),
    gathered as numpy ``[n, ...]`` in every process."""
    if b.shards == 1:
        return b.to_numpy(fn(b.asarray(x, dtype)))
    return b.gather_rows(fn(b.shard_rows(pad_rows(x, b.shards), dtype)))[:len(x)]


def krr_predict(
    kernel: Kernel,
    solver: Solver,
    x_s: np.ndarray,
    y_s: np.ndarray,
    x_t: np.ndarray,
    ridge: float,
    dtype: str = "float32",
    block_size: int = BLOCK_SIZE,
    progress=None,
    count_support: bool = False,
) -> np.ndarray:
    """KRR predictions of a support set on targets.

    Args:
        kernel, solver: bound to the same backend.
        x_s: ``[n_s, ...]`` support inputs; y_s: ``[n_s, C]`` support labels.
        x_t: ``[n_t, ...]`` targets, predicted ``block_size`` rows at a time per
            data-parallel shard (:func:`map_rows`: split over the devices of a JAX mesh
            or the processes of a torch process group).
        ridge: relative ridge; dtype: dtype of the kernel computation.
        progress: optional callable ``progress(n_rows_done)`` after each block.
        count_support: progress also counts the support's own kernel rows, so the
            calls add up to ``n_s + n_t`` rows of ``n_s`` kernel entries each (equal work
            per row): first ``n_s`` for ``K_ss`` (the fit), then the target blocks. Kernels
            that report their tiles (:func:`kdistill.runtime.progress.report_pairs`, e.g. the
            exact ConvNet kernel) advance it per tile, with fractional row counts
            (floats); the others once after the fit and once per block.
    Returns:
        ``[n_t, C]`` float64 predictions.
    Raises:
        DataError: non-numeric or NaN/Inf inputs, an empty support set, or mismatched
            shapes (``y_s`` rows vs ``x_s``, ``x_t`` example shape vs ``x_s``).
        ConfigError: negative/NaN ridge, unknown dtype, bad block_size.
        IncompatibleComponentsError: kernel and solver on different backends.
        NotPositiveDefiniteError, NumericalError: unsolvable system, NaN/Inf
            predictions, or a numerically degenerate kernel (:func:`check_kernel_matrix`).
    """
    x_s, y_s = check_support(kernel, solver, x_s, y_s, ridge, dtype, block_size)
    x_t = check_targets(x_t, x_s)
    check_kernel_matrix(kernel, x_s, dtype)
    b = solver.b
    hint = kernel.rows_per_block(len(x_s), tuple(x_s.shape[1:]))
    if hint:  # slow kernels (e.g. convnet) ask for smaller blocks: progress per block
        block_size = max(1, min(block_size, int(hint)))
    n_s, sent = len(x_s), [0.0]  # rows reported by kernel tiles since the last top-up

    def on_pairs(pairs: int) -> None:
        rows = pairs / n_s
        sent[0] += rows
        progress(rows)

    def top_up(rows: int) -> None:  # the rest of ``rows`` that tiles did not report
        rest, sent[0] = max(0.0, rows - sent[0]), 0.0
        if rest:
            progress(rest)

    from kdistill.runtime.progress import listen_pairs

    with listen_pairs(on_pairs if progress is not None and count_support else None):
        predictor = solver.fit(kernel, b.asarray(x_s, dtype), b.asarray(y_s, "float64"), ridge)
        if progress is not None and count_support:
            top_up(n_s)
        out = np.empty((len(x_t), y_s.shape[1]), dtype=np.float64)
        for sl in iter_blocks(len(x_t), block_size * b.shards):  # a block's rows split over the shards
            out[sl] = check_finite(map_rows(b, predictor, x_t[sl], dtype), "KRR predictions", ridge, dtype)
            if progress is not None:
                if count_support:
                    top_up(sl.stop - sl.start)
                else:
                    progress(sl.stop - sl.start)
    _check_ties(out, kernel, y_s)
    return out


def accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows of ``pred [n, C]`` whose argmax equals ``labels [n]`` (int).

    Raises:
        DataError: empty input, ``pred`` not 2-D, ``labels`` not 1-D integers, or
            different numbers of rows.
    """
    pred = np.asarray(pred)
    labels = np.asarray(labels)
    if pred.ndim != 2 or labels.ndim != 1 or labels.dtype.kind not in "iu" or len(pred) != len(labels) or not len(pred):
        raise DataError(
            f"accuracy needs predictions [n, C] and integer labels [n] with n >= 1; got "
            f"{pred.shape} and {labels.shape} {labels.dtype}"
        )
    return float(np.mean(np.argmax(pred, axis=1) == labels))
