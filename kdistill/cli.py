"""Command line: ``kdistill distill``, ``evaluate`` (KRR or ``--nn``), ``baseline``, ``report``, ``plugins``."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from kdistill.errors import KdistillError, RunInterrupted
from kdistill.nn.commands import allow_data_mismatch_option, threads_option

# CLI flag -> config field (None values are not overrides)
_FLAG_FIELDS = (
    "method", "dataset", "data_dir", "backend", "kernel", "solver", "loss", "eval_kernel",
    "ipc", "steps", "lr", "optimizer", "schedule", "target_batch", "ridge", "learn_labels", "init",
    "dtype", "seed", "eval_every", "preprocess", "checkpoint_every", "threads",
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
@click.option("--method", help="Outer-loop method: kip (default), label-solve, or a plugin's (see `kdistill plugins`).")
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
@click.option("--optimizer", help="Optimizer name: adam (default), sgd, adamw, or a plugin's (see `kdistill plugins`); "
                                  "set its parameters with -s optimizer.b1=0.8.")
@click.option("--schedule", help="Learning-rate schedule: constant (default), cosine, warmup-cosine, or a plugin's; "
                                 "parameters with -s schedule.alpha=0.1.")
@click.option("--target-batch", type=int, help="Targets per step (class-balanced). Default: 5000.")
@click.option("--ridge", type=float, help="Relative ridge lambda. Default: 1e-6.")
@click.option("--learn-labels/--fixed-labels", default=None, help="Learn the support labels.")
@click.option("--init", type=click.Choice(["real", "noise"]))
@click.option("--dtype", type=click.Choice(["float32", "float64"]))
@click.option("--preprocess", type=click.Choice(["standardize", "zca", "none"]),
              help="standardize (default), zca (layer norm + ZCA 0.1, for RGB data) or none.")
@click.option("--seed", type=int)
@click.option("--eval-every", type=int, help="Evaluate every N steps (0: only at the end).")
@click.option("--checkpoint-every", type=int,
              help="Write RUN_DIR/checkpoint.npz every N steps (0, the default: only on SIGINT/SIGTERM, "
                   "and after the last step until the results are written).")
@threads_option
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
              help="Continue the run in RUN_DIR from its checkpoint, bit-for-bit; other flags "
                   "must match the stored config or be absent.")
@click.option("-s", "--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override any config field, e.g. -s kernel.depth=2 -s eval_test_size=2000.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Run directory. Default: runs/<dataset>-<method>-ipc<ipc>-<time>.")
@click.option("--overwrite", is_flag=True, default=False,
              help="Replace the previous run in --out (its files, nn_*.json and baselines/ included); "
                   "without it a non-empty run directory is refused.")
@click.option("--grid/--no-grid", default=True, help="Write grid.png of the distilled images.")
@click.option("--progress/--no-progress", default=True)
def distill(config_path, sets, out_dir, grid, progress, resume_dir, overwrite=False, **flags: Any) -> None:
    """Distill a dataset; writes distilled.npz, config.toml, metrics.json, grid.png.

    With no arguments: KIP with the FC1 NTK on the embedded digits data (about a
    minute), printing the distilled vs random-subset KRR accuracy.

    The run directory (--out) must be new or empty unless --overwrite, and is locked
    while the command runs: a second run on it, or a --resume of it, fails naming
    the PID of the running one. Everything about it (a writable directory, free
    space) is checked before the first step.

    KIP runs write RUN_DIR/checkpoint.npz every --checkpoint-every steps, after the
    last step (before the final evaluation) and on SIGINT/SIGTERM (the current step
    finishes first, or the final evaluation stops at once; exit status 128 +
    signal); `kdistill distill --resume RUN_DIR` continues such a run (one stopped
    in the final evaluation is only evaluated again).

    A component flag (--kernel, --solver, --loss, --eval-kernel, --optimizer, --schedule) naming the
    component the --config already has keeps its parameters; naming another one
    starts from that component's defaults, with a note saying which settings went.
    """
    with contextlib.ExitStack() as stack:  # holds the run directory's lock
        _distill(stack, config_path, sets, out_dir, grid, progress, resume_dir, overwrite, flags)


class _WriteFailed(Exception):
    """Writing a finished run's files failed (the cause is chained)."""


