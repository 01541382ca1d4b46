"""Tests of the distilled-set artifact: save/load round trip, the stored preprocessing,
rejection of corrupt or hostile files, and ``kdistill evaluate`` on a saved run."""

from __future__ import annotations

import json
import pickle
import re
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

import kdistill
from kdistill.cli import main
from kdistill.io import safeio
from kdistill.io.artifact import FORMAT, FORMAT_VERSION, DistilledSet
from kdistill.runtime.components import prepare_data
from kdistill.errors import ArtifactError
from kdistill.runtime.evaluate import evaluate_artifact
from kdistill.datasets.preprocess import ChannelStandardizer, Identity
from kdistill.datasets import load_digits

FAST = dict(dataset="digits", ipc=2, target_batch=200, eval_every=0)
EXPECTED_KEYS = {"images", "labels", "class_ids", "meta", "loss/log_tau", "preprocess/mean",
                 "preprocess/std"}


@pytest.fixture(scope="module")
def raw_digits():
    return load_digits()


@pytest.fixture(scope="module")
def kip_run():
    """A 4-step KIP run with learned labels and the Platt loss (so it has loss params)."""
    cfg = kdistill.make_config(steps=4, learn_labels=True, loss="platt", seed=3, **FAST)
    return cfg, kdistill.distill(cfg)


@pytest.fixture(scope="module")
def saved(kip_run, tmp_path_factory):
    cfg, result = kip_run
    run_dir = tmp_path_factory.mktemp("run")
    path = result.save(run_dir / "distilled.npz")
    (run_dir / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
    return run_dir, path


def npz_entries(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def write_npz(path, entries: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **entries)


def forge(path, entries: dict[str, np.ndarray]) -> None:
    """Write ``entries`` with a recomputed integrity record (what a forger could do), so
    that what is tested is the structure validation behind the integrity check."""
    entries = dict(entries)
    meta = json.loads(str(entries.pop("meta")))
    meta.pop("integrity", None)
    safeio.write_npz(path, entries, meta)


# ------------------------------------------------------------------ round trip


def test_run_result_is_consistent(kip_run):
    cfg, result = kip_run
    assert result.images.shape == (20, 8, 8, 1) and result.images.dtype == np.float32
    assert result.labels.shape == (20, 10) and result.labels.dtype == np.float32
    # class-balanced support: ipc examples of every class, grouped by class
    np.testing.assert_array_equal(result.class_ids, np.repeat(np.arange(10), 2))
    assert result.config == cfg.to_dict()
    assert result.seed == 3 and result.version == kdistill.__version__
    assert result.history["step"] == [1, 2, 3, 4] and len(result.history["loss"]) == 4
    assert set(result.loss_params) == {"log_tau"} and result.loss_params["log_tau"].shape == ()
    # the temperature and labels were trained (Platt starts at log_tau = 0)
    assert result.loss_params["log_tau"] != 0.0
    assert 0.0 <= result.metrics["distilled_acc"] <= 1.0


def test_save_load_round_trip_is_exact(kip_run, saved):
    cfg, result = kip_run
    _, path = saved
    back = kdistill.load(path)
    assert isinstance(back, DistilledSet)
    for name in ("images", "labels", "class_ids"):
        got, want = getattr(back, name), getattr(result, name)
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    assert back.config == result.config
    assert kdistill.DistillConfig.from_dict(back.config) == cfg
    assert back.metrics == result.metrics  # JSON floats round-trip exactly
    assert back.history == result.history
    assert back.dataset == result.dataset
    assert back.dataset["name"] == "digits" and back.dataset["image_shape"] == [8, 8, 1]
    assert set(back.loss_params) == set(result.loss_params)
    for k, v in result.loss_params.items():
        np.testing.assert_array_equal(back.loss_params[k], v)
        assert back.loss_params[k].dtype == np.asarray(v).dtype
    assert back.seed == result.seed == 3
    assert back.version == kdistill.__version__
    # saving the reloaded set again gives the same entries
    again = back.save(path.with_name("again.npz"))
    first, second = npz_entries(path), npz_entries(again)
    assert first.keys() == second.keys()
    for k in first:
        np.testing.assert_array_equal(first[k], second[k])


def test_npz_needs_no_pickle(saved):
    _, path = saved
    entries = npz_entries(path)  # would raise on any object array
    assert set(entries) == EXPECTED_KEYS
    assert all(v.dtype != object for v in entries.values())
    assert entries["meta"].shape == () and entries["meta"].dtype.kind == "U"
    meta = json.loads(str(entries["meta"]))
    assert meta["format"] == FORMAT and meta["format_version"] == FORMAT_VERSION
    assert meta["preprocess"] == "standardize" and meta["seed"] == 3
    assert not list(path.parent.glob("*.tmp"))  # the atomic-write temp file is gone


def test_reloaded_transform_reproduces_preprocessing(kip_run, saved, raw_digits):
    cfg, result = kip_run
    back = kdistill.load(saved[1])
    t = back.transform
    assert isinstance(t, ChannelStandardizer)
    # the stored statistics are the train-split channel mean/std (float64, exactly)
    x64 = raw_digits.x_train.astype(np.float64)
    np.testing.assert_array_equal(t.mean, x64.mean(axis=(0, 1, 2)))
    np.testing.assert_array_equal(t.std, x64.std(axis=(0, 1, 2)))
    # transform of raw digits equals what the run trained and evaluated on
    prepared = prepare_data(cfg, raw_digits)
    np.testing.assert_array_equal(t.transform(raw_digits.x_train), prepared.x_train)
    np.testing.assert_array_equal(t.transform(raw_digits.x_test), prepared.x_test)
    # standardized: zero mean, unit variance on the train split
    z = t.transform(raw_digits.x_train).astype(np.float64)
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1.0) < 1e-5
    # inverse(transform(x)) ~ x on the 0..255 scale (float32 rounding only)
    np.testing.assert_allclose(t.inverse(t.transform(raw_digits.x_test)), raw_digits.x_test, atol=1e-3)


@pytest.mark.parametrize("preprocess", ["standardize", "none"])
def test_label_solve_support_images_are_transformed_real_images(preprocess, raw_digits, tmp_path):
    """Label Solve keeps real support images: each must be the stored transform of a raw
    training image of its class."""
    result = kdistill.label_solve(preprocess=preprocess, seed=1, **FAST)
    back = kdistill.load(result.save(tmp_path / "ls.npz"))
    assert isinstance(back.transform, ChannelStandardizer if preprocess == "standardize" else Identity)
    assert back.metrics["method"] == "label-solve"
    x = back.transform.transform(raw_digits.x_train).reshape(len(raw_digits.x_train), -1)
    for img, c in zip(back.images.reshape(len(back.images), -1), back.class_ids):
        matches = np.flatnonzero((x == img).all(axis=1))
        assert len(matches) >= 1, "support image is not a transformed training image"
        assert raw_digits.y_train[matches[0]] == c
        np.testing.assert_allclose(back.transform.inverse(img), raw_digits.x_train[matches[0]].ravel(),
                                   atol=1e-3)


# ------------------------------------------------------------------ bad files


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        kdistill.load(tmp_path / "nope.npz")


def test_truncated_file(saved, tmp_path):
    data = saved[1].read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 30):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(data[:cut])
        with pytest.raises(ArtifactError, match="not a readable kdistill artifact"):
            kdistill.load(bad)


