"""KRR test accuracy against wall-clock time for a KIP run (default: MNIST, 10 ipc, FC1 NTK).

Either runs the distillation from a config (evaluating on the full test set every
``eval_every`` steps) or reads the history stored in an existing artifact:

    python benchmarks/accuracy_vs_time.py --config configs/mnist_kip_fc1_ipc10.toml
    python benchmarks/accuracy_vs_time.py --artifact runs/mnist/distilled.npz

Times include the intermediate evaluations themselves (they are part of the run).
"""

from __future__ import annotations

import argparse
import os
import platform

import kdistill


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/mnist_kip_fc1_ipc10.toml")
    ap.add_argument("--artifact", help="read the history of a finished run instead of running")
    ap.add_argument("-s", "--set", dest="sets", action="append", default=[], help="config override key=value")
    args = ap.parse_args()
    if args.artifact:
        result = kdistill.load(args.artifact)
    else:
        cfg = kdistill.make_config(args.config).with_overrides(args.sets)
        result = kdistill.distill(cfg)
    h, m, c = result.history, result.metrics, result.config
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {c['dataset']} ipc={c['ipc']} "
          f"kernel={c['kernel']} backend={c['backend']} learn_labels={c['learn_labels']}")
    print(f"{'step':>6} {'seconds':>9} {'KRR test acc %':>15}")
    for step, sec, acc in zip(h["eval_step"], h["eval_seconds"], h["eval_acc"]):
        print(f"{step:>6} {sec:>9.1f} {100 * acc:>15.2f}")
    print(f"final: distilled {100 * m['distilled_acc']:.2f}%  random subset {100 * m['random_acc']:.2f}%  "
          f"training {m['train_seconds']:.0f} s")


if __name__ == "__main__":
    main()
