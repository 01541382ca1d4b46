"""A run callback writing TensorBoard event files (``callbacks = [{name = "tensorboard"}]``).

Written with the ``tensorboard`` package's own event-file writer and protocol buffers,
so it needs neither TensorFlow nor torch (JAX runs use it as they are); install with
``pip install 'kdistill[tracking]'``. View with ``tensorboard --logdir RUN_DIR/tensorboard``.
"""

from __future__ import annotations

import time
from pathlib import Path

import attrs

from kdistill.core.loop import RunHook
from kdistill.runtime.tracking import StepClock, final_record, require, step_record


@attrs.define(kw_only=True)
class TensorBoardLog(RunHook):
    """Scalars per step: ``loss``, ``lr`` (the step's learning rate), ``step_seconds``
    (wall seconds since the previous step, evaluation included) and, on evaluation
    steps, ``eval_acc`` (KRR accuracy in [0, 1] on the evaluation split); after the
    final evaluation ``final/distilled_acc``, ``final/random_acc`` (and the other
    numbers of ``metrics.json``'s top level) at the last step. Values are float64
    tensors with the scalars plugin's metadata, so they read back exactly
    (``EventAccumulator(dir).Tensors("loss")``).

    Every step is flushed to disk. A resumed run writes a new event file into the same
    directory, from the step after its checkpoint (steps a killed process had logged
    after its last checkpoint then appear twice).

    Args:
        log_dir: directory of the event files (default ``tensorboard``); relative paths
            are relative to the run directory when the run has one, else to the working
            directory.
    Raises:
        ConfigError: when built, if the ``tensorboard`` package is missing (the message
            names the ``tracking`` extra).
    """

    log_dir: str = attrs.field(default="tensorboard", validator=attrs.validators.instance_of(str))
    _writer: object = attrs.field(init=False, default=None, repr=False)
    _clock: StepClock = attrs.field(init=False, factory=StepClock, repr=False)

    def __attrs_post_init__(self) -> None:
        require("tensorboard.summary.writer.event_file_writer", "tensorboard", "tensorboard")

    def target(self, run) -> Path:
        """The event-file directory of ``run``."""
        p = Path(self.log_dir)
        return p if p.is_absolute() or run.run_dir is None else Path(run.run_dir) / p

    def _write(self, run, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorboard.plugins.scalar import metadata as scalar_metadata
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        if self._writer is None:
            path = self.target(run)
            path.mkdir(parents=True, exist_ok=True)
            self._writer = EventFileWriter(str(path))
        meta = scalar_metadata.create_summary_metadata(display_name="", description="")
        summary = summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag=tag, metadata=meta, tensor=tensor_pb2.TensorProto(
                dtype=types_pb2.DT_DOUBLE, double_val=[value], tensor_shape=tensor_shape_pb2.TensorShapeProto()))
            for tag, value in values.items()])
        self._writer.add_event(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
        self._writer.flush()

    def after_step(self, run, info):
        self._write(run, info["step"], step_record(run, info, self._clock))

    def after_run(self, run, result):
        final = {f"final/{k}": v for k, v in final_record(result.metrics).items()}
        if final:
            self._write(run, run.step, final)
        if self._writer is not None:
            self._writer.close()
            self._writer = None
