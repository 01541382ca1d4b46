"""A run callback logging to MLflow (``callbacks = [{name = "mlflow"}]``): params, per-step
metrics and the distilled artifact, by default into a local file store in the run
directory (``RUN_DIR/mlruns``; view with ``mlflow ui --backend-store-uri RUN_DIR/mlruns``).
Needs ``mlflow-skinny`` (``pip install 'kdistill[tracking]'``)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import attrs

from kdistill.core.loop import RunHook
from kdistill.errors import ConfigError
from kdistill.runtime.tracking import StepClock, final_record, flatten_config, require, step_record


@contextlib.contextmanager
def _file_store_allowed(uri: str):
    """MLflow 3 keeps its file store in maintenance mode and refuses to open one unless
    ``MLFLOW_ALLOW_FILE_STORE=true``; for a ``file:`` URI this sets it while the client
    opens the store (the store is opened once per client) unless the user set it."""
    if not uri.startswith("file:") or "MLFLOW_ALLOW_FILE_STORE" in os.environ:
        yield
        return
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        os.environ.pop("MLFLOW_ALLOW_FILE_STORE", None)


@attrs.define(kw_only=True)
class MLflowLog(RunHook):
    """One MLflow run per process of a kdistill run:

    - params: the run config flattened (``kernel.name``, ``kernel.depth``, ``lr``, ...);
    - metrics per step: ``loss``, ``lr``, ``step_seconds`` (wall seconds since the
      previous step, evaluation included) and, on evaluation steps, ``eval_acc``
      (KRR accuracy in [0, 1]), each at MLflow step = the KIP step; after the final
      evaluation ``final_distilled_acc``, ``final_random_acc``, ... at the last step;
    - artifacts at the end: ``distilled.npz`` (the returned set, as ``kdistill.load``
      reads it) and ``metrics.json``; the run is then marked FINISHED.

    The default file store: MLflow 3 has put it in maintenance mode (it refuses to open
    one unless ``MLFLOW_ALLOW_FILE_STORE=true``); this callback allows it for its own
    client only. For another store pass its URI (``sqlite:///...`` needs the full
    ``mlflow`` package; ``http://host:5000`` a tracking server).

    Tags: ``kdistill.run_dir`` and, for a resumed run (which starts a new MLflow run),
    ``kdistill.resumed_after_step``. A run that stops with an error stays RUNNING.

    Args:
        tracking_uri: MLflow tracking URI; empty (default): the file store
            ``RUN_DIR/mlruns`` (``./mlruns`` without a run directory). A relative
            path without a scheme is taken relative to the run directory.
        experiment: experiment name, created if missing (default ``kdistill``).
        run_name: the MLflow run's name; empty: the run directory's name.
    Raises:
        ConfigError: when built, if ``mlflow`` (``mlflow-skinny``) is missing; the
            message names the ``tracking`` extra.
    """

    tracking_uri: str = attrs.field(default="", validator=attrs.validators.instance_of(str))
    experiment: str = attrs.field(default="kdistill", validator=attrs.validators.instance_of(str))
    run_name: str = attrs.field(default="", validator=attrs.validators.instance_of(str))
    _client: object = attrs.field(init=False, default=None, repr=False)
    _run_id: str | None = attrs.field(init=False, default=None, repr=False)
    _clock: StepClock = attrs.field(init=False, factory=StepClock, repr=False)

    def __attrs_post_init__(self) -> None:
        require("mlflow.tracking", "mlflow", "mlflow-skinny")

    def uri(self, run) -> str:
        """The tracking URI for ``run`` (see ``tracking_uri``)."""
        base = Path(run.run_dir) if run.run_dir is not None else Path.cwd()
        if not self.tracking_uri:
            return (base / "mlruns").resolve().as_uri()
        if "://" in self.tracking_uri or self.tracking_uri.startswith("file:"):
            return self.tracking_uri
        p = Path(self.tracking_uri)
        return (p if p.is_absolute() else base / p).resolve().as_uri()

    def _start(self, run, resumed_after: int) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = self.uri(run)
        try:
            with _file_store_allowed(uri):
                client = MlflowClient(tracking_uri=uri)
                exp = client.get_experiment_by_name(self.experiment)
                exp_id = exp.experiment_id if exp is not None else client.create_experiment(self.experiment)
        except Exception as exc:  # MlflowException, OSError: say which store failed
            raise ConfigError(f"the 'mlflow' run callback cannot use the tracking store {uri!r}: "
                              f"{type(exc).__name__}: {exc}") from exc
        tags = {"kdistill.run_dir": str(run.run_dir) if run.run_dir is not None else ""}
        if run.resumed:
            tags["kdistill.resumed_after_step"] = str(resumed_after)
        name = self.run_name or (Path(run.run_dir).name if run.run_dir is not None else None)
        mlrun = client.create_run(exp_id, run_name=name, tags=tags)
        params = [Param(k, v) for k, v in flatten_config(run.config).items()]
        for i in range(0, len(params), 100):  # MLflow's batch limit is 100 params
            client.log_batch(mlrun.info.run_id, params=params[i:i + 100])
        self._client, self._run_id = client, mlrun.info.run_id

    def _log(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(self._run_id, metrics=[Metric(k, v, now, int(step)) for k, v in values.items()])

    def after_step(self, run, info):
        if self._client is None:
            self._start(run, info["step"] - 1)
        self._log(info["step"], step_record(run, info, self._clock))

    def after_run(self, run, result):
        if self._client is None:  # a resumed run that only evaluated again
            self._start(run, run.step)
        final = {f"final_{k}": v for k, v in final_record(result.metrics).items()}
        if final:
            self._log(run.step, final)
        with tempfile.TemporaryDirectory(prefix="kdistill-mlflow-") as tmp:
            result.save(Path(tmp) / "distilled.npz")
            (Path(tmp) / "metrics.json").write_text(json.dumps(result.metrics, indent=2, default=str))
            self._client.log_artifact(self._run_id, str(Path(tmp) / "distilled.npz"))
            self._client.log_artifact(self._run_id, str(Path(tmp) / "metrics.json"))
        self._client.set_terminated(self._run_id, "FINISHED")
        self._client, self._run_id = None, None
