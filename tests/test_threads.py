"""``threads = 1`` reaches XLA: its one-thread flags are set before the JAX backend
starts XLA (listing its devices, for the device setting, starts it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("jax")

SCRIPT = """
import os
from kdistill.core.config import DistillConfig
from kdistill.runtime.components import build_components
comps = build_components(DistillConfig(threads=1))
from jax._src import xla_bridge
print("initialized", xla_bridge.backends_are_initialized())
print("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
"""


def test_threads_1_sets_xla_flags_before_jax_starts():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "initialized True" in proc.stdout  # the backend did start XLA ...
    flags = proc.stdout.split("XLA_FLAGS", 1)[1].split()
    assert "--xla_cpu_multi_thread_eigen=false" in flags and "intra_op_parallelism_threads=1" in flags
    assert "already ran a computation" not in proc.stderr  # ... after the flags were set
