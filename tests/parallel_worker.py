"""One process of the data-parallel equivalence tests (tests/test_parallel.py).

Run as ``python tests/parallel_worker.py MODE BACKEND OUT_DIR [--kill-at STEP] [--resume]``,
alone, with ``XLA_FLAGS=--xla_force_host_platform_device_count=2``, under ``torchrun``,
or as one of several ``jax.distributed`` processes (``KDISTILL_COORDINATOR``,
``KDISTILL_NUM_PROCESSES``, ``KDISTILL_PROCESS_ID`` in the environment). The primary
process writes ``OUT_DIR/result.npz``.

Modes (``all``: both, in one process):
    rfad: 6 float64 RFAD steps (rf-convnet kernel, Platt loss) on the digits data,
        checkpointed every 2 steps into ``OUT_DIR/run``; the result is the final
        checkpoint's support set. ``--kill-at K``: the primary process SIGKILLs itself
        after step K; ``--resume``: continue ``OUT_DIR/run``.
    eval: exact-kernel KRR predictions (FC NNGP and ConvNet NTK, float64) of a fixed
        support set on 359 test images in blocks of 50 (uneven blocks and padding),
        and Label Solve labels against 301 targets; first the backend conformance check
        (:func:`kdistill.testing.check_backend`), whose data-parallel part then runs
        over the launch's devices or processes.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np

RFAD = dict(method="kip", kernel={"name": "rf-convnet", "depth": 1, "width": 8, "n_models": 2},
            loss={"name": "platt"}, ipc=2, steps=6, lr=0.01, target_batch=200, dtype="float64",
            eval_every=0, checkpoint_every=2, test_size=50)


def join() -> None:
    if os.environ.get("KDISTILL_COORDINATOR"):
        from kdistill.runtime.distributed import init_jax_distributed

        init_jax_distributed(os.environ["KDISTILL_COORDINATOR"], int(os.environ["KDISTILL_NUM_PROCESSES"]),
                             int(os.environ["KDISTILL_PROCESS_ID"]))


def rfad(backend: str, out: Path, kill_at: int | None, resume: bool) -> dict:
    import kdistill
    from kdistill.io.checkpoint import read_checkpoint

    def callback(info):  # called in the primary process only
        if kill_at is not None and info["step"] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    kdistill.distill(RFAD, backend=backend, run_dir=out / "run", resume=resume, callback=callback,
                     progress=False)
    state = read_checkpoint(out / "run").trainer_state
    return {"x_s": state["params/x_s"]}


def evaluate(backend: str) -> dict:
    from kdistill.core.config import DistillConfig
    from kdistill.core.krr import krr_predict
    from kdistill.core.registry import get_registry
    from kdistill.plugins.methods.label_solve import label_solve
    from kdistill.runtime.components import prepare_data

    from kdistill.testing import check_backend

    reg = get_registry()
    b = reg.backend(backend)
    check_backend(b)  # also its data-parallel primitives, over this launch's shards
    data = prepare_data(DistillConfig())
    x_s, y_s = data.x_train[:20], data.Y_train[:20]
    solver = reg.create("solvers", "cholesky").bind(b)
    out = {}
    for name, kernel in (("fc", reg.create("kernels", "fc", kind="nngp", depth=2)),
                         ("convnet", reg.create("kernels", "convnet", kind="ntk", depth=1, compile=False))):
        out[f"pred_{name}"] = krr_predict(kernel.bind(b), solver, x_s, y_s, data.x_test[:359], 1e-6, "float64",
                                          block_size=50)
    fc = reg.create("kernels", "fc", kind="ntk", depth=1).bind(b)
    out["labels"] = label_solve(fc, solver, x_s, data.x_train[20:321], data.Y_train[20:321], 1e-6,
                                dtype="float64", block_size=50)
    return out


def main(argv: list[str]) -> None:
    mode, backend, out = argv[0], argv[1], Path(argv[2])
    kill_at = int(argv[argv.index("--kill-at") + 1]) if "--kill-at" in argv else None
    join()
    result = {}
    if mode in ("rfad", "all"):
        result.update(rfad(backend, out, kill_at, "--resume" in argv))
    if mode in ("eval", "all"):
        result.update(evaluate(backend))
    from kdistill.runtime.distributed import is_primary

    if is_primary():
        np.savez(out / "result.npz", **result)
    from kdistill.runtime.distributed import wait_for_all

    wait_for_all()


if __name__ == "__main__":
    main(sys.argv[1:])
