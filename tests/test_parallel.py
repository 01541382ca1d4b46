"""Data parallelism equals one device: 2 JAX CPU devices (one mesh), 2 torch processes
(torchrun, gloo on 127.0.0.1) and 2 ``jax.distributed`` processes on localhost each give
the result of the 1-device run of the same config, for KIP-FC (through the CLI, as the
README's "GPUs and clusters" launches it), RFAD and exact-kernel evaluation (and Label
Solve); a run whose primary process is killed mid-run resumes to the same bits.

Tolerances. In float64 the split changes only the order of the sums over the target
batch (two half-batch sums, then their sum), a relative change of a few ulps (~1e-16)
in the loss and gradients. Adam's update ``m / (sqrt(v) + eps)`` is smooth in the
gradient, with slope at most ``lr / eps`` per coordinate only for gradients below
``eps = 1e-8``, so after a few steps the support set differs by ~1e-14 (measured:
<= 3e-14); 1e-10 absolute on values of order 1 is the issue's bar and leaves 4 orders
of margin. Predictions and Label Solve labels split over devices only change which
process computes a row (the same arithmetic per row, or sums split in two): ~1e-15.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from kdistill.io.checkpoint import read_checkpoint

pytest.importorskip("jax")
pytest.importorskip("torch")

WORKER = str(Path(__file__).with_name("parallel_worker.py"))
TWO_DEVICES = "--xla_force_host_platform_device_count=2"
TOL = 1e-10
#: KIP with the FC1 NTK, float64, on the embedded digits data: the CLI flags
KIP_FC = ["--steps", "4", "--ipc", "2", "--target-batch", "200", "--eval-every", "2", "--dtype", "float64",
          "--no-grid", "--no-progress", "--checkpoint-every", "4", "-s", "test_size=100"]
TIMEOUT = 240


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra) -> dict:
    out = {k: v for k, v in os.environ.items()
           if k not in ("XLA_FLAGS", "WORLD_SIZE", "RANK", "LOCAL_RANK", "KDISTILL_COORDINATOR")}
    out.update(extra)
    return out


def run(cmd: list[str], **extra) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env(**extra), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def torchrun(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), *args]
    if check:
        return run(cmd)
    return subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=TIMEOUT)


def jax_processes(args: list[str], wait_primary_only: bool = False) -> list[int]:
    """Run ``args`` as 2 jax.distributed processes on localhost; their return codes."""
    base = {"KDISTILL_COORDINATOR": f"127.0.0.1:{free_port()}", "KDISTILL_NUM_PROCESSES": "2"}
    procs = [subprocess.Popen(args, env=env(**base, KDISTILL_PROCESS_ID=str(i)), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    try:
        procs[0].wait(TIMEOUT)
        if wait_primary_only:  # the primary died: a scheduler would now stop the rest of the job
            time.sleep(1)
            procs[1].kill()
        procs[1].wait(TIMEOUT)
    finally:
        for p in procs:
            p.kill()
    outs = [p.communicate() for p in procs]
    if not wait_primary_only:
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, f"{' '.join(args)} failed:\n{out[-2000:]}\n{err[-4000:]}"
    return [p.returncode for p in procs]


KDISTILL = [sys.executable, "-m", "kdistill"]
LAUNCHES = ("jax-2-devices", "torch-2-processes", "jax-2-processes")


def launch(how: str, args: list[str]) -> None:
    """Run ``args`` (a Python command line) the way ``how`` names."""
    if how == "jax-1-device" or how == "torch-1-process":
        run([sys.executable, *args])
    elif how == "jax-2-devices":
        run([sys.executable, *args], XLA_FLAGS=TWO_DEVICES)
    elif how == "torch-2-processes":
        torchrun(args)
    else:
        jax_processes([sys.executable, *args])


def backend_of(how: str) -> str:
    return how.split("-")[0]


def run_all(how: str, d: Path) -> dict:
    """The KIP-FC CLI run and the worker's RFAD run and evaluation, launched as ``how``
    in ``d``: their float64 results."""
    backend = backend_of(how)
    d.mkdir(parents=True, exist_ok=True)
    launch(how, ["-m", "kdistill", "-q", "distill", *KIP_FC, "--backend", backend, "--out", str(d / "kip")])
    launch(how, [WORKER, "all", backend, str(d)])
    out = dict(np.load(d / "result.npz"))
    out["kip"] = read_checkpoint(d / "kip").trainer_state["params/x_s"]
    return out


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Results per launch, computed on first use."""
    root, cache = tmp_path_factory.mktemp("parallel"), {}

    def get(how: str) -> dict:
        if how not in cache:
            cache[how] = run_all(how, root / how)
        return cache[how]

    return get


