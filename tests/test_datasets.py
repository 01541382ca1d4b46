"""Tests of the dataset loaders: small files written in the standard formats, malformed
and malicious files, and (when present) the real data in ../shared/data."""

from __future__ import annotations

import gzip
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from kdistill.errors import DataError, DataFileError
from kdistill.datasets import (
    Dataset,
    kdistill_register_datasets,
    load_cifar10,
    load_cifar100,
    load_digits,
    load_fashion_mnist,
    load_mnist,
    load_svhn,
    read_idx,
    resolve_dir,
)
from kdistill.datasets.mnist import IDX_FILES

SHARED_DATA = Path(
    os.environ.get("KDISTILL_SHARED_DATA")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
CIFAR10_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]

# ---------------------------------------------------------------- writers (test side)

_IDX_TYPES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
              np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr)
    header = bytes([0, 0, _IDX_TYPES[arr.dtype.type], arr.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, gz: bool = True) -> None:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if gz else data)


def write_mnist_dir(root: Path, n_train=6, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        write_idx(root / name, arr)
    return arrays


def pixel_value(n, row, col, ch):
    """A known, position-dependent pixel value (distinct per channel/row/column)."""
    return (n * 37 + row * 7 + col * 3 + ch * 101) % 256


def cifar_rows(first: int, count: int) -> np.ndarray:
    """Rows in the CIFAR layout built from the spec, independently of the loader:
    column k holds channel k // 1024, row (k % 1024) // 32, column k % 32."""
    k = np.arange(32 * 32 * 3)
    ch, row, col = k // 1024, (k % 1024) // 32, k % 32
    n = np.arange(first, first + count)[:, None]
    return pixel_value(n, row, col, ch).astype(np.uint8)


def expected_nhwc(first: int, count: int) -> np.ndarray:
    n, row, col, ch = np.indices((count, 32, 32, 3))
    return pixel_value(n + first, row, col, ch).astype(np.uint8)


def write_pickle(path: Path, obj, protocol=2) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10_dir(root: Path, per_batch=2, n_test=3, meta_names=None, protocol=2):
    root.mkdir(parents=True, exist_ok=True)
    labels = {}
    for i, name in enumerate(CIFAR10_BATCHES):
        count = n_test if name == "test_batch" else per_batch
        first = 1000 if name == "test_batch" else i * per_batch
        y = [(first + j) % 10 for j in range(count)]
        labels[name] = y
        write_pickle(root / name, {
            b"batch_label": name.encode(), b"labels": y,
            b"data": cifar_rows(first, count),
            b"filenames": [f"img{j}.png".encode() for j in range(count)],
        }, protocol)
    if meta_names is not None:
        write_pickle(root / "batches.meta", {
            b"num_cases_per_batch": per_batch, b"num_vis": 3072,
            b"label_names": [s.encode() for s in meta_names],
        }, protocol)
    return labels


# ------------------------------------------------------------------------- Dataset


def _small(**overrides):
    kw = dict(
        name="t", x_train=np.zeros((4, 2, 2, 1), np.uint8), y_train=np.array([0, 1, 2, 1]),
        x_test=np.zeros((2, 2, 2, 1), np.uint8), y_test=np.array([2, 0]),
        num_classes=3, class_names=("a", "b", "c"),
    )
    kw.update(overrides)
    return Dataset(**kw)


def test_dataset_valid_and_int_labels_become_int64():
    ds = _small(y_train=np.array([0, 1, 2, 1], np.int32), y_test=np.array([2, 0], np.uint8))
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.image_shape == (2, 2, 1)


@pytest.mark.parametrize("overrides, match", [
    (dict(x_train=np.zeros((4, 2, 2), np.uint8)), "4-D"),
    (dict(x_train=np.zeros((4, 2, 2, 1), np.float64)), "uint8 or float32"),
    (dict(x_train=np.full((4, 2, 2, 1), np.nan, np.float32),
          x_test=np.zeros((2, 2, 2, 1), np.float32)), "NaN"),
    (dict(y_train=np.array([0, 1, 2])), "3 labels for 4 images"),
    (dict(y_train=np.array([0, 1, 3, 1])), r"0\.\.2"),
    (dict(y_test=np.array([-1, 0])), r"0\.\.2"),
    (dict(y_train=np.array([0.0, 1.0, 2.0, 1.0])), "integer labels"),
    (dict(y_train=np.array([[0, 1, 2, 1]])), "1-D"),
    (dict(class_names=("a", "b")), "class names"),
    (dict(x_test=np.zeros((2, 3, 2, 1), np.uint8)), "differ"),
    (dict(x_test=np.zeros((2, 2, 2, 1), np.float32)), "dtype"),
    (dict(num_classes=0, class_names=()), "num_classes"),
])
def test_dataset_rejects_bad_arrays(overrides, match):
    with pytest.raises(DataError, match=match):
        _small(**overrides)


def test_resolve_dir_messages(tmp_path):
    with pytest.raises(DataFileError, match="--data-dir is required"):
        resolve_dir(None, "mnist", IDX_FILES)
    (tmp_path / IDX_FILES[0]).write_bytes(b"")
    with pytest.raises(DataFileError) as info:
        resolve_dir(tmp_path, "mnist", IDX_FILES, source="https://example.org")
    msg = str(info.value)
    assert "'mnist'" in msg and str(tmp_path) in msg and "https://example.org" in msg
    assert all(f in msg.split("Tried:")[1] for f in IDX_FILES[1:])
    assert IDX_FILES[0] not in msg.split("Tried:")[1]  # present, so not missing
    sub = tmp_path / "sub"
    sub.mkdir()
    for f in IDX_FILES:
        (sub / f).write_bytes(b"")
    assert resolve_dir(tmp_path, "mnist", IDX_FILES, ("nope", "sub")) == sub


# -------------------------------------------------------------------------- digits


def test_digits_shapes_classes_and_range():
    ds = load_digits("/ignored/path")
    assert ds.name == "digits"
    assert ds.x_train.shape == (1437, 8, 8, 1) and ds.x_test.shape == (360, 8, 8, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.num_classes == 10 and ds.class_names == tuple("0123456789")
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 255.0
    # values are k * 255/16 for k in 0..16
    assert np.allclose(np.round(ds.x_train * 16 / 255), ds.x_train * 16 / 255, atol=1e-4)
    train_counts = np.bincount(ds.y_train, minlength=10)
    test_counts = np.bincount(ds.y_test, minlength=10)
    assert (test_counts >= 35).all() and (test_counts <= 37).all()  # stratified 20%
    assert train_counts.sum() + test_counts.sum() == 1797
    again = load_digits()
    assert np.array_equal(again.x_train, ds.x_train) and np.array_equal(again.y_test, ds.y_test)


def test_digits_passes_the_dataset_contract_check():
    from kdistill.core.contracts import Dataset as CoreDataset
    from kdistill.testing import check_dataset

    assert Dataset is CoreDataset  # the contract lives in core; kdistill.datasets re-exports it
    check_dataset("digits")
    check_dataset(load_digits)


def _tiny_dataset(seed: int = 0, scale: float = 255.0, y_train=(0, 1, 0, 1)) -> Dataset:
    x = (np.random.default_rng(seed).random((4, 2, 2, 1)) * scale).astype(np.float32)
    return Dataset("tiny", x, np.array(y_train), x[:2], np.array([0, 1]), 2, ("a", "b"))


@pytest.mark.parametrize("loader, fragment", [
    (lambda d: "not a dataset", "returned str, not a kdistill Dataset"),
    (lambda d, n=iter(range(9)): _tiny_dataset(seed=next(n)), "loading must be deterministic"),
    (lambda d: _tiny_dataset(scale=1000.0), "0..255 scale"),
    (lambda d: _tiny_dataset(y_train=(0, 0, 0, 0)), "classes [1] have no training example"),
])
def test_check_dataset_reports_broken_contracts(loader, fragment):
    from kdistill.testing import check_dataset

    with pytest.raises(AssertionError, match=re.escape(fragment)):
        check_dataset(loader)


# ---------------------------------------------------------------------- IDX / MNIST


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trip(tmp_path, gz, dtype):
    base = (np.arange(2 * 3 * 5) * 17 % 256).reshape(2, 3, 5)
    arr = (base if dtype == np.uint8 else base - 128).astype(dtype)
    path = tmp_path / "a.idx"
    write_idx(path, arr, gz=gz)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == arr.shape and np.array_equal(out, arr)
    out[0, 0, 0] = 1  # writable


@pytest.mark.parametrize("loader, name, first_class", [
    (load_mnist, "mnist", "0"),
    (load_fashion_mnist, "fashion-mnist", "T-shirt/top"),
])
def test_mnist_loaders_round_trip(tmp_path, loader, name, first_class):
    arrays = write_mnist_dir(tmp_path)
    ds = loader(tmp_path)
    assert ds.name == name and ds.num_classes == 10 and ds.class_names[0] == first_class
    assert len(ds.class_names) == 10
    assert ds.x_train.shape == (6, 28, 28, 1) and ds.x_test.shape == (4, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64
    assert np.array_equal(ds.x_train[..., 0], arrays["train-images-idx3-ubyte.gz"])
    assert np.array_equal(ds.y_train, arrays["train-labels-idx1-ubyte.gz"])
    assert np.array_equal(ds.x_test[..., 0], arrays["t10k-images-idx3-ubyte.gz"])
    assert np.array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte.gz"])


def test_fashion_mnist_class_names(tmp_path):
    write_mnist_dir(tmp_path)
    assert load_fashion_mnist(tmp_path).class_names == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _corrupt_header(raw: bytes) -> bytes:
    return b"\x08\x03" + raw[2:]


@pytest.mark.parametrize("target, corrupt, match", [
    ("train-images-idx3-ubyte.gz", lambda raw: _corrupt_header(raw), "magic"),
    ("train-images-idx3-ubyte.gz", lambda raw: raw[:-5], "truncated"),
    ("train-images-idx3-ubyte.gz", lambda raw: raw + b"\0\0", "trailing"),
    ("train-images-idx3-ubyte.gz", lambda raw: raw[:10], "truncated IDX header"),
    ("train-images-idx3-ubyte.gz", lambda raw: b"", "truncated"),
    ("t10k-labels-idx1-ubyte.gz", lambda raw: raw[:-1], "truncated"),
    ("t10k-labels-idx1-ubyte.gz", lambda raw: raw[:-1] + b"\x0a", r"0\.\.9"),
    ("t10k-labels-idx1-ubyte.gz", lambda raw: idx_bytes(np.zeros(3, np.uint8)), "3 labels for 4"),
    ("t10k-labels-idx1-ubyte.gz", lambda raw: idx_bytes(np.zeros((4, 1), np.uint8)), "labels"),
    ("t10k-images-idx3-ubyte.gz", lambda raw: idx_bytes(np.zeros((4, 28, 28), np.int16)),
     "uint8 images"),
])
def test_mnist_malformed_files(tmp_path, target, corrupt, match):
    write_mnist_dir(tmp_path)
    path = tmp_path / target
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(corrupt(raw)))
    with pytest.raises(DataFileError, match=match) as info:
        load_mnist(tmp_path)
    assert target in str(info.value)


def test_mnist_truncated_gzip_stream(tmp_path):
    write_mnist_dir(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataFileError, match="train-images-idx3-ubyte.gz"):
        load_mnist(tmp_path)


def test_mnist_missing_files_named(tmp_path):
    write_mnist_dir(tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
    (tmp_path / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataFileError) as info:
        load_fashion_mnist(tmp_path)
    msg = str(info.value)
    assert "fashion-mnist" in msg and str(tmp_path) in msg
    missing_part = msg.split("Tried:")[1]
    assert "t10k-images-idx3-ubyte.gz" in missing_part
    assert "train-labels-idx1-ubyte.gz" in missing_part
    assert "train-images-idx3-ubyte.gz" not in missing_part
    assert "http" in msg
    with pytest.raises(DataFileError, match="--data-dir"):
        load_mnist(None)
    with pytest.raises(DataFileError, match="no such directory"):
        load_mnist(tmp_path / "absent")


# --------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_nhwc_pixel_exact(tmp_path, protocol):
    names = ["c%d" % i for i in range(10)]
    labels = write_cifar10_dir(tmp_path / "cifar-10-batches-py", meta_names=names,
                               protocol=protocol)
    for data_dir in (tmp_path, tmp_path / "cifar-10-batches-py"):
        ds = load_cifar10(data_dir)
        assert ds.name == "cifar10" and ds.class_names == tuple(names)
        assert ds.x_train.shape == (10, 32, 32, 3) and ds.x_test.shape == (3, 32, 32, 3)
        assert ds.x_train.dtype == np.uint8 and ds.x_train.flags.c_contiguous
        assert np.array_equal(ds.x_train, expected_nhwc(0, 10))
        assert np.array_equal(ds.x_test, expected_nhwc(1000, 3))
        assert ds.y_train.tolist() == sum((labels[b] for b in CIFAR10_BATCHES[:5]), [])
        assert ds.y_test.tolist() == labels["test_batch"]
    # spot-check one pixel by hand: image 3, row 5, col 7, green = row 3 col 1024+5*32+7
    assert ds.x_train[3, 5, 7, 1] == cifar_rows(3, 1)[0, 1024 + 5 * 32 + 7]


def test_cifar10_default_names_without_meta(tmp_path):
    write_cifar10_dir(tmp_path)
    ds = load_cifar10(tmp_path)
    assert ds.class_names[0] == "airplane" and ds.class_names[-1] == "truck"


def test_cifar10_old_numpy_module_path(tmp_path):
    """Files written by numpy 1.x reference numpy.core.multiarray._reconstruct."""
    write_cifar10_dir(tmp_path)
    path = tmp_path / "data_batch_2"
    raw = path.read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert np.array_equal(load_cifar10(tmp_path).x_train, expected_nhwc(0, 10))


def test_cifar10_missing_files_named(tmp_path):
    write_cifar10_dir(tmp_path)
    (tmp_path / "data_batch_3").unlink()
    (tmp_path / "test_batch").unlink()
    with pytest.raises(DataFileError) as info:
        load_cifar10(tmp_path)
    msg = str(info.value)
    assert "cifar10" in msg and "data_batch_3" in msg.split("Tried:")[1]
    assert "test_batch" in msg.split("Tried:")[1]
    assert str(tmp_path / "cifar-10-batches-py") in msg


@pytest.mark.parametrize("content, match", [
    ({b"labels": [0, 1]}, "missing key"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
    ({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, "3072"),
    ({b"data": [[0] * 3072] * 2, b"labels": [0, 1]}, "list"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, r"0\.\.9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "1 labels for 2"),
    ([1, 2, 3], "dict"),
])
def test_cifar10_malformed_batch(tmp_path, content, match):
    write_cifar10_dir(tmp_path)
    write_pickle(tmp_path / "data_batch_4", content)
    with pytest.raises(DataFileError, match=match) as info:
        load_cifar10(tmp_path)
    assert "data_batch_4" in str(info.value)


def test_cifar10_garbage_and_truncated_pickles(tmp_path):
    write_cifar10_dir(tmp_path)
    (tmp_path / "test_batch").write_bytes(b"this is not a pickle")
    with pytest.raises(DataFileError, match="test_batch"):
        load_cifar10(tmp_path)
    write_cifar10_dir(tmp_path)
    raw = (tmp_path / "data_batch_1").read_bytes()
    (tmp_path / "data_batch_1").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataFileError, match="data_batch_1"):
        load_cifar10(tmp_path)
    write_cifar10_dir(tmp_path)
    write_pickle(tmp_path / "batches.meta", {b"label_names": [b"only", b"two"]})
    with pytest.raises(DataFileError, match="batches.meta"):
        load_cifar10(tmp_path)


class _SystemPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _ExecPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload_cls, forbidden", [
    (_SystemPayload, ".system"), (_ExecPayload, ".exec")])
@pytest.mark.parametrize("nested", [False, True])
def test_malicious_cifar_pickle_is_rejected(tmp_path, payload_cls, forbidden, nested):
    data_dir = tmp_path / "data"
    write_cifar10_dir(data_dir)
    marker = tmp_path / "pwned"
    payload = payload_cls(marker)
    obj = {b"data": payload, b"labels": [0, 1]} if nested else payload
    write_pickle(data_dir / "data_batch_1", obj)

    # the payload is real: an ordinary unpickler runs it
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(payload_cls(control), protocol=2))
    assert control.exists()

    with pytest.raises(DataFileError) as info:
        load_cifar10(data_dir)
    msg = str(info.value)
    assert "forbidden global" in msg and forbidden in msg and "data_batch_1" in msg
    assert not marker.exists()


def test_codecs_encode_only_latin1(tmp_path):
    write_cifar10_dir(tmp_path)
    # protocol-2 bytes are rebuilt with _codecs.encode(text, 'latin1'); swap in rot13
    path = tmp_path / "data_batch_5"
    raw = path.read_bytes()
    assert b"latin1" in raw
    path.write_bytes(raw.replace(b"latin1", b"rot_13", 1))
    with pytest.raises(DataFileError, match="data_batch_5"):
        load_cifar10(tmp_path)


def test_cifar100_loader(tmp_path):
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    fine = [f"fine{i}" for i in range(100)]
    write_pickle(root / "meta", {b"fine_label_names": [s.encode() for s in fine],
                                 b"coarse_label_names": [b"c%d" % i for i in range(20)]})
    y_train, y_test = [0, 99, 42, 7], [13, 98]
    write_pickle(root / "train", {b"data": cifar_rows(0, 4), b"fine_labels": y_train,
                                  b"coarse_labels": [0, 19, 3, 2], b"filenames": [b"a"] * 4})
    write_pickle(root / "test", {b"data": cifar_rows(50, 2), b"fine_labels": y_test,
                                 b"coarse_labels": [1, 2], b"filenames": [b"b"] * 2})
    for data_dir in (tmp_path, root):
        ds = load_cifar100(data_dir)
        assert ds.name == "cifar100" and ds.num_classes == 100 and ds.class_names == tuple(fine)
        assert np.array_equal(ds.x_train, expected_nhwc(0, 4))
        assert np.array_equal(ds.x_test, expected_nhwc(50, 2))
        assert ds.y_train.tolist() == y_train and ds.y_test.tolist() == y_test
    (root / "meta").unlink()
    with pytest.raises(DataFileError, match="meta"):
        load_cifar100(tmp_path)


# ---------------------------------------------------------------------------- SVHN


def _write_svhn(path: Path, first: int, labels) -> np.ndarray:
    sio = pytest.importorskip("scipy.io")
    n = len(labels)
    nhwc = expected_nhwc(first, n)
    sio.savemat(path, {"X": np.ascontiguousarray(nhwc.transpose(1, 2, 3, 0)),
                       "y": np.asarray(labels, np.uint8).reshape(n, 1)})
    return nhwc


def test_svhn_loader(tmp_path):
    train = _write_svhn(tmp_path / "train_32x32.mat", 0, [10, 1, 9, 10, 5])
    test = _write_svhn(tmp_path / "test_32x32.mat", 100, [3, 10])
    ds = load_svhn(tmp_path)
    assert ds.name == "svhn" and ds.num_classes == 10
    assert ds.x_train.shape == (5, 32, 32, 3) and ds.x_train.dtype == np.uint8
    assert np.array_equal(ds.x_train, train) and np.array_equal(ds.x_test, test)
    assert ds.y_train.tolist() == [0, 1, 9, 0, 5] and ds.y_test.tolist() == [3, 0]


@pytest.mark.parametrize("labels", [[0, 1], [11, 1]])
def test_svhn_bad_labels(tmp_path, labels):
    _write_svhn(tmp_path / "train_32x32.mat", 0, labels)
    _write_svhn(tmp_path / "test_32x32.mat", 0, [1])
    with pytest.raises(DataFileError, match=r"train_32x32.mat.*1\.\.10"):
        load_svhn(tmp_path)


def test_svhn_malformed_and_missing(tmp_path):
    _write_svhn(tmp_path / "train_32x32.mat", 0, [1])
    with pytest.raises(DataFileError, match="test_32x32.mat"):
        load_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"garbage" * 30)
    with pytest.raises(DataFileError, match="test_32x32.mat"):
        load_svhn(tmp_path)
    sio = pytest.importorskip("scipy.io")
    sio.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, 1), np.float64),
                                              "y": np.ones((1, 1))})
    with pytest.raises(DataFileError, match="uint8"):
        load_svhn(tmp_path)


