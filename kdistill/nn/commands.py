"""CLI pieces for finite-network evaluation, baselines and reports.

``kdistill evaluate ARTIFACT --nn convnet|fc`` delegates to :func:`evaluate_nn_command`;
``kdistill baseline`` and ``kdistill report`` are defined here and added to the main
group in :mod:`kdistill.cli`.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from kdistill.errors import KdistillError
from kdistill.runtime.threads import apply_threads


#: ``--threads`` of every command that computes (distill, evaluate, baseline).
threads_option = click.option(
    "--threads", type=int,
    help="Threads for torch, BLAS and (1) XLA. Default: the cores this process may use; "
         "1 is often much faster when other work shares the cores.")


def _fail(exc: Exception) -> None:
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(2)


def _warn_old_thread_variable() -> None:
    from kdistill.log import logger

    if "KDISTILL_TORCH_THREADS" in os.environ:
        logger.warning("KDISTILL_TORCH_THREADS is no longer read; use --threads N (torch, BLAS and XLA alike)")


def _say(text: str, as_json: bool = False, result: bool = False) -> None:
    """Human output on stdout: none with ``--json``; with ``-q`` only ``result`` lines."""
    from kdistill.log import cli_verbosity

    if as_json or (not result and cli_verbosity() < 0):
        return
    click.echo(text)


def format_mean_std(values: list[float], mean: float, std: float) -> str:
    """``"97.20 ± 0.31%"`` in percent, or ``"97.20%"`` for a single value (no spread to show)."""
    if len(values) <= 1:
        return f"{100 * mean:.2f}%"
    return f"{100 * mean:.2f} ± {100 * std:.2f}%"


def run_dir_lock(run_dir: Path):
    """The run directory's exclusive lock (:class:`kdistill.io.rundir.RunDirectory`,
    ``update`` mode), held while a command adds files to a run: not while a run or
    another command writes there (:class:`RunDirectoryInUse` names its PID)."""
    from kdistill.io.rundir import RunDirectory

    return RunDirectory(run_dir, mode="update", what="run directory")


def _artifact_path(artifact: str) -> Path:
    path = Path(artifact)
    return path / "distilled.npz" if path.is_dir() else path


def _json_kind(value) -> str:
    """What a decoded JSON/TOML value is, in JSON's words (array, string, number, ...)."""
    for kind, name in ((bool, "boolean"), (list, "array"), (str, "string"), ((int, float), "number")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def read_protocol_file(protocol_file: str | os.PathLike):
    """The NNProtocol in a JSON or TOML file (``.toml``: TOML, anything else: JSON)
    holding a protocol table, or a result file (``nn_*.json``) holding ``protocol``.

    Raises:
        ConfigError: the file cannot be read or decoded (not UTF-8, not JSON/TOML),
            its top level is not a table/object (e.g. a JSON list or string), or the
            protocol in it is invalid (the message names the file).
    """
    from kdistill.errors import ConfigError
    from kdistill.nn.protocol import NNProtocol

    path = Path(protocol_file)
    kind = "TOML" if path.suffix == ".toml" else "JSON"
    try:
        text = path.read_bytes().decode("utf-8")
        if kind == "TOML":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except OSError as exc:
        raise ConfigError(f"cannot read --protocol file {str(path)!r}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--protocol file {str(path)!r} is not UTF-8 text (byte {exc.start}); "
                          f"pass a {kind} protocol or an nn_*.json result") from exc
    except ValueError as exc:  # json.JSONDecodeError, tomllib.TOMLDecodeError
        raise ConfigError(f"--protocol file {str(path)!r} is not valid {kind}: {exc}") from exc
    if isinstance(data, dict) and "protocol" in data:
        data = data["protocol"]
    if not isinstance(data, dict):
        raise ConfigError(
            f"--protocol file {str(path)!r} must hold a {kind} object of protocol fields (e.g. "
            f'{{"model": "convnet", "width": 128}}) or an nn_*.json result, got a {kind} '
            f"{_json_kind(data)}")
    try:
        return NNProtocol.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"--protocol file {str(path)!r}: {exc}") from exc


