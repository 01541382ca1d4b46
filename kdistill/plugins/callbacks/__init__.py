"""Built-in run callbacks, registered through the ``kdistill`` entry-point group."""

from __future__ import annotations

from kdistill.core.hookspecs import hookimpl
from kdistill.plugins.callbacks.jsonl import JSONLinesLog


@hookimpl
def kdistill_register_callbacks(register):
    register("jsonl", JSONLinesLog, "append one JSON line per step (step, loss, eval_acc, lr, seconds) to a file")
