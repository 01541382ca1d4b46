"""Deterministic finite-network training on a support set and test evaluation.

Given the same protocol, support set, test data, torch version and thread count,
:func:`train_one` returns bit-identical numbers: the initialization is drawn from
the global torch RNG seeded inside ``torch.random.fork_rng`` (the caller's RNG
state is untouched), batch order from a ``torch.Generator`` seeded per seed, and
``torch.use_deterministic_algorithms(True)`` is on during the run (restored after).

``device`` (default ``"auto"``: the first CUDA GPU torch sees, else the CPU; see
:func:`resolve_device`) says where the network trains. The initialization and the batch
order are still drawn on the CPU, so a GPU run starts from the same weights and sees the
same batches as a CPU run; its numbers differ from the CPU's in the last bits (other
kernels, TF32 convolutions), and are repeatable on one GPU, torch and CUDA version.
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

from kdistill.errors import ConfigError, DataError
from kdistill.nn.protocol import NNProtocol

RESULT_FORMAT = "kdistill-nn-eval"
RESULT_FORMAT_VERSION = 1


def _torch():
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError("finite-network evaluation needs PyTorch: pip install -e '.[torch]' -c constraints.txt") from exc
    return torch


def resolve_device(device: Any = "auto"):
    """The ``torch.device`` to train on.

    Args:
        device: a ``device`` setting (:func:`kdistill.core.validators.parse_device`):
            ``"auto"`` (CUDA when torch sees a GPU, else CPU), ``"cpu"``, ``"cuda"`` /
            ``"gpu"`` (optionally with an index, ``"cuda:1"``), ``"mps"``; or a
            ``torch.device`` (returned as is).
    Returns:
        ``torch.device``; ``str()`` of it is what results record (``"cpu"``, ``"cuda:0"``).
    Raises:
        ConfigError: a malformed setting (the message lists the accepted forms) or a
            device this torch does not see (e.g. ``"cuda"`` with a CPU-only torch).
    """
    torch = _torch()
    if isinstance(device, torch.device):
        return device
    from kdistill.plugins.backends.torch_backend import torch_device

    dev = torch_device(torch, device)
    if dev.type == "cuda" and dev.index is None:  # record "cuda:0", not "cuda"
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


@contextlib.contextmanager
def deterministic(seed: int, warn_only: bool = False):
    """Seed the global torch RNG (restored on exit) and enable deterministic algorithms
    (``warn_only``: an op without a deterministic implementation warns instead of raising;
    used on GPUs, where a few ops have none)."""
    torch = _torch()
    was = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=warn_only)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(was, warn_only=was_warn_only)


def make_targets(labels: np.ndarray, class_ids: np.ndarray, protocol: NNProtocol) -> np.ndarray:
    """Training targets from an artifact's labels per ``protocol.label_mode``.

    Args:
        labels: ``[n, C]`` float (stored, possibly learned). class_ids: ``[n]`` int.
    Returns:
        ``mse``: ``[n, C]`` float32 (the labels themselves for ``artifact``, centered
        one-hot for ``argmax``/``class``); ``ce``: ``[n]`` int64 class indices.
    Raises:
        DataError: labels not ``[n, C]`` finite numbers; for ``label_mode='class'``,
            class ids that are not ``n`` integers in ``0..C-1``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] < 1 or labels.dtype.kind not in "iuf" or not np.isfinite(labels).all():
        raise DataError(f"the support labels must be a finite [n, C] float array, got {labels.dtype} {labels.shape}"
                        + ("" if labels.ndim != 2 or labels.dtype.kind not in "iuf" else " with NaN/Inf values"))
    labels = labels.astype(np.float32)
    num_classes = labels.shape[1]
    if protocol.label_mode == "artifact":
        return labels
    if protocol.label_mode == "argmax":
        hard = labels.argmax(axis=1)
    else:
        hard = np.asarray(class_ids)
        if hard.shape != (len(labels),) or hard.dtype.kind not in "iu":
            raise DataError(f"label_mode='class' needs one integer class id per support example ({len(labels)}), "
                            f"got {hard.dtype} {hard.shape}; use label_mode='argmax' or 'artifact'")
        bad = hard[(hard < 0) | (hard >= num_classes)]
        if bad.size:
            raise DataError(f"label_mode='class' needs class ids in 0..{num_classes - 1} (the labels have "
                            f"{num_classes} columns), got {int(bad[0])} ({bad.size} of {len(hard)} ids out of range); "
                            "the artifact's class_ids are damaged: use label_mode='argmax' or 'artifact'")
    hard = hard.astype(np.int64)
    if protocol.loss == "ce":
        return hard
    out = np.full((len(hard), num_classes), -1.0 / num_classes, np.float32)
    out[np.arange(len(hard)), hard] += 1.0
    return out


