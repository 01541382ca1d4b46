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

from typing import Any

import attrs

from kdistill.core.contracts import Kernel
from kdistill.ops.arccos import relu_layer, input_angle, next_angle
from kdistill.core.validators import kernel_kind, nonneg, positive, positive_int


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
        same = x2 is x1  # K(X, X): the variances are the diagonal of the same product
        x1 = xp.reshape(x1, (x1.shape[0], -1))
        x2 = x1 if same else xp.reshape(x2, (x2.shape[0], -1))
        d = x1.shape[1]
        k = self.sw2 * (x1 @ x2.T) / d + self.sb2
        if same:  # self-pairs then have G = 0 exactly, whatever the BLAS rounds to
            diag = xp.linalg.diagonal(k)
            kxx, kyy = diag[:, None], diag[None, :]
        else:
            kxx = (self.sw2 * xp.sum(x1 * x1, axis=1) / d + self.sb2)[:, None]
            kyy = (self.sw2 * xp.sum(x2 * x2, axis=1) / d + self.sb2)[None, :]
        angle = input_angle(b, k, kxx, kyy)
        ntk = k
        for layer in range(self.depth):
            k_next, kdot, kxx_next, kyy_next = relu_layer(b, k, kxx, kyy, self.sw2, self.sb2, angle)
            if layer + 1 < self.depth:
                angle = next_angle(b, angle, kxx, kyy, self.sw2, self.sb2)
            k, kxx, kyy = k_next, kxx_next, kyy_next
            ntk = k + kdot * ntk
        return k, ntk

    def __call__(self, x1, x2):
        nngp, ntk = self.nngp_ntk(x1, x2)
        return ntk if self.kind == "ntk" else nngp
