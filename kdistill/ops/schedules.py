"""Learning-rate schedule shapes shared by the built-in schedules (written against a
backend's namespace, so they trace under jit)."""

from __future__ import annotations

import math


def cosine_decay(b, count, total: int, alpha: float):
    """``alpha + (1 - alpha) (1 + cos(pi min(count, total) / total)) / 2`` as a float64
    scalar of backend ``b`` (``total`` 0 counts as 1)."""
    xp = b.xp
    c = xp.clip(b.cast(count, "float64"), min=0.0, max=float(max(total, 1)))
    return alpha + (1.0 - alpha) * 0.5 * (1.0 + xp.cos(math.pi * c / max(total, 1)))
