"""Command line: ``kdistill distill``, ``kdistill evaluate``, ``kdistill plugins``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from kdistill.core.errors import KdistillError

# CLI flag -> config field (None values are not overrides)
_FLAG_FIELDS = (
    "method", "dataset", "data_dir", "backend", "kernel", "solver", "loss", "eval_kernel",
    "ipc", "steps", "lr", "optimizer", "target_batch", "ridge", "learn_labels", "init",
    "dtype", "seed", "eval_every", "preprocess",
)


def _fail(exc: Exception) -> None:
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(2)


@click.group()
@click.version_option(package_name="kdistill")
def main() -> None:
    """kdistill: kernel-based dataset distillation (KIP, Label Solve)."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file.")
@click.option("--method", type=click.Choice(["kip", "label-solve"]), help="Default: kip.")
@click.option("--dataset", help="Registered dataset name (see `kdistill plugins`). Default: digits.")
@click.option("--data-dir", help="Directory with the dataset's files (not needed for digits).")
@click.option("--backend", help="jax or torch. Default: jax.")
@click.option("--kernel", help="Kernel name; set its parameters with -s kernel.depth=2.")
@click.option("--eval-kernel", help="Kernel for evaluation (default: the training kernel).")
@click.option("--solver", help="Solver name. Default: cholesky.")
@click.option("--loss", help="Loss name. Default: mse.")
@click.option("--ipc", type=int, help="Images per class. Default: 10.")
@click.option("--steps", type=int, help="Optimizer steps. Default: 200.")
@click.option("--lr", type=float, help="Learning rate. Default: 0.01.")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]))
@click.option("--target-batch", type=int, help="Targets per step (class-balanced). Default: 5000.")
@click.option("--ridge", type=float, help="Relative ridge lambda. Default: 1e-6.")
@click.option("--learn-labels/--fixed-labels", default=None, help="Learn the support labels.")
@click.option("--init", type=click.Choice(["real", "noise"]))
@click.option("--dtype", type=click.Choice(["float32", "float64"]))
@click.option("--preprocess", type=click.Choice(["standardize", "none"]))
@click.option("--seed", type=int)
@click.option("--eval-every", type=int, help="Evaluate every N steps (0: only at the end).")
@click.option("-s", "--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any config field, e.g. -s kernel.depth=2 -s eval_test_size=2000.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Run directory. Default: runs/<dataset>-<method>-ipc<ipc>-<time>.")
@click.option("--grid/--no-grid", default=True, help="Write grid.png of the distilled images.")
@click.option("--progress/--no-progress", default=True)
def distill(config_path, sets, out_dir, grid, progress, **flags: Any) -> None:
    """Distill a dataset; writes distilled.npz, config.toml, metrics.json, grid.png.

    With no arguments: KIP with the FC1 NTK on the embedded digits data (about a
    minute), printing the distilled vs random-subset KRR accuracy.
    """
    from kdistill.api import make_config
    from kdistill.core.components import build_components, prepare_data
    from kdistill.core.kip import run_label_solve

    try:
        overrides = {k: v for k, v in flags.items() if k in _FLAG_FIELDS and v is not None}
        cfg = make_config(config_path).with_overrides(overrides).with_overrides(list(sets))
        comps = build_components(cfg)
        data = prepare_data(cfg)
    except KdistillError as exc:
        _fail(exc)
    out = Path(out_dir or f"runs/{cfg.dataset}-{cfg.method}-ipc{cfg.ipc}-{time.strftime('%Y%m%d-%H%M%S')}")
    click.echo(
        f"{cfg.method} on {cfg.dataset} ({len(data.x_train)} train / {len(data.x_test)} test), "
        f"ipc={cfg.ipc}, kernel={cfg.kernel.name} {cfg.kernel.params}, backend={cfg.backend}"
    )
    try:
        if cfg.method == "label-solve":
            result = run_label_solve(cfg, comps, data)
        else:
            result = _run_with_progress(cfg, comps, data, progress)
    except KdistillError as exc:
        _fail(exc)
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "distilled.npz")
    (out / "config.toml").write_text(cfg.to_toml())
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2))
    if grid:
        from kdistill.plotting import save_image_grid

        save_image_grid(
            result.transform.inverse(result.images), result.class_ids, out / "grid.png",
            class_names=result.dataset.get("class_names"),
            title=f"{cfg.dataset} {cfg.method} ipc={cfg.ipc}",
        )
    m = result.metrics
    init = "" if m.get("init_acc") is None else f"; initial support set {100 * m['init_acc']:.2f}%"
    click.echo(
        f"KRR test accuracy: distilled {100 * m['distilled_acc']:.2f}%  vs  random real subset "
        f"{100 * m['random_acc']:.2f}%{init}  ({m['total_seconds']:.1f} s)"
    )
    click.echo(f"wrote {out}/")


