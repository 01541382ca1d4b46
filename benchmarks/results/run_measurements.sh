#!/bin/bash
# The commands that produced benchmarks/results/reproduction.md (run from the repo root,
# with the virtualenv's python first on PATH). Distilled artifacts come from earlier
# `kdistill distill` runs of the matching configs (--reuse; their config differences,
# if any, are flagged in the table). NN evaluations and baselines are computed here and
# cached in the run directories, keyed by protocol id, so rerunning only rebuilds the table.
set -e
RUNS=${RUNS:-/work/exp_nn/runs}
EXP=${EXP:-/work/exp_nn}
PROTO="-p seeds=[0,1,2] -p optimizer=adam -p lr=0.001 -p weight_decay=0.0 \
 -p convnet.width=16 -p convnet.lr=0.003 -p convnet.steps=150 -p convnet.eval_every=50 \
 -p fc.steps=300 -p fc.eval_every=100"
NN_FOR=mnist_kip_fc1_ipc1,mnist_kip_fc1_ipc10,cifar10_kip_fc1_ipc10
TRANSFER=mnist_kip_fc1_ipc1_transfer,mnist_kip_fc1_ipc10_transfer,cifar10_kip_fc1_ipc1_transfer,cifar10_kip_fc1_ipc10_transfer

# the transfer configs (100 steps, fixed labels): distilled here, with their baselines
python benchmarks/reproduce.py --runs $RUNS $PROTO --baselines --budget 600 \
  $(for n in ${TRANSFER//,/ }; do echo --only $n; done) --table /tmp/transfer_table.md

# variant: the same protocol with one-hot targets (label_mode=class) on the distilled sets
for run in ${NN_FOR//,/ }; do
  for m in convnet fc; do
    [ -f $RUNS/$run/nn_$m-onehot.json ] || [ ! -f $RUNS/$run/nn_$m.json ] || \
      KDISTILL_TORCH_THREADS=1 kdistill evaluate $RUNS/$run --nn $m --protocol $RUNS/$run/nn_$m.json \
        -p label_mode=class --out $RUNS/$run/nn_$m-onehot.json --no-progress
  done
done

python benchmarks/reproduce.py --runs $RUNS $PROTO --baselines --budget 0 --nn-for $NN_FOR,$TRANSFER \
  --reuse mnist_kip_fc1_ipc1=$EXP/m1_jax --reuse mnist_kip_fc1_ipc10=$EXP/m10_torch \
  --reuse cifar10_kip_fc1_ipc10=$EXP/c10_fixed_jax --reuse cifar10_label_solve_fc1_ipc50=$EXP/ls_cifar "$@"
