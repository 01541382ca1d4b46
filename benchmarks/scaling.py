"""Data-parallel scaling: seconds per KIP/RFAD step of the same config on 1 vs 2
devices (JAX) and 1 vs 2 processes (torch), side by side.

Each measurement runs in its own subprocess, so that every layout starts clean:

- JAX, 1 device: plain process (no ``--xla_force_host_platform_device_count``);
- JAX, 2 devices: ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` set before JAX
  is imported; the backend builds a 2-device mesh, the target batch is sharded over
  ``"data"``, the support set replicated, and XLA inserts the collectives;
- torch, 1 process: plain process, no process group;
- torch, 2 processes: ``torchrun --nproc-per-node 2 --master-addr 127.0.0.1`` (gloo);
  each process takes half of the target batch and ``TorchStep.mean_over_processes``
  all-reduces one float64 buffer (loss + all support-set gradients) per step.

A worker builds the run exactly as ``kdistill distill`` does (``build_components``,
``prepare_data``, then the KIP method's ``_start``, which creates the ``KIPRun``) and times
``KIPRun.advance()``, the driver's whole step: class-balanced target sampling, the
batch split over shards, RFAD's fresh random-network draw, the step itself and the wait
for its loss. The first ``--warmup`` steps (JAX compilation) are not timed; the figure
is the median over ``--steps`` timed steps (for torch with 2 processes, of the slower
process at each step). The same seed gives both layouts the same batches, so the losses
after the last step must agree up to summation order (printed as a check).

Communication per step:
- torch: the bytes actually passed to ``torch.distributed.all_reduce`` during the timed
  steps (the call is wrapped and counted), next to the formula 8 x (1 + number of
  support-set parameters);
- JAX: read from the compiled step's HLO (``jit(step).lower(...).compile().as_text()``):
  every all-reduce / all-gather / reduce-scatter / collective-permute / all-to-all and
  its operand bytes. Collectives inside sub-computations (loops, conditionals) are
  counted once and flagged.

Threads ("thr" column, per process): 1-shard runs use all cores (torch intra-op + BLAS;
XLA's own pool) and, with ``--threads both`` (default), also 1 thread; the 2 torch
processes use cores/2 threads each and (``both``) all cores each, i.e. oversubscribed;
the 2-device JAX run is ONE process with XLA's pool over all cores and (``both``) with
that pool off (``XLA_FLAGS`` one-thread flags, set before JAX starts). On a machine with
as many cores as devices/processes, 2 devices/processes share the same cores as 1 does,
so the speed-up is bounded by what one device/process left unused, not 2x.

    python benchmarks/scaling.py [--quick] [--backend jax|torch|both] [--steps N]
        [--configs kip rfad] [--threads split|both]
        [--markdown benchmarks/results/scaling.md]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist"


# --------------------------------------------------------------------------- configs
def config_dict(name: str, quick: bool, data_dir: str | None, threads: int, steps: int) -> dict:
    """The DistillConfig fields of the named benchmark config (MNIST if ``data_dir`` is
    given, else the embedded digits; same fields for every layout)."""
    data = ({"dataset": "mnist", "data_dir": data_dir} if data_dir else {"dataset": "digits"})
    common = dict(method="kip", ipc=10, steps=steps, eval_every=0, seed=0, threads=threads, **data)
    if name == "kip":  # configs/mnist_kip_fc1_ipc10.toml with a smaller target batch
        return dict(common, lr=0.01, ridge=1e-6, learn_labels=True, target_batch=1000 if quick else 4000,
                    kernel={"name": "fc", "kind": "ntk", "depth": 1, "sw2": 2.0, "sb2": 0.01},
                    solver="cholesky", loss="mse")
    if name == "rfad":  # configs/rfad_mnist_ipc10.toml with narrower networks (32, not 64) and a smaller batch
        return dict(common, lr=0.01, ridge=5e-3, learn_labels=False, target_batch=100 if quick else 200,
                    kernel={"name": "rf-convnet", "n_models": 2 if quick else 4, "width": 32},
                    solver="feature", loss="platt")
    raise SystemExit(f"unknown config {name!r} (kip, rfad)")


def describe_config(cfg: dict) -> str:
    k = cfg["kernel"]
    kern = (f"FC{k['depth']} {k['kind'].upper()}" if k["name"] == "fc"
            else f"{k['name']} N={k['n_models']} width={k['width']}")
    return (f"{kern}, {cfg['dataset']}, ipc {cfg['ipc']}, target batch {cfg['target_batch']}, "
            f"{'learned' if cfg['learn_labels'] else 'fixed'} labels")


# --------------------------------------------------------------------------- HLO
#: XLA's intra-op pool off (as kdistill.runtime.threads does for threads=1).
XLA_ONE_THREAD = ("--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
                "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_SHAPE = re.compile(r"\b(pred|[suf]\d+|bf16|c64|c128)\[([\d,]*)\]")
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?(%[\w.\-]+)\s*=\s*(.*?)\s+([a-z][\w\-]*)\((.*)$")


def shape_bytes(text: str) -> int:
    """Bytes of every array shape in ``text`` (a shape or a tuple of shapes)."""
    total = 0
    for dtype, dims in _SHAPE.findall(text):
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += n * _DTYPE_BYTES.get(dtype, 0)
    return total


def hlo_collectives(hlo: str) -> list[dict]:
    """Collective ops of compiled HLO text: kind, operand bytes, result shape and
    whether it sits in the entry computation (else in a loop/conditional body, whose
    execution count the text does not say). ``*-done`` halves of async pairs are skipped."""
    shapes: dict[str, str] = {}
    parsed = []
    in_entry = False
    for line in hlo.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith("{"):
            in_entry = line.startswith("ENTRY")
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name, result, op, rest = m.groups()
        shapes[name] = result
        parsed.append((name, result, op, rest, in_entry))
    out = []
    for name, result, op, rest, entry in parsed:
        base = op[:-6] if op.endswith("-start") else op
        if base not in _COLLECTIVES or op.endswith("-done"):
            continue
        args, depth = "", 1
        for ch in rest:  # operand list up to the matching parenthesis
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                break
            args += ch
        operand_bytes = 0
        for tok in args.split(","):
            tok = tok.strip()
            if _SHAPE.search(tok):
                operand_bytes += shape_bytes(tok)
            elif tok.startswith("%"):
                operand_bytes += shape_bytes(shapes.get(tok.split()[0], ""))
        if operand_bytes == 0 and base == "all-reduce":  # all-reduce: operands shaped as the result
            operand_bytes = shape_bytes(result)
        out.append({"op": base, "bytes": operand_bytes, "shape": _SHAPE.search(result).group(0)
                    if _SHAPE.search(result) else result, "entry": entry})
    return out


# --------------------------------------------------------------------------- worker
class _Spy:
    """Forwards to the run's TrainStep and remembers the last call's arguments (for
    lowering the JAX step with the very arrays and shardings of a run)."""

    def __init__(self, inner):
        self.inner, self.last = inner, None

    def __call__(self, state, *batch):
        self.last = (state, batch)
        return self.inner(state, *batch)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def measure(cfg_fields: dict, warmup: int, steps: int) -> dict:
    """Build the run as the KIP method does and time ``warmup + steps`` driver steps."""
    import numpy as np

    from kdistill.core.config import DistillConfig
    from kdistill.plugins.methods.kip import _start
    from kdistill.runtime.components import build_components, prepare_data

    config = DistillConfig(**cfg_fields)
    comps = build_components(config)
    b = comps.backend
    data = prepare_data(config)
    run = _start(config, comps, data, None, False, "")
    run.step_fn = spy = _Spy(run.step_fn)
    traffic = {"calls": 0, "bytes": 0}
    torch_dist = None
    if b.name == "torch" and b.process_count > 1:
        import torch

        torch_dist = torch.distributed
        original = torch_dist.all_reduce

        def counting_all_reduce(tensor, *a, **kw):
            traffic["calls"] += 1
            traffic["bytes"] += tensor.numel() * tensor.element_size()
            return original(tensor, *a, **kw)

    warm = []
    for _ in range(warmup):
        t0 = time.perf_counter()
        run.advance()
        warm.append(time.perf_counter() - t0)
    if torch_dist is not None:
        torch_dist.all_reduce = counting_all_reduce
    times, loss = [], None
    try:
        for _ in range(steps):
            b.barrier()  # start every step together (torch processes); no-op otherwise
            t0 = time.perf_counter()
            loss = run.advance()["loss"]
            times.append(time.perf_counter() - t0)
    finally:
        if torch_dist is not None:
            torch_dist.all_reduce = original
    if torch_dist is not None:  # per step, the slower process
        import torch

        t = torch.tensor(times, dtype=torch.float64)
        torch_dist.all_reduce(t, op=torch_dist.ReduceOp.MAX)
        times = t.tolist()
    params = run.step_fn.params(run.state)
    n_params = int(sum(np.asarray(v).size for v in params.values()))
    result = {
        "devices": b.describe_devices(), "shards": b.shards, "median_s": statistics.median(times),
        "min_s": min(times), "max_s": max(times), "times": times, "warmup_s": warm, "final_loss": loss,
        "steps_done": run.step, "n_params": n_params, "params": {k: list(np.shape(v)) for k, v in params.items()},
    }
    if torch_dist is not None:
        result["comm"] = {"measured_bytes": traffic["bytes"] / steps, "calls": traffic["calls"] / steps,
                          "formula_bytes": 8 * (1 + n_params)}
    if b.name == "jax" and b.mesh is not None:
        state, batch = spy.last
        try:
            step = spy.inner
            # the jitted step: per batch sharding (shard_map) where JaxStep has _compiled, else _step
            jitted = step._compiled(batch)[2] if hasattr(step, "_compiled") else step._step
            hlo = jitted.lower(state, *batch).compile().as_text()
            ops = hlo_collectives(hlo)
            result["comm"] = {"hlo_ops": ops, "hlo_bytes": sum(o["bytes"] for o in ops),
                              "hlo_all_in_entry": all(o["entry"] for o in ops)}
        except Exception as exc:  # the private attribute or lowering failed: say so
            result["comm"] = {"error": f"{type(exc).__name__}: {exc}"}
    return result


def worker(spec: dict) -> None:
    import importlib.metadata as md

    out = {"versions": {}, "results": {}}
    for pkg in ("jax", "torch"):
        try:
            out["versions"][pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    for name, fields in spec["configs"].items():
        out["results"][name] = measure(fields, spec["warmup"], spec["steps"])
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        Path(spec["result"]).write_text(json.dumps(out))
    if "torch" in sys.modules:
        import torch

        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # kdistill never destroys the gloo group; leaving it to interpreter exit sometimes
            # aborts a rank ("terminate called without an active exception", SIGABRT)
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


# --------------------------------------------------------------------------- driver
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(backend: str, shards: int, threads: int, args, data_dir: str | None, log) -> dict:
    """Run one layout in a subprocess; returns the worker's JSON (or ``{"error"}``)."""
    configs = {n: dict(config_dict(n, args.quick, data_dir, threads, args.warmup + args.steps), backend=backend)
               for n in args.configs}
    with tempfile.TemporaryDirectory() as tmp:
        spec = {"configs": configs, "warmup": args.warmup, "steps": args.steps, "result": f"{tmp}/result.json"}
        spec_path = Path(tmp, "spec.json")
        spec_path.write_text(json.dumps(spec))
        env = {k: v for k, v in os.environ.items()
               if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "xla_force_host_platform_device_count" not in f]
        if backend == "jax":
            env["JAX_PLATFORMS"] = "cpu"
            if shards > 1:
                flags.append(f"--xla_force_host_platform_device_count={shards}")
            if threads == 1:  # before JAX starts: the backend initializes XLA before kdistill's apply_threads runs
                flags += [f for f in XLA_ONE_THREAD if f not in flags]
        env["XLA_FLAGS"] = " ".join(flags)
        script = [str(Path(__file__).resolve()), "--worker", str(spec_path)]
        if backend == "torch" and shards > 1:
            env["OMP_NUM_THREADS"] = str(threads)
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(shards),
                   "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *script]
        else:
            cmd = [sys.executable, *script]
        t0, load = time.perf_counter(), os.getloadavg()[0]
        proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout)
        wall = time.perf_counter() - t0
        log(f"  [{backend} x{shards}, {threads} thread(s)/process: {wall:.0f} s wall incl. start-up, "
            f"exit {proc.returncode}; load average before it {load:.2f}]")
        text = (proc.stdout + proc.stderr).strip().splitlines()
        first = [ln for ln in text if re.search(r"Error|error:|terminate called|Traceback", ln)][:3]
        if not Path(spec["result"]).exists():
            return {"error": f"exit {proc.returncode}: " + " | ".join(first + text[-8:])}
        out = json.loads(Path(spec["result"]).read_text())
        if proc.returncode != 0:  # measured, but a process failed afterwards (at exit)
            out["exit_note"] = f"exit {proc.returncode} after writing its results: " + " | ".join(first)
        return out


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fmt_bytes(n: float) -> str:
    return f"{n:,.0f} B ({n / 2**20:.2f} MiB)"


