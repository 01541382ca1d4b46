"""Messages through the standard :mod:`logging` module: the logger ``kdistill``.

Library code logs notes (``logger.info``: e.g. which settings an override dropped)
and warnings (``logger.warning``); it never prints. A Python user sees warnings by
default (logging's last-resort handler) and notes after e.g.
``logging.basicConfig(level=logging.INFO)``.

The CLI installs :class:`CliHandler` on the logger (:func:`configure_cli`): stderr
lines ``note: ...`` (INFO, yellow), ``warning: ...`` (WARNING, yellow), ``debug: ...``
(DEBUG), at the level of the ``kdistill -v/-q`` options (:func:`level_for`).
"""

from __future__ import annotations

import logging

import click

#: The package's logger; modules may use children (``kdistill.<module>``).
logger = logging.getLogger("kdistill")

_PREFIX = {logging.DEBUG: ("debug", None), logging.INFO: ("note", "yellow"), logging.WARNING: ("warning", "yellow"),
           logging.ERROR: ("error", "red"), logging.CRITICAL: ("error", "red")}


def level_for(verbosity: int) -> int:
    """The logging level of a CLI verbosity (``-v`` counts +1, ``-q`` -1).

    ``>= 1``: DEBUG; ``0`` (default): INFO (notes and warnings); ``-1``: WARNING (no
    notes, no progress bars); ``<= -2``: ERROR (errors only).
    """
    if verbosity >= 1:
        return logging.DEBUG
    return {0: logging.INFO, -1: logging.WARNING}.get(verbosity, logging.ERROR)


class CliHandler(logging.Handler):
    """Writes records to stderr as ``<kind>: <message>`` (click, so colours follow the
    terminal and tests capture it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            kind, colour = _PREFIX.get(record.levelno, ("note", None))
            click.secho(f"{kind}: {record.getMessage()}", fg=colour, err=True)
        except Exception:  # pragma: no cover - logging must not raise
            self.handleError(record)


def configure_cli(verbosity: int) -> None:
    """Route the ``kdistill`` logger to stderr at :func:`level_for` ``(verbosity)``
    (replacing an earlier :class:`CliHandler`, so repeated CLI calls in one process,
    e.g. tests, do not print twice)."""
    for handler in list(logger.handlers):
        if isinstance(handler, CliHandler):
            logger.removeHandler(handler)
    logger.addHandler(CliHandler())
    logger.setLevel(level_for(verbosity))
    logger.propagate = False


def cli_verbosity() -> int:
    """The verbosity of the running ``kdistill`` command (0 outside the CLI)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return 0
    obj = ctx.find_root().obj
    return int(obj.get("verbosity", 0)) if isinstance(obj, dict) else 0
