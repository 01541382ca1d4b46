"""Built-in run callbacks, registered through the ``kdistill`` entry-point group."""

from __future__ import annotations

from kdistill.core.hookspecs import hookimpl
from kdistill.plugins.callbacks.jsonl import JSONLinesLog
from kdistill.plugins.callbacks.mlflow import MLflowLog
from kdistill.plugins.callbacks.tensorboard import TensorBoardLog


@hookimpl
def kdistill_register_callbacks(register):
    register("jsonl", JSONLinesLog, "append one JSON line per step (step, loss, eval_acc, lr, seconds) to a file")
    register("tensorboard", TensorBoardLog, "TensorBoard event files: loss, eval accuracy, learning rate, step "
             "seconds (needs kdistill[tracking])")
    register("mlflow", MLflowLog, "MLflow run (local file store RUN_DIR/mlruns by default): config params, "
             "per-step metrics, the artifact (needs kdistill[tracking])")