# -------------------------------------------------------------------- registration


def test_registers_all_datasets():
    registered = {}
    def register(name, loader, description):
        assert name not in registered
        registered[name] = (loader, description)

    kdistill_register_datasets(register=register)
    assert set(registered) == {"digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "svhn"}
    assert registered["cifar10"][0] is load_cifar10
    assert all(isinstance(d, str) and d for _, d in registered.values())


# ----------------------------------------------------------------------- real data


def _require_real(subdir: str, files) -> Path:
    root = SHARED_DATA / subdir
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        pytest.skip(f"real data not available: missing {', '.join(missing)} in {root} "
                    "(set KDISTILL_SHARED_DATA)")
    return root


def test_real_mnist():
    root = _require_real("mnist", IDX_FILES)
    ds = load_mnist(root)
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.x_train.max() == 255
    assert set(np.unique(ds.y_train)) == set(range(10))
    assert ds.y_test.shape == (10000,)


def test_real_cifar10():
    root = _require_real("cifar-10/cifar-10-batches-py", CIFAR10_BATCHES)
    ds = load_cifar10(root.parent)  # the dir holding cifar-10-batches-py
    assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8
    mean = ds.x_train.reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(mean, [125.307, 122.950, 113.865], atol=0.01)
    test_mean = ds.x_test.reshape(-1, 3).mean(axis=0)
    np.testing.assert_allclose(test_mean, [126.025, 123.709, 114.854], atol=0.01)
    assert np.bincount(ds.y_train, minlength=10).tolist() == [5000] * 10
    assert np.bincount(ds.y_test, minlength=10).tolist() == [1000] * 10
    assert ds.class_names == ("airplane", "automobile", "bird", "cat", "deer",
                              "dog", "frog", "horse", "ship", "truck")