def _run_with_progress(cfg, comps, data, progress: bool):
    from tqdm.auto import tqdm

    from kdistill.core.kip import run_kip

    bar = tqdm(total=cfg.steps, disable=not progress, desc="kip", unit="step", dynamic_ncols=True)
    state: dict[str, Any] = {}

    def callback(info):
        if "eval_acc" in info:
            state["acc"] = f"{100 * info['eval_acc']:.2f}%"
        bar.set_postfix(loss=f"{info['loss']:.4g}", acc=state.get("acc", "-"), refresh=False)
        bar.update(1)

    try:
        return run_kip(cfg, comps, data, callback)
    finally:
        bar.close()


@main.command()
@click.argument("artifact", type=click.Path(dir_okay=True))
@click.option("--kernel", "kernel", help="Evaluation kernel name (default: the run's eval kernel).")
@click.option("--data-dir", help="Where the dataset's files are (default: as recorded in the run).")
@click.option("--backend", help="jax or torch (default: as recorded).")
@click.option("-s", "--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override, e.g. -s eval_kernel.depth=2 -s ridge=1e-4.")
def evaluate(artifact, kernel, data_dir, backend, sets) -> None:
    """KRR test accuracy of ARTIFACT (a distilled.npz or its run directory)."""
    from tqdm.auto import tqdm

    from kdistill.core.artifact import load
    from kdistill.core.evaluate import evaluate_artifact

    path = Path(artifact)
    if path.is_dir():
        path = path / "distilled.npz"
    try:
        art = load(path)
        overrides: dict[str, Any] = {}
        if kernel:
            overrides["eval_kernel"] = {"name": kernel}
        if data_dir:
            overrides["data_dir"] = data_dir
        if backend:
            overrides["backend"] = backend
        from kdistill.core.config import parse_override

        overrides.update(dict(parse_override(s) for s in sets))
        n_test = art.dataset.get("n_test")
        with tqdm(total=n_test, desc="evaluate", unit="img", dynamic_ncols=True) as bar:
            res = evaluate_artifact(art, overrides, progress=bar.update)
    except KdistillError as exc:
        _fail(exc)
    click.echo(
        f"{res['n_support']} support examples, kernel {res['eval_kernel']}, {res['n_test']} test images\n"
        f"KRR test accuracy: distilled {100 * res['distilled_acc']:.2f}%  vs  random real subset "
        f"{100 * res['random_acc']:.2f}%"
    )


@main.command()
def plugins() -> None:
    """List every backend, kernel, solver, loss and dataset, and where it comes from."""
    from kdistill.core.registry import get_registry

    try:
        reg = get_registry()
    except KdistillError as exc:
        _fail(exc)
    from kdistill.core.registry import SINGULAR

    rows = [(SINGULAR[r.kind], r.name, f"{r.package} {r.version}", r.description) for r in reg.entries()]
    widths = [max(len(row[i]) for row in rows + [("kind", "name", "package", "")]) for i in range(3)]
    click.echo(f"{'kind':<{widths[0]}}  {'name':<{widths[1]}}  {'package':<{widths[2]}}  description")
    for row in rows:
        click.echo(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")


if __name__ == "__main__":
    main()
