"""Resolve a run config into bound components and prepared data, before any work.

Everything that can be wrong with a config (unknown names, bad hyperparameters, a
component that does not support the backend, too few examples per class) is caught
here, so a run fails in seconds, not after hours.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

from kdistill.core.config import ComponentSpec, DistillConfig
from kdistill.core.contracts import Kernel, Loss, Solver
from kdistill.errors import ConfigError, DataError, IncompatibleComponentsError
from kdistill.datasets.preprocess import fit_preprocessor
from kdistill.core.registry import Registry, get_registry
from kdistill.runtime.threads import apply_threads
from kdistill.core.sampling import centered_one_hot, class_indices


@attrs.define
class Components:
    """Bound components of a run."""

    backend: Any
    kernel: Kernel
    solver: Solver
    loss: Loss
    eval_kernel: Kernel
    valid_kernel: Kernel | None = None  # None: eval_kernel
    callbacks: list = attrs.field(factory=list)  # RunHook instances of config.callbacks (set by api.run)


def build_component(registry: Registry, kind: str, spec: ComponentSpec, backend) -> Any:
    """Instantiate ``spec`` from the registry and bind it to ``backend``."""
    component = registry.create(kind, spec.name, **spec.params)
    try:
        return component.bind(backend)
    except ConfigError as exc:
        ok = [
            r.name for r in registry.entries(kind)
            if backend.name in getattr(r.factory, "backends", ())
        ]
        raise type(exc)(f"{exc}. {kind.capitalize()} that support {backend.name!r}: {', '.join(ok)}") from exc


def build_components(config: DistillConfig, registry: Registry | None = None) -> Components:
    """Create and bind the backend, kernel, solver, loss and evaluation kernel.

    Raises:
        UnknownComponentError, ConfigError, IncompatibleComponentsError.
    """
    registry = registry or get_registry()
    apply_threads(config.threads)  # XLA's flags: before the backend starts XLA (it lists its devices)
    backend = registry.backend(config.backend, config.device)
    apply_threads(config.threads)  # torch's threads: after the backend imported torch
    check_launch(backend)
    kernel = build_component(registry, "kernels", config.kernel, backend)
    eval_spec = config.eval_kernel or config.kernel
    eval_kernel = build_component(registry, "kernels", eval_spec, backend)
    valid_spec = config.valid_kernel or eval_spec
    return Components(
        backend=backend,
        kernel=kernel,
        solver=build_component(registry, "solvers", config.solver, backend),
        loss=build_component(registry, "losses", config.loss, backend),
        eval_kernel=eval_kernel,
        valid_kernel=build_component(registry, "kernels", valid_spec, backend),
    )


def check_launch(backend) -> None:
    """Refuse a backend that runs as another number of processes than the launch.

    ``torchrun`` starts torch processes and ``--coordinator`` joins JAX processes
    (:mod:`kdistill.runtime.distributed`); the other backend would run as independent
    copies that all write the run directory.

    Raises:
        ConfigError: naming the launch and the way to launch this backend.
    """
    from kdistill.runtime.distributed import process_count

    launched = process_count()
    if backend.process_count != launched:
        raise ConfigError(
            f"this launch has {launched} processes but backend {backend.name!r} runs as {backend.process_count}: "
            "launch torch runs of several processes with torchrun, and JAX runs with --coordinator HOST:PORT "
            "--num-processes N --process-id I (or KDISTILL_COORDINATOR, ...; --coordinator auto under Slurm)")


def check_run_config(config: DistillConfig) -> None:
    """Refuse option combinations a run would silently ignore, before any work.

    Label Solve has a closed form: it minimizes the MSE (no other loss), solves the
    labels (``learn_labels`` does not apply) and has no steps to checkpoint.

    Raises:
        IncompatibleComponentsError: naming the conflicting options.
    """
    if config.method != "label-solve":
        return
    conflicts = []
    if config.loss.name != "mse":
        conflicts.append(f"loss={config.loss.name!r} (Label Solve minimizes the MSE in closed form; use loss='mse')")
    if config.learn_labels:
        conflicts.append("learn_labels=true (Label Solve computes the labels; drop learn_labels)")
    if config.checkpoint_every:
        conflicts.append("checkpoint_every > 0 (Label Solve is a single solve with no steps; use 0)")
    if config.valid_size or config.patience:
        conflicts.append("valid_size/patience > 0 (Label Solve has no steps to validate or stop early; use 0)")
    if conflicts:
        raise IncompatibleComponentsError("method='label-solve' cannot be combined with " + "; ".join(conflicts))


@attrs.define
class PreparedData:
    """Preprocessed splits.

    Attributes:
        x_train, x_test: ``[n, H, W, C]`` float32 preprocessed.
        y_train, y_test: ``[n]`` int64 class ids; Y_train: ``[n, C]`` centered one-hot.
        transform: the fitted preprocessor. info: dataset description for artifacts.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    Y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    transform: Any
    info: dict[str, Any]


def load_dataset(config: DistillConfig, registry: Registry | None = None):
    """Load the raw dataset named by ``config.dataset`` from ``config.data_dir``."""
    registry = registry or get_registry()
    loader = registry.get("datasets", config.dataset).factory
    return loader(config.data_dir)