def _accuracy(model, x, y, batch: int = 500) -> tuple[float, bool]:
    """Accuracy on ``(x, y)`` and whether every output was finite (an overflowing
    network's argmax is meaningless)."""
    torch = _torch()
    correct, finite = 0, True
    model.eval()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out = model(x[i:i + batch])
            finite = finite and bool(torch.isfinite(out).all())
            correct += int((out.argmax(1) == y[i:i + batch]).sum())
    model.train()
    return correct / len(x), finite


def train_one(
    protocol: NNProtocol,
    seed: int,
    x_support: np.ndarray,
    targets: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    num_classes: int,
    progress: Callable[[int], None] | None = None,
    device: Any = "auto",
) -> dict[str, Any]:
    """Train one network of ``protocol`` with ``seed`` on the support set; score it.

    Args:
        x_support: ``[n, H, W, C]`` float32 (preprocessed space). targets: from
            :func:`make_targets` (``[n, C]`` float32 or ``[n]`` int64).
        x_test: ``[m, H, W, C]`` float32, same space. y_test: ``[m]`` int class ids.
        progress: called with the number of steps done so far.
        device: where the network and all tensors live (:func:`resolve_device`;
            default ``"auto"``: a CUDA GPU if torch sees one, else the CPU). The
            initialization and batch order are drawn on the CPU either way; on the CPU
            the numbers are bit-identical to those of ``device="cpu"``.
    Returns:
        ``{"seed", "test_acc", "seconds", "loss" (per step), "curve_step",
        "curve_acc" (on the first curve_test_size test images), "device"}``
        (``"device"``: the one used, ``"cpu"`` or ``"cuda:0"``, say).
        ``"diverged"`` is True when a loss, a weight or a test output became NaN/Inf: training
        stopped there and ``test_acc`` (of the broken network) means nothing;
        :func:`evaluate_nn` refuses such a run.
    Raises:
        DataError: shapes disagree or values are not finite.
        ConfigError: a malformed or absent ``device`` (:func:`resolve_device`).
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
    dev = resolve_device(device)
    on_cpu = dev.type == "cpu"
    if dev.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace (read when it first runs)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    start = time.perf_counter()
    xs = torch.from_numpy(x_support).to(dev)
    ts = torch.from_numpy(np.asarray(targets)).to(dev)
    xt = torch.from_numpy(x_test).to(dev)
    yt = torch.from_numpy(np.asarray(y_test, np.int64)).to(dev)
    n = len(xs)
    bs = min(protocol.batch_size, n)
    losses: list[float] = []
    curve_step: list[int] = []
    curve_acc: list[float] = []
    with deterministic(seed, warn_only=not on_cpu):
        try:
            model = build_model(protocol.model, x_support.shape[1:], num_classes, protocol.width,
                                protocol.depth, protocol.norm)  # initialized on the CPU (its RNG)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        model = model.to(dev)
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
            idx = perm[pos:pos + bs] if on_cpu else perm[pos:pos + bs].to(dev)
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
                curve_acc.append(_accuracy(model, xt[:protocol.curve_test_size], yt[:protocol.curve_test_size])[0])
            if progress is not None:
                progress(done)
        # a step can blow up the weights while its loss (computed before it) was finite
        finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
        acc, outputs_finite = _accuracy(model, xt, yt)
        finite = finite and outputs_finite
    diverged = not finite or not all(math.isfinite(v) for v in losses)
    if protocol.eval_every:
        curve_step.append(len(losses))
        curve_acc.append(acc)  # the last curve point is the full-test-set accuracy
    return {
        "seed": int(seed),
        "test_acc": acc,
        "seconds": time.perf_counter() - start,
        "loss": losses,
        "diverged": diverged,
        "curve_step": curve_step,
        "curve_acc": curve_acc,
        "device": str(dev),
    }


def machine_info(device: Any = "cpu") -> dict[str, Any]:
    """Where a number was measured: platform, CPU, core count, torch version and threads,
    and ``device`` (a resolved ``torch.device`` or its text, recorded as ``"cpu"``,
    ``"cuda:0"``, ...; for a CUDA device also ``"gpu"``, its name)."""
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
        "device": str(device),
        **({"gpu": torch.cuda.get_device_name(device)} if str(device).startswith("cuda") else {}),
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
    check_data: bool = True,
    device: Any = "auto",
) -> dict[str, Any]:
    """Train ``protocol`` networks on a distilled set, one per seed; full test accuracy.

    Args:
        artifact: a :class:`kdistill.io.artifact.DistilledSet`.
        data: a :class:`PreparedData` already in the artifact's preprocessed space
            (default: the artifact's dataset loaded and passed through its transform).
        overrides: config overrides for loading the data (e.g. ``{"data_dir": ...}``).
        progress: ``progress(seed_index, steps_done)``.
        check_data: compare the loaded dataset with the one the artifact was distilled
            from (:func:`kdistill.runtime.evaluate.prepare_with_transform`); False skips it.
        device: where the networks train (:func:`resolve_device`: ``"auto"`` (default; a
            CUDA GPU if torch sees one, else the CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``,
            ...). It is not part of the protocol (``protocol_id`` is the same on every
            device); the result records it. On the CPU, numbers equal ``device="cpu"``'s.
    Returns:
        The result dict stored as ``nn_<model>.json``: ``format``, ``format_version``,
        ``protocol`` (dict), ``protocol_id``, ``test_acc`` (per seed), ``mean``,
        ``std`` (population std over seeds, ddof=0), ``runs`` (per-seed details with
        loss curves), ``support`` (size, digest, method), ``dataset``, ``n_test``,
        ``seconds``, ``device`` (the one used: ``"cpu"``, ``"cuda:0"``, ...), ``machine``
        (also holding ``device``), ``kdistill_version``.
    Raises:
        ConfigError (also: a malformed or absent ``device``, checked before any data is
        loaded), DataError (also: the data differ from the artifact's, see
        ``check_data``), DataFileError.
        NumericalError: a network diverged (NaN/Inf loss or weights); the message names
            the seed and step and the protocol fields to lower. No accuracy is returned
            for a diverged protocol, since the remaining seeds' mean would be biased.
    """
    from kdistill.version import __version__
    from kdistill.errors import NumericalError

    dev = resolve_device(device)
    if data is None:
        from kdistill.core.config import DistillConfig
        from kdistill.runtime.evaluate import prepare_with_transform

        config = DistillConfig.from_artifact(artifact.config).with_overrides(overrides or {})
        data = prepare_with_transform(config, artifact, check_data=check_data)
    targets = make_targets(artifact.labels, artifact.class_ids, protocol)
    start = time.perf_counter()
    runs = []
    for i, seed in enumerate(protocol.seeds):
        cb = None if progress is None else (lambda done, i=i: progress(i, done))
        run = train_one(protocol, seed, artifact.images, targets, data.x_test, data.y_test,
                        data.num_classes, progress=cb, device=dev)
        if run["diverged"]:
            bad = next((k for k, v in enumerate(run["loss"]) if not math.isfinite(v)), None)
            where = (f"its loss became {run['loss'][bad]} at step {bad + 1} of {protocol.steps}" if bad is not None
                     else f"its weights or test outputs became NaN/Inf by step {len(run['loss'])} of "
                          f"{protocol.steps}")
            raise NumericalError(
                f"finite-network training diverged for seed {seed}: {where} (lr={protocol.lr:g}, "
                f"weight_decay={protocol.weight_decay:g}, optimizer={protocol.optimizer}); no accuracy is "
                "reported for a diverged run. Lower -p lr (and -p weight_decay), or use -p schedule=cosine")
        runs.append(run)
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
        "device": str(dev),
        "machine": machine_info(dev),
        "kdistill_version": __version__,
    }


def _is_number(v, lo: float | None = None, hi: float | None = None) -> bool:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    return ok and (lo is None or v >= lo) and (hi is None or v <= hi)


def _result_problem(res: dict[str, Any]) -> str | None:
    """What is wrong with a decoded NN result (format and version already checked), or None."""
    try:
        protocol = NNProtocol.from_dict(res["protocol"])
    except ConfigError as exc:
        return f"its protocol is invalid: {exc}"
    if res.get("protocol_id") != protocol.protocol_id:
        return (f"protocol_id {res.get('protocol_id')!r} does not match its protocol (id {protocol.protocol_id}): "
                "the file was edited")
    accs, runs = res.get("test_acc"), res.get("runs")
    if not isinstance(accs, list) or not accs or not all(_is_number(a, 0.0, 1.0) for a in accs):
        return "'test_acc' must be a non-empty list of accuracies in [0, 1]"
    if len(accs) != len(protocol.seeds):
        return f"'test_acc' has {len(accs)} entries but the protocol has {len(protocol.seeds)} seeds"
    if not _is_number(res.get("mean"), 0.0, 1.0) or not _is_number(res.get("std"), 0.0, 1.0):
        return "'mean' and 'std' must be numbers in [0, 1]"
    if abs(res["mean"] - float(np.mean(accs))) > 1e-9 or abs(res["std"] - float(np.std(accs))) > 1e-9:
        return "'mean'/'std' do not match 'test_acc': the file was edited"
    if not isinstance(runs, list) or len(runs) != len(accs):
        return f"'runs' must be a list with one entry per seed ({len(accs)})"
    for k, run in enumerate(runs):
        if not isinstance(run, dict):
            return f"runs[{k}] must be an object"
        if run.get("seed") != protocol.seeds[k] or run.get("test_acc") != accs[k]:
            return f"runs[{k}] does not match seed {protocol.seeds[k]} and test_acc[{k}]"
        loss = run.get("loss")
        if not isinstance(loss, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in loss):
            return f"runs[{k}].loss must be a list of numbers"
        steps, curve = run.get("curve_step", []), run.get("curve_acc", [])
        if (not isinstance(steps, list) or not isinstance(curve, list) or len(steps) != len(curve)
                or not all(_is_number(v) for v in steps) or not all(_is_number(v, 0.0, 1.0) for v in curve)):
            return f"runs[{k}].curve_step/curve_acc must be lists of numbers of one length"
    support = res.get("support")
    if not isinstance(support, dict) or not isinstance(support.get("digest"), str) or not (
            isinstance(support.get("n"), int) and not isinstance(support.get("n"), bool)):
        return "'support' must be an object with 'n' (int) and 'digest' (str)"
    if not isinstance(res.get("n_test"), int) or isinstance(res.get("n_test"), bool) or res["n_test"] < 1:
        return "'n_test' must be an integer >= 1"
    if not isinstance(res.get("machine", {}), dict):
        return "'machine' must be an object"
    return None


def read_result(path: str | os.PathLike) -> dict[str, Any]:
    """Load an ``nn_*.json`` result and validate it.

    Checks the format and version, the protocol (valid, and ``protocol_id`` matching
    it), per-seed accuracies, mean/std consistent with them, ``runs`` (one per seed,
    with loss and curve lists), ``support`` (``n``, ``digest``) and ``n_test``.
    ``protocol_text`` is rebuilt from the protocol (never taken from the file), and
    ``diverged`` is set when any run diverged (files of older kdistill versions).

    Raises:
        ArtifactError: not a readable result file, no integrity record or content that
            differs from it (:func:`kdistill.io.safeio.write_json_sealed` writes it), a
            newer format, or a malformed one (the message names the file and the field).
    """
    import json

    from kdistill.errors import ArtifactError

    what = f"NN result {str(path)!r}"
    try:
        res = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: UnicodeDecodeError, JSONDecodeError
        raise ArtifactError(f"cannot read {what}: {exc}") from exc
    if not isinstance(res, dict) or res.get("format") != RESULT_FORMAT:
        raise ArtifactError(f"{str(path)!r} is not a kdistill NN result (no \"format\": \"{RESULT_FORMAT}\"); "
                            "remove it or rewrite it with `kdistill evaluate --nn`")
    from kdistill.io.safeio import INTEGRITY_KEY, verify_integrity

    verify_integrity(str(path), res, None, ArtifactError, "NN result",
                     legacy_hint="rewrite it with `kdistill evaluate --nn` to get a verifiable result")
    res = {k: v for k, v in res.items() if k != INTEGRITY_KEY}
    version = res.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ArtifactError(f"{what} has a malformed format_version (got {json.dumps(version)}, expected an "
                            "integer >= 1); rewrite it with `kdistill evaluate --nn`")
    if version > RESULT_FORMAT_VERSION:
        raise ArtifactError(f"{what} has format version {version}, newer than this kdistill reads "
                            f"({RESULT_FORMAT_VERSION}); upgrade kdistill")
    missing = [k for k in ("protocol", "protocol_id", "test_acc", "mean", "std", "runs", "support", "n_test")
               if k not in res]
    problem = f"it lacks {', '.join(repr(k) for k in missing)}" if missing else _result_problem(res)
    if problem:
        raise ArtifactError(f"{what} is malformed: {problem}; rewrite it with `kdistill evaluate --nn` "
                            "(or remove it)")
    res["protocol_text"] = NNProtocol.from_dict(res["protocol"]).describe()
    res["diverged"] = any(bool(r.get("diverged")) for r in res["runs"])
    return res
