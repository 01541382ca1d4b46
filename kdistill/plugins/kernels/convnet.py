"""Infinite-width ConvNet NNGP and NTK with average pooling, exact (no sampling).

Architecture: :class:`~kdistill.ops.convnet.ConvNetSpec` (shared with the random-feature
``rf-convnet`` kernel, the ``nt`` kernel's ``convnet`` and the finite torch ConvNet), in
neural-tangents ``stax`` notation (NHWC images, NTK parameterization, ``W = sqrt(sw2)``,
``b = sqrt(sb2)``)::

    serial([Conv(w, (3, 3), padding="SAME", W_std=W, b_std=b), Relu()]   # if stem
           + [Conv(w, (3, 3), padding="SAME", W_std=W, b_std=b), Relu(),
              AvgPool((2, 2), strides=(2, 2))] * depth                    # pool=False: no AvgPool
           + [Flatten() or GlobalAvgPool(), Dense(1, W_std=W, b_std=b)])

``depth=3, stem=False`` is the ConvNet of the KIP/RFAD papers' kernel evaluations
(Nguyen et al. 2021, NeurIPS, sec. 3; Loo et al. 2022, RFAD, sec. 4); ``stem=True``
prepends the extra conv layer of KIP's ``ConvNet`` code.

Recursion (Novak et al. 2019, "Bayesian deep CNNs with many channels are GPs", eq. 7;
Arora et al. 2019, "On exact computation...", sec. 4 / App. B), applied by one
interpreter of the spec's steps (:meth:`ConvNetKernel._walk`) in four modes: cross pairs,
self-covariances (the per-pixel variances), diagonal pairs and diagonal variances (no
pooling). The kernel of a pair of
images ``x, x'`` is a covariance over pixel pairs ``K[p, q]`` (``p`` a pixel of ``x``,
``q`` a pixel of ``x'``):

- input: ``K0[p, q] = x[p] . x'[q] / C``;
- conv 3x3 SAME: ``K[p, q] <- sw2/9 * sum_o K[p+o, q+o] + sb2`` (9 offsets ``o``, zero
  padding); the NTK ``Theta <- sw2/9 * sum_o Theta[p+o, q+o] + K_new``;
- ReLU: the arc-cosine map of :func:`~kdistill.ops.arccos.relu_layer`, entrywise,
  with the per-pixel variances ``K(x,x)[p,p]`` and ``K(x',x')[q,q]``; ``Theta <- Kdot * Theta``;
- AvgPool 2x2 (stride 2, VALID): the mean over 2x2 blocks in both ``p`` and ``q``;
- readout: Flatten (mean of the diagonal ``K[p, p]``) or GlobalAvgPool (mean over all
  ``(p, q)``), then Dense: ``K <- sw2 K + sb2``, ``Theta <- sw2 Theta + K``.

Computation (``n1 n2 (H W)^2`` work per layer at full resolution; NT's cost). Measured
where the time goes (``benchmarks/convnet_kernel_speed.py --profile``): the first layer
at full resolution, i.e. the first conv and the ReLU map of ``(H W)^2`` entries per pair,
is over 80% of it; the later blocks are 4x and 16x smaller.

- The first conv of the inputs is one matrix product of 3x3 patches
  ``[b1 H W, 9C] @ [9C, b2 H W]`` (so ``K0`` is never formed).
- The first layer's conv, ReLU and pooling run over cache-sized chunks of image rows, one
  after the other (:meth:`Backend.map`: ``lax.map`` under JAX); pooling maps rows
  ``2i, 2i+1`` to row ``i``, so only pooled rows (1/4) are kept. NNGP and NTK are stacked
  into one array so that XLA computes the ReLU map in a single loop. Chunking and
  stacking measured 2.5x and 4x faster than whole arrays and two outputs.
- The ReLU map (:func:`~kdistill.ops.arccos.relu_layer`) has closed-form
  derivatives, finite at identical pixels (cosine 1); in float32, JAX's arccos is a
  vectorizing polynomial (XLA's is scalar, 20x slower).
- Later convs are separable sums of diagonally shifted slices.
- Pairs are processed in tiles of ``b1 x b2`` pairs (one compiled call) bounded by
  ``block_mb``; inside a tile, a sequential map over rows of ``x1`` and groups of
  columns of ``x2`` keeps the later layers' arrays cache-sized. Each step of that map is
  rematerialized under differentiation (:meth:`Backend.checkpoint`), so the gradient of
  a KIP step holds one step's full-resolution arrays at a time, not every pair's.
  Inside a compiled program (traced inputs, e.g. a jitted KIP step) all pairs form one
  tile: unrolled tiles would make the program, and its compilation time, grow with
  ``n1 n2`` (minutes at 50 x 128 pairs of 32x32 images; seconds as one tile).
- The per-pixel variances of every image (needed by the ReLU map) come from a separate
  pass over ``[n, H, W, 1, H, W]`` self-covariances, cached for the last inputs seen (the
  support set of an evaluation is processed once).
- On torch, ``compile="auto"`` compiles the tile's pieces with ``torch.compile`` once an
  instance has done enough work. Compiled pieces are cached by the backend
  (:meth:`Backend.compiled`), per hyperparameters.

Without pooling and with the Flatten readout only the diagonal ``K[p, p]`` is ever
needed (Novak et al. 2019, sec. 3.2), so that kernel costs ``O(n1 n2 H W)`` per layer:
``pool=False`` (or the registered name ``convnet-nopool``) is a conv kernel cheap enough to
train KIP with on a CPU; its steps are rematerialized under differentiation
(:meth:`Backend.checkpoint`), so memory stays at one step's working set.

Verified against ``neural_tangents.stax`` (values and input gradients) in
``tests/test_convnet.py``.
"""

