"""Graceful stop on SIGINT/SIGTERM: finish the current step, then stop cleanly.

Used by the KIP loop when it has a run directory: the first SIGINT (Ctrl-C) or
SIGTERM (``kill``, a batch scheduler's pre-emption) only records the request; the
loop checks :attr:`StopRequest.signum` after each step, writes a checkpoint and
raises :class:`kdistill.errors.RunInterrupted`. A second signal while the step
finishes gives up waiting and raises ``KeyboardInterrupt`` at once (no checkpoint).

:class:`InterruptNow` is for the final evaluation, which runs after the last step's
checkpoint is on disk: there the first signal stops the evaluation at once with
``RunInterrupted`` (``--resume`` then only evaluates again).
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _SignalScope:
    """Installs :meth:`_handle` for SIGINT/SIGTERM on entry and restores the previous
    handlers on exit; only in the main thread (Python delivers signals there) and only
    when ``enabled``."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._previous: dict[int, object] = {}

    def __enter__(self):
        if self.enabled and threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        self._restore()

    def _handle(self, signum, frame) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


class StopRequest(_SignalScope):
    """Context manager that turns SIGINT/SIGTERM into a request to stop.

    Handlers are installed only in the main thread (Python delivers signals there)
    and only when ``enabled``; the previous handlers are restored on exit.

    Attributes:
        signum: the first signal received, or None.
    """

    def __init__(self, enabled: bool = True):
        super().__init__(enabled)
        self.signum: int | None = None

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:  # second signal: stop waiting for the step
            self._restore()
            raise KeyboardInterrupt(f"second {signal.Signals(signum).name}: stopping without a checkpoint")
        self.signum = signum


class InterruptNow(_SignalScope):
    """Context manager: SIGINT/SIGTERM raise ``make_error(signum)`` at once.

    For work that may be abandoned at any point because everything it needs is safe on
    disk: the final evaluation of a KIP run runs after the last step's checkpoint is
    written, so a signal there stops the evaluation without waiting for it and leaves a
    run that ``--resume`` completes by evaluating again. Handlers are installed only in
    the main thread and only when ``enabled``; the previous ones are restored on exit.
    """

    def __init__(self, make_error, enabled: bool = True):
        super().__init__(enabled)
        self.make_error = make_error

    def _handle(self, signum, frame) -> None:
        self._restore()  # a second signal gets the previous handler
        raise self.make_error(signum)
