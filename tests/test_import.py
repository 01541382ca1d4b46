"""`kdistill import`: other tools' distilled sets into kdistill artifacts.

Fixtures are built here from the documented layouts (the real files are not in the
repo): a KIP-format npz of real digits training images, preprocessed KIP's way, and an
RFAD-like CIFAR-10 ``best.npz`` (NCHW, standardization + uncentered ZCA, no layer norm).
The identity checks: an imported set of real training images must equal kdistill's own
preprocessing of those images and score the same KRR accuracy as evaluating that real
subset directly, which fails if the refitted preprocessing, NCHW/NHWC or labels were wrong.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from kdistill.cli import main
from kdistill.core.sampling import centered_one_hot
from kdistill.datasets import load_digits
from kdistill.interop.importers import import_set
from kdistill.interop.readers import ForeignFormatError, read_flax_msgpack
from kdistill.interop.transforms import ForeignTransform
from kdistill.io.artifact import DistilledSet, load
from kdistill.runtime.evaluate import evaluate_artifact

CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-10"
CIFAR_FILES = [CIFAR / "cifar-10-batches-py" / f for f in ("data_batch_1", "test_batch", "batches.meta")]
TEST_SIZE = 300


def _subset(y: np.ndarray, per_class: int, num_classes: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(num_classes)])


def _kip_standardize(x_train: np.ndarray, x: np.ndarray) -> np.ndarray:
    """KIP's preprocessing written independently of kdistill: numpy per-channel std."""
    xt = x_train.astype(np.float64)
    return ((x - xt.mean(axis=(0, 1, 2))) / xt.std(axis=(0, 1, 2))).astype(np.float32)


def _direct_acc(art: DistilledSet, raw: np.ndarray, y: np.ndarray) -> float:
    """KRR accuracy of the same real images put through kdistill's own preprocessing."""
    direct = DistilledSet(images=art.transform.transform(raw), labels=centered_one_hot(y, art.labels.shape[1]),
                          class_ids=y.astype(np.int64), transform=art.transform, config=art.config,
                          dataset=art.dataset)
    return evaluate_artifact(direct, [f"test_size={TEST_SIZE}"])["distilled_acc"]


@pytest.fixture(scope="module")
def digits_kip(tmp_path_factory):
    ds = load_digits()
    idx = _subset(ds.y_train, 3, ds.num_classes)
    raw, y = ds.x_train[idx], ds.y_train[idx]
    path = tmp_path_factory.mktemp("kip") / "ConvNet_ssize30_nozca_nol_noaug_ckpt0.npz"
    np.savez(path, images=_kip_standardize(ds.x_train, raw), labels=centered_one_hot(y, 10))
    return path, raw, y


def test_kip_npz_round_trip_through_cli_evaluate(digits_kip, tmp_path):
    path, raw, y = digits_kip
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["import", str(path), "--format", "kip", "--dataset", "digits", "--out", str(out)])
    assert r.exit_code == 0, r.output
    art = load(out / "distilled.npz")
    assert art.transform.name == "standardize"
    np.testing.assert_allclose(art.images, art.transform.transform(raw), atol=1e-5)
    np.testing.assert_array_equal(art.class_ids, y)
    src = art.metrics["imported_from"]
    assert src["format"] == "kip" and src["file"] == path.name and len(src["sha256"]) == 64
    assert json.loads((out / "metrics.json").read_text())["imported_from"]["sha256"] == src["sha256"]
    r = CliRunner().invoke(main, ["evaluate", str(out), "-s", f"test_size={TEST_SIZE}", "--no-progress"])
    assert r.exit_code == 0, r.output
    shown = float(r.output.split("KRR test accuracy: distilled ")[1].split("%")[0])
    acc = evaluate_artifact(art, [f"test_size={TEST_SIZE}"])["distilled_acc"]
    assert shown == pytest.approx(100 * acc, abs=0.006)
    assert acc == _direct_acc(art, raw, y)
    assert acc > 0.7  # 3 real digits per class: far above chance


