"""A third-party run callback: one CSV row per KIP step (``step,loss,eval_acc,seconds``).

Registered as callback ``csv``: ``kdistill distill -s 'callbacks=[{name="csv", path="steps.csv"}]'``.
A relative ``path`` is taken in the run directory when the run has one.
"""

from __future__ import annotations

import csv
from pathlib import Path

import attrs

from kdistill.core.hookspecs import hookimpl
from kdistill.core.loop import RunHook


@attrs.define(kw_only=True)
class CSVLog(RunHook):
    """Appends ``step, loss, eval_acc (empty off evaluation steps), seconds`` per step."""

    path: str = "steps.csv"

    def after_step(self, run, info):
        p = Path(self.path)
        if not p.is_absolute() and run.run_dir is not None:
            p = Path(run.run_dir) / p
        new = not p.exists()
        with open(p, "a", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            if new:
                w.writerow(["step", "loss", "eval_acc", "seconds"])
            w.writerow([info["step"], repr(info["loss"]), "" if "eval_acc" not in info else repr(info["eval_acc"]),
                        f"{run.seconds():.6f}"])


@hookimpl
def kdistill_register_callbacks(register):
    register("csv", CSVLog, "one CSV row per step: step, loss, eval_acc, seconds (example plugin)")
