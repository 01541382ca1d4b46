"""PyTorch backend: ``array_api_compat.torch`` namespace, autograd, ``torch.optim``.

Runs eagerly (``jit`` is the identity) on CPU.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from kdistill.core.backend import CHOLESKY_JITTERS, Backend, Trainer, check_optimizer, check_state
from kdistill.errors import CheckpointError, NonFiniteLossError


def _build_safe_arccos():
    import torch

    class SafeArccos(torch.autograd.Function):
        @staticmethod
        def forward(ctx, c):
            ctx.save_for_backward(c)
            return torch.arccos(torch.clamp(c, -1.0, 1.0))

        @staticmethod
        def backward(ctx, grad):
            (c,) = ctx.saved_tensors
            eps = torch.finfo(c.dtype).eps
            slope = -1.0 / torch.sqrt(torch.clamp(1.0 - c * c, min=eps))
            return grad * torch.where(c.abs() < 1.0, slope, torch.zeros_like(slope))

    return SafeArccos.apply


class TorchTrainer(Trainer):
    def __init__(self, backend: "TorchBackend", loss_fn, params, optimizer, lr, dtype):
        import torch

        self._torch = torch
        self._loss_fn = loss_fn
        self._params = {
            k: backend.asarray(v, dtype).clone().requires_grad_(True) for k, v in params.items()
        }
        leaves = list(self._params.values())
        if optimizer == "adam":
            self._opt = torch.optim.Adam(leaves, lr=lr)
        else:
            self._opt = torch.optim.SGD(leaves, lr=lr, momentum=0.9)

    def step(self, *batch):
        torch = self._torch
        self._opt.zero_grad(set_to_none=True)
        loss = self._loss_fn(self._params, *batch)
        loss.backward()
        finite = bool(torch.isfinite(loss)) and all(
            p.grad is None or bool(torch.isfinite(p.grad).all()) for p in self._params.values()
        )
        if not finite:
            raise NonFiniteLossError(
                f"non-finite loss or gradient (loss={float(loss.detach())}); parameters were not updated"
            )
        self._opt.step()
        return float(loss.detach())

    @property
    def params(self):
        return self._params

    def params_numpy(self):
        return {k: v.detach().cpu().numpy().copy() for k, v in self._params.items()}

    def state(self):
        """``params/<name>`` arrays and ``opt/<name>/<field>``, the tensors of
        ``optimizer.state_dict()["state"]`` (e.g. Adam's ``step``, ``exp_avg``,
        ``exp_avg_sq``; empty before the first step)."""
        torch = self._torch
        out = {f"params/{k}": v for k, v in self.params_numpy().items()}
        names = list(self._params)
        for idx, entries in self._opt.state_dict()["state"].items():
            for field, value in entries.items():
                if value is not None:
                    arr = value.detach().cpu().numpy() if torch.is_tensor(value) else np.asarray(value)
                    out[f"opt/{names[idx]}/{field}"] = arr.copy()
        return out

    def load_state(self, state):
        torch = self._torch
        params = {k: v for k, v in state.items() if k.startswith("params/")}
        check_state(params, {f"params/{k}": v for k, v in self.params_numpy().items()}, "torch trainer")
        names, opt_state, problems = list(self._params), {}, []
        for key, value in state.items():
            if key.startswith("params/"):
                continue
            name, _, field = key[4:].rpartition("/") if key.startswith("opt/") else ("", "", "")
            value = np.asarray(value)
            if name not in self._params or not field:
                problems.append(f"unexpected {key}")
            elif field != "step" and value.shape != tuple(self._params[name].shape):
                problems.append(f"{key} has shape {list(value.shape)}, expected {list(self._params[name].shape)}")
            else:
                opt_state.setdefault(names.index(name), {})[field] = torch.tensor(value)
        if problems:
            raise CheckpointError(f"the saved state does not fit this torch trainer: {'; '.join(problems)}")
        self._opt.load_state_dict({"state": opt_state, "param_groups": self._opt.state_dict()["param_groups"]})
        with torch.no_grad():
            for k, p in self._params.items():
                p.copy_(torch.from_numpy(np.array(state[f"params/{k}"])))
                p.grad = None


class TorchBackend(Backend):
    """Backend on PyTorch (CPU), eager mode."""

    name = "torch"

    def __init__(self) -> None:
        import array_api_compat.torch as xp
        import torch

        self._torch = torch
        self.xp = xp
        self._safe_arccos = _build_safe_arccos()

    def asarray(self, x, dtype=None):
        torch = self._torch
        if isinstance(x, torch.Tensor):
            t = x
        else:
            t = torch.from_numpy(np.asarray(x, order="C"))
        return t if dtype is None else t.to(self.dtype(dtype))

    def to_numpy(self, x):
        return x.detach().cpu().numpy()

    def is_concrete(self, x) -> bool:
        return True

    def safe_arccos(self, c):
        return self._safe_arccos(c)

    def stop_gradient(self, x):
        return x.detach()

    def compile(self, fn):
        """``torch.compile(fn, dynamic=False)`` (inductor, C++ loops on CPU)."""
        return self._torch.compile(fn, dynamic=False)

    def checkpoint(self, fn):
        torch = self._torch
        from torch.utils.checkpoint import checkpoint

        def wrapped(*args):
            if torch.is_grad_enabled() and any(
                t.requires_grad for t in torch.utils._pytree.tree_leaves(args) if torch.is_tensor(t)
            ):
                return checkpoint(fn, *args, use_reentrant=False)
            return fn(*args)

        return wrapped

    def psd_cholesky(self, a):
        torch = self._torch
        n = a.shape[-1]
        scale = torch.diagonal(a).mean()
        eye = torch.eye(n, dtype=a.dtype)
        for jitter in CHOLESKY_JITTERS:
            chol, info = torch.linalg.cholesky_ex(a + jitter * scale * eye)
            if int(info) == 0 and bool(self.pivots_ok(torch.diagonal(chol) ** 2)) and bool(torch.isfinite(chol).all()):
                return chol, torch.tensor(True)
        return torch.full_like(a, float("nan")), torch.tensor(False)

    def lu_solve(self, a, b):
        torch = self._torch
        lu, piv, _ = torch.linalg.lu_factor_ex(a)  # no error on singular input: pivots decide
        return torch.linalg.lu_solve(lu, piv, b), torch.diagonal(lu).abs()

    def cho_solve(self, chol, b):
        return self._torch.cholesky_solve(b, chol)

    def solve_triangular(self, a, b, lower=True):
        return self._torch.linalg.solve_triangular(a, b, upper=not lower)

    def conv2d(self, x, w, groups=1):
        """``torch.nn.functional.conv2d`` on the NHWC data viewed as channels_last NCHW
        (no copy of ``x``); the result is the NHWC view of a channels_last output."""
        kh, kw = w.shape[0], w.shape[1]
        weight = w.to(x.dtype).permute(3, 2, 0, 1).contiguous(memory_format=self._torch.channels_last)
        out = self._torch.nn.functional.conv2d(
            x.permute(0, 3, 1, 2), weight, padding=(kh // 2, kw // 2), groups=groups
        )
        return out.permute(0, 2, 3, 1)

    def normal(self, seed, shape, dtype="float32"):
        gen = self._torch.Generator().manual_seed(int(seed))
        return self._torch.randn(shape, generator=gen, dtype=self.dtype(dtype))

    def value_and_grad(self, fn):
        torch = self._torch

        def wrapped(params, *args):
            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            value = fn(leaves, *args)
            grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True)
            return value.detach(), {
                k: torch.zeros_like(leaves[k]) if g is None else g
                for k, g in zip(leaves, grads)
            }

        return wrapped

    def make_trainer(self, loss_fn, params: Mapping[str, np.ndarray], optimizer="adam",
                     lr=1e-2, dtype="float32") -> Trainer:
        check_optimizer(optimizer, lr)
        return TorchTrainer(self, loss_fn, params, optimizer, lr, dtype)
