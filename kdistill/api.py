"""Python API: ``kdistill.distill``, ``kdistill.label_solve``, ``kdistill.load``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from kdistill.core.artifact import DistilledSet
from kdistill.core.artifact import load as load  # re-export
from kdistill.core.components import build_components, prepare_data
from kdistill.core.config import DistillConfig
from kdistill.core.kip import run_kip, run_label_solve


def make_config(config: DistillConfig | dict | str | Path | None = None, **overrides: Any) -> DistillConfig:
    """A :class:`DistillConfig` from a config object, dict or TOML path, plus overrides.

    Keyword overrides use config field names; component fields accept a name or a
    dict, e.g. ``kernel={"name": "fc", "depth": 2}``; dotted keys go through
    ``with_overrides`` (``**{"kernel.depth": 2}``).
    """
    if config is None:
        cfg = DistillConfig()
    elif isinstance(config, DistillConfig):
        cfg = config
    elif isinstance(config, dict):
        cfg = DistillConfig.from_dict(config)
    else:
        cfg = DistillConfig.from_file(config)
    return cfg.with_overrides(overrides) if overrides else cfg


def distill(
    config: DistillConfig | dict | str | Path | None = None,
    *,
    data=None,
    callback: Callable[[dict], None] | None = None,
    **overrides: Any,
) -> DistilledSet:
    """Distill a dataset with KIP (or Label Solve if ``method="label-solve"``).

    Args:
        config: a DistillConfig, dict, TOML path, or None for the defaults (KIP with
            the FC1 NTK on the embedded digits data, JAX backend).
        data: an in-memory :class:`kdistill.datasets.Dataset` to use instead of
            loading ``config.dataset`` (``dataset`` is the config field naming it).
        callback: called after every step with ``{"step", "loss", ["eval_acc"]}``.
        **overrides: config fields, e.g. ``ipc=1, backend="torch", kernel="rbf"``.
    Returns:
        A :class:`DistilledSet` (``.save(path)`` writes the artifact).
    Raises:
        ConfigError, UnknownComponentError, IncompatibleComponentsError, DataError,
        DataFileError before any work; NonFiniteLossError during it.

    Example::

        import kdistill
        result = kdistill.distill(ipc=10, steps=200, learn_labels=True)
        print(result.metrics["distilled_acc"], result.metrics["random_acc"])
        result.save("digits_kip.npz")
    """
    cfg = make_config(config, **overrides)
    comps = build_components(cfg)
    prepared = prepare_data(cfg, data)
    if cfg.method == "label-solve":
        return run_label_solve(cfg, comps, prepared)
    return run_kip(cfg, comps, prepared, callback)


def label_solve(
    config: DistillConfig | dict | str | Path | None = None, *, data=None, **overrides: Any
) -> DistilledSet:
    """Label Solve (Nguyen et al. 2021, ICLR): closed-form labels for real support images.

    Same arguments as :func:`distill`; ``target_batch`` is the number of
    class-balanced training targets the labels are solved against.
    """
    return distill(config, data=data, method="label-solve", **overrides)
