"""Evaluate a saved distilled set: KRR test accuracy against a random real subset."""

from __future__ import annotations

import warnings
from typing import Any

import attrs

from kdistill.io.artifact import DistilledSet
from kdistill.runtime.components import PreparedData, build_components, load_dataset, prepare_data
from kdistill.core.config import DistillConfig
from kdistill.datasets.fingerprint import data_differences
from kdistill.errors import DataError
from kdistill.runtime.progress import phase as progress_phase
from kdistill.runtime.support import evaluate_support, random_baseline


class DataMismatchWarning(UserWarning):
    """An artifact is evaluated on data other than those it was distilled from
    (``check_data=False`` / ``--allow-data-mismatch``)."""


def prepare_with_transform(config: DistillConfig, artifact: DistilledSet, check_data: bool = True) -> PreparedData:
    """Load the artifact's dataset and apply the artifact's own (stored) transform.

    The loaded data are compared with what the artifact recorded at distillation
    (:func:`kdistill.datasets.fingerprint.data_differences`: split sizes, image shape, and,
    for artifacts that have it, a fingerprint of every image and label).

    Args:
        check_data: True (default) refuses data that differ; False evaluates anyway
            and issues a :class:`DataMismatchWarning` naming the differences.
    Raises:
        DataError: the dataset's image shape or number of classes differs from the
            artifact's; or, with ``check_data``, the data differ from those the
            artifact was distilled from (the message lists how, and how to override).
    """
    ds = load_dataset(config)
    if list(ds.x_train.shape[1:]) != list(artifact.images.shape[1:]):
        raise DataError(
            f"dataset {ds.name!r} has images of shape {ds.x_train.shape[1:]} but the artifact's "
            f"support images are {artifact.images.shape[1:]}; pass the dataset it was distilled from"
        )
    if artifact.labels.shape[1] != ds.num_classes:
        raise DataError(
            f"dataset {ds.name!r} has {ds.num_classes} classes but the artifact's labels have "
            f"{artifact.labels.shape[1]} columns; pass the dataset it was distilled from"
        )
    data = prepare_data(config, ds, transform=artifact.transform)
    diffs = data_differences(artifact.dataset or {}, data.info)
    if diffs:
        where = f" from {config.data_dir!r}" if config.data_dir else ""
        what = (f"the {ds.name!r} data loaded{where} differ from the data this artifact was distilled from: "
                + "; ".join(diffs))
        if check_data:
            raise DataError(
                what + ". A score on other data is not this artifact's accuracy: point --data-dir (data_dir) at "
                "the original files, or pass --allow-data-mismatch (CLI) / check_data=False (API) to evaluate "
                "on these data anyway")
        warnings.warn(what + " (evaluating anyway: check_data=False)", DataMismatchWarning, stacklevel=2)
    return data


def evaluate_artifact(
    artifact: DistilledSet, overrides: dict[str, Any] | list[str] | None = None, progress=None,
    check_data: bool = True,
) -> dict[str, Any]:
    """KRR accuracy of ``artifact`` on the test set (the first ``test_size`` examples when
    that config field is set, e.g. ``overrides=["test_size=1000"]``), and of a random
    real subset of the same size.

    Args:
        artifact: a loaded :class:`DistilledSet`.
        overrides: config overrides, e.g. ``{"eval_kernel": {"name": "rbf"}}``,
            ``["data_dir=..."]`` or ``["backend=torch"]``.
        progress: optional callable ``progress(rows_done)``, called after every block of
            test rows of both passes (distilled set, then the random subset: ``2 * n_test``
            rows in all). Independently of it, the work is reported as the phase
            ``"evaluate"`` to the active progress reporter
            (:func:`kdistill.runtime.progress.use_progress`; the CLI's bar): in kernel rows,
            ``n_s + n_test`` per pass (:func:`kdistill.runtime.support.evaluation_rows`),
            per kernel tile for the exact ConvNet kernel (``2 * n_test`` target rows
            when ``progress`` is given).
        check_data: refuse (True, default) or only warn about (False) data that differ
            from those the artifact was distilled from (see :func:`prepare_with_transform`).
    Returns:
        ``{"distilled_acc", "random_acc", "eval_kernel", "n_support", "n_test"}``.
    Raises:
        DataError: see :func:`prepare_with_transform`; ConfigError and the errors of
            :func:`kdistill.core.krr.krr_predict` (e.g. NumericalError for a degenerate
            kernel).
    """
    config = DistillConfig.from_artifact(artifact.config).with_overrides(overrides or {})
    comps = build_components(config)
    data = prepare_with_transform(config, artifact, check_data=check_data)
    ipc = len(artifact.images) // data.num_classes
    config = attrs.evolve(config, ipc=max(ipc, 1))
    n_test = int(len(data.x_test[: config.test_size]))
    legacy = progress is not None
    total = 2 * n_test if legacy else (len(artifact.images) + n_test) + (config.ipc * data.num_classes + n_test)
    with progress_phase("evaluate", total, "row") as bar:
        def report(rows):
            bar.update(rows)
            if legacy:
                progress(rows)

        acc = evaluate_support(comps, config, data, artifact.images, artifact.labels, limit=config.test_size,
                               progress=report, count_support=not legacy)
        out = {
            "distilled_acc": acc,
            "eval_kernel": (config.eval_kernel or config.kernel).to_dict(),
            "n_support": int(len(artifact.images)),
            "n_test": n_test,
        }
        out.update(random_baseline(comps, config, data, progress=report, count_support=not legacy))
    return out


def write_krr_result(path, overrides: dict[str, Any], *, check_data: bool = True, out=None) -> tuple[dict, Any]:
    """Score the artifact at ``path`` by KRR (:func:`evaluate_artifact`) and write the
    result as sealed JSON (:func:`kdistill.io.safeio.write_json_sealed`): ``out``, or
    ``eval_<kernel>.json`` beside the artifact. What ``kdistill evaluate`` and
    ``kdistill baseline`` write; ``kdistill report`` reads it (the KRR column).

    Args:
        path: a ``distilled.npz`` (``pathlib.Path``).
        overrides: config overrides (``eval_kernel``, ``data_dir``, ``test_size``, ...),
            validated against the artifact's config.
    Returns:
        ``(result, target)``: the result dict (``distilled_acc``, ``random_acc``,
        ``n_test``, ``eval_kernel``, ``config``, ``result_file``, ...) and its path.
    Raises:
        ConfigError, DataError, ArtifactError, OSError: as :func:`evaluate_artifact` and
            the write.
    """
    from pathlib import Path

    from kdistill.io.artifact import load
    from kdistill.io.safeio import write_json_sealed

    art = load(path)
    cfg = DistillConfig.from_dict(art.config).with_overrides(overrides, [])
    res = evaluate_artifact(art, overrides, check_data=check_data)
    res = {"command": "evaluate", "artifact": str(path), **res,
           "config": {k: v for k, v in cfg.to_dict().items() if k in ("eval_kernel", "ridge", "test_size",
                                                                      "backend", "dtype", "solver")}}
    target = Path(out) if out else Path(path).parent / f"eval_{res['eval_kernel']['name']}.json"
    res["result_file"] = str(target)
    from kdistill.runtime.distributed import is_primary

    if is_primary():  # in a run of several processes, every one scores and one writes
        write_json_sealed(target, res)
    return res, target