def _distill(stack, config_path, sets, out_dir, grid, progress, resume_dir, overwrite, flags) -> None:
    from kdistill.api import make_config, run
    from kdistill.io.checkpoint import read_checkpoint
    from kdistill.errors import ConfigError

    try:
        overrides = {k: v for k, v in flags.items() if k in _FLAG_FIELDS and v is not None}
        base, resumed_step = config_path, None
        if resume_dir is not None:
            if overwrite:
                raise ConfigError("--overwrite replaces a run and --resume continues one: give only one of them")
            if out_dir is not None and Path(out_dir).resolve() != Path(resume_dir).resolve():
                raise ConfigError(f"--out {out_dir} differs from --resume {resume_dir}: a resumed run "
                                  "continues in its own directory; drop --out")
            saved = read_checkpoint(resume_dir)
            base, resumed_step = (config_path or saved.config), saved.step
        notices: list[str] = []
        cfg = make_config(base).with_overrides(overrides, notices).with_overrides(list(sets), notices)
        if config_path is not None:
            for notice in notices:
                click.secho(f"note: {notice}", fg="yellow", err=True)
    except KdistillError as exc:
        _fail(exc)
    default_out = f"runs/{cfg.dataset}-{cfg.method}-ipc{cfg.ipc}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(resume_dir or out_dir or default_out)

    def on_start(cfg, data, removed):
        if removed:
            click.echo(f"--overwrite: removed the previous run's {', '.join(removed)} from {out}", err=True)
        click.echo(
            f"{cfg.method} on {cfg.dataset} ({len(data.x_train)} train / {len(data.x_test)} test), "
            f"ipc={cfg.ipc}, kernel={cfg.kernel.name} {cfg.kernel.params}, backend={cfg.backend}"
            + (f"; resuming {out} after step {resumed_step}" if resume_dir is not None else "")
        )
        bar.start()

    def write(result):
        try:
            _write_outputs(out, cfg, result, grid)
        except (KdistillError, OSError) as exc:
            raise _WriteFailed(str(exc)) from exc

    bar = _Progress(cfg, progress)
    stack.callback(bar.close)
    try:
        result = run(cfg, callback=bar, run_dir=out, resume=resume_dir is not None, overwrite=overwrite,
                     what="--resume" if resume_dir is not None else "--out", grid=grid, on_start=on_start,
                     write=write)
    except RunInterrupted as exc:
        click.secho(f"stopped: {exc}", fg="yellow", err=True)
        sys.exit(128 + exc.signum)
    except _WriteFailed as exc:
        resume = cfg.method == "kip" and (out / "checkpoint.npz").is_file()
        _fail(f"{exc}" + (f"; the final checkpoint in {out} is intact: free space and run "
                          f"`kdistill distill --resume {out}` to write the results" if resume else ""))
    except KdistillError as exc:
        _fail(exc)
    bar.close()
    m = result.metrics
    if m.get("recoveries"):
        last = m["recoveries"][-1]
        click.echo(f"numerical recoveries: {len(m['recoveries'])} (now ridge={last['ridge']:g}, lr={last['lr']:g})")
    init = "" if m.get("init_acc") is None else f"; initial support set {100 * m['init_acc']:.2f}%"
    n_test = f" ({m['n_test']} test images)" if m.get("n_test") and cfg.test_size else ""
    best = "" if m.get("best_step") is None else (
        f"best validation accuracy {100 * m['best_valid_acc']:.2f}% at step {m['best_step']} of {m['steps_run']}\n"
    )
    vs = "" if m.get("random_acc") is None else f"  vs  random real subset {100 * m['random_acc']:.2f}%"
    took = "" if m.get("total_seconds") is None else f"  ({m['total_seconds']:.1f} s)"
    click.echo(f"{best}KRR test accuracy{n_test}: distilled {100 * m['distilled_acc']:.2f}%{vs}{init}{took}")
    click.echo(f"wrote {out}/")


