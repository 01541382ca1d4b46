"""Progress of the long phases of a run: KIP steps, the final evaluation, Label Solve,
``kdistill evaluate``, baselines.

Code that does long work opens a *phase* on the active reporter::

    with phase("final evaluation", total=2 * (n_s + n_test), unit="row") as p:
        ...
        p.update(rows)            # work done since the last call (int or float)

and the reporter shows it: :class:`BarReporter` as a tqdm bar on stderr (the CLI, and
``kdistill.distill(progress=True)``), :class:`CallbackReporter` as calls of a user's
function with one dict per update::

    {"phase": "final evaluation", "done": 120, "total": 400, "unit": "row", ...}

``done`` is an int that never decreases within a phase and ends equal to ``total``
when the phase completes (extra keys, e.g. ``loss`` and ``eval_acc`` of KIP steps,
may follow). The active reporter is a context variable (:func:`use_progress`), so the
registered methods, whose signature is a plugin contract, need no extra argument.

Work inside a kernel call (the exact ConvNet kernel computes its matrix in tiles of
pairs, seconds to minutes each) reaches the phase through :func:`report_pairs`:
:func:`kdistill.core.krr.krr_predict` listens (:func:`listen_pairs`) and turns pairs
into rows of the phase, so a bar advances per tile, not per block of rows.

ETA: a bar's rate is measured from its first update on (:class:`RateBar`), so the
first unit of work, which includes compiling (XLA, ``torch.compile``), does not make
the estimate of the remaining time too long; units are weighted by work (kernel rows:
support rows count like target rows), so the rate is constant within a phase.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import sys
from typing import Any, Callable, Iterator

#: the reporter of the current context (None: progress is not shown)
_REPORTER: contextvars.ContextVar = contextvars.ContextVar("kdistill_progress", default=None)
#: who listens to kernel pairs done (``callable(pairs)``) in the current context
_PAIRS: contextvars.ContextVar = contextvars.ContextVar("kdistill_pairs", default=None)


class Phase:
    """An open phase: ``total`` units of work named ``name``.

    :meth:`update` adds work done (fractions accumulate; the reported count is the
    integer part, never decreasing); :meth:`set` jumps to an absolute count (e.g. the
    step a resumed run starts from); :meth:`close` completes it (``done = total``
    unless ``complete=False``). A phase of the null reporter does nothing.
    """

    def __init__(self, reporter: "Reporter | None", name: str, total: int, unit: str):
        self.reporter, self.name, self.total, self.unit = reporter, name, int(total), unit
        self.work = 0.0  # exact work done (float)
        self.done = 0  # reported count (int, monotone)
        self.closed = False

    def update(self, amount: float = 1, **info: Any) -> None:
        """Add ``amount`` units of work (>= 0); ``info``: extra keys for the report."""
        self.work = min(float(self.total), self.work + max(0.0, float(amount)))
        self._emit(int(math.floor(self.work + 1e-9)), info)

    def set(self, done: float, **info: Any) -> None:
        """Set the work done to ``done`` units (ignored if below the current count)."""
        self.work = min(float(self.total), max(self.work, float(done)))
        self._emit(int(math.floor(self.work + 1e-9)), info)

    def _emit(self, count: int, info: dict) -> None:
        if self.reporter is None or self.closed:
            return
        if count > self.done or info:
            self.done = max(self.done, count)
            self.reporter.report(self, info)

    def close(self, complete: bool = True) -> None:
        """End the phase; ``complete``: the work is all done (``done`` becomes ``total``)."""
        if self.closed:
            return
        if complete and self.done < self.total:
            self.work = float(self.total)
            self._emit(self.total, {})
        self.closed = True
        if self.reporter is not None:
            self.reporter.end(self, complete)

    def __enter__(self) -> "Phase":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(complete=exc_type is None)


class Reporter:
    """Shows phases. Subclasses implement :meth:`start`, :meth:`report`, :meth:`end`."""

    def start(self, phase: Phase) -> None:
        """A phase opened (``phase.done == 0``)."""

    def report(self, phase: Phase, info: dict) -> None:
        """``phase.done`` changed (or ``info`` has news)."""

    def end(self, phase: Phase, complete: bool) -> None:
        """The phase ended (``complete``: all its work was done)."""


class CallbackReporter(Reporter):
    """Calls ``fn(event)`` with ``{"phase", "done", "total", "unit", **info}`` on every
    change: once with ``done = 0`` when a phase starts, then whenever ``done`` grows."""

    def __init__(self, fn: Callable[[dict], None]):
        self.fn = fn

    def _send(self, phase: Phase, info: dict) -> None:
        self.fn({"phase": phase.name, "done": phase.done, "total": phase.total, "unit": phase.unit, **info})

    def start(self, phase):
        self._send(phase, {})

    def report(self, phase, info):
        self._send(phase, info)


def _rate_bar_class():
    from tqdm.auto import tqdm

    class RateBar(tqdm):
        """A tqdm bar whose rate (and so ETA) is the average since its first update:
        the first unit, which includes compilation, is left out of the rate. Before
        the second update the ETA shows ``?``."""

        def __init__(self, *args, **kwargs):
            self._mark = None
            kwargs.setdefault("smoothing", 0)
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            out = super().update(n)
            if self._mark is None and self.n > 0:
                self._mark = (self._time(), self.n)
            return out

        @property
        def format_dict(self):
            d = super().format_dict
            mark = getattr(self, "_mark", None)
            if mark is not None:
                dt, dn = self._time() - mark[0], self.n - mark[1]
                d["rate"] = dn / dt if dn > 0 and dt > 0 else 0
            elif d.get("rate") is None:
                d["rate"] = 0  # no estimate yet (not the elapsed time, compilation included)
            return d

    return RateBar


class BarReporter(Reporter):
    """One tqdm bar per phase on ``file`` (default stderr), ETA from :class:`RateBar`.

    ``postfix``: a phase's info keys shown beside the bar (KIP: ``loss``, ``eval_acc``).
    """

    def __init__(self, file=None, leave: bool = True):
        self.file, self.leave, self.bars, self.postfix = file, leave, {}, {}

    def start(self, phase):
        bar_cls = _rate_bar_class()
        self.bars[id(phase)] = bar_cls(total=phase.total, desc=phase.name, unit=phase.unit, dynamic_ncols=True,
                                       file=self.file if self.file is not None else sys.stderr, leave=self.leave)

    def report(self, phase, info):
        bar = self.bars.get(id(phase))
        if bar is None:
            return
        if info:
            post = self.postfix.setdefault(id(phase), {})
            for key, value in info.items():
                if key == "loss":
                    post["loss"] = f"{value:.4g}"
                elif key == "eval_acc":
                    post["acc"] = f"{100 * value:.2f}%"
            if post:
                bar.set_postfix(post, refresh=False)
        if phase.done > bar.n:
            bar.update(phase.done - bar.n)

    def end(self, phase, complete):
        bar = self.bars.pop(id(phase), None)
        self.postfix.pop(id(phase), None)
        if bar is not None:
            bar.close()


def make_reporter(progress: Any) -> Reporter | None:
    """The reporter for a ``progress`` argument of the Python API.

    Args:
        progress: None (default: bars when stderr is a terminal, else none), True (bars
            on stderr), False (none), a :class:`Reporter`, or a callable receiving one
            dict per update (:class:`CallbackReporter`).
    Raises:
        ConfigError: anything else.
    """
    from kdistill.errors import ConfigError

    if progress is None:
        isatty = getattr(sys.stderr, "isatty", None)
        return BarReporter() if callable(isatty) and isatty() else None
    if progress is True:
        return BarReporter()
    if progress is False:
        return None
    if isinstance(progress, Reporter):
        return progress
    if callable(progress):
        return CallbackReporter(progress)
    raise ConfigError(f"progress must be None, True, False or a callable, got {type(progress).__name__}")


@contextlib.contextmanager
def use_progress(reporter: Reporter | None) -> Iterator[Reporter | None]:
    """Make ``reporter`` the active one for the ``with`` block (None: no progress)."""
    token = _REPORTER.set(reporter)
    try:
        yield reporter
    finally:
        _REPORTER.reset(token)


def active() -> Reporter | None:
    """The active reporter (None when progress is not shown)."""
    return _REPORTER.get()


def phase(name: str, total: int, unit: str = "it") -> Phase:
    """Open a phase of ``total`` units on the active reporter (a no-op phase without
    one). Use as a context manager: leaving it normally completes the phase."""
    reporter = _REPORTER.get()
    p = Phase(reporter, name, total, unit)
    if reporter is not None:
        reporter.start(p)
    return p


@contextlib.contextmanager
def listen_pairs(fn: Callable[[int], None] | None) -> Iterator[None]:
    """Within the block, :func:`report_pairs` calls ``fn(pairs)`` (None: nobody listens)."""
    token = _PAIRS.set(fn)
    try:
        yield
    finally:
        _PAIRS.reset(token)


def pairs_listened() -> bool:
    """Whether anyone listens to kernel pairs (a kernel then waits for each tile to
    finish before reporting it; otherwise it reports nothing and does not wait)."""
    return _PAIRS.get() is not None


def report_pairs(pairs: int) -> None:
    """A kernel computed ``pairs`` more entries of its matrix (called per tile by slow
    kernels, e.g. :class:`~kdistill.plugins.kernels.convnet.ConvNetKernel`)."""
    fn = _PAIRS.get()
    if fn is not None:
        fn(pairs)
