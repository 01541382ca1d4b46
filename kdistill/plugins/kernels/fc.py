"""Fully-connected ReLU network NNGP and NTK, closed form (arc-cosine recursion).

Architecture (neural-tangents ``stax`` notation)::

    serial(Dense(W_std=sqrt(sw2), b_std=sqrt(sb2)), Relu(),     # x depth
           Dense(W_std=sqrt(sw2), b_std=sqrt(sb2)))               # readout

Recursion (Cho & Saul 2009; Lee et al. 2018 eq. 5; Jacot et al. 2018 Thm. 1; Arora et
al. 2019 eq. 9), inputs flattened to dimension d::

    K_0 = sw2 * x.x'/d + sb2,   Theta_0 = K_0
    c = K_l / sqrt(K_l(x,x) K_l(x',x')),  theta = arccos(c)
    K_{l+1} = sw2/(2 pi) sqrt(K_l(x,x) K_l(x',x')) (sin theta + (pi - theta) cos theta) + sb2
    Kdot    = sw2/(2 pi) (pi - theta)
    Theta_{l+1} = K_{l+1} + Kdot * Theta_l

``depth`` is the number of hidden ReLU layers (KIP's "FC1" is depth 1).
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from kdistill.core.contracts import Kernel
from kdistill.core.validators import kernel_kind, nonneg, positive, positive_int


def relu_layer(b, k, kxx, kyy, sw2: float, sb2: float):
    """One ReLU + Dense step of the arc-cosine recursion (Cho & Saul 2009).

    With ``norm = sqrt(kxx kyy)``, ``theta = arccos(k / norm)`` and
    ``S = sqrt(kxx kyy - k^2) = norm sin(theta)``::

        k_next = sw2/(2 pi) ((pi - theta) k + S) + sb2
        kdot   = sw2/(2 pi) (pi - theta)

    ``k_next`` is written so that automatic differentiation returns its closed-form
    derivatives ``dk_next/dk = kdot`` and ``dk_next/dkxx = sw2/(4 pi) S/kxx`` (same for
    ``kyy``), which are finite everywhere, also at ``|c| = 1`` (identical pixels or
    patches), where differentiating through arccos would give 0 or infinity: the
    factors ``kdot`` and ``S`` enter as constants (``b.stop_gradient``) times ``k`` and
    ``scale/2 (kxx/kxx + kyy/kyy)``. Per entry it costs one arccos, one square root and
    no division (``kxx``, ``kyy`` are usually small arrays broadcast against ``k``).
    ``kdot`` differentiates through ``b.safe_arccos`` (guarded at ``|c| = 1``).

    Args:
        b: backend.
        k: ``[...]`` covariances between x and x'; ``kxx``/``kyy`` variances of x and x',
            broadcastable to ``k``, > 0.
        sw2, sb2: weight and bias variance of the Dense (or conv) layer folded in.
    Returns:
        ``(k_next, kdot, kxx_next, kyy_next)``, in the dtype of ``k``.
    """
    xp = b.xp
    sg = b.stop_gradient
    scale = sw2 / (2 * math.pi)
    rx, ry = b.safe_sqrt(kxx), b.safe_sqrt(kyy)  # kxx, kyy are small broadcastable arrays
    norm = rx * ry
    c = xp.clip(k / norm, min=-1.0, max=1.0)
    kdot = scale * (math.pi - b.safe_arccos(c))
    # S = norm sin(theta) from the same c as theta (sin(arccos c) = sqrt((1-c)(1+c))), so
    # rounding errors of theta and S cancel to first order near c = 1 (the map is flat there).
    s = sg(xp.sqrt((1.0 - c) * (1.0 + c)) * norm)
    # value: scale * S; derivative in kxx: scale * S / (2 kxx)   (kxx / sg(kxx) == 1)
    unit = (0.5 * scale) * (kxx / sg(_floor(xp, kxx)) + kyy / sg(_floor(xp, kyy)))
    k_next = sg(kdot) * k + s * unit
    if sb2:
        k_next = k_next + sb2
    return k_next, kdot, 0.5 * sw2 * kxx + sb2, 0.5 * sw2 * kyy + sb2


def _floor(xp, v):
    """``max(v, tiny)``: a variance safe to divide by (its numerator is 0 when ``v`` is)."""
    return xp.clip(v, min=float(xp.finfo(v.dtype).tiny))


@attrs.define(kw_only=True)
class FCKernel(Kernel):
    """Infinite-width fully-connected ReLU network kernel (NNGP or NTK).

    Args:
        kind: ``"ntk"`` (default) or ``"nngp"``.
        depth: number of hidden ReLU layers, >= 1 (KIP used 1-3).
        sw2: weight variance sigma_w^2 (KIP: 2.0, i.e. weight std sqrt(2)).
        sb2: bias variance sigma_b^2 (KIP: 0.01, i.e. bias std 0.1).

    Inputs ``[n, ...]`` of any trailing shape are flattened; output ``[n1, n2]`` in the
    input dtype. Agrees with ``neural_tangents.stax`` (standard NTK parameterization).
    """

    kind: str = attrs.field(default="ntk", validator=kernel_kind)
    depth: int = attrs.field(default=1, validator=positive_int)
    sw2: float = attrs.field(default=2.0, converter=float, validator=positive)
    sb2: float = attrs.field(default=0.01, converter=float, validator=nonneg)

    def nngp_ntk(self, x1: Any, x2: Any) -> tuple[Any, Any]:
        """Both kernels, ``([n1, n2], [n1, n2])``."""
        b = self.b
        xp = b.xp
        x1 = xp.reshape(x1, (x1.shape[0], -1))
        x2 = xp.reshape(x2, (x2.shape[0], -1))
        d = x1.shape[1]
        k = self.sw2 * (x1 @ x2.T) / d + self.sb2
        kxx = (self.sw2 * xp.sum(x1 * x1, axis=1) / d + self.sb2)[:, None]
        kyy = (self.sw2 * xp.sum(x2 * x2, axis=1) / d + self.sb2)[None, :]
        ntk = k
        for _ in range(self.depth):
            k, kdot, kxx, kyy = relu_layer(b, k, kxx, kyy, self.sw2, self.sb2)
            ntk = k + kdot * ntk
        return k, ntk

    def __call__(self, x1, x2):
        nngp, ntk = self.nngp_ntk(x1, x2)
        return ntk if self.kind == "ntk" else nngp