def test_swapped_layout_or_labels_change_the_result(digits_kip, tmp_path):
    """The identity check can fail: shuffled labels or a transposed image give another set."""
    path, raw, y = digits_kip
    good = import_set(path, "kip", "digits")
    with np.load(path) as f:
        images, labels = f["images"], f["labels"]
    np.savez(tmp_path / "shuffled_nozca.npz", images=images, labels=labels[::-1])
    bad = import_set(tmp_path / "shuffled_nozca.npz", "kip", "digits")
    assert not np.array_equal(bad.class_ids, y)
    np.savez(tmp_path / "transposed_nozca.npz", images=images.transpose(0, 2, 1, 3), labels=labels)
    bad = import_set(tmp_path / "transposed_nozca.npz", "kip", "digits")
    assert not np.allclose(bad.images, good.images, atol=1e-3)


def test_kip_zca_layernorm_declared_and_inverted(tmp_path):
    """KIP *_zca_* files: standardize, L2 layer norm, uncentered ZCA 0.1, refitted on the
    dataset; kdistill's zca re-expression of a real image equals kdistill's ZCA of that image
    up to what the layer norm lost (close, not exact)."""
    ds = load_digits()
    idx = _subset(ds.y_train, 2, 10)
    kip = ForeignTransform.fit("layernorm-zca", ds.x_train, ddof=0, reg=0.1)
    # an independent restatement of KIP's zca_normalize on 2 images
    xs = _kip_standardize(ds.x_train, ds.x_train).reshape(len(ds.x_train), -1).astype(np.float64)
    xs = xs - xs.mean(1, keepdims=True)
    xs /= np.linalg.norm(xs, axis=1, keepdims=True)
    cov = xs.T @ xs / len(xs)
    lam, u = np.linalg.eigh(cov + 0.1 * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0]))
    w = (u * lam ** -0.5) @ u.T
    np.testing.assert_allclose(kip.transform(ds.x_train[idx]).reshape(len(idx), -1), xs[idx] @ w, atol=1e-4)
    path = tmp_path / "ConvNet_ssize20_zca_l_noaug_ckpt10.npz"
    np.savez(path, images=kip.transform(ds.x_train[idx]).astype(np.float32), labels=centered_one_hot(ds.y_train[idx], 10))
    art = import_set(path, "kip", "digits")
    assert art.transform.name == "zca"
    assert art.metrics["imported_from"]["source_preprocess"]["layer_norm"] == "l2"
    direct = art.transform.transform(ds.x_train[idx])
    corr = [np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(art.images, direct)]
    assert min(corr) > 0.9


# -- RFAD CIFAR-10 best.npz ------------------------------------------------------


def _rfad_preprocess(x_train: np.ndarray, x: np.ndarray) -> np.ndarray:
    """RFAD's CIFAR-10 preprocessing restated independently: torch.std (ddof 1)
    standardization on 0..255 NCHW, then ZCA with C = X^T X / n, reg 0.1 * tr(C)/d."""
    xt = x_train.astype(np.float64).transpose(0, 3, 1, 2)
    m, s = xt.mean(axis=(0, 2, 3), keepdims=True), xt.std(axis=(0, 2, 3), ddof=1, keepdims=True)
    flat = ((xt - m) / s).reshape(len(xt), -1)
    cov = np.zeros((flat.shape[1],) * 2)
    for i in range(0, len(flat), 4096):
        cov += flat[i:i + 4096].T @ flat[i:i + 4096]
    cov /= len(flat)
    lam, u = np.linalg.eigh(cov + 0.1 * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0]))
    w = (u * lam ** -0.5) @ u.T
    z = ((x.astype(np.float64).transpose(0, 3, 1, 2) - m) / s).reshape(len(x), -1) @ w
    return z.reshape(len(x), *xt.shape[1:]).astype(np.float32)  # NCHW


