"""Deterministic finite-network training on a support set and test evaluation.

Given the same protocol, support set, test data, torch version and thread count,
:func:`train_one` returns bit-identical numbers: the initialization is drawn from
the global torch RNG seeded inside ``torch.random.fork_rng`` (the caller's RNG
state is untouched), batch order from a ``torch.Generator`` seeded per seed, and
``torch.use_deterministic_algorithms(True)`` is on during the run (restored after).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kdistill.core.errors import ConfigError, DataError
from kdistill.nn.protocol import NNProtocol

RESULT_FORMAT = "kdistill-nn-eval"
RESULT_FORMAT_VERSION = 1


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("finite-network evaluation needs PyTorch: pip install -e '.[torch]' -c constraints.txt") from exc
    return torch


@contextlib.contextmanager
def deterministic(seed: int):
    """Seed the global torch RNG (restored on exit) and enable deterministic algorithms."""
    torch = _torch()
    was = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was)


def make_targets(labels: np.ndarray, class_ids: np.ndarray, protocol: NNProtocol) -> np.ndarray:
    """Training targets from an artifact's labels per ``protocol.label_mode``.

    Args:
        labels: ``[n, C]`` float (stored, possibly learned). class_ids: ``[n]`` int.
    Returns:
        ``mse``: ``[n, C]`` float32 (the labels themselves for ``artifact``, centered
        one-hot for ``argmax``/``class``); ``ce``: ``[n]`` int64 class indices.
    """
    labels = np.asarray(labels, np.float32)
    num_classes = labels.shape[1]
    if protocol.label_mode == "artifact":
        return labels
    hard = labels.argmax(axis=1) if protocol.label_mode == "argmax" else np.asarray(class_ids)
    hard = hard.astype(np.int64)
    if protocol.loss == "ce":
        return hard
    out = np.full((len(hard), num_classes), -1.0 / num_classes, np.float32)
    out[np.arange(len(hard)), hard] += 1.0
    return out


def _accuracy(model, x, y, batch: int = 500) -> float:
    torch = _torch()
    correct = 0
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    model.train()
    return correct / len(x)


def train_one(
    protocol: NNProtocol,
    seed: int,
    x_support: np.ndarray,
    targets: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Train one network of ``protocol`` with ``seed`` on the support set; score it.

    Args:
        x_support: ``[n, H, W, C]`` float32 (preprocessed space). targets: from
            :func:`make_targets` (``[n, C]`` float32 or ``[n]`` int64).
        x_test: ``[m, H, W, C]`` float32, same space. y_test: ``[m]`` int class ids.
        progress: called with the number of steps done so far.
    Returns:
        ``{"seed", "test_acc", "seconds", "loss" (per step), "curve_step",
        "curve_acc" (on the first curve_test_size test images)}``.
    Raises:
        DataError: shapes disagree or values are not finite. NumericalError-like
            divergence is reported as a non-finite loss, not hidden: training stops
            and ``test_acc`` is the accuracy of the diverged network.
    """
    torch = _torch()
    import torch.nn.functional as F

    from kdistill.nn.models import build_model

    x_support = np.asarray(x_support, np.float32)
    x_test = np.asarray(x_test, np.float32)
    if x_support.ndim != 4 or x_test.shape[1:] != x_support.shape[1:] or len(targets) != len(x_support):
        raise DataError(f"support {x_support.shape}, targets {np.shape(targets)} and test {x_test.shape} "
                        "shapes disagree")
    if not np.isfinite(x_support).all():
        raise DataError("support images contain NaN or Inf")
    start = time.perf_counter()
    xs = torch.from_numpy(x_support)
    ts = torch.from_numpy(np.asarray(targets))
    xt = torch.from_numpy(x_test)
    yt = torch.from_numpy(np.asarray(y_test, np.int64))
    n = len(xs)
    bs = min(protocol.batch_size, n)
    losses: list[float] = []
    curve_step: list[int] = []
    curve_acc: list[float] = []
    with deterministic(seed):
        try:
            model = build_model(protocol.model, x_support.shape[1:], num_classes, protocol.width,
                                protocol.depth, protocol.norm)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        params = model.parameters()
        if protocol.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=protocol.lr, momentum=protocol.momentum,
                                  weight_decay=protocol.weight_decay)
        else:
            opt = torch.optim.Adam(params, lr=protocol.lr, weight_decay=protocol.weight_decay)
        gen = torch.Generator().manual_seed(seed)
        perm, pos = torch.randperm(n, generator=gen), 0
        for step in range(protocol.steps):
            if protocol.schedule == "cosine":
                for g in opt.param_groups:
                    g["lr"] = protocol.lr * 0.5 * (1.0 + math.cos(math.pi * step / protocol.steps))
            if pos + bs > n:
                perm, pos = torch.randperm(n, generator=gen), 0
            idx = perm[pos:pos + bs]
            pos += bs
            out = model(xs[idx])
            if protocol.loss == "mse":
                loss = 0.5 * ((out - ts[idx]) ** 2).sum(1).mean()
            else:
                loss = F.cross_entropy(out, ts[idx])
            value = float(loss.detach())
            losses.append(value)
            if not math.isfinite(value):
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done = step + 1
            if protocol.eval_every and done % protocol.eval_every == 0 and done < protocol.steps:
                curve_step.append(done)
                curve_acc.append(_accuracy(model, xt[:protocol.curve_test_size], yt[:protocol.curve_test_size]))
            if progress is not None:
                progress(done)
        acc = _accuracy(model, xt, yt)
    if protocol.eval_every:
        curve_step.append(len(losses))
        curve_acc.append(acc)  # the last curve point is the full-test-set accuracy
    return {
        "seed": int(seed),
        "test_acc": acc,
        "seconds": time.perf_counter() - start,
        "loss": losses,
        "diverged": not all(math.isfinite(v) for v in losses),
        "curve_step": curve_step,
        "curve_acc": curve_acc,
    }


