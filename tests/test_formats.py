"""Files written by earlier kdistill versions: refused by default (they predate the
integrity record over their metadata), readable on explicit request (``allow_legacy``)
so that a trusted file can be re-saved in the current, verified format.

``tests/data`` holds frozen files; never regenerate them with a newer kdistill (that
would defeat the test). They hold the arrays built in :func:`expected_arrays`:

- ``artifact_v1_kdistill-0.1.0.npz``: written by kdistill 0.1.0's ``DistilledSet.save``
  (format version 1, before per-array checksums; config without the fields added since);
- ``artifact_v1_checksums.npz``: format version 1 with checksums;
- ``checkpoint_v1.npz``: checkpoint format version 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import kdistill
from kdistill.io.checkpoint import config_differences, load_checkpoint
from kdistill.core.config import DistillConfig
from kdistill.errors import ArtifactError, CheckpointError

DATA = Path(__file__).parent / "data"


def expected_arrays():
    rng = np.random.default_rng(2024)
    images = rng.standard_normal((6, 4, 4, 1)).astype(np.float32)
    labels = np.eye(3, dtype=np.float32)[[0, 0, 1, 1, 2, 2]] - 1 / 3
    return images, labels, np.array([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize("name", ["artifact_v1_kdistill-0.1.0.npz", "artifact_v1_checksums.npz"])
def test_version_1_artifacts_load(name, tmp_path):
    with pytest.raises(ArtifactError, match="predates integrity records.*allow_legacy=True"):
        kdistill.load(DATA / name)
    with pytest.warns(UserWarning, match="without verifying its metadata"):
        art = kdistill.load(DATA / name, allow_legacy=True)
    resaved = kdistill.load(art.save(tmp_path / "resaved.npz"))  # now in the verified format
    np.testing.assert_array_equal(resaved.images, art.images)
    images, labels, class_ids = expected_arrays()
    np.testing.assert_array_equal(art.images, images)
    np.testing.assert_array_equal(art.labels, labels)
    np.testing.assert_array_equal(art.class_ids, class_ids)
    assert float(art.loss_params["log_tau"]) == -0.25
    np.testing.assert_allclose(art.transform.inverse(np.zeros((1, 1, 1, 1))), [[[[3.5]]]])
    assert art.history == {"step": [1, 2, 3], "loss": [0.3, 0.2, 0.1]} and art.seed == 11
    cfg = DistillConfig.from_dict(art.config)  # fields added later take their defaults
    assert (cfg.ipc, cfg.steps, cfg.seed, cfg.checkpoint_every, cfg.nonfinite_retries) == (2, 3, 11, 0, 2)


def test_version_1_checkpoint_loads():
    with pytest.raises(CheckpointError, match="predates integrity records"):
        load_checkpoint(DATA / "checkpoint_v1.npz")
    with pytest.warns(UserWarning, match="without verifying its metadata"):
        ck = load_checkpoint(DATA / "checkpoint_v1.npz", allow_legacy=True)
    images, labels, class_ids = expected_arrays()
    assert ck.step == 3 and ck.version == "0.1.0" and ck.elapsed_seconds == 1.5
    np.testing.assert_array_equal(ck.params()["x_s"], images)
    np.testing.assert_array_equal(ck.trainer_state["opt/0001"], images * 0.5)
    assert ck.trainer_state["opt/0000"].dtype == np.int32
    np.testing.assert_array_equal(ck.labels, labels)
    np.testing.assert_array_equal(ck.class_ids, class_ids)
    rng = np.random.default_rng(5)
    rng.standard_normal(3)
    restored = np.random.default_rng()
    restored.bit_generator.state = ck.rng_state
    np.testing.assert_array_equal(restored.standard_normal(4), rng.standard_normal(4))
    assert config_differences(ck.config, DistillConfig(ipc=2, steps=9, seed=11).to_dict()) == []