KEYS = ("kip", "x_s", "pred_fc", "pred_convnet", "labels")  # x_s: the RFAD support set


def test_one_device_backends_agree(results):
    """The references themselves: the JAX and torch 1-device runs agree (cross-backend)."""
    jax, torch = results("jax-1-device"), results("torch-1-process")
    for key in KEYS:
        assert jax[key].dtype == np.float64
        np.testing.assert_allclose(jax[key], torch[key], rtol=0, atol=1e-8, err_msg=key)


@pytest.mark.parametrize("how", LAUNCHES)
def test_equals_one_device(how, results):
    """KIP-FC (CLI), RFAD, exact FC NNGP / ConvNet NTK KRR predictions and Label Solve."""
    got = results(how)
    ref = results("jax-1-device" if how.startswith("jax") else "torch-1-process")
    for key in KEYS:
        assert got[key].shape == ref[key].shape
        np.testing.assert_allclose(got[key], ref[key], rtol=0, atol=TOL, err_msg=key)
    assert not np.array_equal(got["x_s"], results("jax-1-device")["x_s"] * 0 + 1)  # a real support set


@pytest.mark.parametrize("how", ("torch-2-processes", "jax-2-processes"))
def test_kill_one_process_and_resume(how, tmp_path, results):
    """The primary process SIGKILLs itself after step 3 of 6 (checkpoints every 2 steps);
    resuming with the same launch gives the uninterrupted run's RFAD support set, bit
    for bit."""
    backend = backend_of(how)
    if how == "torch-2-processes":
        proc = torchrun([WORKER, "rfad", backend, str(tmp_path), "--kill-at", "3"], check=False)
        assert proc.returncode != 0 and "SIGKILL" in proc.stdout + proc.stderr
    else:
        codes = jax_processes([sys.executable, WORKER, "rfad", backend, str(tmp_path), "--kill-at", "3"],
                              wait_primary_only=True)
        assert codes[0] == -9
    assert read_checkpoint(tmp_path / "run").step == 2 and not (tmp_path / "result.npz").exists()
    launch(how, [WORKER, "rfad", backend, str(tmp_path), "--resume"])
    assert np.array_equal(np.load(tmp_path / "result.npz")["x_s"], results(how)["x_s"])


def test_target_batch_must_split_evenly(tmp_path):
    """A target_batch that does not split is refused; a capped one is trimmed."""
    proc = subprocess.run([*KDISTILL, "distill", *KIP_FC, "--target-batch", "201", "--out", str(tmp_path / "r")],
                          env=env(XLA_FLAGS=TWO_DEVICES), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2
    assert "target_batch=201" in proc.stderr and "multiple of 2" in proc.stderr and "200 or 202" in proc.stderr
    # the whole training set (digits: 1437 images) as the batch: trimmed to 1436, with a warning
    proc = subprocess.run([*KDISTILL, "distill", *KIP_FC, "--target-batch", "5000", "--steps", "1", "--out",
                           str(tmp_path / "s")], env=env(XLA_FLAGS=TWO_DEVICES), capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert "has 1437 examples" in proc.stderr and "the last 1 are left out" in proc.stderr


def test_jax_under_torchrun_is_refused(tmp_path):
    """torchrun starts torch processes; a JAX run there would be independent copies that
    all write the run directory."""
    proc = torchrun(["-m", "kdistill", "distill", *KIP_FC, "--out", str(tmp_path / "r")], check=False)
    assert proc.returncode != 0
    assert "this launch has 2 processes but backend 'jax' runs as 1" in proc.stderr
    assert not (tmp_path / "r" / "checkpoint.npz").exists()


def test_device_setting_errors():
    from kdistill.core.config import DistillConfig
    from kdistill.core.registry import get_registry
    from kdistill.errors import ConfigError

    for bad in ("banana", "cuda:x", "auto:0", "cpu:"):
        with pytest.raises(ConfigError, match="device must be one of auto, cpu, gpu, cuda, tpu, mps"):
            DistillConfig(device=bad)
    assert DistillConfig(device="cuda:1").device == "cuda:1"
    import jax
    import torch

    if not any(d.platform == "gpu" for d in jax.devices()):
        with pytest.raises(ConfigError, match=r"JAX .* sees no such device.*jax-cuda"):
            get_registry().backend("jax", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"sees 0 CUDA device\(s\).*CUDA build of torch"):
            get_registry().backend("torch", "cuda")
    assert get_registry().backend("torch", "cpu").describe_devices() == "cpu"
