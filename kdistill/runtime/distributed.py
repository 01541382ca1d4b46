"""Joining a run of several processes, on one host or many.

- **JAX**: :func:`init_jax_distributed` calls ``jax.distributed.initialize`` (the
  coordinator's ``host:port``, the number of processes and this process's id; or
  ``"auto"``, JAX's own detection of Slurm, Open MPI and other clusters). Every device
  of every process then forms one mesh (:class:`~kdistill.plugins.backends.jax_backend.JaxBackend`),
  and XLA runs the collectives (gloo between CPU processes, NCCL between GPUs).
- **torch**: ``torchrun`` sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``
  and ``MASTER_PORT``; the torch backend joins that process group when it is created
  (:func:`kdistill.plugins.backends.torch_backend.init_process_group`).

Every process runs the same program on the same data with the same seed; one process
(:func:`is_primary`) writes the run directory (checkpoints, artifact, reports) and
prints, the others compute.
"""

from __future__ import annotations

import os

from kdistill.errors import ConfigError

_JAX = {"process_id": None}  # set once jax.distributed is initialized


def init_jax_distributed(coordinator: str, num_processes: int | None = None, process_id: int | None = None) -> None:
    """Join a multi-process JAX run (``jax.distributed.initialize``), before any JAX
    computation.

    Args:
        coordinator: ``host:port`` of process 0's coordination service, or ``"auto"`` to
            let JAX read the cluster's environment (Slurm ``srun``, Open MPI ``mpirun``,
            Kubernetes, Cloud TPU).
        num_processes, process_id: required with an explicit ``coordinator``; this process's
            id in ``0 .. num_processes - 1``.
    Raises:
        ConfigError: missing or inconsistent arguments, or JAX refused to initialize (the
            message has its reason).
    """
    import jax

    explicit = coordinator != "auto"
    if explicit and (num_processes is None or process_id is None):
        raise ConfigError("a JAX multi-process run with --coordinator HOST:PORT needs --num-processes and "
                          "--process-id too (or KDISTILL_NUM_PROCESSES and KDISTILL_PROCESS_ID); use "
                          "--coordinator auto under Slurm or mpirun")
    if explicit and not (num_processes >= 1 and 0 <= process_id < num_processes):
        raise ConfigError(f"--process-id must be in 0..{num_processes - 1} for --num-processes {num_processes}, "
                          f"got {process_id}")
    # CPU processes exchange collectives through gloo (GPUs use NCCL regardless)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        if explicit:
            jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                       process_id=process_id)
        else:
            jax.distributed.initialize()
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"jax.distributed.initialize failed: {exc}") from exc
    _JAX["process_id"] = jax.process_index()


def process_index() -> int:
    """This process's rank in the run: JAX's process index once :func:`init_jax_distributed`
    ran, else ``torchrun``'s ``RANK``, else 0."""
    if _JAX["process_id"] is not None:
        return _JAX["process_id"]
    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def process_count() -> int:
    """The number of processes in the run (JAX's after :func:`init_jax_distributed`, else
    ``torchrun``'s ``WORLD_SIZE``, else 1)."""
    if _JAX["process_id"] is not None:
        import jax

        return jax.process_count()
    return max(1, int(os.environ.get("WORLD_SIZE", "1")))


def is_primary() -> bool:
    """True in the process that writes files and prints (rank 0)."""
    return process_index() == 0


def wait_for_all() -> None:
    """A barrier over the run's processes (torch's process group, or JAX's processes), so
    that they leave together: a process leaving while another still writes can abort
    its exit. No-op in a single process."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    elif "jax" in sys.modules and sys.modules["jax"].process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("kdistill")
