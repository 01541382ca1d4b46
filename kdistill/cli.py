"""Command line: ``kdistill distill``, ``evaluate`` (KRR or ``--nn``), ``baseline``, ``report``, ``plugins``.

Messages go through the ``kdistill`` logger (:mod:`kdistill.log`) at the level of
``kdistill -v/-q``; long phases show tqdm bars on stderr (:mod:`kdistill.runtime.progress`);
``--json`` (``distill``, ``evaluate``, ``plugins``) prints one JSON object on stdout and
nothing else there.
"""

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
    "dtype", "seed", "eval_every", "preprocess", "checkpoint_every", "threads", "device",
)


def _fail(exc: Exception) -> None:
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(2)


def _say(text: str, as_json: bool = False, result: bool = False) -> None:
    """Human output on stdout: none with ``--json``; with ``-q`` only ``result`` lines."""
    from kdistill.log import cli_verbosity

    if as_json or (not result and cli_verbosity() < 0):
        return
    click.echo(text)


def _print_json(obj: dict) -> None:
    """The one JSON object of ``--json`` on stdout."""
    click.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def _bars(enabled: bool):
    """The progress reporter of a command: tqdm bars on stderr unless ``--no-progress``
    or ``-q``."""
    from kdistill.log import cli_verbosity
    from kdistill.runtime.progress import BarReporter

    return BarReporter() if enabled and cli_verbosity() >= 0 else None


device_option = click.option(
    "--device", help="Where to compute: auto (default: the accelerators the backend sees, else the CPU), cpu, "
                     "cuda, tpu or one device such as cuda:1. JAX uses every device of the platform as one "
                     "data-parallel mesh; torch uses one device per process (torchrun).")


def distributed_options(fn):
    """``--coordinator``, ``--num-processes``, ``--process-id``: join a multi-process JAX run
    (:func:`kdistill.runtime.distributed.init_jax_distributed`); also read from
    ``KDISTILL_COORDINATOR``, ``KDISTILL_NUM_PROCESSES``, ``KDISTILL_PROCESS_ID``."""
    fn = click.option("--process-id", type=int, envvar="KDISTILL_PROCESS_ID",
                      help="With --coordinator HOST:PORT: this process's id, 0 .. N-1.")(fn)
    fn = click.option("--num-processes", type=int, envvar="KDISTILL_NUM_PROCESSES",
                      help="With --coordinator HOST:PORT: the number of processes N.")(fn)
    return click.option(
        "--coordinator", envvar="KDISTILL_COORDINATOR",
        help="JAX on several processes or hosts: HOST:PORT of process 0's coordinator (with --num-processes "
             "and --process-id), or 'auto' under Slurm/mpirun. torch needs no flag: launch with torchrun.")(fn)


def _join(coordinator, num_processes, process_id) -> None:
    """Join the multi-process JAX run the flags name (none: a single process)."""
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            from kdistill.errors import ConfigError

            raise ConfigError("--num-processes/--process-id need --coordinator HOST:PORT (JAX); torch runs are "
                              "launched with torchrun instead")
        return
    from kdistill.runtime.distributed import init_jax_distributed

    init_jax_distributed(coordinator, num_processes, process_id)


json_option = click.option("--json", "as_json", is_flag=True, default=False,
                           help="Print one JSON object (the summary) on stdout and nothing else there.")


@click.group()
@click.option("-v", "--verbose", count=True, help="More messages (-v: debug details).")
@click.option("-q", "--quiet", count=True,
              help="Fewer: -q hides progress bars and notes (warnings, errors and the result stay); "
                   "-qq also warnings.")
@click.version_option(package_name="kdistill")
@click.pass_context
def main(ctx, verbose: int = 0, quiet: int = 0) -> None:
    """kdistill: kernel-based dataset distillation (KIP, RFAD, Label Solve).

    KIP learns a small support set through kernel ridge regression under an exact
    kernel (FC or ConvNet NTK/NNGP); RFAD is KIP with a random-feature ConvNet kernel
    (`--kernel rf-convnet`); Label Solve solves for the labels of real images.
    Messages go to stderr through Python logging (-v/-q), results to stdout (--json
    for machine-readable output).
    """
    from kdistill.log import configure_cli

    ctx.obj = {"verbosity": verbose - quiet}
    configure_cli(verbose - quiet)


