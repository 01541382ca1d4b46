"""Library views: DistilledSet.to_torch_dataset, arrays input to kdistill.distill, and the
safetensors export (`kdistill export`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

import kdistill
from kdistill.cli import main
from kdistill.core.contracts import Dataset
from kdistill.datasets import load_digits
from kdistill.errors import DataError
from kdistill.interop.exporters import export_safetensors

FAST = dict(ipc=1, steps=2, eval_every=0, target_batch=100, backend="jax", test_size=100)


@pytest.fixture(scope="module")
def result():
    return kdistill.distill(**FAST)


def test_to_torch_dataset_shapes_dtypes_values(result):
    torch = pytest.importorskip("torch")
    ds = result.to_torch_dataset()
    x, y = ds.tensors
    n, h, w, c = result.images.shape
    assert x.shape == (n, c, h, w) and x.dtype == torch.float32
    assert y.shape == result.labels.shape and y.dtype == torch.float32
    np.testing.assert_array_equal(x.numpy(), result.images.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(y.numpy(), result.labels)
    assert len(ds) == n and ds[0][0].shape == (c, h, w)
    xp, yc = result.to_torch_dataset(pixel_space=True, label_mode="class").tensors
    np.testing.assert_allclose(xp.numpy(), result.transform.inverse(result.images).transpose(0, 3, 1, 2), rtol=1e-6)
    assert yc.dtype == torch.int64 and yc.tolist() == result.class_ids.tolist()
    assert 0 <= float(xp.mean()) <= 255  # the pixel scale, not the standardized one
    with pytest.raises(kdistill.errors.ConfigError, match="label_mode"):
        result.to_torch_dataset(label_mode="hard")


def test_arrays_input_equals_registered_dataset():
    ds = load_digits()
    ref = kdistill.distill(**FAST)
    for data in ((ds.x_train, ds.y_train, ds.x_test, ds.y_test),
                 {"x_train": ds.x_train.transpose(0, 3, 1, 2), "y_train": ds.y_train.astype(np.float64),
                  "x_test": ds.x_test.transpose(0, 3, 1, 2), "y_test": ds.y_test, "layout": "nchw",
                  "class_names": list(ds.class_names)}):
        got = kdistill.distill(data=data, **FAST)
        np.testing.assert_array_equal(got.images, ref.images)
        np.testing.assert_array_equal(got.labels, ref.labels)
        np.testing.assert_array_equal(got.class_ids, ref.class_ids)
        assert got.dataset["fingerprint"]["train"]["sha256"] != "" and got.metrics["distilled_acc"] == \
            ref.metrics["distilled_acc"]


@pytest.mark.parametrize("data, fragment", [
    ((1, 2, 3), "the tuple has 3 items"),
    ({"x_train": np.zeros((4, 8, 8, 1)), "y_train": np.zeros(4, int)}, "the dict lacks x_test, y_test"),
    ({"x_train": 0, "y_train": 0, "x_test": 0, "y_test": 0, "colour": 1}, "unknown keys: colour"),
    ((np.zeros((4, 8, 8, 1)), np.array([0, 1, 0.5, 1]), np.zeros((2, 8, 8, 1)), np.zeros(2, int)),
     "y_train: labels must be integer class ids"),
    ((np.zeros((4, 8)), np.zeros(4, int), np.zeros((2, 8, 8, 1)), np.zeros(2, int)), "x_train: expected images"),
    ((np.full((4, 8, 8, 1), np.nan), np.zeros(4, int), np.zeros((2, 8, 8, 1)), np.zeros(2, int)),
     "x_train: images contain NaN"),
    ((np.zeros((4, 8, 8, 1), bool), np.zeros(4, int), np.zeros((2, 8, 8, 1)), np.zeros(2, int)),
     "expected numeric images"),
    ((np.zeros((4, 8, 8, 1)), np.zeros(3, int), np.zeros((2, 8, 8, 1)), np.zeros(2, int)), "3 labels for 4 images"),
    ("digits", "got str"),
])
def test_arrays_input_errors(data, fragment):
    with pytest.raises(DataError) as exc:
        kdistill.distill(data=data, **FAST)
    assert fragment in str(exc.value)


def test_from_arrays_dtypes_and_defaults():
    x = np.arange(2 * 4 * 4, dtype=np.int32).reshape(2, 4, 4)
    ds = Dataset.from_arrays(x, [0, 2], x.astype(np.uint8), [1, 1])
    assert ds.x_train.shape == (2, 4, 4, 1) and ds.x_train.dtype == np.float32 == ds.x_test.dtype
    assert ds.num_classes == 3 and ds.class_names == ("0", "1", "2")


def test_safetensors_export_round_trip(result, tmp_path):
    st = pytest.importorskip("safetensors")
    from safetensors.numpy import load_file

    result.save(tmp_path / "run" / "distilled.npz")
    out = tmp_path / "set.safetensors"
    r = CliRunner().invoke(main, ["export", str(tmp_path / "run"), "--format", "safetensors", "--out", str(out)])
    assert r.exit_code == 0, r.output
    arrays = load_file(str(out))
    np.testing.assert_array_equal(arrays["images"], result.images.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(arrays["labels"], result.labels)
    np.testing.assert_array_equal(arrays["class_ids"], result.class_ids)
    assert arrays["class_ids"].dtype == np.int64
    for k, v in result.transform.state().items():
        np.testing.assert_array_equal(arrays[f"preprocess/{k}"], v)
    with st.safe_open(str(out), "np") as f:
        meta = f.metadata()
    assert meta["format"] == "kdistill-distilled-set" and meta["layout"] == "NCHW"
    assert meta["space"] == "preprocessed" and meta["preprocess"] == result.transform.name
    assert json.loads(meta["dataset"])["class_names"] == result.dataset["class_names"]
    assert json.loads(meta["config"]) == result.config
    # pixel space, NHWC, through the method
    p = export_safetensors(result, tmp_path / "pix.safetensors", layout="nhwc", pixel_space=True)
    np.testing.assert_allclose(load_file(str(p))["images"], result.transform.inverse(result.images), rtol=1e-6)
    r = CliRunner().invoke(main, ["export", str(tmp_path / "nothing"), "--out", str(out)])
    assert r.exit_code == 2 and "does not exist" in r.output