from __future__ import annotations

from typing import Any

import attrs

from kdistill.core.contracts import Kernel
from kdistill.core.validators import boolean, kernel_kind, nonneg, positive, positive_int
from kdistill.errors import ConfigError
from kdistill.ops.arccos import relu_layer
from kdistill.ops.convnet import READOUTS, AvgPool, Conv, ConvNetSpec, Readout, Relu, readout_name
from kdistill.runtime.progress import pairs_listened, report_pairs

__all__ = ["ConvNetKernel", "ConvNetNoPoolKernel", "COMPILE_AFTER", "READOUTS"]

#: ``compile="auto"``: compile the tile pieces on eager backends (torch) once a kernel
#: instance has processed this many first-layer entries (``n1 n2 (H W)^2``); about 5,000
#: 28x28 pairs, i.e. minutes of eager work, which repays the compilation (about 30-60 s).
COMPILE_AFTER = 3 * 10**9


def _compile_option(inst, attr, value) -> None:
    if value not in (True, False, "auto"):
        raise ConfigError(f"{type(inst).__name__}.compile must be true, false or 'auto', got {value!r}")


# --- array helpers (written once against the Array-API namespace ``xp``) ---------------


def _pad(xp, k, axis: int, before: int, after: int):
    """Zero-pad ``k`` along ``axis`` (Array API has no ``pad``: concatenate zeros)."""
    parts = []
    for size in (before, None, after):
        if size is None:
            parts.append(k)
        elif size > 0:
            shape = list(k.shape)
            shape[axis] = size
            # zeros made from k itself, so they are on k's device on every backend
            parts.append(xp.broadcast_to(xp.zeros_like(_take(k, {axis: (0, 1)})), tuple(shape)))
    return xp.concat(parts, axis=axis) if len(parts) > 1 else k


def _take(k, ranges: dict[int, tuple[int, int]]):
    idx = [slice(None)] * k.ndim
    for axis, (start, stop) in ranges.items():
        idx[axis] = slice(start, stop)
    return k[tuple(idx)]


def _box(xp, k, axes: tuple[int, ...]):
    """``out[..u..] = sum_{d in (-1, 0, 1)} k[..u+d..]`` with the same shift ``d`` on every
    axis in ``axes`` (one axis: a 3-tap box filter; two axes ``(p, q)``: the diagonal
    shift of a covariance), zero outside (SAME padding)."""
    n = k.shape[axes[0]]
    for a in axes:
        k = _pad(xp, k, a, 1, 1)
    return sum(_take(k, {a: (d, d + n) for a in axes}) for d in range(3))


def _conv_full(xp, k):
    """``sum_o K[p+o, q+o] / 9`` on a ``[..., b1, H, W, b2, H, W]`` covariance (3x3, SAME)."""
    return _box(xp, _box(xp, k, (-5, -2)), (-4, -1)) * (1.0 / 9.0)


def _conv_diag(xp, k, axes: tuple[int, int] = (-2, -1)):
    """3x3 SAME box filter / 9 over the two spatial ``axes`` (diagonal covariances,
    variances)."""
    h_axis, w_axis = (a % k.ndim for a in axes)
    return _box(xp, _box(xp, k, (h_axis,)), (w_axis,)) * (1.0 / 9.0)


def _conv_pair(xp, conv, k, ntk, sb2: float):
    """The next conv layer on the NNGP and NTK together: ``(conv(K) + sb2,
    conv(Theta) + conv(K) + sb2)``. Stacking both into one array lets XLA compute the
    ReLU map that produced them in one single-output loop (about 4x faster than two
    outputs, measured) and halves the per-op overhead in eager mode."""
    if ntk is None:
        return conv(xp, k) + sb2, None
    t = conv(xp, xp.stack([k, ntk]))
    k = t[0] + sb2
    return k, t[1] + k


def _pool_full(xp, k, ntk=None):
    """2x2 average pooling, stride 2, VALID, in both pixel indices of ``[b1, H, W, b2, H', W']``
    (odd sizes drop the last row/column). ``ntk``, when given, is pooled alongside.

    Both arrays are stacked and the ``p`` side is pooled by adding four strided slices
    (contiguous inner axes: XLA fuses the producer, e.g. the ReLU map, into one
    vectorized loop), then the ``q`` side by a reduction over 4x less data. Measured
    1.2 ns per input entry for ReLU + pooling of NNGP and NTK together, against 6 ns
    for one 4-axis mean per array.
    """
    a, h1, w1, b, h2, w2 = k.shape
    h1, w1, h2, w2 = h1 // 2, w1 // 2, h2 // 2, w2 // 2
    parts = [k] if ntk is None else [k, ntk]
    t = xp.stack([p[:, : 2 * h1, : 2 * w1, :, : 2 * h2, : 2 * w2] for p in parts])
    t = xp.reshape(t, (len(parts) * a, h1, 2, w1, 2, b * 4 * h2 * w2))
    t = t[:, :, 0, :, 0] + t[:, :, 0, :, 1] + t[:, :, 1, :, 0] + t[:, :, 1, :, 1]
    t = xp.reshape(t, (len(parts), a, h1, w1, b, h2, 2, w2, 2))
    t = xp.sum(t, axis=(6, 8)) * (1.0 / 16.0)
    return (t[0], None) if ntk is None else (t[0], t[1])


