"""Finite networks for evaluating distilled sets (PyTorch, NCHW inside, NHWC outside).

- :class:`ConvNet`: the network of a :class:`~kdistill.ops.convnet.ConvNetSpec` (the
  ConvNet kernels' architecture) with ``width`` channels and a normalization after every
  conv: ``depth`` blocks of [3x3 conv (padding 1) -> normalization -> ReLU -> 2x2 average
  pooling], then a linear readout (PyTorch's default initialization). With
  ``depth=3`` this is the ConvNet of the KIP (NeurIPS'21) and RFAD papers (they
  use width 1024 on a GPU; our CPU default is smaller, see :class:`NNProtocol`).
- :class:`MLP`: ``depth`` hidden ReLU layers of ``width`` units, then a linear readout
  (the finite counterpart of the FC kernels).

Both take images ``[n, H, W, C]`` float32 (the artifact's preprocessed space) and
return logits / regression outputs ``[n, num_classes]`` float32.
"""

from __future__ import annotations

import torch
from torch import nn

from kdistill.ops.convnet import AvgPool, Conv, ConvNetSpec, Readout, Relu

NORMS = ("none", "instance", "layer")


def _norm(kind: str, channels: int, hw: int) -> nn.Module:
    if kind == "none":
        return nn.Identity()
    if kind == "instance":
        # per-image, per-channel over H, W (affine), as in the DC/DSA benchmark ConvNet
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "layer":
        # per-image over C, H, W (affine per channel)
        return nn.GroupNorm(1, channels, affine=True)
    raise ValueError(f"unknown norm {kind!r}; choose from {', '.join(NORMS)}")


class ConvNet(nn.Module):
    """``depth`` x [conv3x3(width) -> norm -> ReLU -> avgpool2] -> linear, built from
    ``ConvNetSpec(depth=depth)`` (``spec`` overrides it, e.g. ``readout="gap"``, ``stem=True``
    or ``pool=False``; its ``sw2``/``sb2`` are not used: the network is trained from
    PyTorch's default initialization).

    Args:
        in_shape: ``(H, W, C)`` of the input images.
        num_classes: outputs.
        width: channels of every conv layer. depth: number of blocks (>= 1).
        norm: ``none``, ``instance`` or ``layer``.
        spec: the architecture (default ``ConvNetSpec(depth=depth)``).
    Raises:
        ValueError: an unknown norm, or depth too large for the image size (each block
            halves H and W; at least 1x1 must remain).
    """

    def __init__(self, in_shape, num_classes: int, width: int = 128, depth: int = 3, norm: str = "instance",
                 spec: ConvNetSpec | None = None):
        super().__init__()
        self.spec = spec if spec is not None else ConvNetSpec(depth=depth)
        h, w, c = (int(v) for v in in_shape)
        layers: list[nn.Module] = []
        for step in self.spec.layers():
            if isinstance(step, Conv):
                layers += [nn.Conv2d(c, width, step.size, padding=step.size // 2), _norm(norm, width, h * w)]
                c = width
            elif isinstance(step, Relu):
                layers.append(nn.ReLU())
            elif isinstance(step, AvgPool):
                if h < step.size or w < step.size:
                    raise ValueError(f"ConvNet depth {self.spec.depth} is too deep for {in_shape} images "
                                     f"(each block halves H, W)")
                layers.append(nn.AvgPool2d(step.size))
                h, w = h // step.size, w // step.size
            elif isinstance(step, Readout):
                self._gap = step.kind == "gap"
                self.features = nn.Sequential(*layers)
                self.readout = nn.Linear(c if self._gap else c * h * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2)  # NHWC -> NCHW
        h = self.features(x)
        return self.readout(h.mean(dim=(2, 3)) if self._gap else torch.flatten(h, 1))


class MLP(nn.Module):
    """``depth`` x [linear(width) -> ReLU] -> linear on flattened images.

    Args:
        in_shape: ``(H, W, C)``; num_classes: outputs; width, depth (>= 1).
        norm: ``none`` or ``layer`` (LayerNorm before each ReLU); ``instance`` is
            refused (no spatial axes).
    """

    def __init__(self, in_shape, num_classes: int, width: int = 1024, depth: int = 1, norm: str = "none"):
        super().__init__()
        if norm not in ("none", "layer"):
            raise ValueError(f"MLP supports norm 'none' or 'layer', got {norm!r}")
        d = 1
        for v in in_shape:
            d *= int(v)
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.LayerNorm(width) if norm == "layer" else nn.Identity(), nn.ReLU()]
            d = width
        self.features = nn.Sequential(*layers)
        self.readout = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.readout(self.features(torch.flatten(x, 1)))


def build_model(model: str, in_shape, num_classes: int, width: int, depth: int, norm: str) -> nn.Module:
    """``ConvNet`` or ``MLP`` by name (``convnet`` / ``fc``)."""
    if model == "convnet":
        return ConvNet(in_shape, num_classes, width=width, depth=depth, norm=norm)
    if model == "fc":
        return MLP(in_shape, num_classes, width=width, depth=depth, norm=norm)
    raise ValueError(f"unknown model {model!r}; choose convnet or fc")
