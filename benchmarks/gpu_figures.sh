#!/usr/bin/env bash
# kdistill's GPU figures in one run on a GPU machine (H100/H200), in at most ~8 minutes:
#
#   (a) exact ConvNet NNGP kernel entries/s on 32x32x3 images, JAX and torch
#       (benchmarks/convnet_kernel_speed.py; pairs grow 16x64 -> 64x256 -> 128x1024 while
#       the next size fits the part's time);
#   (b) KIP-FC step time on MNIST: FC1 NTK, support 10/100/500, target batch 5000, learned
#       labels, Adam (benchmarks/kip_step_time.py), JAX and torch;
#   (c) RFAD step time on CIFAR-10 at the paper's settings: 8 random ConvNets of 256
#       channels, 5120 targets per step, support 10/100/500, Platt loss, feature solver
#       (benchmarks/rfad_step_time.py), JAX and torch.
#
# Every command runs under `timeout` (its part's share of the budget, never past the
# overall deadline), so one slow part cannot eat the others' time; what a stopped
# command printed before stopping is kept. The output, with the date, the GPU and the
# library versions, goes to benchmarks/results/gpu.md (or $1), and also to $OUT/gpu.md
# when $OUT is a folder (the device tool brings back only what is under $OUT).
#
# On the device machine (no internet): first, here, `bash benchmarks/gpu_wheels.sh`
# (the wheels that machine lacks, into the git-ignored benchmarks/.wheels/), then
#   run(command="bash benchmarks/gpu_figures.sh", carry=["benchmarks/.wheels"], timeout_s=540)
# The script installs only this package (`pip install --no-deps -e .`, offline) and those
# wheels, and only when `python3` cannot already import this checkout's kdistill.
#
# Data: the first of $KDISTILL_DATA_DIR, ./shared/data, ../shared/data and
# ./benchmarks/.data holding mnist/ (IDX files) or cifar-10/ (python batches) gives real,
# standardized, class-balanced images; where there is none, random normal arrays of the
# same shape are used, and the output says so (step times and kernel throughput do not
# depend on the pixel values).
#
# Environment: PYTHON (default python3), GPU_FIGURES_DEVICE (default auto: the GPU when
# the libraries see one), GPU_FIGURES_BUDGET (seconds for everything, default 470),
# GPU_FIGURES_SMOKE=1 (tiny sizes on whatever device there is, e.g. this CPU: checks every
# part end to end; writes to a temporary file, printed at the end, unless $1 is given;
# never quote its numbers).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

PY=${PYTHON:-python3}
DEVICE=${GPU_FIGURES_DEVICE:-auto}
SMOKE=${GPU_FIGURES_SMOKE:-0}
if [ "$SMOKE" = 1 ]; then
  BUDGET=${GPU_FIGURES_BUDGET:-900}
  OUT_MD=${1:-$(mktemp -d /tmp/gpu_figures.XXXXXX)/gpu.md}
  RUNGS="2x4 4x8"; REPEATS=1                              # (a) pairs, best of REPEATS
  KIP_ARGS=(--sizes 10 20 --target-batch 50 --steps 1)    # (b)
  RFAD_ARGS=(--sizes 10 20 --target-batch 40 --n-models 2 --width 8 --steps 1)  # (c)
  A_SECONDS=150; B_SECONDS=120; C_SECONDS=120            # per backend
  TAG=" [smoke sizes, see the commands]"
else
  BUDGET=${GPU_FIGURES_BUDGET:-470}
  OUT_MD=${1:-benchmarks/results/gpu.md}
  RUNGS="16x64 64x256 128x1024"; REPEATS=2
  KIP_ARGS=(--sizes 10 100 500 --target-batch 5000 --steps 10)
  RFAD_ARGS=(--sizes 10 100 500 --target-batch 5120 --n-models 8 --width 256 --steps 3)
  A_SECONDS=70; B_SECONDS=45; C_SECONDS=100
  TAG=
fi
DEADLINE=$((SECONDS + BUDGET))
HEAD=$(mktemp); BODY=$(mktemp); LAST=$(mktemp); SUMMARY=$(mktemp); OPEN=0
trap 'rm -f "$HEAD" "$BODY" "$LAST" "$SUMMARY"' EXIT

say() { echo "$*" | tee -a "$BODY"; }

