"""Integrity of everything kdistill reads back: artifacts, checkpoints, JSON side files
and dataset files.

- every top-level metadata field of an artifact and of a checkpoint is covered by the
  integrity record: editing or deleting any of them, deleting the record, editing the
  record, or flipping a byte of any array is refused with a clear error;
- a file whose record was recomputed after an edit (a forger's file) is still validated
  field by field at load, before any work, with errors naming the field;
- files written before integrity records are refused unless the caller asks for them;
- declared sizes (npz member headers, IDX headers, .mat headers) are checked against
  the file and the dataset's known shapes before anything is allocated.

Every crafted file is built here, inside ``tmp_path``.
"""

from __future__ import annotations

import copy
import gzip
import json
import math
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kdistill
from kdistill.io import artifact as artifact_mod
from kdistill.io import checkpoint as checkpoint_mod
from kdistill.io import safeio
from kdistill.io.artifact import DistilledSet
from kdistill.io.checkpoint import Checkpoint, checkpoint_path, load_checkpoint
from kdistill.core.config import DistillConfig
from kdistill.errors import ArtifactError, CheckpointError, DataFileError, KdistillError
from kdistill.datasets.preprocess import ChannelStandardizer
from kdistill.datasets import mnist as mnist_mod

RNG = np.random.default_rng(7)
IMAGES = RNG.standard_normal((6, 4, 4, 1)).astype(np.float32)
LABELS = (np.eye(3, dtype=np.float32)[[0, 0, 1, 1, 2, 2]] - 1 / 3).astype(np.float32)
CLASS_IDS = np.array([0, 0, 1, 1, 2, 2], np.int64)
HISTORY = {"step": [1, 2, 3], "loss": [0.3, 0.2, 0.1], "eval_step": [2], "eval_acc": [0.5], "eval_seconds": [0.1]}
GUARD = {"ridge": 1e-6, "lr": 0.01, "retries": 2, "events": []}
MiB = 2**20


def make_artifact(path: Path) -> Path:
    ds = DistilledSet(
        images=IMAGES, labels=LABELS, class_ids=CLASS_IDS,
        transform=ChannelStandardizer(mean=np.full(1, 3.5), std=np.ones(1)),
        config=DistillConfig(ipc=2, steps=3, seed=11).to_dict(),
        metrics={"distilled_acc": 0.1450, "random_acc": 0.3, "method": "kip"},
        history=dict(HISTORY), loss_params={"log_tau": np.float32(-0.25)}, seed=11,
        dataset={"name": "digits", "num_classes": 3, "class_names": ["a", "b", "c"]},
    )
    return ds.save(path)


def make_checkpoint(path: Path) -> Path:
    ck = Checkpoint(
        step=3, config=DistillConfig(ipc=2, steps=9, seed=11).to_dict(),
        trainer_state={"params/x_s": IMAGES, "opt/0000": np.int32(3), "opt/0001": IMAGES * 0.5},
        labels=LABELS, class_ids=CLASS_IDS, rng_state=np.random.default_rng(5).bit_generator.state,
        history=copy.deepcopy(HISTORY), guard=dict(GUARD), data_fingerprint="ab" * 16,
        elapsed_seconds=1.5, best={"x_s": IMAGES + 1}, best_step=2, best_acc=0.5,
    )
    return ck.save(path)