def _write_outputs(out: Path, cfg, result, grid: bool) -> None:
    """distilled.npz, config.toml, metrics.json (each written atomically) and grid.png."""
    from kdistill.io.safeio import write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "distilled.npz")
    write_text_atomic(out / "config.toml", cfg.to_toml())
    write_text_atomic(out / "metrics.json", json.dumps(result.metrics, indent=2))
    if grid:
        from kdistill.plotting import save_image_grid

        save_image_grid(
            result.transform.inverse(result.images), result.class_ids, out / "grid.png",
            class_names=result.dataset.get("class_names"),
            title=f"{cfg.dataset} {cfg.method} ipc={cfg.ipc}",
        )


class _Progress:
    """The KIP progress bar as a run callback: steps, loss and the last evaluation's
    accuracy. :meth:`start` opens it (after the run's header); Label Solve has none."""

    def __init__(self, cfg, enabled: bool):
        self.cfg, self.enabled, self.bar, self.acc = cfg, enabled and cfg.method == "kip", None, "-"

    def start(self) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.cfg.steps, disable=not self.enabled, desc="kip", unit="step", dynamic_ncols=True)

    def __call__(self, info: dict) -> None:
        if "eval_acc" in info:
            self.acc = f"{100 * info['eval_acc']:.2f}%"
        self.bar.set_postfix(loss=f"{info['loss']:.4g}", acc=self.acc, refresh=False)
        self.bar.update(info["step"] - self.bar.n)  # a resumed run starts past 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@main.command()
@click.argument("artifact", type=click.Path(dir_okay=True))
@click.option("--kernel", "kernel", help="Evaluation kernel name (default: the run's eval kernel).")
@click.option("--data-dir", help="Where the dataset's files are (default: as recorded in the run).")
@click.option("--backend", help="jax or torch (default: as recorded).")
@click.option("-s", "--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override, e.g. -s eval_kernel.depth=2 -s ridge=1e-4.")
@click.option("--nn", "nn_model", type=click.Choice(["convnet", "fc"]),
              help="Instead of KRR: train finite networks (PyTorch) on ARTIFACT under an NN protocol.")
@click.option("--protocol", "protocol_file", type=click.Path(dir_okay=False, exists=True),
              help="With --nn: protocol as JSON/TOML (or a previous nn_*.json result, to rerun it).")
@click.option("-p", "--nn-set", "nn_sets", multiple=True, metavar="KEY=VALUE",
              help="With --nn: protocol field, e.g. -p width=64 -p steps=500 -p loss=ce -p label_mode=argmax.")
@click.option("--seeds", help="With --nn: comma-separated seeds (default 0,1,2).")
@click.option("--out", "nn_out", type=click.Path(dir_okay=False),
              help="With --nn: result JSON (default: nn_<model>.json beside the artifact).")
