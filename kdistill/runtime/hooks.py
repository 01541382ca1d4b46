"""The run hooks :func:`kdistill.core.loop.drive` calls after every step of a KIP/RFAD run
(:class:`~kdistill.core.loop.RunHook`):

- :class:`Evaluation`: KRR accuracy every ``eval_every`` steps, on the test set or on
  the validation split (best support set kept, patience counted);
- :class:`CallbackHook`: a user's ``callback(info)`` (progress bars, tracking);
- :class:`Checkpoints`: ``checkpoint.npz`` every ``checkpoint_every`` steps and on
  SIGINT/SIGTERM (then :class:`~kdistill.errors.RunInterrupted`);
- :class:`StopConditions`: ``time_limit`` and ``patience``;
- :class:`ProgressHook`: the steps as the progress phase ``"kip"``
  (:mod:`kdistill.runtime.progress`: a bar on the CLI, or a user's ``progress`` callable).
"""

from __future__ import annotations

import signal
from typing import Any, Callable

import attrs

from kdistill.core.loop import Best, KIPRun, RunHook
from kdistill.errors import RunInterrupted
from kdistill.runtime.progress import Phase
from kdistill.runtime.progress import phase as progress_phase
from kdistill.runtime.support import score_support


@attrs.define
class Evaluation(RunHook):
    """KRR accuracy every ``eval_every`` steps and after the last one (``eval_acc`` in
    ``info``): on the first ``eval_test_size`` test examples, or, with a validation
    split, on it under ``valid_kernel`` (best support set kept, patience counted)."""

    def evaluate(self, run: KIPRun, step: int) -> float:
        config, comps, data = run.config, run.comps, run.data
        images, labels = run.current()
        if run.valid is None:
            limit = config.eval_test_size
            acc = score_support(comps.eval_kernel, comps, config, images, labels, data.x_test[:limit],
                                data.y_test[:limit])
        else:
            acc = score_support(comps.valid_kernel or comps.eval_kernel, comps, config, images, labels,
                                data.x_train[run.valid], data.y_train[run.valid])
            if run.best.acc is None or acc > run.best.acc:
                run.best = Best(params=run.params(), step=step, acc=acc, since=0)
            else:
                run.best.since += 1
        run.history["eval_step"].append(step)
        run.history["eval_acc"].append(acc)
        run.history["eval_seconds"].append(run.seconds())
        return acc

    def after_step(self, run, info):
        every, step = run.config.eval_every, info["step"]
        if every and (step % every == 0 or step == run.config.steps):
            info["eval_acc"] = self.evaluate(run, step)


@attrs.define
class CallbackHook(RunHook):
    """Calls ``callback(info)`` after every step (``step``, ``loss``, ``eval_acc`` on
    evaluation steps)."""

    callback: Callable[[dict], None]

    def after_step(self, run, info):
        self.callback(info)


@attrs.define
class Checkpoints(RunHook):
    """``checkpoint.npz`` every ``checkpoint_every`` steps and after the last step;
    on SIGINT/SIGTERM (recorded by ``stop``, a :class:`~kdistill.runtime.signals.StopRequest`)
    a checkpoint, then :class:`RunInterrupted`."""

    stop: Any

    def after_step(self, run, info):
        step, every, signum = info["step"], run.config.checkpoint_every, self.stop.signum  # the signal, once
        if signum is not None or (every and (step % every == 0 or step == run.config.steps)):
            path = run.save()
        if signum is not None:
            raise RunInterrupted(
                f"interrupted by {signal.Signals(signum).name} after step {step} of {run.config.steps}; "
                f"checkpoint written to {path}; continue with `kdistill distill --resume {run.run_dir}` "
                "(Python: kdistill.distill(run_dir=..., resume=True))",
                signum=signum, step=step, checkpoint=path,
            )


@attrs.define
class StopConditions(RunHook):
    """Ends the run after the step during which ``time_limit`` seconds passed (the last
    support set then gets its validation score too), or after ``patience``
    evaluations without a better validation accuracy."""

    evaluation: Evaluation

    def after_step(self, run, info):
        config, step = run.config, info["step"]
        out_of_time = bool(config.time_limit) and run.seconds() >= config.time_limit
        if out_of_time and run.valid is not None and run.history["eval_step"][-1:] != [step]:
            self.evaluation.evaluate(run, step)
        if out_of_time:
            run.stop_reason = "time_limit"
        elif config.patience and run.best.since >= config.patience:
            run.stop_reason = "patience"

    @staticmethod
    def already_met(run: KIPRun) -> bool:
        """A resumed run that had stopped by its time limit or patience takes no step."""
        config = run.config
        return (bool(config.time_limit) and run.elapsed >= config.time_limit) or bool(
            config.patience and run.best.since >= config.patience
        )


@attrs.define
class ProgressHook(RunHook):
    """Reports the steps of a run as the progress phase ``"kip"`` (``config.steps``
    steps; a resumed run starts at its step) with the step's ``loss`` and, on evaluation
    steps, ``eval_acc``. Add it after :class:`Evaluation`, which sets ``eval_acc``."""

    bar: Phase

    @classmethod
    def open(cls, run: KIPRun) -> "ProgressHook":
        """Open the phase on the active reporter (:func:`kdistill.runtime.progress.phase`)."""
        hook = cls(progress_phase("kip", run.config.steps, "step"))
        if run.step:
            hook.bar.set(run.step)
        return hook

    def after_step(self, run, info):
        extra = {"loss": info["loss"]}
        if "eval_acc" in info:
            extra["eval_acc"] = info["eval_acc"]
        self.bar.set(info["step"], **extra)

    def close(self, run: KIPRun) -> None:
        """End the phase: complete when every step was taken (a stop by ``time_limit``
        or ``patience`` ends it where it stopped)."""
        self.bar.close(complete=run.step >= run.config.steps)