def comm_summary(c: dict, n_params: int) -> list[str]:
    """Lines describing a 2-shard run's communication per step."""
    if "measured_bytes" in c:
        return [f"  comm (measured: torch.distributed.all_reduce wrapped): {c['calls']:.0f} call(s)/step, "
                f"{fmt_bytes(c['measured_bytes'])}; formula 8 x (1 + {n_params:,} support-set parameters) = "
                f"{fmt_bytes(c['formula_bytes'])}"]
    if "hlo_ops" in c:
        groups: dict[tuple, int] = {}
        for o in c["hlo_ops"]:
            key = (o["op"], o["shape"], o["bytes"], o["entry"])
            groups[key] = groups.get(key, 0) + 1
        entry = sum(o["bytes"] for o in c["hlo_ops"] if o["entry"])
        sub = c["hlo_bytes"] - entry
        out = [f"  comm (read from the compiled step's HLO): {len(c['hlo_ops'])} collectives, "
               f"{fmt_bytes(entry)} operand bytes/step in the main computation"
               + (f" + {fmt_bytes(sub)} in loop/conditional bodies (e.g. the Cholesky jitter retry; "
                  "run count unknown)" if sub else "")]
        for (op, shape, nbytes, in_entry), k in sorted(groups.items(), key=lambda kv: -kv[0][2] * kv[1]):
            out.append(f"    {k:>2} x {op:<18} {shape:<22} {nbytes:>12,} B{'' if in_entry else '  (in a body)'}")
        out.append(f"  (for comparison, analytic: one float64 all-reduce of loss + gradients as torch does = "
                   f"8 x (1 + {n_params:,}) = {fmt_bytes(8 * (1 + n_params))})")
        return out
    if "error" in c:
        return [f"  comm: HLO not read ({c['error']})"]
    return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["jax", "torch", "both"], default="both")
    ap.add_argument("--configs", nargs="+", default=["kip", "rfad"], choices=["kip", "rfad"])
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default 10, --quick 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation)")
    ap.add_argument("--quick", action="store_true", help="smaller batches and networks, fewer steps")
    ap.add_argument("--data-dir", default=str(DEFAULT_DATA),
                    help="MNIST IDX files (default ../shared/data/mnist); 'none' for the embedded digits")
    ap.add_argument("--threads", default="both", choices=["split", "both"],
                    help="'split': 1 shard with all cores, 2 shards with cores/2 each; 'both' (default) adds "
                         "1 shard with 1 thread and (JAX) 2 devices with XLA's pool at all cores")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per subprocess")
    ap.add_argument("--markdown", help="also write the output to this markdown file")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(Path(args.worker).read_text()))
        return
    if args.steps is None:
        args.steps = 5 if args.quick else 10
    data_dir = None if args.data_dir == "none" or not Path(args.data_dir).is_dir() else args.data_dir
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    half = max(1, cores // 2)
    lines: list[str] = []

    def log(msg: str = "") -> None:
        print(msg, flush=True)
        lines.append(msg)

    started = datetime.datetime.now().astimezone()
    log(f"date: {started:%Y-%m-%d %H:%M %Z}; machine: {cpu_model()}, {cores} cores usable, no GPU used; "
        f"load average (1 min) before: {os.getloadavg()[0]:.2f}")
    log(f"data: {'MNIST from ' + data_dir if data_dir else 'embedded digits (--data-dir none, or no MNIST there)'}; "
        f"{args.warmup} warm-up steps (not timed), then median/min of {args.steps} timed KIPRun.advance() steps")
    for n in args.configs:
        log(f"  {n}: {describe_config(config_dict(n, args.quick, data_dir, cores, 0))}")
    backends = ["jax", "torch"] if args.backend == "both" else [args.backend]
    both = args.threads == "both"
    layouts = []  # (backend, shards, threads per process, label)
    for be in backends:
        one = "device" if be == "jax" else "process"
        layouts.append((be, 1, cores, f"1 {one}"))
        if both and cores > 1:
            layouts.append((be, 1, 1, f"1 {one}"))
        if be == "jax":  # one process: 'threads' is XLA's intra-op pool (all cores, or off = 1)
            layouts += [(be, 2, t, "2 CPU devices, 1 process") for t in ([cores, 1] if both else [half])]
        else:
            layouts += [(be, 2, t, "2 processes (gloo)") for t in ([half, cores] if both and half != cores
                                                                   else [half])]
    log("measuring, each layout in a fresh subprocess ('thr' = threads per process: torch intra-op + BLAS; "
        "JAX: XLA's pool over all cores, or 1 = XLA_FLAGS one-thread flags) ...")
    measured = [(be, n, t, label, launch(be, n, t, args, data_dir, log)) for be, n, t, label in layouts]
    versions = {}
    for *_, res in measured:
        versions.update(res.get("versions", {}))
    log("versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
        + f", Python {platform.python_version()}; load average (1 min) after, incl. these runs: {os.getloadavg()[0]:.2f}")
    log("")
    head = (f"{'config':<6} {'backend':<7} {'layout':<26} {'thr':>3} {'median s':>9} {'min s':>8} "
            f"{'vs 1x' + str(cores) + 'thr':>9} {'vs 1x1thr':>9} {'loss@last':>10} {'comm B/step':>12}")
    log(head)
    log("-" * len(head))
    notes: list[str] = []
    seen_hlo: dict[str, str] = {}
    for cfg in args.configs:
        for be in backends:
            ref: dict[int, dict] = {}
            for b2, n, t, label, res in measured:
                if b2 != be:
                    continue
                if "error" in res:
                    log(f"{cfg:<6} {be:<7} {label:<26} {t:>3} FAILED: {res['error'].splitlines()[0]}")
                    notes.append(f"{be} {label}, {t} thread(s) failed:\n{res['error']}")
                    continue
                r = res["results"][cfg]
                if "exit_note" in res and cfg == args.configs[0]:
                    notes.append(f"{be} {label}, {t} thr: {res['exit_note']}")
                if n == 1:
                    ref[t] = r
                    notes.append(f"{cfg} {be} {label}, {t} thr: '{r['devices']}'; untimed warm-up steps "
                                 + ", ".join(f"{w:.2f}" for w in r["warmup_s"]) + " s")

                def vs(key: int) -> str:
                    if key not in ref:
                        return "-"
                    return "ref" if ref[key] is r else f"{ref[key]['median_s'] / r['median_s']:.2f}x"

                c = r.get("comm", {})
                comm = (f"{c['measured_bytes']:,.0f}" if "measured_bytes" in c else
                        f"{sum(o['bytes'] for o in c['hlo_ops'] if o['entry']):,}" if "hlo_ops" in c else
                        "0" if n == 1 else "?")
                log(f"{cfg:<6} {be:<7} {label:<26} {t:>3} {r['median_s']:>9.4f} {r['min_s']:>8.4f} "
                    f"{vs(cores):>9} {vs(1):>9} {r['final_loss']:>10.6g} {comm:>12}")
                if n > 1:
                    base = ref.get(cores) or next(iter(ref.values()), None)
                    rel = (f"; loss after step {r['steps_done']} differs from 1 shard by "
                           f"{abs(r['final_loss'] - base['final_loss']) / max(abs(base['final_loss']), 1e-30):.1e}"
                           " (relative)") if base else ""
                    notes.append(f"{cfg} {be} {label}, {t} thr: '{r['devices']}'{rel}")
                    summary = comm_summary(c, r["n_params"])
                    key = json.dumps([cfg, c.get("hlo_ops")]) if "hlo_ops" in c else None
                    if key in seen_hlo:
                        summary = [f"  comm: the same collectives as {seen_hlo[key]} (same compiled HLO)"]
                    elif key:
                        seen_hlo[key] = f"{cfg} {be} {label}, {t} thr"
                    notes += summary
    log("")
    for line in notes:
        log(line)
    log("")
    log(f"Caveat: this machine has {cores} cores and other jobs may share them (see the load averages). The "
        f"2-device JAX run is ONE process whose XLA pool uses the same {cores} cores as the 1-device run; the 2 "
        f"torch processes split or oversubscribe them ('thr'). Two devices/processes therefore share the cores one "
        "device/process already had: the speed-up is bounded by the parallelism one device/process left unused "
        "(small ops, Python and host work, busy-waiting thread pools), not 2x, and the collectives and the host "
        "work each process repeats can make it below 1. Compare a 2-shard row with the 1-shard row of the same "
        "total threads; figures on separate cores or GPUs differ.")
    log(f"total wall time: {(datetime.datetime.now().astimezone() - started).total_seconds():.0f} s")
    if args.markdown:
        cmd = "python benchmarks/scaling.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        Path(args.markdown).write_text(
            "# Data-parallel scaling: 1 vs 2 devices/processes\n\n"
            f"Generated by `{cmd}` (benchmarks/scaling.py); every figure below was measured by that run.\n\n"
            "```\n" + "\n".join(lines) + "\n```\n")
        print(f"wrote {args.markdown}")


if __name__ == "__main__":
    main()