#: Keys of the dict form of in-memory data (see :func:`dataset_from_data`).
DATA_KEYS = ("x_train", "y_train", "x_test", "y_test")
DATA_OPTIONAL_KEYS = ("name", "num_classes", "class_names", "layout")


def dataset_from_data(data):
    """A :class:`kdistill.datasets.Dataset` from the in-memory forms ``distill(data=...)``
    takes: a Dataset (returned as is), a tuple/list ``(x_train, y_train, x_test,
    y_test)``, or a dict with those four keys and optionally ``name``, ``num_classes``,
    ``class_names``, ``layout`` (``"nhwc"`` default or ``"nchw"``); arrays as in
    :meth:`kdistill.core.contracts.Dataset.from_arrays`.

    Raises:
        DataError: another type, a tuple of another length, a dict with missing or
            unknown keys (the message names them), or arrays that
            :meth:`~kdistill.core.contracts.Dataset.from_arrays` refuses.
    """
    from kdistill.core.contracts import Dataset

    if isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)):
        if len(data) != 4:
            raise DataError("data must be a kdistill.datasets.Dataset, a dict or a tuple (x_train, y_train, x_test, "
                            f"y_test); the tuple has {len(data)} items")
        return Dataset.from_arrays(*data)
    if isinstance(data, dict):
        missing = [k for k in DATA_KEYS if k not in data]
        unknown = sorted(str(k) for k in data if k not in DATA_KEYS + DATA_OPTIONAL_KEYS)
        if missing or unknown:
            raise DataError(
                "data must be a kdistill.datasets.Dataset, a tuple or a dict with the keys " + ", ".join(DATA_KEYS)
                + (f"; the dict lacks {', '.join(missing)}" if missing else "")
                + (f"; unknown keys: {', '.join(unknown)} (optional: {', '.join(DATA_OPTIONAL_KEYS)})"
                   if unknown else ""))
        return Dataset.from_arrays(*(data[k] for k in DATA_KEYS),
                                   **{k: data[k] for k in DATA_OPTIONAL_KEYS if k in data})
    raise DataError(
        "data must be a kdistill.datasets.Dataset, a tuple (x_train, y_train, x_test, y_test) or a dict with "
        f"those keys, got {type(data).__name__}")


def prepare_data(
    config: DistillConfig, dataset=None, registry: Registry | None = None, transform=None
) -> PreparedData:
    """Load (unless ``dataset`` is given), validate, and preprocess the data.

    Args:
        dataset: in-memory data instead of ``config.dataset``: a Dataset, a tuple
            ``(x_train, y_train, x_test, y_test)`` or a dict (see :func:`dataset_from_data`).
        transform: an already fitted preprocessor (e.g. an artifact's); by default
            ``config.preprocess`` is fitted on the training split.
    Raises:
        DataFileError: missing/malformed files. DataError: ``dataset`` (or what the
        loader returned) is not a :class:`kdistill.datasets.Dataset`, NaN/Inf values,
        an empty test split, or a class with fewer than ``ipc`` training examples.
    """
    from kdistill.datasets.fingerprint import dataset_fingerprint
    from kdistill.core.contracts import Dataset

    ds = dataset if dataset is not None else load_dataset(config, registry)
    if dataset is not None and not isinstance(ds, Dataset):
        ds = dataset_from_data(ds)
    if not isinstance(ds, Dataset):
        raise DataError(
            f"the loader of dataset {config.dataset!r} must return a kdistill.datasets.Dataset (build one with "
            f"Dataset(name, x_train, y_train, x_test, y_test, num_classes, class_names)), got {type(ds).__name__}"
        )
    if len(ds.x_test) == 0:
        raise DataError(f"{ds.name} has an empty test split: evaluation needs at least one test example")
    for split, x in (("train", ds.x_train), ("test", ds.x_test)):
        if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
            raise DataError(f"{ds.name} {split} images contain NaN or Inf values")
    counts = [len(i) for i in class_indices(ds.y_train, ds.num_classes)]
    if min(counts) < config.ipc:
        c = int(np.argmin(counts))
        raise DataError(
            f"ipc={config.ipc} but class {c} of {ds.name} has only {counts[c]} training examples"
        )
    if transform is None:
        transform = fit_preprocessor(config.preprocess, ds.x_train)
    return PreparedData(
        x_train=transform.transform(ds.x_train),
        y_train=ds.y_train.astype(np.int64),
        Y_train=centered_one_hot(ds.y_train, ds.num_classes),
        x_test=transform.transform(ds.x_test),
        y_test=ds.y_test.astype(np.int64),
        num_classes=ds.num_classes,
        transform=transform,
        info={
            "name": ds.name,
            "num_classes": ds.num_classes,
            "class_names": list(ds.class_names),
            "image_shape": list(ds.x_train.shape[1:]),
            "n_train": int(len(ds.x_train)),
            "n_test": int(len(ds.x_test)),
            # evaluation compares it, so an artifact is never scored on other data
            "fingerprint": dataset_fingerprint(ds),
        },
    )