def config_field_docs() -> dict[str, str]:
    """``{field: description}`` for every :class:`~kdistill.core.config.DistillConfig`
    field, in field order, from the class's ``Attributes:`` docstring (fields documented
    together, ``a, b: ...``, share the text; an undocumented field gets ``""``)."""
    import re

    import attrs

    from kdistill.core.config import DistillConfig

    docs: dict[str, str] = {}
    names: list[str] = []
    lines = (DistillConfig.__doc__ or "").split("Attributes:", 1)[-1].splitlines()
    for line in lines:
        m = re.match(r"^ {8}([a-z_]+(?:, [a-z_]+)*): (.*)$", line)
        if m:
            names = m.group(1).split(", ")
            for name in names:
                docs[name] = m.group(2).strip()
        elif names and re.match(r"^ {12}\S", line):
            for name in names:
                docs[name] += " " + line.strip()
        elif line.strip():
            names = []
    return {f.name: docs.get(f.name, "").replace("``", "") for f in attrs.fields(DistillConfig)}


def _config_fields_help() -> str:
    """The epilog of ``distill --help``: every config field with its default and doc."""
    import textwrap

    import attrs

    from kdistill.core.config import DistillConfig

    defaults = DistillConfig().to_dict()
    out = ["Config fields (keys of --config TOML files; set any with -s KEY=VALUE, components' "
           "parameters with -s kernel.depth=2):", ""]
    docs = config_field_docs()
    for f in attrs.fields(DistillConfig):
        default = defaults.get(f.name)
        shown = json.dumps(default, default=str) if not isinstance(default, dict) else \
            json.dumps(default.get("name", default))
        text = f"{f.name} (default {shown}): {docs[f.name]}".rstrip(": ")
        out.append("\b")
        out.append(textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent="      "))
        out.append("")
    return "\n".join(out)


@main.command(epilog=_config_fields_help())
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
@device_option
@distributed_options
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
@click.option("--progress/--no-progress", default=True,
              help="Progress bars on stderr for the steps and every long phase (also off with -q).")
@json_option
def distill(config_path, sets, out_dir, grid, progress, resume_dir, overwrite=False, as_json=False,
            coordinator=None, num_processes=None, process_id=None, **flags: Any) -> None:
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

    Output: a header and the result on stdout; --json instead prints one JSON object
    (run_dir, files, config, metrics as in metrics.json).
    """
    try:
        _join(coordinator, num_processes, process_id)
    except KdistillError as exc:
        _fail(exc)
    with contextlib.ExitStack() as stack:  # holds the run directory's lock
        _distill(stack, config_path, sets, out_dir, grid, progress, resume_dir, overwrite, flags, as_json)


class _WriteFailed(Exception):
    """Writing a finished run's files failed (the cause is chained)."""


def _distill(stack, config_path, sets, out_dir, grid, progress, resume_dir, overwrite, flags, as_json=False) -> None:
    from kdistill.api import make_config, run
    from kdistill.io.checkpoint import read_checkpoint
    from kdistill.errors import ConfigError
    from kdistill.log import logger
    from kdistill.runtime.distributed import is_primary, process_count
    from kdistill.runtime.progress import use_progress

    if not is_primary():  # the other processes of a multi-process run compute silently
        progress, as_json = False, True
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
                logger.info(notice)
    except KdistillError as exc:
        _fail(exc)
    if out_dir is None and resume_dir is None and process_count() > 1:
        _fail(ConfigError(f"a run of {process_count()} processes needs --out RUN_DIR, the one directory they share "
                          "(a default name made of the time could differ between them)"))
    default_out = f"runs/{cfg.dataset}-{cfg.method}-ipc{cfg.ipc}-{time.strftime('%Y%m%d-%H%M%S')}"
    out = Path(resume_dir or out_dir or default_out)

    def on_start(cfg, data, removed):
        if removed:
            logger.info(f"--overwrite: removed the previous run's {', '.join(removed)} from {out}")
        _say(
            f"{cfg.method} on {cfg.dataset} ({len(data.x_train)} train / {len(data.x_test)} test), "
            f"ipc={cfg.ipc}, kernel={cfg.kernel.name} {cfg.kernel.params}, backend={cfg.backend}"
            + (f"; resuming {out} after step {resumed_step}" if resume_dir is not None else ""), as_json
        )

    def write(result):
        try:
            _write_outputs(out, cfg, result, grid)
        except (KdistillError, OSError) as exc:
            raise _WriteFailed(str(exc)) from exc

    try:
        with use_progress(_bars(progress)):  # the steps and every long phase (kdistill.runtime.progress)
            result = run(cfg, run_dir=out, resume=resume_dir is not None, overwrite=overwrite,
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
    m = result.metrics
    if not is_primary():
        return
    if as_json:
        files = [name for name in ("distilled.npz", "config.toml", "metrics.json", "grid.png")
                 if (out / name).is_file()]
        _print_json({"command": "distill", "run_dir": str(out), "artifact": str(out / "distilled.npz"),
                     "files": [str(out / name) for name in files], "config": cfg.to_dict(), "metrics": m})
        return
    if m.get("recoveries"):
        last = m["recoveries"][-1]
        _say(f"numerical recoveries: {len(m['recoveries'])} (now ridge={last['ridge']:g}, lr={last['lr']:g})")
    init = "" if m.get("init_acc") is None else f"; initial support set {100 * m['init_acc']:.2f}%"
    n_test = f" ({m['n_test']} test images)" if m.get("n_test") and cfg.test_size else ""
    best = "" if m.get("best_step") is None else (
        f"best validation accuracy {100 * m['best_valid_acc']:.2f}% at step {m['best_step']} of {m['steps_run']}\n"
    )
    vs = "" if m.get("random_acc") is None else f"  vs  random real subset {100 * m['random_acc']:.2f}%"
    took = "" if m.get("total_seconds") is None else f"  ({m['total_seconds']:.1f} s)"
    _say(f"{best}KRR test accuracy{n_test}: distilled {100 * m['distilled_acc']:.2f}%{vs}{init}{took}", result=True)
    _say(f"wrote {out}/", result=True)


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
              help="Result JSON (default: beside the artifact, eval_<kernel>.json for KRR, "
                   "nn_<model>.json with --nn).")