def _diag_full(xp, k):
    """The diagonal ``K[p, p]`` of ``[b1, H, W, b2, H, W]`` (``b2`` = 1 or ``b1``) as ``[b1, H, W]``
    (only used with ``b2 == 1``: self-covariances)."""
    n, h, w = k.shape[0], k.shape[1], k.shape[2]
    return xp.reshape(xp.linalg.diagonal(xp.reshape(k, (n, h * w, h * w))), (n, h, w))


def xp_sum_sq(xp, p):
    """``sum(p * p)`` over the last axis."""
    return xp.sum(p * p, axis=-1)


def _patches(xp, x):
    """3x3 SAME patches of ``x [n, H, W, C]`` as ``[n, H, W, 9C]`` (zero padding)."""
    h, w = x.shape[1], x.shape[2]
    xpad = _pad(xp, _pad(xp, x, 1, 1, 1), 2, 1, 1)
    cols = [xpad[:, i : i + h, j : j + w, :] for i in range(3) for j in range(3)]
    return xp.concat(cols, axis=3)


@attrs.define(kw_only=True)
class ConvNetKernel(Kernel):
    """Infinite-width ConvNet kernel (NNGP or NTK), exact, with average pooling.

    Args:
        kind: ``"ntk"`` (default) or ``"nngp"``.
        depth: number of conv3x3 + ReLU (+ 2x2 average pool) blocks, >= 1 (papers: 3).
        sw2, sb2: weight and bias variances of every conv and the readout (KIP/RFAD:
            2.0 and 0.01, i.e. ``W_std = sqrt(2)``, ``b_std = 0.1``).
        pool: average-pool after every block (default). ``False``: no pooling; with the
            Flatten readout only diagonal covariances are needed and the kernel costs
            ``O(n1 n2 H W depth)`` (registered as ``convnet-nopool``).
        readout: ``"flatten"`` (default, as KIP/RFAD) or ``"gap"`` (global average pooling).
        stem: prepend one conv3x3 + ReLU without pooling (KIP's ``ConvNet``).
        block_mb: memory cap, in MiB, of one tile of pairs (one compiled call). The
            estimate counts the full-resolution arrays of every pair of the tile, an upper
            bound: inside a tile, work runs over cache-sized steps (rows x groups of
            columns x chunks of image rows). Without pooling, steps are rematerialized
            under differentiation, so a tile holds only its outputs.
        compile: ``"auto"`` (default), ``True`` or ``False``. On eager backends (torch)
            compile the pieces of a tile with :meth:`Backend.compile` (``torch.compile``,
            20x faster after 30-60 s of compilation per input shape): always, never, or
            (``auto``) once an instance has done about :data:`COMPILE_AFTER` first-layer
            entries of work (evaluations, Label Solve; not tests or small calls). JAX
            always compiles whole tiles. The no-pooling kernel is never compiled this way.

    Inputs ``x1 [n1, H, W, C]``, ``x2 [n2, H, W, C]`` (NHWC, float32 or float64; the
    computation runs in the input dtype). Output ``[n1, n2]`` in that dtype.
    Differentiable with respect to both inputs on both backends.

    Raises:
        ConfigError: invalid hyperparameters, or inputs that are not 4-D NHWC of equal
            shape.
    """

    kind: str = attrs.field(default="ntk", validator=kernel_kind)
    depth: int = attrs.field(default=3, validator=positive_int)
    sw2: float = attrs.field(default=2.0, converter=float, validator=positive)
    sb2: float = attrs.field(default=0.01, converter=float, validator=nonneg)
    pool: bool = attrs.field(default=True, validator=boolean)
    readout: str = attrs.field(default="flatten", validator=readout_name)
    stem: bool = attrs.field(default=False, validator=boolean)
    block_mb: float = attrs.field(default=512.0, converter=float, validator=positive)
    compile: bool | str = attrs.field(default="auto", validator=_compile_option)
    #: entries of a first-layer chunk (tests lower it to exercise chunking on tiny images)
    _chunk_entries: int = attrs.field(default=1 << 18, init=False, repr=False, eq=False)
    _var_cache: list = attrs.field(factory=list, init=False, repr=False, eq=False)
    _work: list = attrs.field(factory=lambda: [0], init=False, repr=False, eq=False)
    _compile_now: bool = attrs.field(default=False, init=False, repr=False, eq=False)
    _plans: dict = attrs.field(factory=dict, init=False, repr=False, eq=False)

    # -- layout of the network ----------------------------------------------------------
    @property
    def spec(self) -> ConvNetSpec:
        """The architecture (:class:`~kdistill.ops.convnet.ConvNetSpec`) of these hyperparameters."""
        return self._plan()["spec"]

    def _plan(self) -> dict:
        """:attr:`spec` and the segments of its steps that the computation walks, cached
        per hyperparameters: ``first`` (the first block: Conv, Relu (, AvgPool)), ``rest``
        (the later steps, readout included), ``all``; ``rest_var`` and ``all_var`` stop at
        the last Conv (the variance passes need nothing after it)."""
        key = (self.depth, self.pool, self.readout, self.stem, self.sw2, self.sb2)
        plan = self._plans.get(key)
        if plan is None:
            spec = ConvNetSpec(depth=self.depth, pool=self.pool, readout=self.readout, stem=self.stem,
                               sw2=self.sw2, sb2=self.sb2)
            layers = spec.layers()
            n_first = 3 if spec.blocks()[0] else 2
            end = 1 + max(i for i, step in enumerate(layers) if isinstance(step, Conv))
            plan = {"spec": spec, "all": layers, "first": layers[:n_first], "rest": layers[n_first:],
                    "all_var": layers[:end], "rest_var": layers[n_first:end]}
            self._plans.clear()
            self._plans[key] = plan
        return plan

    def schedule(self) -> list[bool]:
        """One entry per conv + ReLU layer: whether an average pool follows it."""
        return list(self.spec.blocks())

    @property
    def diagonal_only(self) -> bool:
        """True when only ``K[p, p]`` is needed (no pooling, Flatten readout)."""
        return self.spec.diagonal_only

    def _check(self, x1, x2) -> None:
        if x1.ndim != 4 or x2.ndim != 4 or tuple(x1.shape[1:]) != tuple(x2.shape[1:]):
            raise ConfigError(
                f"{type(self).__name__} needs NHWC images of equal shape, got {tuple(x1.shape)} and {tuple(x2.shape)}"
            )
        self.spec.check_image(x1.shape[1], x1.shape[2])

    def bytes_per_pair(self, h: int, w: int, itemsize: int) -> int:
        """Estimated memory of one image pair of a tile: the full-resolution arrays that
        reverse-mode differentiation keeps (the forward pass alone needs far less)."""
        if self.diagonal_only:  # steps are rematerialized: only the outputs stay
            return 16 * itemsize
        return (10 if self.kind == "ntk" else 7) * (h * w) ** 2 * itemsize

    def pairs_per_block(self, h: int, w: int, itemsize: int = 4) -> int:
        """Image pairs per tile under ``block_mb`` (at least 1)."""
        return max(1, int(self.block_mb * 2**20 // self.bytes_per_pair(h, w, itemsize)))

    def _group_size(self, h: int, w: int) -> int:
        """Columns per innermost step: pairs whose second-level covariances total about
        ``_chunk_entries`` entries (cache-sized; 4 pairs at 32x32)."""
        if self.diagonal_only:
            return 1 << 30
        hh, ww = (h // 2, w // 2) if self.schedule()[0] else (h, w)
        return max(1, self._chunk_entries // max(1, (hh * ww) ** 2))

    def tile_shape(self, n1: int, n2: int, h: int, w: int, itemsize: int = 4) -> tuple[int, int]:
        """``(b1, b2)``: rows and columns of one tile (one compiled call). ``b2`` is a
        multiple of the group size and ``b1 * b2 <= pairs_per_block`` (unless a single
        group exceeds it)."""
        ppb = self.pairs_per_block(h, w, itemsize)
        gmax = max(1, min(self._group_size(h, w), ppb))
        b2max = max(gmax, (ppb // gmax) * gmax)
        cols = -(-n2 // -(-n2 // b2max))  # balanced columns per tile
        groups = -(-cols // gmax)
        b2 = -(-cols // groups) * groups  # padding: fewer than `groups` columns per tile
        b1 = max(1, min(n1, ppb // b2))
        return b1, b2

    def rows_per_block(self, n2: int, input_shape: tuple[int, ...] | None = None) -> int | None:
        """Rows of ``x1`` per tile when ``x2`` has ``n2`` rows (lets callers report progress
        per tile). ``input_shape``: ``(H, W, C)``; None if unknown."""
        if input_shape is None:
            return None
        return self.tile_shape(1 << 30, n2, input_shape[0], input_shape[1])[0]

    # -- compiled pieces ------------------------------------------------------------------
    def _fn(self, name: str, compiler=None):
        """The compiled method ``name`` (``compiler``: default :meth:`Backend.jit`), shared by
        every instance with the same hyperparameters on the same backend through the
        backend's cache (:meth:`Backend.compiled`; ``block_mb`` and ``compile`` do not enter
        the computation), so a kernel rebuilt with equal parameters does not compile again."""
        compiler = compiler or self.b.jit
        params = self.get_params()
        params.pop("block_mb")
        params.pop("compile")
        key = (type(self), name, compiler.__name__, self._chunk_entries, tuple(sorted(params.items())),
               self._plan()["all"])
        return self.b.compiled(key, getattr(self, name), compiler)

    def _inner(self, name: str):
        """The method ``name`` for use inside a tile: compiled on its own on eager backends
        when :attr:`compile` is active for the current call (:meth:`Backend.compile`,
        ``torch.compile``), else plain (under JAX the whole tile is already compiled)."""
        if not self._compile_now:
            return getattr(self, name)
        return self._fn(name, compiler=self.b.compile)

    def _decide_compile(self, n1: int, n2: int, h: int, w: int) -> None:
        """Set :attr:`_compile_now` for this call (see :attr:`compile`)."""
        if not self.b.eager or self.compile is False or self.diagonal_only:
            self._compile_now = False
            return
        self._work[0] += n1 * n2 * (h * w) ** 2
        self._compile_now = self.compile is True or self._work[0] >= COMPILE_AFTER

    def _map(self, fn, xs):
        """:meth:`Backend.map`, calling ``fn`` directly when there is a single step (a
        simpler program: faster to compile and to differentiate)."""
        if xs[0].shape[0] == 1:
            return tuple(o[None] for o in fn(tuple(x[0] for x in xs)))
        return self.b.map(fn, xs)

    # -- the kernel -----------------------------------------------------------------------
    def nngp_ntk(self, x1: Any, x2: Any) -> tuple[Any, Any | None]:
        """``(nngp [n1, n2], ntk [n1, n2] or None when kind == "nngp")``.

        Raises:
            ConfigError: inputs not NHWC of equal shape, or too small for the pools.
        """
        self._check(x1, x2)
        xp = self.b.xp
        n1, n2 = x1.shape[0], x2.shape[0]
        h, w = x1.shape[1], x1.shape[2]
        if self._traced(x1, x2):
            # inside a compiled program (a KIP step): one tile of all pairs, whose
            # sequential maps already bound the memory, so the program -- and its
            # compilation time -- does not grow with the number of tiles
            g = min(n2, self._group_size(h, w))
            b1, b2 = n1, -(-n2 // g) * g
        else:
            b1, b2 = self.tile_shape(n1, n2, h, w, self._itemsize(x1))
        self._decide_compile(n1, n2, h, w)
        if self.diagonal_only:
            tile, prep1, prep2 = self._fn("_diag_tile"), x1, x2
        else:
            tile = self._fn("_tile")
            prep1 = _patches(xp, x1)
            prep2 = prep1 if x2 is x1 else _patches(xp, x2)
        v1 = self._variances(x1)
        v2 = v1 if x2 is x1 else self._variances(x2)
        rows = []
        listened = not self._traced(x1, x2) and pairs_listened()
        for i in range(0, n1, b1):
            row = []
            for j in range(0, n2, b2):
                row.append(self._run_tile(tile, prep1, prep2, v1, v2, i, j, b1, b2))
                if listened:  # progress per tile: wait for it (JAX dispatches asynchronously)
                    for o in row[-1]:
                        wait = getattr(o, "block_until_ready", None)
                        if wait is not None:
                            wait()
                    report_pairs(min(b1, n1 - i) * min(b2, n2 - j))
            rows.append(row)
        outs = []
        for o in range(1 if self.kind == "nngp" else 2):
            blocks = [[c[o] for c in r] for r in rows]
            row_cat = [xp.concat(r, axis=1) if len(r) > 1 else r[0] for r in blocks]
            outs.append(xp.concat(row_cat, axis=0) if len(row_cat) > 1 else row_cat[0])
        return outs[0], (outs[1] if len(outs) > 1 else None)

    def _itemsize(self, x) -> int:
        """Bytes per element of ``x`` (float64: 8, else float32: 4)."""
        return 8 if self.b.dtype_name(x) == "float64" else 4

    def _traced(self, *xs) -> bool:
        """Whether any input is traced (inside a compiled program, e.g. a jitted KIP step)."""
        return not all(self.b.is_concrete(x) for x in xs)

    def _run_tile(self, tile, prep1, prep2, v1, v2, i, j, b1, b2):
        """One tile, zero-padded to ``(b1, b2)`` (one compiled shape) where it is ragged."""
        xp = self.b.xp
        n1, n2 = prep1.shape[0], prep2.shape[0]
        m1, m2 = min(b1, n1 - i), min(b2, n2 - j)
        a, va = prep1[i : i + m1], [v[i : i + m1] for v in v1]
        c, vc = prep2[j : j + m2], [v[j : j + m2] for v in v2]
        if m1 < b1 and n1 > b1:
            a, va = _pad(xp, a, 0, 0, b1 - m1), [_pad(xp, v, 0, 0, b1 - m1) for v in va]
        if m2 < b2:
            c, vc = _pad(xp, c, 0, 0, b2 - m2), [_pad(xp, v, 0, 0, b2 - m2) for v in vc]
        out = tile(a, c, va, vc)
        return tuple(o[:m1, :m2] for o in out)

    def __call__(self, x1, x2):
        nngp, ntk = self.nngp_ntk(x1, x2)
        return ntk if self.kind == "ntk" else nngp

    def _variances(self, x):
        """Per-pixel variances before every ReLU: list of ``[n, H_l, W_l]``.

        Cached for the last two concrete (not traced, not requiring gradients, not
        modified in place since) inputs, by identity: a support set predicted against
        many target blocks is processed once.
        """
        cacheable = self.b.is_concrete(x) and not getattr(x, "requires_grad", False)
        version = self.b.version(x)  # torch: bumped by in-place updates
        for ref, ref_version, v in self._var_cache:
            if cacheable and ref is x and ref_version == version:
                return v
        if self.diagonal_only:
            v = self._fn("_diag_variances")(x)
        else:
            xp = self.b.xp
            n, h, w = x.shape[0], x.shape[1], x.shape[2]
            per = n if self._traced(x) else self.pairs_per_block(h, w, self._itemsize(x))
            fn = self._fn("_self_tile")
            p = _patches(xp, x)
            parts = [fn(p[i : i + per]) for i in range(0, n, per)]
            v = [xp.concat([c[l] for c in parts], axis=0) if len(parts) > 1 else parts[0][l]
                 for l in range(len(parts[0]))]
        if cacheable:
            self._var_cache[:] = [(x, version, v)] + self._var_cache[:1]
        return v

    def _self_tile(self, p):
        """:meth:`_self_block` of each image in turn (:meth:`Backend.map`)."""
        # rematerialized under differentiation, like the cross pairs of :meth:`_tile`
        step = self.b.checkpoint(lambda args: tuple(v[0] for v in self._self_block(args[0][None])))
        return list(self._map(step, (p,)))

    def _tile(self, p1, p2, v1, v2):
        """``(nngp [b1, b2], ntk)`` of a tile: a sequential map over the rows of ``x1`` and
        over groups of columns of ``x2`` (cache-sized), each a :meth:`_full_block`."""
        xp = self.b.xp
        b1, b2 = p1.shape[0], p2.shape[0]
        group = min(b2, self._group_size(p2.shape[1], p2.shape[2]))
        while b2 % group:
            group -= 1
        g = b2 // group
        p2g = xp.reshape(p2, (g, group) + tuple(p2.shape[1:]))
        v2g = [xp.reshape(v, (g, group) + tuple(v.shape[1:])) for v in v2]
        nv = len(v1)

        def row(args):
            p, vs = args[0], args[1:]

            # rematerialized under differentiation: the backward pass keeps only the
            # inputs of each step, not its full-resolution covariances
            @self.b.checkpoint
            def col(cargs):
                return self._full_block(p[None], cargs[0], [v[None] for v in vs], list(cargs[1:]))

            return self._map(col, (p2g, *v2g))  # each [g, 1, group]

        outs = self._map(row, (p1, *v1[:nv]))  # each [b1, g, 1, group]
        return tuple(xp.reshape(o, (b1, b2)) for o in outs)

    # -- the interpreter of the spec's steps -------------------------------------------------
    def _walk(self, mode: str, layers, k=None, ntk=None, v1=(), v2=(), inputs=None, with_ntk: bool = False):
        """Apply ``layers`` (a segment of :attr:`spec`'s steps) to covariances: the one
        recursion (module docstring) behind every mode.

        Modes and layouts:
            ``"cross"``: pairs of two image sets, ``[b1, R, W, b2, H, W]``: NNGP ``k`` and
                NTK ``ntk`` (None: NNGP only).
            ``"self"``: self-covariances, ``[n, R, W, 1, H, W]``, NNGP only; the diagonal
                after every later conv gives the variances of the next ReLU.
            ``"diag"``: pixel-diagonal covariances of pairs, ``[b1, b2, H, W]`` (no
                pooling, Flatten readout), NNGP and NTK.
            ``"var"``: per-pixel variances ``[n, H, W]`` (no pooling).

        Args:
            k, ntk: the state entering the segment (unused when it starts with the input conv).
            v1, v2: per-pixel variances of both sides before each ReLU of the segment, in
                order (lists of ``[b, R, W]`` / ``[b, H, W]``; "cross", "diag"; "self": those
                of the first block only).
            inputs: for the input conv (``Conv.first``): ``(p1, p2)``, 3x3 patches
                ``[b, H, W, 9C]`` ("cross", "self"), or the images ``(x1, x2)`` ("diag"),
                or ``x`` ("var").
            with_ntk: the input conv starts an NTK ("cross", "diag").

        Returns:
            ``(k, ntk, variances)``: after a Readout ``k``, ``ntk`` are ``[b1, b2]``;
            ``variances`` lists the per-pixel variances after each conv ("self": later
            convs only; "var": every conv).
        """
        xp, sw2 = self.b.xp, self.spec.sw2  # a ReLU map folds in the next layer's sw2
        v1, v2, out, convs = list(v1), list(v2), [], 0
        for step in layers:
            if isinstance(step, Conv):
                if step.first:
                    k, ntk = self._input_conv(mode, inputs, with_ntk)
                elif mode == "cross":
                    k, ntk = _conv_pair(xp, _conv_full, k, ntk, step.sb2)
                elif mode == "diag":
                    k, ntk = _conv_pair(xp, _conv_diag, k, ntk, step.sb2)
                elif mode == "self":
                    k = _conv_full(xp, k) + step.sb2
                    v = _diag_full(xp, k)
                    v1.append(v)
                    v2.append(v)
                    out.append(v)
                else:  # var
                    k = _conv_diag(xp, k) + step.sb2
                if mode == "var":
                    out.append(k)
                convs += 1
            elif isinstance(step, Relu):
                va, vb = (None, None) if mode == "var" else (v1[convs - 1], v2[convs - 1])
                if mode == "cross":
                    k, ntk = self._relu(k, ntk, va, vb, False)
                elif mode == "self":
                    k, _ = self._relu(k, None, va, vb, True)
                elif mode == "diag":
                    k, kdot, _, _ = relu_layer(self.b, k, va[:, None], vb[None, :], sw2, 0.0)
                    if ntk is not None:
                        ntk = kdot * ntk
                else:  # var: the arc-cosine map at cosine 1
                    k = 0.5 * sw2 * k
            elif isinstance(step, AvgPool):
                if mode not in ("cross", "self") or step.size != 2:
                    raise AssertionError(f"{mode} mode has no {step}")
                k, ntk = _pool_full(xp, k, ntk)
            elif isinstance(step, Readout):
                if mode == "cross":
                    readout = self._readout_full
                elif mode == "diag" and step.kind == "flatten":
                    def readout(t):
                        return xp.mean(t, axis=(2, 3))
                else:
                    raise AssertionError(f"{mode} mode has no {step}")
                k = readout(k) + step.sb2
                ntk = None if ntk is None else readout(ntk) + k
        return k, ntk, out

    def _input_conv(self, mode: str, inputs, with_ntk: bool):
        """The first conv, from the inputs (see :meth:`_walk`): ``(k, ntk or None)``."""
        xp = self.b.xp
        if mode in ("cross", "self"):
            k = self._first_conv(inputs[0], inputs[1], mode == "self")
        elif mode == "diag":
            x1, x2 = inputs
            k = xp.sum(x1[:, None] * x2[None, :], axis=4)  # [b1, b2, H, W]
            k = _conv_diag(xp, k) * (self.sw2 / x1.shape[3]) + self.sb2
        else:
            k = _conv_diag(xp, xp.sum(inputs * inputs, axis=3)) * (self.sw2 / inputs.shape[3]) + self.sb2
        return k, (k if with_ntk else None)

    def _first_conv(self, p1, p2, self_pairs: bool):
        """Covariance after the first conv, ``[b1, R, W, b2, H, W]``, from patches of ``R``
        rows of ``x1`` (``p1 [b1, R, W, 9C]``) and all of ``x2`` (``p2 [b2, H, W, 9C]``).
        ``self_pairs``: ``p1`` are rows of the images ``p2`` (pairs ``(i, i)``), giving
        ``[n, R, W, 1, H, W]``."""
        xp = self.b.xp
        a, r, w, d = p1.shape
        b, h = p2.shape[0], p2.shape[1]
        if self_pairs:
            k = xp.matmul(xp.reshape(p1, (a, r * w, d)), xp.matrix_transpose(xp.reshape(p2, (b, h * w, d))))
            k = xp.reshape(k, (a, r, w, 1, h, w))
        else:
            k = xp.reshape(p1, (a * r * w, d)) @ xp.matrix_transpose(xp.reshape(p2, (b * h * w, d)))
            k = xp.reshape(k, (a, r, w, b, h, w))
        return k * (self.sw2 / d) + self.sb2

    def _relu(self, k, ntk, v1, v2, self_pairs: bool):
        """ReLU (arc-cosine map, :func:`relu_layer`) on ``[b1, R, W, b2, H, W]`` with per-pixel
        variances ``v1 [b1, R, W]``, ``v2 [b2, H, W]``; ``ntk <- kdot * ntk``."""
        xp = self.b.xp
        kxx = xp.reshape(v1, (v1.shape[0], v1.shape[1], v1.shape[2], 1, 1, 1))
        shape2 = (v2.shape[0], 1, 1, 1) if self_pairs else (1, 1, 1, v2.shape[0])
        kyy = xp.reshape(v2, shape2 + (v2.shape[1], v2.shape[2]))
        k, kdot, _, _ = relu_layer(self.b, k, kxx, kyy, self.sw2, 0.0)
        return k, (None if ntk is None else kdot * ntk)

    def _chunk_rows(self, pairs: int, h: int, w: int) -> int:
        """Rows of ``x1`` per chunk of the first layer: an even divisor of ``2 (h // 2)``
        giving about ``_chunk_entries`` (2^18) entries, so that a chunk's temporaries stay
        in cache (measured 2.5x faster than whole arrays)."""
        even = 2 * (h // 2)
        want = max(2, self._chunk_entries // max(1, pairs * w * h * w))
        return max(r for r in range(2, even + 1, 2) if even % r == 0 and (r <= want or r == 2))

    def _layer0(self, p1, p2, v1, v2, self_pairs: bool, with_ntk: bool):
        """First conv + ReLU (+ 2x2 average pool): the costliest layer (full resolution).

        When it is pooled it runs over chunks of rows of ``x1``, one after the other
        (:meth:`Backend.map`): pooling maps rows ``2i, 2i+1`` to output row ``i``, so
        chunks are independent, and only pooled results (1/4 of the rows) are kept.
        """
        xp = self.b.xp
        if not self.schedule()[0]:
            k, ntk, _ = self._walk("self" if self_pairs else "cross", self._plan()["first"], v1=[v1], v2=[v2],
                                   inputs=(p1, p2), with_ntk=with_ntk)
            return k, ntk
        a, h, w, d = p1.shape
        pairs = a * (1 if self_pairs else p2.shape[0])
        step = self._chunk_rows(pairs, h, w)
        m = (h // 2) * 2 // step
        pc = xp.permute_dims(xp.reshape(p1[:, : m * step], (a, m, step, w, d)), (1, 0, 2, 3, 4))
        vc = xp.permute_dims(xp.reshape(v1[:, : m * step], (a, m, step, w)), (1, 0, 2, 3))
        body = self._inner("_chunk_self" if self_pairs else "_chunk_cross")
        out = []
        for t in self._map(lambda args: body(args[0], p2, args[1], v2), (pc, vc)):
            t = xp.permute_dims(t, (1, 0, 2, 3, 4, 5, 6))  # [m, a, step/2, ...] -> [a, m, step/2, ...]
            out.append(xp.reshape(t, (a, m * t.shape[2]) + tuple(t.shape[3:])))
        return out[0], (out[1] if len(out) > 1 else None)

    def _chunk_cross(self, p, p2, v, v2):
        """First conv + ReLU + pool of a chunk of rows of ``x1`` against all of ``x2``."""
        k, ntk, _ = self._walk("cross", self._plan()["first"], v1=[v], v2=[v2], inputs=(p, p2),
                               with_ntk=self.kind == "ntk")
        return (k,) if ntk is None else (k, ntk)

    def _chunk_self(self, p, p2, v, v2):
        """As :meth:`_chunk_cross` for self-covariances (pairs ``(i, i)``), NNGP only."""
        return (self._walk("self", self._plan()["first"], v1=[v], v2=[v2], inputs=(p, p2))[0],)

    def _first_variances(self, p):
        """Per-pixel variances after the first conv, ``[n, H, W]``, from patches."""
        return xp_sum_sq(self.b.xp, p) * (self.sw2 / p.shape[3]) + self.sb2

    def _self_block(self, p):
        """Per-pixel variances before every ReLU of ``n`` images (patches ``[n, H, W, 9C]``),
        from their self-covariances in the ``[n, H, W, 1, H, W]`` layout."""
        v0 = self._first_variances(p)
        if len(self.schedule()) == 1:
            return [v0]
        k, _ = self._layer0(p, p, v0, v0, True, False)
        return [v0] + list(self._inner("_rest_self")(k))

    def _rest_self(self, k):
        """Self-covariance layers after the first: the variances before their ReLUs."""
        return tuple(self._walk("self", self._plan()["rest_var"], k=k)[2])

    def _full_block(self, p1, p2, v1, v2):
        """``(nngp [b1, b2], ntk [b1, b2])`` (``(nngp,)`` for ``kind="nngp"``) of a block of
        pairs, from patches and the per-layer variances of both sides."""
        k, ntk = self._layer0(p1, p2, v1[0], v2[0], False, self.kind == "ntk")
        return self._inner("_rest_cross")(k, ntk, list(v1[1:]), list(v2[1:]))

    def _rest_cross(self, k, ntk, v1, v2):
        """Layers after the first and the readout, from the first layer's output."""
        k, ntk, _ = self._walk("cross", self._plan()["rest"], k, ntk, v1, v2)
        return (k,) if ntk is None else (k, ntk)

    def _readout_full(self, k):
        """Flatten (mean of ``K[p, p]``) or GAP (mean over all ``(p, q)``): ``[b1, b2]``."""
        xp = self.b.xp
        if self.readout == "gap":
            return xp.mean(k, axis=(1, 2, 4, 5))
        a, h, w, b = k.shape[0], k.shape[1], k.shape[2], k.shape[3]
        k = xp.reshape(xp.permute_dims(k, (0, 3, 1, 2, 4, 5)), (a, b, h * w, h * w))
        return xp.mean(xp.linalg.diagonal(k), axis=-1)

    # -- diagonal covariances only (no pooling, Flatten readout) -----------------------------
    def _diag_variances(self, x):
        """Per-pixel variances before every ReLU, ``[n, H, W]`` each (no pooling)."""
        return self._walk("var", self._plan()["all_var"], inputs=x)[2]

    def _diag_pairs(self, x1, x2, v1, v2):
        """``(nngp [b1, b2], ntk)`` without pooling, from the diagonal ``K[p, p]`` only, in the
        ``[b1, b2, H, W]`` layout."""
        k, ntk, _ = self._walk("diag", self._plan()["all"], v1=v1, v2=v2, inputs=(x1, x2),
                               with_ntk=self.kind == "ntk")
        return (k,) if ntk is None else (k, ntk)

    def _diag_tile(self, x1, x2, v1, v2):
        """:meth:`_diag_pairs` over steps of a few rows of ``x1`` against all of ``x2``
        (about ``_chunk_entries`` entries per step: cache-sized, 3x faster than 4x larger steps), one after the other and
        rematerialized under differentiation (:meth:`Backend.checkpoint`), so memory stays
        at one step's working set also when training through the kernel."""
        xp = self.b.xp
        n1, n2, h, w = x1.shape[0], x2.shape[0], x1.shape[1], x1.shape[2]
        rows = max(1, min(n1, self._chunk_entries // max(1, n2 * h * w)))
        m = -(-n1 // rows)
        if m == 1:
            return self._diag_pairs(x1, x2, v1, v2)
        x1p = _pad(xp, x1, 0, 0, m * rows - n1)
        v1p = [_pad(xp, v, 0, 0, m * rows - n1) for v in v1]
        xs = (xp.reshape(x1p, (m, rows) + tuple(x1.shape[1:])),) + tuple(
            xp.reshape(v, (m, rows) + tuple(v.shape[1:])) for v in v1p
        )
        step = self.b.checkpoint(lambda args: self._diag_pairs(args[0], x2, list(args[1:]), v2))
        outs = self._map(step, xs)
        return tuple(xp.reshape(o, (m * rows, n2))[:n1] for o in outs)


@attrs.define(kw_only=True)
class ConvNetNoPoolKernel(ConvNetKernel):
    """:class:`ConvNetKernel` with ``pool=False`` by default (registered ``convnet-nopool``):
    conv3x3 + ReLU layers without pooling, Flatten readout; only diagonal covariances
    ``K[p, p]`` are computed, ``O(n1 n2 H W depth)``."""

    pool: bool = attrs.field(default=False, validator=boolean)