def test_non_zip_file(tmp_path):
    bad = tmp_path / "notes.npz"
    bad.write_text("this is not a zip archive\n" * 10)
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        kdistill.load(bad)
    pickled = tmp_path / "pickled.npz"  # a pickle file is refused, not unpickled
    pickled.write_bytes(pickle.dumps(Payload()))
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        kdistill.load(pickled)
    assert UNPICKLED == []


def test_file_lacking_entries(saved, tmp_path):
    entries = npz_entries(saved[1])
    bad = tmp_path / "partial.npz"
    write_npz(bad, {"images": entries["images"], "meta": entries["meta"]})
    with pytest.raises(ArtifactError, match="lacks entries labels, class_ids"):
        kdistill.load(bad)
    empty = tmp_path / "empty.npz"
    write_npz(empty, {})
    with pytest.raises(ArtifactError, match="lacks entries images, labels, class_ids, meta"):
        kdistill.load(empty)


def _with_meta(saved_path, tmp_path, **changes):
    entries = npz_entries(saved_path)
    meta = json.loads(str(entries["meta"]))
    meta.update(changes)
    entries["meta"] = np.array(json.dumps(meta))
    out = tmp_path / "edited.npz"
    write_npz(out, entries)
    return out


def test_future_format_version(saved, tmp_path):
    bad = _with_meta(saved[1], tmp_path, format_version=FORMAT_VERSION + 1)
    with pytest.raises(ArtifactError) as info:
        kdistill.load(bad)
    assert f"format version {FORMAT_VERSION + 1}" in str(info.value)
    assert "upgrade kdistill" in str(info.value)
    # the current version with the same edit path still loads (the edit itself is fine)
    ok = _with_meta(saved[1], tmp_path, format_version=FORMAT_VERSION)
    np.testing.assert_array_equal(kdistill.load(ok).images, kdistill.load(saved[1]).images)


