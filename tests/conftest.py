"""Shared fixtures: backends, tolerances, the real-data location."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from kdistill.errors import ConfigError

# Tests never autoload third-party plugins (the example-plugin tests opt in explicitly).
os.environ.setdefault("KDISTILL_DISABLE_PLUGINS", "1")

SHARED_DATA = Path(os.environ.get("KDISTILL_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


@pytest.fixture(scope="session")
def registry():
    from kdistill.core.registry import Registry

    return Registry()


@pytest.fixture(scope="session")
def jax_backend(registry):
    return registry.backend("jax")


@pytest.fixture(scope="session")
def torch_backend(registry):
    return registry.backend("torch")


@pytest.fixture(scope="session", params=["jax", "torch"])
def backend(request, registry):
    return registry.backend(request.param)


@pytest.fixture
def nt_available():
    """Skips the test, saying why, when neural-tangents cannot be imported."""
    from kdistill.runtime.optional import import_neural_tangents

    try:
        import_neural_tangents()
    except ConfigError as exc:
        pytest.skip(str(exc))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def need_files(*relative: str) -> Path:
    """Skip the test unless every file exists under the shared data dir."""
    missing = [r for r in relative if not (SHARED_DATA / r).exists()]
    if missing:
        pytest.skip(f"real data not available: missing {', '.join(str(SHARED_DATA / m) for m in missing)}")
    return SHARED_DATA
