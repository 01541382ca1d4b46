#!/usr/bin/env bash
# Step time of the KIP step at two commits, side by side, interleaved (old, new, old, new, ...)
# so that machine load hits both alike:
#
#   benchmarks/step_time_before_after.sh OLD_COMMIT [REPEATS] [-- kip_step_time.py options]
#
# The old commit is checked out in a temporary git worktree and run with its own
# benchmarks/kip_step_time.py; the new one is this checkout.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
old="$1"; repeats="${2:-3}"; shift 2 || shift $#
[ "${1:-}" = "--" ] && shift
opts=("$@"); [ ${#opts[@]} -eq 0 ] && opts=(--sizes 100 500 --target-batch 5000 --steps 10)
tree="$(mktemp -d)/old"
git -C "$here" worktree add -q --detach "$tree" "$old"
trap 'git -C "$here" worktree remove --force "$tree"' EXIT
for i in $(seq "$repeats"); do
  echo "== repeat $i: old ($old)"; (cd "$tree" && PYTHONPATH="$tree" python benchmarks/kip_step_time.py "${opts[@]}")
  echo "== repeat $i: new ($(git -C "$here" rev-parse --short HEAD))"; (cd "$here" && python benchmarks/kip_step_time.py "${opts[@]}")
done