def test_wrong_format_and_bad_meta(saved, tmp_path):
    with pytest.raises(ArtifactError, match="not a kdistill artifact"):
        kdistill.load(_with_meta(saved[1], tmp_path, format="something-else"))
    entries = npz_entries(saved[1])
    entries["meta"] = np.array("{not json")
    bad = tmp_path / "badmeta.npz"
    write_npz(bad, entries)
    with pytest.raises(ArtifactError, match="malformed metadata"):
        kdistill.load(bad)


def _npy_instead_of_npz(entries, meta, path):
    with open(path, "wb") as fh:  # a .npy payload: np.load returns an ndarray, not an NpzFile
        np.save(fh, entries["images"])


def _meta_json(value):
    def edit(entries, meta, path):
        entries["meta"] = np.array(json.dumps(value(meta)))
        write_npz(path, entries)

    return edit


def _short_class_ids(entries, meta, path):
    entries["class_ids"] = entries["class_ids"][:3]
    write_npz(path, entries)


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(_npy_instead_of_npz, id="npy-file"),
        pytest.param(_meta_json(lambda m: 5), id="meta-not-an-object"),
        pytest.param(_meta_json(lambda m: [m]), id="meta-a-list"),
        pytest.param(_meta_json(lambda m: {k: v for k, v in m.items() if k != "preprocess"}),
                     id="meta-without-preprocess"),
        pytest.param(_meta_json(lambda m: {**m, "format_version": "one"}), id="format-version-not-int"),
        pytest.param(_short_class_ids, id="class-ids-length"),
    ],
)
def test_malformed_artifacts_raise_artifact_error(edit, saved, tmp_path):
    entries = npz_entries(saved[1])
    bad = tmp_path / "bad.npz"
    edit(entries, json.loads(str(entries["meta"])), bad)
    with pytest.raises(ArtifactError):
        kdistill.load(bad)


def test_inconsistent_shapes(saved, tmp_path):
    entries = npz_entries(saved[1])
    entries["labels"] = entries["labels"][:-1]
    bad = tmp_path / "shapes.npz"
    write_npz(bad, entries)
    with pytest.raises(ArtifactError, match="failed its checksum for entries labels"):
        kdistill.load(bad)
    forge(bad, entries)  # a consistent record: the shapes themselves are refused
    with pytest.raises(ArtifactError, match="inconsistent shapes"):
        kdistill.load(bad)


UNPICKLED: list[str] = []


def _record(tag):
    UNPICKLED.append(tag)
    return tag


class Payload:
    """Unpickling this object calls :func:`_record` (stands in for arbitrary code)."""

    def __reduce__(self):
        return (_record, ("pwned",))


def test_object_array_is_rejected_without_unpickling(saved, tmp_path):
    entries = npz_entries(saved[1])
    hostile = np.empty(1, dtype=object)
    hostile[0] = Payload()
    for key in ("images", "class_ids", "preprocess/mean"):
        doctored = dict(entries)
        doctored[key] = hostile
        bad = tmp_path / f"pickle_{key.replace('/', '_')}.npz"
        write_npz(bad, doctored)
        with zipfile.ZipFile(bad) as zf:  # the payload really is in the file
            assert any(n.startswith(key) for n in zf.namelist())
        with pytest.raises(ArtifactError):
            kdistill.load(bad)
    assert UNPICKLED == []


# ------------------------------------------------------------------ evaluate


def test_evaluate_cli_reproduces_stored_accuracy(saved):
    run_dir, path = saved
    stored = json.loads((run_dir / "metrics.json").read_text())
    result = CliRunner().invoke(main, ["evaluate", str(run_dir)])
    assert result.exit_code == 0, result.output
    m = re.search(r"KRR test accuracy: distilled ([0-9.]+)%\s+vs\s+random real subset ([0-9.]+)%",
                  result.stdout)
    assert m, result.stdout
    assert m.group(1) == f"{100 * stored['distilled_acc']:.2f}"
    assert m.group(2) == f"{100 * stored['random_acc']:.2f}"
    assert "20 support examples" in result.stdout and "360 test images" in result.stdout
    # the file path works as well as the run directory, and the API agrees exactly
    by_file = CliRunner().invoke(main, ["evaluate", str(path)])
    assert by_file.exit_code == 0 and m.group(0) in by_file.stdout
    res = evaluate_artifact(kdistill.load(path))
    assert res["distilled_acc"] == stored["distilled_acc"]
    assert res["random_acc"] == stored["random_acc"]


def test_evaluate_cli_bad_artifact(tmp_path):
    (tmp_path / "distilled.npz").write_text("garbage")
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a readable kdistill artifact" in result.stderr