# run LIMIT CMD...: CMD under `timeout` (LIMIT seconds, cut to the overall deadline), its
# output (stdout and stderr) printed, kept in the body and in $LAST; returns its status.
run() {
  local limit=$1; shift
  local left=$((DEADLINE - SECONDS))
  ((limit > left)) && limit=$left
  : >"$LAST"
  if ((limit < 5)); then
    say "[skipped: the overall budget of ${BUDGET} s is spent] $*"
    return 125
  fi
  say "\$ $* (timeout ${limit} s)"
  timeout -k 5 "$limit" "$@" 2>&1 | tee "$LAST" | tee -a "$BODY"
  local rc=${PIPESTATUS[0]}
  if ((rc == 124 || rc == 137)); then
    say "[stopped after ${limit} s: the lines above are what it measured]"
  elif ((rc != 0)); then
    say "[failed: exit status $rc]"
  fi
  return "$rc"
}

# part TITLE: a new section of the body (a heading, then a text block)
part() {
  ((OPEN)) && printf '```\n' >>"$BODY"
  printf '\n## %s\n\n```text\n' "$*" >>"$BODY"
  OPEN=1
  echo; echo "== $*"
}

# ---------------------------------------------------------------- install (offline)
installed() {  # kdistill of this checkout importable from elsewhere, with its plugins and dependencies
  local repo=$PWD
  (cd / && "$PY" - "$repo" <<'PY' 2>/dev/null)
import importlib.metadata as m, os, sys
import kdistill, array_api_compat, tomli_w  # noqa: F401
here = os.path.realpath(os.path.join(sys.argv[1], "kdistill"))
ok = os.path.realpath(os.path.dirname(kdistill.__file__)) == here and m.entry_points(group="kdistill")
sys.exit(0 if ok else 1)
PY
}
START_NOTE="kdistill already installed from this checkout: nothing installed"
if ! installed; then
  for whl in benchmarks/.wheels/*.whl; do
    [ -e "$whl" ] || continue
    dist=$(basename "$whl" | cut -d- -f1)
    "$PY" -c "import importlib.metadata as m; m.version('$dist')" 2>/dev/null ||
      "$PY" -m pip install -q --no-index --no-deps --no-cache-dir "$whl"
  done
  "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --find-links benchmarks/.wheels/build -e . ||
    "$PY" -m pip install -q --no-index --no-deps --no-cache-dir --no-build-isolation -e .
  if ! installed; then
    echo "error: kdistill is not importable with its plugins after installing; run benchmarks/gpu_wheels.sh" \
         "here and carry benchmarks/.wheels" >&2
    exit 1
  fi
  START_NOTE="installed: kdistill (pip install --no-deps -e .) and the missing wheels of benchmarks/.wheels"
fi

# ---------------------------------------------------------------- data
data_root() {  # data_root NAME MARKER...: the first data root holding NAME's files
  local name=$1; shift
  local root marker
  for root in "${KDISTILL_DATA_DIR:-}" shared/data ../shared/data benchmarks/.data; do
    [ -n "$root" ] || continue
    for marker in "$@"; do
      if [ -e "$root/$name/$marker" ]; then echo "$root"; return 0; fi
    done
  done
  return 1
}
MNIST_ROOT=$(data_root mnist train-images-idx3-ubyte.gz train-images-idx3-ubyte) || MNIST_ROOT=
CIFAR_ROOT=$(data_root cifar-10 cifar-10-batches-py/data_batch_5 data_batch_5) || CIFAR_ROOT=
MNIST_OPT=(); [ -n "$MNIST_ROOT" ] && MNIST_OPT=(--data-dir "$MNIST_ROOT")
CIFAR_OPT=(); [ -n "$CIFAR_ROOT" ] && CIFAR_OPT=(--data-dir "$CIFAR_ROOT")
data_note() { [ -n "$2" ] && echo "$1 from $2/" || echo "$1 not found: random normal arrays of its shape"; }

# ---------------------------------------------------------------- header
{
  echo "# kdistill GPU figures$([ "$SMOKE" = 1 ] && echo ' (SMOKE RUN: tiny sizes, not figures)')"
  echo
  prefix=$([ "$SMOKE" = 1 ] && echo 'GPU_FIGURES_SMOKE=1 ')
  echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'). Command: \`${prefix}bash benchmarks/gpu_figures.sh\`" \
       "(device setting \`$DEVICE\`, budget $BUDGET s)."
  echo
  echo '```text'
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | sed 's/^/GPU: /'
  else
    echo "GPU: none (no nvidia-smi)"
  fi
  "$PY" - <<'PY' 2>&1
import os, platform, sys
print(f"host: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
try:
    import jax
    print(f"JAX {jax.__version__}: default backend {jax.default_backend()}, devices {jax.devices()}")
except Exception as exc:  # noqa: BLE001
    print(f"JAX: unavailable ({exc})")
try:
    import torch
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}): {gpu}")
except Exception as exc:  # noqa: BLE001
    print(f"torch: unavailable ({exc})")
import kdistill
print(f"kdistill {kdistill.__version__}")
PY
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo 'n/a (no git here)')"
  echo "$START_NOTE"
  echo "data: $(data_note MNIST "$MNIST_ROOT"); $(data_note CIFAR-10 "$CIFAR_ROOT")"
  echo '```'
} >"$HEAD" 2>&1
cat "$HEAD"

# ---------------------------------------------------------------- (a) kernel throughput
part "(a) exact ConvNet NNGP kernel, 32x32x3, entries/s$TAG"
for backend in jax torch; do
  part_end=$((SECONDS + A_SECONDS))
  best=
  for rung in $RUNGS; do
    n1=${rung%x*}; n2=${rung#*x}
    t0=$SECONDS
    run $((part_end - SECONDS)) "$PY" benchmarks/convnet_kernel_speed.py --kind nngp --sizes 32x32x3 \
      --backends "$backend" --pairs "$n1" "$n2" --repeats "$REPEATS" --device "$DEVICE" "${CIFAR_OPT[@]}" || break
    rate=$(awk -v b="$backend" '$1 == "kdistill" && $2 == b {print $4}' "$LAST" | tail -1)
    [ -n "$rate" ] || break
    best="$rate entries/s at ${n1}x${n2} pairs"
    # the next rung: its calls (warm-up + repeats) at this rate, plus this rung's fixed cost
    next=$(echo "$RUNGS" | tr ' ' '\n' | awk -v r="$rung" 'f {print; exit} $0 == r {f = 1}')
    [ -n "$next" ] || break
    took=$((SECONDS - t0))
    need=$(awk -v e="$((${next%x*} * ${next#*x}))" -v r="$rate" -v k="$REPEATS" -v t="$took" \
      'BEGIN {printf "%d", (k + 1) * e / r + t + 1}')
    if ((need > part_end - SECONDS)); then
      say "[$backend: not growing to ${next} pairs: about ${need} s needed, $((part_end - SECONDS)) s left]"
      break
    fi
  done
  echo "(a) ConvNet NNGP 32x32x3, $backend: ${best:-no measurement}" >>"$SUMMARY"
done

# ---------------------------------------------------------------- (b) KIP-FC MNIST
part "(b) KIP-FC (FC1 NTK) step time, MNIST 28x28x1$TAG"
for backend in jax torch; do
  run "$B_SECONDS" "$PY" benchmarks/kip_step_time.py "${KIP_ARGS[@]}" --backends "$backend" --device "$DEVICE" \
    "${MNIST_OPT[@]}"
  rows=$(awk '$1 ~ /^[0-9]+$/ && NF == 2 {printf "%s%s: %s s", (n++ ? ", " : ""), $1, $2}' "$LAST")
  echo "(b) KIP-FC MNIST s/step by support size, $backend: ${rows:-no measurement}" >>"$SUMMARY"
done

# ---------------------------------------------------------------- (c) RFAD CIFAR-10
part "(c) RFAD step time, CIFAR-10 32x32x3 (8 random ConvNets x 256 channels, 5120 targets)$TAG"
for backend in jax torch; do
  run "$C_SECONDS" "$PY" benchmarks/rfad_step_time.py "${RFAD_ARGS[@]}" --backends "$backend" \
    --exact-backend none --device "$DEVICE" "${CIFAR_OPT[@]}"
  rows=$(awk '$1 == "rfad" && $3 == "support" {sub(":", "", $4); printf "%s%s: %s s", (n++ ? ", " : ""), $4, $5}' \
    "$LAST")
  echo "(c) RFAD CIFAR-10 s/step by support size, $backend: ${rows:-no measurement}" >>"$SUMMARY"
done
((OPEN)) && printf '```\n' >>"$BODY"

# ---------------------------------------------------------------- markdown
mkdir -p "$(dirname "$OUT_MD")"
{
  cat "$HEAD"
  printf '\n## Summary\n\n'
  sed 's/^/- /' "$SUMMARY"
  printf '\nTotal time %d s. Below: each command and all it printed.\n' "$SECONDS"
  cat "$BODY"
} >"$OUT_MD"
echo
echo "== summary"
cat "$SUMMARY"
echo "wrote $OUT_MD ($SECONDS s)"
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp "$OUT_MD" "$OUT/gpu.md" && echo "copied to $OUT/gpu.md"
fi