@click.option("--progress/--no-progress", "nn_progress", default=True)
@threads_option
@allow_data_mismatch_option
def evaluate(artifact, kernel, data_dir, backend, sets, nn_model=None, protocol_file=None, nn_sets=(),
             seeds=None, nn_out=None, nn_progress=True, threads=None, allow_data_mismatch=False) -> None:
    """KRR test accuracy of ARTIFACT (a distilled.npz or its run directory); with
    --nn convnet|fc, finite-network test accuracy (mean ± std over seeds) instead."""
    if nn_model:
        from kdistill.nn.commands import evaluate_nn_command

        with contextlib.ExitStack() as stack:
            if nn_out is None:  # nn_<model>.json goes into the run directory: not while a run writes there
                from kdistill.nn.commands import run_dir_lock

                run_dir = Path(artifact) if Path(artifact).is_dir() else Path(artifact).parent
                try:
                    if run_dir.is_dir():
                        stack.enter_context(run_dir_lock(run_dir))
                except KdistillError as exc:
                    _fail(exc)
            evaluate_nn_command(artifact, nn_model, protocol_file, nn_sets, seeds, data_dir, nn_out, nn_progress,
                                threads, allow_data_mismatch)
        return
    from tqdm.auto import tqdm

    from kdistill.io.artifact import load
    from kdistill.runtime.evaluate import evaluate_artifact

    path = Path(artifact)
    if path.is_dir():
        path = path / "distilled.npz"
    try:
        art = load(path)
        overrides: dict[str, Any] = {}
        if kernel:
            overrides["eval_kernel"] = kernel  # the artifact's parameters stay when it names the same kernel
        if data_dir:
            overrides["data_dir"] = data_dir
        if backend:
            overrides["backend"] = backend
        if threads is not None:
            overrides["threads"] = threads
        from kdistill.core.config import DistillConfig, parse_override

        overrides.update(dict(parse_override(s) for s in sets))
        notices: list[str] = []
        cfg = DistillConfig.from_dict(art.config).with_overrides(overrides, notices)  # validates -s values
        for notice in notices:
            click.secho(f"note: {notice}", fg="yellow", err=True)
        n_test = art.dataset.get("n_test")
        if n_test and cfg.test_size:
            n_test = min(n_test, cfg.test_size)
        # both passes (distilled set, random real subset) advance the bar per block of
        # test images, so tqdm's remaining-time estimate holds for slow kernels too
        total = 2 * n_test if n_test else None
        with tqdm(total=total, desc="evaluate (distilled + random subset)", unit="img", dynamic_ncols=True) as bar:
            res = evaluate_artifact(art, overrides, progress=bar.update, check_data=not allow_data_mismatch)
    except KdistillError as exc:
        _fail(exc)
    click.echo(
        f"{res['n_support']} support examples, kernel {res['eval_kernel']}, {res['n_test']} test images\n"
        f"KRR test accuracy: distilled {100 * res['distilled_acc']:.2f}%  vs  random real subset "
        f"{100 * res['random_acc']:.2f}%"
    )


@main.command()
def plugins() -> None:
    """List every backend, kernel, solver, loss, dataset and architecture, and where it
    comes from; then any plugin that was skipped (broken) or component refused (name
    clash), with the reason."""
    import warnings

    from kdistill.core.registry import PluginWarning, get_registry

    try:
        with warnings.catch_warnings():  # the problems are listed below, not warned twice
            warnings.simplefilter("ignore", PluginWarning)
            reg = get_registry()
    except KdistillError as exc:
        _fail(exc)
    from kdistill.core.registry import SINGULAR

    rows = [(SINGULAR[r.kind], r.name, f"{r.package} {r.version}", r.description) for r in reg.entries()]
    widths = [max(len(row[i]) for row in rows + [("kind", "name", "package", "")]) for i in range(3)]
    click.echo(f"{'kind':<{widths[0]}}  {'name':<{widths[1]}}  {'package':<{widths[2]}}  description")
    for row in rows:
        click.echo(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")
    if reg.problems:
        click.echo("\nskipped:")
        rows = [(p.status, p.plugin, f"{p.package} {p.version}", p.reason) for p in reg.problems]
        widths = [max(len(row[i]) for row in rows + [("status", "plugin", "package", "")]) for i in range(3)]
        click.echo(f"{'status':<{widths[0]}}  {'plugin':<{widths[1]}}  {'package':<{widths[2]}}  reason")
        for row in rows:
            click.echo(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}")


def _add_nn_commands() -> None:
    from kdistill.nn.commands import baseline, report

    main.add_command(baseline)
    main.add_command(report)


_add_nn_commands()


if __name__ == "__main__":
    main()
