"""PyTorch backend: ``array_api_compat.torch`` namespace, autograd, ``torch.optim`` (a pure step,
:class:`TorchStep`).

Runs eagerly (``jit`` is the identity) on CPU.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from kdistill.core.backend import CHOLESKY_JITTERS, Backend, TrainStep, check_state, parse_device, step_parts
from kdistill.errors import CheckpointError, ConfigError


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


class TorchState(NamedTuple):
    """State of a :class:`TorchStep`: ``params`` (name -> tensor), ``opt`` (parameter
    name -> field -> tensor: ``torch.optim``'s per-parameter state, e.g. Adam's ``step``,
    ``exp_avg``, ``exp_avg_sq``; empty before the first update) and ``count``, the
    updates applied so far (None with a constant schedule, which does not need it)."""

    params: dict
    opt: dict
    count: int | None


class TorchStep(TrainStep):
    """:class:`~kdistill.core.backend.TrainStep` on PyTorch, eager.

    :meth:`apply` clones the parameters and the optimizer state, loads them into a
    ``torch.optim`` optimizer built for this update (the learning rate of the schedule
    at ``count``) and takes its step, so the input state is never changed and the
    arithmetic is exactly that of one persistent ``torch.optim`` optimizer.
    """

    def __init__(self, backend: "TorchBackend", loss_fn, optimizer, schedule, lr, dtype, total_steps):
        super().__init__(backend, loss_fn, optimizer, schedule, lr, dtype, total_steps)
        import torch

        self._torch = torch
        name, self._kwargs = optimizer.torch()
        self._cls = getattr(torch.optim, name, None)
        if not (isinstance(self._cls, type) and issubclass(self._cls, torch.optim.Optimizer)):
            raise ConfigError(f"optimizer {type(optimizer).__name__} declares torch.optim.{name}, which torch "
                              f"{torch.__version__} does not have")

    def init(self, params):
        p = {k: self.backend.asarray(v, self.dtype).clone() for k, v in params.items()}
        return TorchState(p, {}, None if self.schedule.constant else 0)

    def gradients(self, state, *batch):
        torch = self._torch
        leaves = {k: v.detach().requires_grad_(True) for k, v in state.params.items()}
        loss = self.loss_fn(leaves, *batch)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        if self.backend.group:
            return self.mean_over_processes(loss.detach(), dict(zip(leaves, grads)))
        return loss.detach(), dict(zip(leaves, grads))

    def mean_over_processes(self, loss, grads):
        """``(loss, grads)`` averaged over the process group: one all-reduce (sum) of the
        flattened loss and gradients, divided by the number of processes. Each process
        holds the mean over an equal share of the target batch (``Backend.shard_rows``),
        so this is the mean over the whole batch, as on one process. A gradient that is
        None (parameter unused) stays None: every process computes the same graph."""
        torch = self._torch
        present = [k for k, g in grads.items() if g is not None]
        flat = torch.cat([loss.reshape(1).to(torch.float64)]
                         + [grads[k].reshape(-1).to(torch.float64) for k in present])
        torch.distributed.all_reduce(flat)
        flat = flat / self.backend.process_count
        out, offset = dict(grads), 1
        for k in present:
            g = grads[k]
            out[k] = flat[offset:offset + g.numel()].reshape(g.shape).to(g.dtype)
            offset += g.numel()
        return flat[0].to(loss.dtype), out

    def learning_rate(self, count: int | None) -> float:
        """The learning rate of the update after ``count`` updates."""
        if self.schedule.constant:
            return self.lr
        return self.lr * float(self.schedule(self._torch.tensor(count), self.total_steps))

    def apply(self, state, grads):
        torch = self._torch
        names = list(state.params)
        params = {k: v.detach().clone().requires_grad_(True) for k, v in state.params.items()}
        for k, g in grads.items():
            params[k].grad = None if g is None else g.detach()
        opt = self._cls(list(params.values()), lr=self.learning_rate(state.count), **self._kwargs)
        saved = {names.index(k): {f: v.clone() for f, v in fields.items()} for k, fields in state.opt.items()}
        opt.load_state_dict({"state": saved, "param_groups": opt.state_dict()["param_groups"]})
        opt.step()
        new_opt = {
            names[i]: {f: v for f, v in fields.items() if torch.is_tensor(v)}
            for i, fields in opt.state_dict()["state"].items()
        }
        new_params = {k: p.detach() for k, p in params.items()}
        return TorchState(new_params, new_opt, None if state.count is None else state.count + 1)

    def step(self, state, *batch):
        torch = self._torch
        loss, grads = self.gradients(state, *batch)
        finite = bool(torch.isfinite(loss)) and all(g is None or bool(torch.isfinite(g).all()) for g in grads.values())
        metrics = {"loss": loss, "finite": torch.tensor(finite)}
        return (self.apply(state, grads) if finite else state), metrics

    def params(self, state):
        return {k: v.detach().cpu().numpy().copy() for k, v in state.params.items()}

    def to_arrays(self, state):
        """``params/<name>`` arrays, ``opt/<name>/<field>`` (the tensors of
        ``torch.optim``'s per-parameter state) and, with a schedule that is not
        constant, ``opt/count`` (int64)."""
        out = {f"params/{k}": v for k, v in self.params(state).items()}
        for name, fields in state.opt.items():
            for field, value in fields.items():
                out[f"opt/{name}/{field}"] = value.detach().cpu().numpy().copy()
        if state.count is not None:
            out["opt/count"] = np.asarray(state.count, np.int64)
        return out

    def from_arrays(self, arrays, like=None):
        torch = self._torch
        params = {k: np.asarray(v) for k, v in arrays.items() if k.startswith("params/")}
        expected = (self.params(like) if like is not None
                    else {k[7:]: v.astype(self.dtype, copy=False) for k, v in params.items()})
        check_state(params, {f"params/{k}": v for k, v in expected.items()}, "torch step")
        opt, problems, count = {}, [], None
        for key, value in arrays.items():
            if key.startswith("params/"):
                continue
            value = np.asarray(value)
            if key == "opt/count" and not self.schedule.constant:
                if value.shape != () or value.dtype != np.int64:
                    problems.append(f"opt/count is {value.dtype}{list(value.shape)}, expected int64[]")
                count = int(value)
                continue
            name, _, field = key[4:].rpartition("/") if key.startswith("opt/") else ("", "", "")
            if name not in expected or not field:
                problems.append(f"unexpected {key}")
            elif field != "step" and value.shape != tuple(expected[name].shape):
                problems.append(f"{key} has shape {list(value.shape)}, expected {list(expected[name].shape)}")
            else:
                opt.setdefault(name, {})[field] = torch.tensor(value)  # load_state_dict moves it to the device
        if not self.schedule.constant and count is None:
            problems.append("missing opt/count (the update count of a non-constant schedule)")
        if problems:
            raise CheckpointError(f"the saved state does not fit this torch step: {'; '.join(problems)}")
        p = {k: self.backend.asarray(np.array(arrays[f"params/{k}"])) for k in expected}
        return TorchState(p, opt, count)


#: Seconds a collective of the process group waits for the other processes before it fails.
PROCESS_GROUP_TIMEOUT_S = 600


def init_process_group(torch) -> str | None:
    """Join the ``torch.distributed`` process group of a ``torchrun`` launch: when the
    environment names more than one process (``WORLD_SIZE``, with ``RANK``,
    ``MASTER_ADDR``, ``MASTER_PORT``), initialize it (NCCL with CUDA, gloo otherwise)
    unless that was done already. Returns the group's backend name, or None for a
    single process."""
    import atexit
    import os
    from datetime import timedelta

    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_backend() if dist.get_world_size() > 1 else None
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    if not dist.is_available():
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} asks for torch.distributed, which this torch "
                          f"{torch.__version__} build lacks")
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=PROCESS_GROUP_TIMEOUT_S))
    atexit.register(_leave_process_group, dist)  # a group left open can abort the process at exit
    return backend


def _leave_process_group(dist) -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def torch_device(torch, device: str):
    """The ``torch.device`` of a ``device`` setting (:func:`~kdistill.core.backend.parse_device`):
    ``auto`` is CUDA when torch sees a GPU, else CPU; ``cuda``/``gpu`` without an index is
    the GPU of this process's ``LOCAL_RANK`` (``torchrun``), 0 otherwise.

    Raises:
        ConfigError: a device torch does not see (the message says what to install).
    """
    import os

    kind, index = parse_device(device)
    if kind == "auto":
        kind = "gpu" if torch.cuda.is_available() else "cpu"
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "gpu":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(os.environ.get("LOCAL_RANK", "0")) if index is None else index
        if index >= count:
            raise ConfigError(
                f"device={device!r}: torch {torch.__version__} sees {count} CUDA device(s) and this process "
                f"would use cuda:{index}. Install a CUDA build of torch (the README's 'GPUs and clusters' names "
                "the wheel index) or use device='cpu'")
        return torch.device("cuda", index)
    if kind == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    raise ConfigError(f"device={device!r}: torch {torch.__version__} has no such device here; use 'auto', "
                      "'cpu' or 'cuda'")


class TorchBackend(Backend):
    """Backend on PyTorch (CPU), eager mode."""

    name = "torch"

    def __init__(self, device: str = "auto") -> None:
        import array_api_compat.torch as xp
        import torch

        self._torch = torch
        self.xp = xp
        self._safe_arccos = _build_safe_arccos()
        self.device = device
        self.group = init_process_group(torch)
        self.torch_device = torch_device(torch, device)
        if self.torch_device.type == "cuda":
            torch.cuda.set_device(self.torch_device)

    # -- devices and data parallelism --------------------------------------------------
    @property
    def shards(self) -> int:
        """The processes of the ``torch.distributed`` process group (1 without one)."""
        return self.process_count

    @property
    def process_index(self) -> int:
        return self._torch.distributed.get_rank() if self.group else 0

    @property
    def process_count(self) -> int:
        return self._torch.distributed.get_world_size() if self.group else 1

    def describe_devices(self) -> str:
        where = f" x {self.process_count} processes ({self.group})" if self.group else ""
        return f"{self.torch_device}{where}"

    def asarray(self, x, dtype=None):
        torch = self._torch
        if isinstance(x, torch.Tensor):
            t = x
        else:
            t = torch.from_numpy(np.asarray(x, order="C"))
        if t.device != self.torch_device:
            t = t.to(self.torch_device)
        return t if dtype is None else t.to(self.dtype(dtype))

    def to_numpy(self, x):
        return x.detach().cpu().numpy()

    def device_of(self, x):
        return x.device

    def shard_rows(self, x, dtype=None):
        n, k = len(x), self.shards
        if n % k:
            raise ValueError(f"{n} rows cannot be split evenly over {k} processes")
        r = self.process_index
        return self.asarray(x[r * (n // k):(r + 1) * (n // k)], dtype)

    def gather_rows(self, x):
        if not self.group:
            return self.to_numpy(x)
        parts = [self._torch.empty_like(x) for _ in range(self.shards)]
        self._torch.distributed.all_gather(parts, x.contiguous())
        return self.to_numpy(self._torch.cat(parts))

    def sum_shards(self, x):
        if not self.group:
            return x
        out = x.detach().clone()
        self._torch.distributed.all_reduce(out)
        return out

    def barrier(self):
        if self.group:
            self._torch.distributed.barrier()

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
        eye = torch.eye(n, dtype=a.dtype, device=a.device)
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
        # drawn on the host CPU generator, so a seed gives the same numbers on every device
        gen = self._torch.Generator().manual_seed(int(seed))
        return self.asarray(self._torch.randn(shape, generator=gen, dtype=self.dtype(dtype)))

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

    def make_step(self, loss_fn, optimizer="adam", schedule=None, lr=1e-2, dtype="float32",
                  total_steps=0) -> TorchStep:
        optimizer, schedule = step_parts(self, optimizer, schedule, lr)
        return TorchStep(self, loss_fn, optimizer, schedule, lr, dtype, total_steps)

    # -- compiled-function cache (used by kernels) ----------------------------------
    def version(self, x):
        """The tensor's version counter (``Tensor._version``, bumped by every in-place
        update); None for non-tensors."""
        return getattr(x, "_version", None) if self._torch.is_tensor(x) else None