@click.option("--progress/--no-progress", "nn_progress", default=True,
              help="Progress bar on stderr (also off with -q).")
@threads_option
@device_option
@distributed_options
@allow_data_mismatch_option
@json_option
def evaluate(artifact, kernel, data_dir, backend, sets, nn_model=None, protocol_file=None, nn_sets=(),
             seeds=None, nn_out=None, nn_progress=True, threads=None, allow_data_mismatch=False,
             as_json=False, device=None, coordinator=None, num_processes=None, process_id=None) -> None:
    """KRR test accuracy of ARTIFACT (a distilled.npz or its run directory); with
    --nn convnet|fc, finite-network test accuracy (mean ± std over seeds) instead.

    The KRR result is written (sealed JSON) to eval_<kernel>.json beside the artifact
    (or --out), under the run directory's lock; --json prints it on stdout. KRR
    evaluation splits the test images over the devices of a JAX mesh, the processes of
    a torchrun launch or of --coordinator (process 0 writes and prints)."""
    from kdistill.runtime.distributed import is_primary

    try:
        _join(coordinator, num_processes, process_id)
    except KdistillError as exc:
        _fail(exc)
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
                                threads, allow_data_mismatch, as_json=as_json, device=device or "auto")
        return
    from kdistill.io.artifact import load
    from kdistill.log import logger
    from kdistill.runtime.evaluate import evaluate_artifact
    from kdistill.runtime.progress import use_progress

    path = Path(artifact)
    if path.is_dir():
        path = path / "distilled.npz"
    primary = is_primary()
    with contextlib.ExitStack() as stack:
        if nn_out is None and path.parent.is_dir() and primary:  # eval_<kernel>.json goes into the run directory
            from kdistill.nn.commands import run_dir_lock

            try:
                stack.enter_context(run_dir_lock(path.parent))
            except KdistillError as exc:
                _fail(exc)
        if device:
            sets = (*sets, f"device={device}")
        res, target = _evaluate_krr(path, kernel, data_dir, backend, sets, nn_out, nn_progress and primary,
                                    threads, allow_data_mismatch, logger, load, evaluate_artifact, use_progress)
    from kdistill.runtime.distributed import wait_for_all

    wait_for_all()  # the others leave once process 0 has written the result
    if not primary:
        return
    if as_json:
        _print_json(res)
        return
    _say(
        f"{res['n_support']} support examples, kernel {res['eval_kernel']}, {res['n_test']} test images\n"
        f"KRR test accuracy: distilled {100 * res['distilled_acc']:.2f}%  vs  random real subset "
        f"{100 * res['random_acc']:.2f}%", result=True
    )
    _say(f"wrote {target}", result=True)