@pytest.fixture(scope="module")
def rfad_cifar(tmp_path_factory):
    missing = [str(f) for f in CIFAR_FILES if not f.is_file()]
    if missing:
        pytest.skip(f"real CIFAR-10 files missing: {', '.join(missing)}")
    from kdistill.datasets import load_cifar10

    ds = load_cifar10(str(CIFAR))
    idx = _subset(ds.y_train, 2, 10)
    raw, y = ds.x_train[idx], ds.y_train[idx]
    path = tmp_path_factory.mktemp("rfad") / "best.npz"
    np.savez(path, images=_rfad_preprocess(ds.x_train, raw), labels=centered_one_hot(y, 10),
             jit=np.float64(5e-3), k=np.float32(3.7), valid_loss=np.float64(1.1))
    out = tmp_path_factory.mktemp("rfad_run") / "run"
    r = CliRunner().invoke(main, ["import", str(path), "--format", "rfad", "--dataset", "cifar10",
                                  "--data-dir", str(CIFAR), "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out, raw, y


@pytest.mark.slow
def test_rfad_cifar10_best_npz_round_trip(rfad_cifar):
    out, raw, y = rfad_cifar
    art = load(out / "distilled.npz")
    assert art.transform.name == "zca" and art.images.shape == (20, 32, 32, 3)
    assert art.config["ridge"] == 5e-3
    src = art.metrics["imported_from"]
    assert src["stored_layout"] == "nchw" and src["extras"]["jit"] == 5e-3
    assert src["source_preprocess"] == {"name": "zca", "ddof": 1, "zca_reg": 0.1, "layer_norm": None,
                                        "centered": False, "pixel_scale": 255.0, "exact_inverse": True}
    direct = art.transform.transform(raw)
    np.testing.assert_allclose(art.images, direct, atol=2e-3 * np.abs(direct).max())
    np.testing.assert_array_equal(art.class_ids, y)
    acc = evaluate_artifact(art, [f"test_size={TEST_SIZE}"])["distilled_acc"]
    assert acc == _direct_acc(art, raw, y)


# -- bad files -------------------------------------------------------------------


def _digits_npz(tmp_path, name="x_nozca.npz", **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


GOOD_IMAGES = np.zeros((10, 8, 8, 1), np.float32)
GOOD_LABELS = centered_one_hot(np.arange(10), 10)


@pytest.mark.parametrize("arrays, fragment", [
    ({"x": GOOD_IMAGES, "y": GOOD_LABELS}, "lacks images, labels; expected keys images, labels; found x, y"),
    ({"images": GOOD_IMAGES[:, :4], "labels": GOOD_LABELS}, "expected NHWC images [n, 8, 8, 1]"),
    ({"images": GOOD_IMAGES[0], "labels": GOOD_LABELS}, "images must be 4-D"),
    ({"images": GOOD_IMAGES, "labels": GOOD_LABELS[:, :5]}, "labels have shape (10, 5), expected (10, 10)"),
    ({"images": np.full_like(GOOD_IMAGES, np.nan), "labels": GOOD_LABELS}, "images contain NaN or Inf"),
    ({"images": GOOD_IMAGES, "labels": GOOD_LABELS * np.nan}, "labels contain NaN or Inf"),
])
def test_bad_npz_contents(tmp_path, arrays, fragment):
    with pytest.raises(ForeignFormatError, match=None) as exc:
        import_set(_digits_npz(tmp_path, **arrays), "kip", "digits")
    assert fragment in str(exc.value)


def test_rfad_file_in_nhwc_is_refused_with_a_hint(tmp_path):
    path = _digits_npz(tmp_path, images=GOOD_IMAGES[:, :, :, :1].repeat(1, 3)[:, :8], labels=GOOD_LABELS)
    with pytest.raises(ForeignFormatError, match=r"expected NCHW images \[n, 1, 8, 8\].*pass --layout nhwc"):
        import_set(path, "rfad", "digits")


def test_pickled_object_array_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "evil_nozca.npz"
    np.savez(path, images=np.array([object()], dtype=object), labels=GOOD_LABELS)
    with pytest.raises(ForeignFormatError, match="object array"):
        import_set(path, "kip", "digits")
    pkl = tmp_path / "evil.npz"
    pkl.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ForeignFormatError, match="pickle"):
        import_set(pkl, "npz", "digits")


def test_oversized_header_is_refused_before_allocating(tmp_path):
    """A member whose .npy header declares far more bytes than it holds."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**6, 8, 8, 1)}
    path = tmp_path / "bomb_nozca.npz"
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images.npy", buf.getvalue() + b"\0" * 64)
        b2 = io.BytesIO()
        np.save(b2, GOOD_LABELS)
        zf.writestr("labels.npy", b2.getvalue())
    with pytest.raises(ForeignFormatError, match="refusing to allocate"):
        import_set(path, "kip", "digits")


def test_kip_without_zca_in_name_needs_a_declaration(tmp_path):
    path = _digits_npz(tmp_path, "set.npz", images=GOOD_IMAGES, labels=GOOD_LABELS)
    from kdistill.errors import ConfigError

    with pytest.raises(ConfigError, match="_zca_ or _nozca_"):
        import_set(path, "kip", "digits")
    assert import_set(path, "kip", "digits", source_preprocess="standardize").transform.name == "standardize"
    with pytest.raises(ConfigError, match="unknown source preprocessing"):
        import_set(path, "kip", "digits", source_preprocess="zca-foo")


# -- RCIG flax msgpack ------------------------------------------------------------


def _flax_array(a: np.ndarray):
    import msgpack

    return msgpack.ExtType(1, msgpack.packb([list(a.shape), a.dtype.name, a.tobytes()], use_bin_type=True))


def _rcig_file(path: Path, tree: dict) -> Path:
    msgpack = pytest.importorskip("msgpack")
    path.write_bytes(msgpack.packb(tree, use_bin_type=True))
    return path


def test_rcig_checkpoint_reads_ema_average(tmp_path):
    ds = load_digits()
    idx = _subset(ds.y_train, 1, 10)
    t = ForeignTransform.fit("standardize", ds.x_train)
    x = t.transform(ds.x_train[idx]).astype(np.float32)
    y = centered_one_hot(ds.y_train[idx], 10)
    path = _rcig_file(tmp_path / "checkpoint_100", {
        "step": _flax_array(np.array(100, np.int32)),
        "params": {"x_proto": _flax_array(np.zeros_like(x)), "y_proto": _flax_array(y)},
        "ema_average": {"x_proto": _flax_array(x), "y_proto": _flax_array(y),
                        "log_temp": _flax_array(np.array(0.5, np.float32))}})
    art = import_set(path, "rcig", "digits")
    np.testing.assert_allclose(art.images, art.transform.transform(ds.x_train[idx]), atol=1e-5)
    assert art.metrics["imported_from"]["group"] == "ema_average"
    assert art.metrics["imported_from"]["extras"] == {"log_temp": 0.5}


def test_rcig_bad_checkpoints(tmp_path):
    import msgpack

    path = _rcig_file(tmp_path / "c1", {"params": {"w": _flax_array(np.zeros(3, np.float32))}})
    with pytest.raises(ForeignFormatError, match="expected ema_average/x_proto.*found params/w"):
        import_set(path, "rcig", "digits")
    path = _rcig_file(tmp_path / "c2", {"ema_average": {"x_proto": msgpack.ExtType(
        1, msgpack.packb([[10**6, 8, 8, 1], "float32", b"\0" * 16], use_bin_type=True))}})
    with pytest.raises(ForeignFormatError, match="declares shape .* but holds 16 bytes"):
        read_flax_msgpack(path)
    path = _rcig_file(tmp_path / "c3", {"a": msgpack.ExtType(1, msgpack.packb([[1], "object", b"x"]))})
    with pytest.raises(ForeignFormatError, match="unsupported dtype 'object'"):
        read_flax_msgpack(path)
    path = _rcig_file(tmp_path / "c4", {"a": msgpack.ExtType(42, b"code")})
    with pytest.raises(ForeignFormatError, match="extension of type 42"):
        read_flax_msgpack(path)
    (tmp_path / "c5").write_bytes(b"\x93\x01")
    with pytest.raises(ForeignFormatError, match="not a readable flax msgpack"):
        read_flax_msgpack(tmp_path / "c5")


def test_plain_npz_nchw_and_integer_labels(tmp_path):
    ds = load_digits()
    idx = _subset(ds.y_train, 2, 10)
    raw = ds.x_train[idx]
    path = _digits_npz(tmp_path, "mine.npz", images=raw.transpose(0, 3, 1, 2).astype(np.float32),
                       labels=ds.y_train[idx])
    art = import_set(path, "npz", "digits", layout="nchw")
    np.testing.assert_allclose(art.images, art.transform.transform(raw), atol=1e-5)
    np.testing.assert_array_equal(art.labels, centered_one_hot(ds.y_train[idx], 10))
    with pytest.raises(ForeignFormatError, match="expected NHWC.*pass --layout nchw"):
        import_set(path, "npz", "digits", layout="nhwc")