def machine_info() -> dict[str, Any]:
    """Where a number was measured: platform, CPU, core count, torch version and threads."""
    torch = _torch()
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "cpu",
    }


def support_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 (first 16 hex) of the support images and labels (which set was scored)."""
    h = hashlib.sha256(np.ascontiguousarray(images, np.float32).tobytes())
    h.update(np.ascontiguousarray(labels, np.float32).tobytes())
    return h.hexdigest()[:16]


def evaluate_nn(
    artifact,
    protocol: NNProtocol,
    data=None,
    overrides: dict[str, Any] | list[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Train ``protocol`` networks on a distilled set, one per seed; full test accuracy.

    Args:
        artifact: a :class:`kdistill.core.artifact.DistilledSet`.
        data: a :class:`PreparedData` already in the artifact's preprocessed space
            (default: the artifact's dataset loaded and passed through its transform).
        overrides: config overrides for loading the data (e.g. ``{"data_dir": ...}``).
        progress: ``progress(seed_index, steps_done)``.
    Returns:
        The result dict stored as ``nn_<model>.json``: ``format``, ``format_version``,
        ``protocol`` (dict), ``protocol_id``, ``test_acc`` (per seed), ``mean``,
        ``std`` (population std over seeds, ddof=0), ``runs`` (per-seed details with
        loss curves), ``support`` (size, digest, method), ``dataset``, ``n_test``,
        ``seconds``, ``machine``, ``kdistill_version``.
    Raises:
        ConfigError, DataError, DataFileError.
    """
    from kdistill import __version__

    if data is None:
        from kdistill.core.config import DistillConfig
        from kdistill.core.evaluate import prepare_with_transform

        config = DistillConfig.from_dict(artifact.config).with_overrides(overrides or {})
        data = prepare_with_transform(config, artifact)
    targets = make_targets(artifact.labels, artifact.class_ids, protocol)
    start = time.perf_counter()
    runs = []
    for i, seed in enumerate(protocol.seeds):
        cb = None if progress is None else (lambda done, i=i: progress(i, done))
        runs.append(train_one(protocol, seed, artifact.images, targets, data.x_test, data.y_test,
                              data.num_classes, progress=cb))
    accs = np.array([r["test_acc"] for r in runs])
    return {
        "format": RESULT_FORMAT,
        "format_version": RESULT_FORMAT_VERSION,
        "protocol": protocol.to_dict(),
        "protocol_id": protocol.protocol_id,
        "protocol_text": protocol.describe(),
        "test_acc": accs.tolist(),
        "mean": float(accs.mean()),
        "std": float(accs.std()),
        "runs": runs,
        "support": {
            "n": int(len(artifact.images)),
            "digest": support_digest(artifact.images, artifact.labels),
            "method": artifact.metrics.get("method", artifact.config.get("method")),
            "baseline": artifact.metrics.get("baseline"),
        },
        "dataset": artifact.dataset.get("name", artifact.config.get("dataset")),
        "n_test": int(len(data.x_test)),
        "seconds": time.perf_counter() - start,
        "machine": machine_info(),
        "kdistill_version": __version__,
    }


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Load an ``nn_*.json`` result and validate its protocol.

    Raises:
        ArtifactError: not a readable result file, or a newer format.
    """
    import json

    from kdistill.core.errors import ArtifactError

    try:
        res = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read NN result {str(path)!r}: {exc}") from exc
    if not isinstance(res, dict) or res.get("format") != RESULT_FORMAT:
        raise ArtifactError(f"{str(path)!r} is not a kdistill NN result")
    if int(res.get("format_version", 0)) > RESULT_FORMAT_VERSION:
        raise ArtifactError(f"{str(path)!r} has a newer NN result format; upgrade kdistill")
    NNProtocol.from_dict(res["protocol"])
    return res