def load_protocol(model: str, protocol_file: str | None, nn_sets: tuple[str, ...], seeds: str | None):
    """NNProtocol from defaults for ``model``, an optional JSON/TOML file (a protocol
    dict, or a result file holding ``protocol``), ``-p key=value`` overrides and ``--seeds``."""
    from kdistill.errors import ConfigError
    from kdistill.nn.protocol import NNProtocol

    protocol = NNProtocol.default(model)
    if protocol_file:
        protocol = read_protocol_file(protocol_file)
        if protocol.model != model:
            raise ConfigError(f"--nn {model} but the protocol file is for model {protocol.model!r}")
    if seeds:
        try:
            protocol = protocol.with_overrides({"seeds": [int(s) for s in seeds.split(",")]})
        except ValueError as exc:
            raise ConfigError(f"--seeds must be comma-separated integers, got {seeds!r}") from exc
    return protocol.with_overrides(list(nn_sets)) if nn_sets else protocol


#: ``--allow-data-mismatch`` of the commands that load an artifact's dataset.
allow_data_mismatch_option = click.option(
    "--allow-data-mismatch", is_flag=True,
    help="Evaluate even if the dataset loaded now differs from the one ARTIFACT was distilled from "
         "(sizes, pixels or labels); a warning names the differences.")


def evaluate_nn_command(artifact: str, model: str, protocol_file, nn_sets, seeds, data_dir, out, progress,
                        threads: int | None = None, allow_data_mismatch: bool = False, as_json: bool = False,
                        device: str = "auto") -> dict:
    """Train the protocol's networks on ARTIFACT, print mean ± std (just the accuracy for
    one seed), write the JSON result; ``as_json``: print the result as JSON on stdout
    instead (nothing else there). No bar with ``progress=False`` or ``kdistill -q``.

    The result goes to ``--out`` or ``<artifact dir>/nn_<model>.json``. ``threads`` sets
    torch's and BLAS's thread count (:func:`kdistill.runtime.threads.apply_threads`; 1 is
    fastest for small networks on a loaded machine; numbers are reproducible per
    thread count, which the result records). Data that differ from those ARTIFACT was
    distilled from are refused unless ``allow_data_mismatch``; a diverged network is an
    error (no accuracy, no file). ``device``: where the networks train
    (:func:`kdistill.nn.train.resolve_device`; ``"auto"``: a CUDA GPU if torch sees one,
    else the CPU); the result records the one used (``"device"``). A malformed or absent
    device is an error (exit 2) before any data is loaded.
    """
    from tqdm.auto import tqdm

    import warnings

    from kdistill.io.artifact import load
    from kdistill.runtime.evaluate import DataMismatchWarning
    from kdistill.io.safeio import write_json_sealed
    from kdistill.nn.train import evaluate_nn

    path = _artifact_path(artifact)
    _warn_old_thread_variable()
    try:
        import torch  # noqa: F401  (imported first so that apply_threads sets its thread count)
    except ImportError as exc:
        _fail(f"finite-network evaluation needs PyTorch ({exc}); install it with: pip install -e \".[torch]\"")
    try:
        apply_threads(threads)
        from kdistill.nn.train import resolve_device

        dev = resolve_device(device)
        art = load(path)
        protocol = load_protocol(model, protocol_file, nn_sets, seeds)
        _say(f"protocol: {protocol.describe()}", as_json)
        total = protocol.steps * len(protocol.seeds)
        from kdistill.log import cli_verbosity, logger

        show = progress and cli_verbosity() >= 0
        with tqdm(total=total, desc=f"nn {model}", unit="step", disable=not show, dynamic_ncols=True) as bar:
            def cb(i, done):
                bar.update(i * protocol.steps + done - bar.n)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", DataMismatchWarning)
                res = evaluate_nn(art, protocol, overrides={"data_dir": data_dir} if data_dir else None,
                                  progress=cb, check_data=not allow_data_mismatch, device=dev)
            for w in caught:
                logger.warning(str(w.message))
        res["artifact"] = str(path)
        res["command"] = " ".join(["kdistill", *sys.argv[1:]]) if sys.argv else ""
        target = Path(out) if out else path.parent / f"nn_{model}.json"
        write_json_sealed(target, res)
    except (KdistillError, OSError, ValueError) as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps({"command": "evaluate", **res, "result_file": str(target)}, indent=2, default=str))
        return res
    accs = ", ".join(f"{100 * a:.2f}" for a in res["test_acc"])
    n_seeds = len(res["test_acc"])
    each = f"  [{accs}]" if n_seeds > 1 else ""
    _say(f"{res['support']['n']} support examples, {res['n_test']} test images, {n_seeds} "
         f"seed{'s' if n_seeds != 1 else ''}, on {res['device']}", as_json)
    _say(f"NN ({model}) test accuracy: {format_mean_std(res['test_acc'], res['mean'], res['std'])}"
         f"{each}  ({res['seconds']:.0f} s)\nwrote {target}", result=True)
    return res


