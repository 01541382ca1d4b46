#!/usr/bin/env bash
# Fixed-seed runs whose artifacts must be bit-identical across a refactor.
#
#   benchmarks/bit_identity.sh OUT_DIR            # runs with the kdistill on PATH/PYTHONPATH
#   benchmarks/bit_identity.sh --compare A B      # compares two OUT_DIRs array by array
#
# Runs: MNIST 10 ipc KIP-FC1 (configs/mnist_kip_fc1_ipc10.toml, 300 steps) and a
# 30-step RFAD run (configs/rfad_mnist_ipc10.toml), each on the JAX and torch backends.
# Evaluation is on 500 test images only (it is not what is compared).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ "${1:-}" = "--compare" ]; then
  exec python - "$2" "$3" <<'PY'
import sys, pathlib, numpy as np
a, b = map(pathlib.Path, sys.argv[1:3])
bad = 0
for run in sorted(p.name for p in a.iterdir() if p.is_dir()):
    za, zb = np.load(a / run / "distilled.npz"), np.load(b / run / "distilled.npz")
    arrays = [k for k in za.files if za[k].dtype != object and k in zb.files and not k.startswith("meta")]
    diff = [k for k in arrays if not (za[k].shape == zb[k].shape and za[k].tobytes() == zb[k].tobytes())]
    print(f"{run}: {len(arrays)} arrays compared ({', '.join(arrays)}): "
          + ("bit-identical" if not diff else f"DIFFER: {', '.join(diff)}"))
    bad += bool(diff)
sys.exit(1 if bad else 0)
PY
fi
out="$1"; mkdir -p "$out"
data="${KDISTILL_DATA:-$here/../shared/data/mnist}"
for backend in jax torch; do
  kdistill distill --config "$here/configs/mnist_kip_fc1_ipc10.toml" --data-dir "$data" \
    --backend "$backend" --steps 300 -s eval_every=300 -s test_size=500 --seed 0 \
    --out "$out/kip_fc1_$backend" --overwrite > "$out/kip_fc1_$backend.log" 2>&1
  kdistill distill --config "$here/configs/rfad_mnist_ipc10.toml" --data-dir "$data" \
    --backend "$backend" --steps 30 -s eval_every=30 -s test_size=100 -s valid_size=100 --seed 0 \
    --eval-kernel rf-convnet \
    --out "$out/rfad_$backend" --overwrite > "$out/rfad_$backend.log" 2>&1
done
echo "wrote $out"