def _evaluate_krr(path, kernel, data_dir, backend, sets, out, progress, threads, allow_data_mismatch, logger, load,
                  evaluate_artifact, use_progress):
    """``kdistill evaluate`` without --nn: the result dict and the path of its sealed JSON."""
    from kdistill.runtime.evaluate import write_krr_result

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
        DistillConfig.from_dict(art.config).with_overrides(overrides, notices)  # validates -s values
        for notice in notices:
            logger.info(notice)
        # both passes (distilled set, random real subset) advance the bar in kernel rows
        # (support + test), per tile for slow kernels, so the remaining-time estimate holds
        with use_progress(_bars(progress)):
            res, target = write_krr_result(path, overrides, check_data=not allow_data_mismatch, out=out)
    except (KdistillError, OSError) as exc:
        _fail(exc)
    return res, target


def component_params(factory) -> list[dict[str, Any]]:
    """The parameters of a registered component: ``[{"name", "type", "default"}]``.

    From the attrs fields of a component class (those set at construction), else from
    the signature of a factory function (a dataset loader, a method); ``type`` is the
    annotation as written (``""`` if none), ``default`` the default value (JSON-safe:
    numbers, strings, booleans, None, lists; others as their repr) or ``"required"``
    when there is none. Methods' uniform arguments (config, comps, data, ...) and
    ``*args``/``**kwargs`` are left out.
    """
    import inspect

    import attrs

    def show(value):
        if value is attrs.NOTHING or value is inspect.Parameter.empty:
            return "required"
        if isinstance(value, attrs.Factory):
            try:
                value = value.factory() if not value.takes_self else "(computed)"
            except Exception:
                return "(computed)"
        try:
            json.dumps(value)
            return value
        except (TypeError, ValueError):
            return repr(value)

    def type_name(t) -> str:
        if t is None or t is inspect.Parameter.empty:
            return ""
        return t if isinstance(t, str) else getattr(t, "__name__", str(t))

    if isinstance(factory, type) and attrs.has(factory):
        return [{"name": f.alias or f.name, "type": type_name(f.type), "default": show(f.default)}
                for f in attrs.fields(factory) if f.init]
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return []
    skip = {"config", "comps", "data", "callback", "run_dir", "resume", "self"}
    return [{"name": n, "type": type_name(p.annotation), "default": show(p.default)}
            for n, p in sig.parameters.items()
            if n not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def _params_text(params: list[dict[str, Any]]) -> str:
    return ", ".join(f"{p['name']}: {p['type'] or 'any'} = {json.dumps(p['default'], default=str)}"
                     if p["default"] != "required" else f"{p['name']}: {p['type'] or 'any'} (required)"
                     for p in params)


@main.command()
@json_option
def plugins(as_json: bool = False) -> None:
    """List every component of every kind (backends, kernels, solvers, losses, optimizers,
    schedules, datasets, architectures, methods, callbacks), where it comes from and its
    parameters with types and defaults; then any plugin that was skipped (broken) or
    component refused (name clash), with the reason. --json: the same as one JSON
    object, {"components": {kind: [{name, package, version, plugin, builtin,
    description, params: [{name, type, default}]}]}, "problems": [...]}."""
    import warnings

    from kdistill.core.registry import PluginWarning, get_registry

    try:
        with warnings.catch_warnings():  # the problems are listed below, not warned twice
            warnings.simplefilter("ignore", PluginWarning)
            reg = get_registry()
    except KdistillError as exc:
        _fail(exc)
    from kdistill.core.registry import KINDS, SINGULAR

    if as_json:
        comps: dict[str, list] = {kind: [] for kind in KINDS}
        for r in reg.entries():
            comps.setdefault(r.kind, []).append({
                "name": r.name, "package": r.package, "version": r.version, "plugin": r.plugin,
                "builtin": r.builtin, "description": r.description, "params": component_params(r.factory)})
        _print_json({"command": "plugins", "components": comps,
                     "problems": [{"status": p.status, "plugin": p.plugin, "package": p.package,
                                   "version": p.version, "reason": p.reason} for p in reg.problems]})
        return
    rows = [(SINGULAR[r.kind], r.name, f"{r.package} {r.version}", r.description) for r in reg.entries()]
    params = [_params_text(component_params(r.factory)) for r in reg.entries()]
    widths = [max(len(row[i]) for row in rows + [("kind", "name", "package", "")]) for i in range(3)]
    click.echo(f"{'kind':<{widths[0]}}  {'name':<{widths[1]}}  {'package':<{widths[2]}}  description")
    for row, text in zip(rows, params):  # one line per component (scripts split them)
        click.echo(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}"
                   + (f"  [{text}]" if text else ""))
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

from kdistill.interop.commands import add_interop_commands  # noqa: E402

add_interop_commands(main)


if __name__ == "__main__":
    main()
