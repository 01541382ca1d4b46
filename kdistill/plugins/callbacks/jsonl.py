"""A run callback that logs every step as one JSON line (a minimal tracker)."""

from __future__ import annotations

import json
from pathlib import Path

import attrs

from kdistill.core.loop import RunHook


@attrs.define(kw_only=True)
class JSONLinesLog(RunHook):
    """Appends ``{"step", "loss", "lr", "ridge", "seconds"[, "eval_acc"]}`` per step to
    ``path`` (relative paths are relative to the run directory when the run has one,
    else to the working directory), opened for appending at each step (a resumed run
    appends the steps after its checkpoint again). The default ``steps.jsonl`` in a run
    directory is one of the run's files (``--overwrite`` removes it).

    Args:
        path: the log file (default ``steps.jsonl``).
    """

    path: str = attrs.field(default="steps.jsonl", validator=attrs.validators.instance_of(str))

    def target(self, run) -> Path:
        p = Path(self.path)
        return p if p.is_absolute() or run.run_dir is None else Path(run.run_dir) / p

    def after_step(self, run, info):
        line = {"step": info["step"], "loss": info["loss"], "lr": run.guard.lr, "ridge": run.guard.ridge,
                "seconds": round(run.seconds(), 6)}
        if "eval_acc" in info:
            line["eval_acc"] = info["eval_acc"]
        with open(self.target(run), "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