def read_raw(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and the parsed meta of an npz, exactly as stored."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return arrays, json.loads(str(arrays.pop("meta")))


def write_raw(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Write arrays and meta as given: an edit that leaves the stored record alone."""
    with open(path, "wb") as fh:
        np.savez(fh, **arrays, meta=np.array(json.dumps(meta)))
    return path


def forge(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Write with a freshly computed record (what someone who recomputes hashes does)."""
    meta = {k: v for k, v in meta.items() if k not in ("integrity", "checksums")}
    safeio.write_npz(path, arrays, meta)
    return path


def mutate(value):
    """A different JSON value of the same kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return value + [0]
    if isinstance(value, dict):
        return {**value, "added_by_an_edit": 1}
    return 0  # None


ARTIFACT_FIELDS = ["format", "format_version", "kdistill_version", "preprocess", "config", "metrics",
                   "history", "seed", "dataset"]
CHECKPOINT_FIELDS = ["format", "format_version", "kdistill_version", "step", "config", "rng_state", "history",
                     "guard", "data_fingerprint", "elapsed_seconds", "best_step", "best_acc"]
LOADERS = {"artifact": (make_artifact, kdistill.load, ArtifactError, ARTIFACT_FIELDS),
           "checkpoint": (make_checkpoint, load_checkpoint, CheckpointError, CHECKPOINT_FIELDS)}


def expected_refusal(field: str) -> str:
    """What an edit of ``field`` (record unchanged) is refused with."""
    if field == "format":
        return "is not a kdistill"
    if field == "format_version":
        return "newer than this kdistill reads"
    return f"failed its checksum for metadata fields {field}"


# ------------------------------------------------------------ every field is covered


@pytest.mark.parametrize("kind", LOADERS)
def test_the_field_lists_cover_every_written_field(kind, tmp_path):
    make, _, _, fields = LOADERS[kind]
    _, meta = read_raw(make(tmp_path / "f.npz"))
    assert set(meta) == {*fields, "integrity"}  # a new field must be added to the lists above


@pytest.mark.parametrize("kind", LOADERS)
def test_editing_any_field_is_refused(kind, tmp_path):
    make, load, error, fields = LOADERS[kind]
    arrays, meta = read_raw(make(tmp_path / "good.npz"))
    load(tmp_path / "good.npz")
    for field in fields:
        edited = {**meta, field: mutate(meta[field])}
        with pytest.raises(error, match=expected_refusal(field)):
            load(write_raw(tmp_path / f"edit-{field}.npz", arrays, edited))
        deleted = {k: v for k, v in meta.items() if k != field}
        with pytest.raises(error) as info:
            load(write_raw(tmp_path / f"del-{field}.npz", arrays, deleted))
        if field not in ("format", "format_version"):
            assert f"failed its checksum for metadata fields {field}" in str(info.value)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(sorted(LOADERS)), data=st.data())
def test_any_json_value_in_any_field_is_refused(kind, data, tmp_path_factory):
    make, load, error, fields = LOADERS[kind]
    tmp = tmp_path_factory.mktemp("hyp")
    arrays, meta = read_raw(make(tmp / "good.npz"))
    field = data.draw(st.sampled_from(fields))
    value = data.draw(JSON_VALUES.filter(lambda v: json.dumps(v, sort_keys=True)
                                         != json.dumps(meta[field], sort_keys=True)))
    with pytest.raises(error):
        load(write_raw(tmp / "edited.npz", arrays, {**meta, field: value}))


@pytest.mark.parametrize("kind", LOADERS)
def test_deleting_the_record_is_refused(kind, tmp_path):
    make, load, error, _ = LOADERS[kind]
    arrays, meta = read_raw(make(tmp_path / "good.npz"))
    del meta["integrity"]
    with pytest.raises(error, match="has no integrity record: it predates integrity records, or the record "
                                    "was deleted"):
        load(write_raw(tmp_path / "norecord.npz", arrays, meta))


def test_the_reported_attacks_are_refused(tmp_path):
    """Images overwritten with 1.0 and the record deleted (scored 14.5% before); an
    accuracy edited to 99.9% (shown by `kdistill report` before)."""
    arrays, meta = read_raw(make_artifact(tmp_path / "good.npz"))
    ones = {**arrays, "images": np.ones_like(arrays["images"])}
    with pytest.raises(ArtifactError, match="no integrity record"):
        kdistill.load(write_raw(tmp_path / "ones.npz", ones, {k: v for k, v in meta.items() if k != "integrity"}))
    with pytest.raises(ArtifactError, match="failed its checksum for entries images"):
        kdistill.load(write_raw(tmp_path / "ones2.npz", ones, meta))
    acc = {**meta, "metrics": {**meta["metrics"], "distilled_acc": 0.999}}
    with pytest.raises(ArtifactError, match="failed its checksum for metadata fields metrics"):
        kdistill.load(write_raw(tmp_path / "acc.npz", arrays, acc))


@pytest.mark.parametrize("kind", LOADERS)
def test_editing_the_record_is_refused(kind, tmp_path):
    make, load, error, _ = LOADERS[kind]
    arrays, meta = read_raw(make(tmp_path / "good.npz"))
    for name, edit in {
        "digest": lambda r: {**r, "digest": "0" * 64},
        "breakdown": lambda r: {**r, "fields": {**r["fields"], "seed": "0" * 64}},
        "algorithm": lambda r: {**r, "algorithm": "none"},
        "not-a-dict": lambda r: "trust me",
    }.items():
        bad = {**meta, "integrity": edit(meta["integrity"])}
        with pytest.raises(error, match="integrity record|failed its checksum"):
            load(write_raw(tmp_path / f"{name}.npz", arrays, bad))


@pytest.mark.parametrize("kind", LOADERS)
def test_flipping_a_byte_of_any_array_is_refused(kind, tmp_path):
    make, load, error, _ = LOADERS[kind]
    arrays, meta = read_raw(make(tmp_path / "good.npz"))
    for name, a in arrays.items():
        flipped = np.array(a, copy=True)
        flipped.reshape(-1).view(np.uint8)[-1] ^= 0x01
        bad = write_raw(tmp_path / "flip.npz", {**arrays, name: flipped}, meta)
        with pytest.raises(error, match=f"failed its checksum for entries {name}"):
            load(bad)
    for name in arrays:  # an added or a removed entry
        with pytest.raises(error, match=f"failed its checksum for entries {name}|lacks entries"):
            load(write_raw(tmp_path / "drop.npz", {k: v for k, v in arrays.items() if k != name}, meta))
    with pytest.raises(error, match="failed its checksum for entries extra"):
        load(write_raw(tmp_path / "add.npz", {**arrays, "extra": np.zeros(2)}, meta))


@pytest.mark.parametrize("kind", LOADERS)
def test_flipping_a_byte_of_the_file_is_refused(kind, tmp_path):
    """Raw bytes inside an array's data (the zip CRC or the record catches it)."""
    make, load, error, _ = LOADERS[kind]
    path = make(tmp_path / "good.npz")
    raw = bytearray(path.read_bytes())
    pos = raw.find(IMAGES.tobytes()[:16])
    assert pos > 0
    raw[pos + 5] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(error, match="truncated or corrupt|failed its checksum"):
        load(path)


# ------------------------------------------------ consistent but malformed files


ARTIFACT_MALFORMED = {
    "seed": ("seed", lambda a, m: m.update(seed="11")),
    "metrics-acc": ("metrics.distilled_acc", lambda a, m: m["metrics"].update(distilled_acc=99.9)),
    "class-names": ("dataset.class_names", lambda a, m: m["dataset"].update(class_names=["a"])),
    "num-classes": ("dataset.num_classes", lambda a, m: m["dataset"].update(num_classes=0)),
    "history": ("history.loss", lambda a, m: m["history"].update(loss="low")),
    "history-lengths": ("history", lambda a, m: m["history"].update(loss=[1.0])),
    "config": ("config", lambda a, m: m.update(config=[1, 2])),
    "preprocess": ("preprocess", lambda a, m: m.update(preprocess=5)),
    "missing": ("lacks the field history", lambda a, m: m.pop("history")),
    "unknown": ("unknown metadata fields provenance_note", lambda a, m: m.update(provenance_note="x")),
    "labels-columns": ("labels have 4 columns", lambda a, m: a.update(labels=np.zeros((6, 4), np.float32))),
    "class-ids": ("class_ids must lie in 0..2", lambda a, m: a.update(class_ids=CLASS_IDS + 5)),
    "extra-entry": ("unknown entries notes", lambda a, m: a.update(notes=np.zeros(1))),
}


@pytest.mark.parametrize("case", ARTIFACT_MALFORMED)
def test_forged_but_malformed_artifact_names_the_field(case, tmp_path):
    fragment, edit = ARTIFACT_MALFORMED[case]
    arrays, meta = read_raw(make_artifact(tmp_path / "good.npz"))
    edit(arrays, meta)
    with pytest.raises(ArtifactError, match=fragment):
        kdistill.load(forge(tmp_path / "forged.npz", arrays, meta))


CHECKPOINT_MALFORMED = {
    "guard-ridge": ("guard.ridge: expected a finite number > 0, but it is missing", lambda a, m: m["guard"].pop("ridge")),
    "guard-lr": ("guard.lr", lambda a, m: m["guard"].update(lr=0)),
    "guard-retries": ("guard.retries", lambda a, m: m["guard"].update(retries="2")),
    "step": ("step", lambda a, m: m.update(step=-1)),
    "step-type": ("step", lambda a, m: m.update(step="3")),
    "history-key": ("history.eval_acc", lambda a, m: m["history"].pop("eval_acc")),
    "history-lengths": ("history", lambda a, m: m["history"].update(loss=[1.0])),
    "config": ("config", lambda a, m: m["config"].update(not_a_field=1)),
    "elapsed": ("elapsed_seconds", lambda a, m: m.update(elapsed_seconds=-1.0)),
    "best-step": ("best_step", lambda a, m: m.update(best_step=99)),
    "best-acc": ("best_acc", lambda a, m: m.update(best_acc=1.5)),
    "best-half": ("best_step/best_acc", lambda a, m: m.update(best_acc=None)),
    "rng": ("rng_state", lambda a, m: m.update(rng_state={"bit_generator": "PCG64"})),
    "fingerprint": ("data_fingerprint", lambda a, m: m.update(data_fingerprint=5)),
    "missing": ("lacks the field guard", lambda a, m: m.pop("guard")),
    "x_s-shape": ("trainer/params/x_s must be floats", lambda a, m: a.update({"trainer/params/x_s": IMAGES[:2]})),
    "x_s-missing": ("lacks the entry trainer/params/x_s", lambda a, m: a.pop("trainer/params/x_s")),
    "best-x_s": ("lacks the entry best/x_s", lambda a, m: a.pop("best/x_s")),
    "class-ids": ("class_ids must lie in 0..2", lambda a, m: a.update(class_ids=CLASS_IDS - 1)),
}


@pytest.mark.parametrize("case", CHECKPOINT_MALFORMED)
def test_forged_but_malformed_checkpoint_names_the_field(case, tmp_path):
    fragment, edit = CHECKPOINT_MALFORMED[case]
    arrays, meta = read_raw(make_checkpoint(tmp_path / "good.npz"))
    edit(arrays, meta)
    with pytest.raises(CheckpointError, match=fragment.replace(".", r"\.").replace("/", "/")):
        load_checkpoint(forge(tmp_path / "forged.npz", arrays, meta))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run") / "run"
    kdistill.distill(dataset="digits", ipc=1, steps=2, target_batch=50, eval_every=0, checkpoint_every=1,
                     run_dir=run_dir, seed=3)
    return run_dir


def test_resume_of_a_checkpoint_without_ridge_is_refused_before_any_step(real_run, tmp_path):
    """Was ``KeyError: 'ridge'``; now a CheckpointError at load, and no step runs."""
    run = tmp_path / "run"
    run.mkdir()
    arrays, meta = read_raw(checkpoint_path(real_run))
    del meta["guard"]["ridge"]
    steps = []
    for writer, fragment in ((write_raw, "failed its checksum for metadata fields guard"),
                             (forge, "malformed field guard.ridge")):
        writer(checkpoint_path(run), arrays, meta)
        with pytest.raises(CheckpointError, match=fragment):
            kdistill.distill(run_dir=run, resume=True, callback=lambda *a, **k: steps.append(a))
    assert steps == []


# ---------------------------------------------------------------- old formats


@pytest.mark.parametrize("kind", LOADERS)
def test_files_without_integrity_records_are_refused_unless_asked_for(kind, tmp_path):
    make, load, error, _ = LOADERS[kind]
    arrays, meta = read_raw(make(tmp_path / "good.npz"))
    legacy = {k: v for k, v in meta.items() if k != "integrity"}
    legacy.update(format_version=1, checksums={k: safeio.array_digest(v) for k, v in arrays.items()})
    path = write_raw(tmp_path / "v1.npz", arrays, legacy)
    with pytest.raises(error, match="format-version-1 .* predates integrity records.*allow_legacy=True"):
        load(path)
    with pytest.warns(UserWarning, match="without verifying its metadata"):
        loaded = load(path, allow_legacy=True)
    again = tmp_path / "resaved.npz"
    loaded.save(again)
    assert read_raw(again)[1]["format_version"] == (artifact_mod if kind == "artifact" else checkpoint_mod).FORMAT_VERSION
    load(again)
    bad = {**arrays, "labels": arrays["labels"] + 1}  # even then, stored array checksums are checked
    with pytest.raises(error, match="failed its checksum for entries labels"), pytest.warns(UserWarning):
        load(write_raw(tmp_path / "v1bad.npz", bad, legacy), allow_legacy=True)


# ----------------------------------------------------- declared sizes (npz members)


def npy_header(shape, dtype="<f4") -> bytes:
    buf = __import__("io").BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


def refusal_peak_mib(fn, error, match: str) -> float:
    """Run ``fn``, assert it raises ``error`` matching ``match``; the peak of memory
    allocated meanwhile (numpy arrays included), in MiB."""
    tracemalloc.start()
    try:
        with pytest.raises(error, match=match):
            fn()
        return tracemalloc.get_traced_memory()[1] / MiB
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("kind", LOADERS)
def test_compressed_member_bomb_is_refused_before_allocating(kind, tmp_path):
    """A ~0.3 MB file with a 256 MiB compressed entry (zeros): refused, nothing allocated."""
    make, load, error, _ = LOADERS[kind]
    good = make(tmp_path / "good.npz")
    bomb = tmp_path / "bomb.npz"
    big = 256 * MiB
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            if info.filename == "labels.npy":
                with dst.open("labels.npy", "w", force_zip64=True) as w:
                    w.write(npy_header((big // 16, 4)))
                    zeros = bytes(16 * MiB)
                    for _ in range(big // len(zeros)):
                        w.write(zeros)
            else:
                dst.writestr(info.filename, src.read(info.filename))
    assert bomb.stat().st_size < 2 * MiB
    assert refusal_peak_mib(lambda: load(bomb), error,
                            "entry 'labels' declares 268435456 bytes from .* a decompression bomb") < 32


@pytest.mark.parametrize("kind", LOADERS)
def test_member_declaring_more_than_it_holds_is_refused(kind, tmp_path):
    make, load, error, _ = LOADERS[kind]
    good = make(tmp_path / "good.npz")
    bad = tmp_path / "liar.npz"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename == "class_ids.npy":
                data = npy_header((2**28,), "<i8") + data[128:]
            dst.writestr(info.filename, data)
    assert refusal_peak_mib(lambda: load(bad), error, r"entry 'class_ids' declares shape \(268435456,\) of <i8 "
                            r"\(2147483648 bytes\) but holds 48 bytes; refusing to allocate it") < 32


def test_compressed_archive_that_is_honest_still_loads(tmp_path):
    arrays, meta = read_raw(make_artifact(tmp_path / "good.npz"))
    path = tmp_path / "compressed.npz"
    with open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays, meta=np.array(json.dumps(meta)))
    np.testing.assert_array_equal(kdistill.load(path).images, IMAGES)


def test_duplicate_and_foreign_members_are_refused(tmp_path):
    good = make_artifact(tmp_path / "good.npz")
    with zipfile.ZipFile(good) as src:
        members = {i.filename: src.read(i.filename) for i in src.infolist()}
    dup = tmp_path / "dup.npz"
    with zipfile.ZipFile(dup, "w") as dst, pytest.warns(UserWarning, match="Duplicate name"):
        for name, data in members.items():
            dst.writestr(name, data)
        dst.writestr("images.npy", members["images.npy"])
    with pytest.raises(ArtifactError, match="duplicate entries images.npy"):
        kdistill.load(dup)
    foreign = tmp_path / "foreign.npz"
    with zipfile.ZipFile(foreign, "w") as dst:
        for name, data in members.items():
            dst.writestr(name, data)
        dst.writestr("run.py", b"import os")
    with pytest.raises(ArtifactError, match="'run.py' are not .npy arrays"):
        kdistill.load(foreign)


# ------------------------------------------------------------ JSON side files


def test_sealed_json_round_trip_and_refusals(tmp_path):
    path = tmp_path / "nn_convnet.json"
    res = {"format": "kdistill-nn-result", "format_version": 1, "mean": 0.7417, "runs": [{"seed": 0}]}
    safeio.write_json_sealed(path, res)
    assert safeio.read_json_sealed(path) == res
    stored = json.loads(path.read_text())
    for key in ("mean", "runs", "format"):
        edited = {**stored, key: mutate(stored[key])}
        path.write_text(json.dumps(edited))
        with pytest.raises(KdistillError, match=f"failed its checksum for fields {key}: "):
            safeio.read_json_sealed(path, what="NN result")
    path.write_text(json.dumps({k: v for k, v in stored.items() if k != "integrity"}))
    with pytest.raises(ArtifactError, match="has no integrity record.*re-run the command that wrote it"):
        safeio.read_json_sealed(path, ArtifactError, "NN result")
    for text, fragment in (("[1, 2]", "is not a JSON object"), ("{", "cannot read"), ("", "cannot read")):
        path.write_text(text)
        with pytest.raises(ArtifactError, match=fragment):
            safeio.read_json_sealed(path, ArtifactError, "NN result")
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ArtifactError, match="cannot read NN result"):
        safeio.read_json_sealed(path, ArtifactError, "NN result")


# ---------------------------------------------------------- dataset files (IDX, .mat)


def idx_header(shape, type_byte=0x08) -> bytes:
    return bytes([0, 0, type_byte, len(shape)]) + b"".join(int(d).to_bytes(4, "big") for d in shape)


def gzip_stream(path: Path, header: bytes, zero_bytes: int) -> None:
    """A gzip file of ``header`` and ``zero_bytes`` zeros, written in chunks."""
    with gzip.open(path, "wb", compresslevel=1) as fh:
        fh.write(header)
        chunk = bytes(16 * MiB)
        left = zero_bytes
        while left:
            fh.write(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))


def write_small_mnist(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, arr in {"train-images-idx3-ubyte.gz": np.zeros((6, 28, 28), np.uint8),
                      "train-labels-idx1-ubyte.gz": np.zeros(6, np.uint8),
                      "t10k-images-idx3-ubyte.gz": np.zeros((4, 28, 28), np.uint8),
                      "t10k-labels-idx1-ubyte.gz": np.zeros(4, np.uint8)}.items():
        (root / name).write_bytes(gzip.compress(idx_header(arr.shape) + arr.tobytes()))


def test_idx_declaring_more_images_than_mnist_has_is_refused_before_allocating(tmp_path):
    """The reported case: ~1 MiB of gzip declaring 1.37M images (reached 12.7 GB before)."""
    write_small_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    gzip_stream(path, idx_header((1_370_000, 28, 28)), 256 * MiB)
    assert path.stat().st_size < 2 * MiB
    assert refusal_peak_mib(lambda: kdistill.datasets.load_mnist(tmp_path), DataFileError,
                            r"declares shape \(1370000, 28, 28\), larger than this file can be: "
                            r"at most \(60000, 28, 28\)") < 32


def test_idx_labels_larger_than_the_split_are_refused(tmp_path):
    write_small_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_header((10_001,)) + bytes(10_001)))
    with pytest.raises(DataFileError, match=r"t10k-labels-idx1-ubyte.gz: IDX header declares shape \(10001,\)"):
        kdistill.datasets.load_fashion_mnist(tmp_path)


def test_idx_decompression_stops_at_the_declared_size(tmp_path):
    """A small declared shape followed by 256 MiB of zeros: trailing bytes, found after
    decompressing one byte past the declared payload."""
    write_small_mnist(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    gzip_stream(path, idx_header((4, 28, 28)), 256 * MiB)
    assert refusal_peak_mib(lambda: kdistill.datasets.load_mnist(tmp_path), DataFileError,
                            "t10k-images-idx3-ubyte.gz: IDX file has trailing bytes") < 32


def test_read_idx_without_known_shape_bounds_the_expansion(tmp_path):
    path = tmp_path / "any.idx.gz"
    path.write_bytes(gzip.compress(idx_header((100_000, 100, 100)) + bytes(1000)))
    assert refusal_peak_mib(lambda: mnist_mod.read_idx(path), DataFileError, "a decompression bomb") < 32
    plain = tmp_path / "plain.idx"
    plain.write_bytes(idx_header((100_000, 100, 100)) + bytes(1000))
    with pytest.raises(DataFileError, match="truncated"):
        mnist_mod.read_idx(plain)


def test_svhn_declaring_more_images_than_the_split_is_refused(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    y = np.ones((2, 1), np.uint8)
    scipy_io.savemat(tmp_path / "train_32x32.mat", {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": y})
    n = 26_033  # one more than the official test split
    scipy_io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((32, 32, 3, n), np.uint8),
                                                   "y": np.ones((n, 1), np.uint8)}, do_compression=True)
    assert (tmp_path / "test_32x32.mat").stat().st_size < 2 * MiB
    with pytest.raises(DataFileError, match=r"'X' declares shape \(32, 32, 3, 26033\); .* at most 26032"):
        kdistill.datasets.load_svhn(tmp_path)


def test_digests_use_a_canonical_serialization():
    a = safeio.integrity_record({"b": 1, "a": [1.5, "x"]}, {"z": np.arange(3)})
    b = safeio.integrity_record({"a": [1.5, "x"], "b": 1}, {"z": np.arange(3)})
    assert a == b and a["algorithm"] == "sha256" and len(a["digest"]) == 64
    assert safeio.integrity_record({"a": 1}) != safeio.integrity_record({"a": 1.0})
    assert math.isfinite(len(safeio.canonical_json({"x": float("nan")})))
    assert zlib.crc32(safeio.canonical_json({"b": 1, "a": 2})) == zlib.crc32(b'{"a":2,"b":1}')
