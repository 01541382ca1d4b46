"""The run directory: one run's files, never lost, overwritten or shared by accident.

A run directory (``kdistill distill --out DIR``, ``kdistill.distill(run_dir=DIR)``)
holds one run: ``distilled.npz``, ``config.toml``, ``metrics.json``, ``grid.png``,
``checkpoint.npz``, and what later commands add beside them (``nn_<model>.json``,
``baselines/``, ``report.html``, ``report.md``, ``report_files/``).

:class:`RunDirectory` guards it for as long as a command writes into it:

- **Exclusive lock.** ``DIR/.kdistill.lock`` is locked with ``filelock`` (an OS file
  lock, released by the kernel when the process dies, so a killed run never leaves a
  stale lock) and the holder writes its PID to ``DIR/.kdistill.pid``. A second command
  on the same directory fails at once with :class:`RunDirectoryInUse` naming that PID.
  Both files are removed when the lock is released.
- **Nothing overwritten.** A new run refuses a directory that holds anything (other
  than the lock files) unless ``overwrite``; with it, the previous run's files listed
  above are removed before the new run starts, so no file of the old run stays beside
  the new set. Files kdistill did not write are never removed: their presence is an
  error even with ``overwrite``.
- **Checked before step 1.** The path must be (or become) a writable directory, short
  enough for the filesystem, with room for the run's files
  (:func:`estimate_run_bytes`).

Typical use (the CLI's ``distill``)::

    with RunDirectory(out, overwrite=flag) as run:   # lock; refuses a non-empty DIR
        ...                                          # validate the config, load the data
        run.prepare(estimate_run_bytes(cfg, data))   # --overwrite cleanup, free space
        ...                                          # run, write the outputs
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import shutil
from pathlib import Path

from kdistill.io.paths import check_path_length, path_error_message, short_path
from kdistill.errors import CheckpointError, ConfigError, RunDirectoryError, RunDirectoryInUse

LOCK_NAME = ".kdistill.lock"
PID_NAME = ".kdistill.pid"
#: Names kdistill writes into a run directory (files, then directories); ``--overwrite``
#: removes exactly these (and leftover ``*.tmp`` files of interrupted atomic writes).
RUN_FILES = ("distilled.npz", "config.toml", "metrics.json", "grid.png", "checkpoint.npz",
             "nn_*.json", "eval_*.json", "report.html", "report.md", "*.tmp", "steps.jsonl")
RUN_DIRS = ("baselines", "report_files", "tensorboard", "mlruns")

MODES = ("new", "resume", "update")


def _is_run_file(entry: Path) -> bool:
    patterns = RUN_DIRS if entry.is_dir() and not entry.is_symlink() else RUN_FILES
    return any(fnmatch.fnmatchcase(entry.name, p) for p in patterns)


def _read_pid(directory: Path) -> int | None:
    try:
        return int((directory / PID_NAME).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _holder_pid(directory: Path) -> int | None:
    """The PID the lock holder recorded; read again shortly when the file is missing or
    names a dead process (the holder may have just taken the lock and not yet written it)."""
    import time

    for attempt in range(5):
        pid = _read_pid(directory)
        if pid is not None and _alive(pid):
            return pid
        time.sleep(0.05 * (attempt + 1))
    return pid


class RunDirectory:
    """Exclusive use of a run directory (see the module docstring).

    Args:
        path: the run directory.
        mode: ``new`` (a fresh run: created if missing; refused when not empty unless
            ``overwrite``), ``resume`` (an existing run directory) or ``update``
            (an existing directory a command adds files to, e.g. ``nn_convnet.json``).
        overwrite: ``new`` only: replace a previous run's files.
        what: how messages name the path (``--out``, ``--resume``, ``run_dir``).
    Raises (on entering):
        RunDirectoryInUse: another process holds the lock (the message names its PID).
        RunDirectoryError: the path is not a directory, cannot be created or written,
            or (``new``) is not empty and ``overwrite`` is false.
        CheckpointError: ``new`` without ``overwrite`` over a directory holding a
            checkpoint (the message says how to resume it).
        ConfigError: the path is too long for the filesystem.
    """

    def __init__(self, path: str | os.PathLike, *, mode: str = "new", overwrite: bool = False,
                 what: str = "run directory"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not isinstance(overwrite, bool):
            raise ConfigError(f"overwrite must be true or false, got {overwrite!r}")
        if overwrite and mode != "new":
            raise ConfigError(
                f"overwrite applies to a new run only; a {'resumed run continues' if mode == 'resume' else 'command adds to'} "
                "the run in its directory (drop --overwrite)"
            )
        self.path, self.mode, self.overwrite, self.what = Path(path), mode, overwrite, what
        self._lock = None
        self._created = False

    # -- lock ---------------------------------------------------------------------
    def __enter__(self) -> "RunDirectory":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        """Check the path, create it (``new``), take the lock, record the PID and (``new``)
        refuse a non-empty directory unless ``overwrite``. On any error nothing is left
        behind (a directory created here is removed again)."""
        from filelock import FileLock, Timeout

        path, what = self.path, self.what
        check_path_length(path, what, directory=True)
        try:
            if path.exists() and not path.is_dir():
                raise RunDirectoryError(f"{what} {short_path(path)} is a file, not a directory; choose a directory")
            if not path.exists():
                if self.mode == "resume":
                    from kdistill.io.checkpoint import read_checkpoint

                    read_checkpoint(path)  # raises CheckpointError: "cannot resume: no checkpoint ..."
                if self.mode == "update":
                    raise RunDirectoryError(f"{what} {short_path(path)} does not exist")
                path.mkdir(parents=True)
                self._created = True
        except OSError as exc:
            if isinstance(exc, RunDirectoryError):
                raise
            raise RunDirectoryError(path_error_message(exc, path, f"create {what}")) from exc
        lock = FileLock(str(path / LOCK_NAME), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            self._cleanup_created()
            pid = _holder_pid(path)
            raise RunDirectoryInUse(
                f"{what} {short_path(path)} is in use by another kdistill command that is still running "
                f"(PID {pid if pid is not None else 'unknown'}); wait for it to finish or stop it"
                f"{f' (kill {pid})' if pid is not None else ''}, or use another directory",
                pid=pid,
            ) from None
        except OSError as exc:
            self._cleanup_created()
            raise RunDirectoryError(path_error_message(exc, path, f"write into {what}")) from exc
        self._lock = lock
        try:
            (path / PID_NAME).write_text(f"{os.getpid()}\n")
            if self.mode == "new":
                self._refuse_if_not_empty()
        except BaseException as exc:
            self.release()
            if isinstance(exc, OSError) and not isinstance(exc, RunDirectoryError):
                raise RunDirectoryError(path_error_message(exc, path, f"write into {what}")) from exc
            raise

    def release(self) -> None:
        """Remove the PID and lock files, release the lock; a directory this object
        created and nothing else was written to is removed too. Idempotent."""
        if self._lock is None:
            return
        with contextlib.suppress(OSError):
            (self.path / PID_NAME).unlink()
        with contextlib.suppress(OSError):
            (self.path / LOCK_NAME).unlink()  # while still held: a waiter sees the lock free only after
        self._lock.release()
        self._lock = None
        self._cleanup_created()

    def _cleanup_created(self) -> None:
        if self._created:
            with contextlib.suppress(OSError):
                self.path.rmdir()  # only if empty
            self._created = False

    @property
    def locked(self) -> bool:
        return self._lock is not None

    # -- contents -------------------------------------------------------------------
    def entries(self) -> list[Path]:
        """What the directory holds, apart from the lock and PID files (sorted)."""
        return sorted(p for p in self.path.iterdir() if p.name not in (LOCK_NAME, PID_NAME))

    def _refuse_if_not_empty(self) -> None:
        entries = self.entries()
        if not entries:
            return
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:8])
        names += f" and {len(entries) - 8} more" if len(entries) > 8 else ""
        foreign = [p for p in entries if not _is_run_file(p)]
        where = f"{self.what} {short_path(self.path)}"
        if foreign:
            listed = ", ".join(p.name for p in foreign[:8])
            raise RunDirectoryError(
                f"{where} is not empty and holds files kdistill did not write ({listed}); a run needs an "
                "empty directory (or one holding only a previous run, with --overwrite): choose another directory"
            )
        if self.overwrite:
            return
        if (self.path / "checkpoint.npz").exists():
            others = [p.name for p in entries if p.name != "checkpoint.npz"]
            beside = f", beside {', '.join(others[:8])}" if others else ""
            raise CheckpointError(
                f"{where} already holds a checkpoint (checkpoint.npz) of a previous run{beside}; continue it "
                f"with `kdistill distill --resume {self.path}` (Python: resume=True), replace the old run with "
                "--overwrite (Python: overwrite=True), or choose another run directory"
            )
        raise RunDirectoryError(
            f"{where} already holds a run ({names}); refusing to overwrite it: choose another directory, "
            "or pass --overwrite (Python: overwrite=True) to replace the old run and all its files"
        )

    def prepare(self, need_bytes: int = 0) -> list[str]:
        """Make the locked directory ready for the run's writes; call after the command's
        inputs are validated and before its first step.

        ``new`` with ``overwrite``: removes the previous run's files (:data:`RUN_FILES`,
        :data:`RUN_DIRS`). Then checks that ``need_bytes`` are free.

        Returns:
            The names removed.
        Raises:
            RunDirectoryError: a file could not be removed, or too little free space.
        """
        if self._lock is None:
            raise RuntimeError("RunDirectory.prepare() needs the lock: use it inside `with RunDirectory(...)`")
        removed: list[str] = []
        if self.mode == "new" and self.overwrite:
            for entry in self.entries():
                if not _is_run_file(entry):
                    continue  # refused on acquire; never remove what kdistill did not write
                is_dir = entry.is_dir() and not entry.is_symlink()
                try:
                    shutil.rmtree(entry) if is_dir else entry.unlink()
                except OSError as exc:
                    raise RunDirectoryError(path_error_message(exc, entry, "remove the previous run's file")) from exc
                removed.append(entry.name + ("/" if is_dir else ""))
        self.check_space(need_bytes)
        return removed

    def check_space(self, need_bytes: int) -> None:
        """Raise RunDirectoryError when the filesystem has less than ``need_bytes`` free."""
        if need_bytes <= 0:
            return
        try:
            free = shutil.disk_usage(self.path).free
        except OSError:
            return  # cannot tell: the writes themselves fail cleanly (atomic, named checkpoint)
        if free < need_bytes:
            raise RunDirectoryError(
                f"not enough free space for the run in {self.what} {short_path(self.path)}: it needs about "
                f"{_size(need_bytes)} (artifact, checkpoints, image grid), {_size(free)} are free; free space "
                "or choose a directory on another disk"
            )


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} bytes"  # unreachable


def estimate_run_bytes(config, data, grid: bool = True) -> int:
    """Bytes a run's files need at their largest: two checkpoints (the old one stays until
    the new one is complete; KIP only), the artifact (support set, labels, the
    preprocessing state, history) and the image grid.

    Args:
        config: the :class:`DistillConfig`; data: its :class:`PreparedData`.
    """
    import numpy as np

    n_s = config.ipc * data.num_classes
    images = n_s * int(np.prod(data.x_train.shape[1:])) * 4
    labels = n_s * data.num_classes * 4
    transform = sum(np.asarray(v).nbytes for v in data.transform.state().values())
    history = 64 * (config.steps + 1)
    total = images + labels + transform + history + 16 * 1024
    if config.method == "kip":
        # parameters, two optimizer moments, the best set under validation
        checkpoint = 4 * (images + labels) + history + 16 * 1024
        total += 2 * checkpoint
    if grid:
        total += images // 4 + 64 * 1024
    return int(total)


def remove_transient_checkpoint(run_dir: str | os.PathLike, config) -> None:
    """After a successful run with ``checkpoint_every = 0``: remove the checkpoint that
    only guarded the final evaluation and the writing of the results (the user asked for
    no checkpoints; a finished run needs none). Runs with ``checkpoint_every > 0`` keep
    their last checkpoint."""
    from kdistill.io.checkpoint import checkpoint_path

    if config.method == "kip" and not config.checkpoint_every:
        with contextlib.suppress(FileNotFoundError):
            checkpoint_path(run_dir).unlink()