@click.command()
@click.argument("artifact", type=click.Path(dir_okay=True))
@click.option("--kind", "kinds", multiple=True, type=click.Choice(["random", "kmeans", "herding"]),
              help="Baseline(s) to build (repeatable). Default: all three.")
@click.option("--seed", type=int, help="Baseline seed (default: the artifact's seed).")
@click.option("--data-dir", help="Where the dataset's files are (default: as recorded in the run).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="Directory for <kind>/distilled.npz. Default: <artifact dir>/baselines.")
@threads_option
@allow_data_mismatch_option
@click.option("--progress/--no-progress", default=True, help="Progress bar on stderr (also off with -q).")
@click.option("--krr/--no-krr", default=True,
              help="Also score each baseline by KRR under the run's evaluation kernel, as `kdistill evaluate "
                   "DIR` does, writing DIR/eval_<kernel>.json (the report's KRR column). Default: on.")
def baseline(artifact, kinds, seed, data_dir, out_dir, threads, allow_data_mismatch, progress=True,
             krr=True) -> None:
    """Build random / k-means / herding baselines the size of ARTIFACT's support set.

    Each is a distilled.npz in the artifact's preprocessed space with centered one-hot
    labels, so `kdistill evaluate DIR --nn convnet` scores it exactly like the
    distilled set; `kdistill report RUN_DIR` then shows them side by side. With --krr
    (default) each is also scored by KRR with the run's evaluation kernel, solver, ridge
    and test_size (eval_<kernel>.json beside it).
    """
    from kdistill.baselines import BASELINES, baselines_for
    from kdistill.io.artifact import load
    from kdistill.log import cli_verbosity
    from kdistill.runtime.progress import BarReporter, use_progress

    path = _artifact_path(artifact)
    try:
        with contextlib.ExitStack() as stack:
            if out_dir is None and path.parent.is_dir():  # baselines/ goes into the run directory
                stack.enter_context(run_dir_lock(path.parent))
            apply_threads(threads)
            art = load(path)
            # a bar per class and kind (k-means and herding take a while on full datasets)
            with use_progress(BarReporter() if progress and cli_verbosity() >= 0 else None):
                sets = baselines_for(art, kinds or BASELINES, seed=seed,
                                     overrides={"data_dir": data_dir} if data_dir else None,
                                     check_data=not allow_data_mismatch)
            root = Path(out_dir) if out_dir else path.parent / "baselines"
            for kind, ds in sets.items():
                ds.save(root / kind / "distilled.npz")
                click.echo(f"{kind}: {len(ds.images)} images ({ds.metrics['seconds']:.1f} s) -> "
                           f"{root / kind}/distilled.npz")
            if krr:
                from kdistill.runtime.evaluate import write_krr_result

                for kind in sets:
                    with use_progress(BarReporter() if progress and cli_verbosity() >= 0 else None):
                        res, target = write_krr_result(root / kind / "distilled.npz",
                                                       {"data_dir": data_dir} if data_dir else {},
                                                       check_data=not allow_data_mismatch)
                    click.echo(f"{kind}: KRR test accuracy {100 * res['distilled_acc']:.2f}% on {res['n_test']} "
                               f"test images -> {target}")
    except (KdistillError, OSError) as exc:
        _fail(exc)


@click.command()
@click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--title", help="Page title.")
def report(run_dir, title) -> None:
    """Write RUN_DIR/report.html (self-contained) and report.md: image grid, curves,
    metrics against baselines, config and provenance.

    An nn_*.json measured on a different support set than the distilled.npz beside it
    (e.g. left from an earlier run) is not shown; a warning says so, here on stderr
    and at the top of both pages."""
    import warnings

    from kdistill.report import ReportWarning, build_report

    try:
        with run_dir_lock(Path(run_dir)), warnings.catch_warnings():
            warnings.simplefilter("ignore", ReportWarning)  # printed below, once each
            paths = build_report(run_dir, title=title)
    except (KdistillError, OSError) as exc:
        _fail(exc)
    from kdistill.log import logger

    for message in paths["warnings"]:
        logger.warning(message)
    click.echo(f"wrote {paths['html']} and {paths['markdown']}")
