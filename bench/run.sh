#!/usr/bin/env bash
# The side-by-side benchmark: revflow (release build) and the PyTorch reference of exactly the
# same Glow, on the same machine, in one run. Prints a table of milliseconds per operation,
# the ratio PyTorch time / revflow time (> 1: revflow is faster) and peak memory.
#
#   bench/run.sh                       # all configurations
#   CONFIGS=digits ITERS=3 bench/run.sh
#   GPU=wgpu bench/run.sh              # on a GPU: revflow through wgpu, PyTorch through CUDA
#   GPU=cuda bench/run.sh              # revflow through CUDA (its build downloads an LLVM bundle)
#
# THREADS: threads PyTorch may use. revflow's CPU backend (burn flex with rayon) uses every
# core, so the fair default is all of them (nproc).
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
ITERS=${ITERS:-5}
CONFIGS=${CONFIGS:-digits mnist cifar}
GPU=${GPU:-}

bash bench/setup.sh
if [ -n "$GPU" ]; then
  cargo build --release -p revflow-cli --features "$GPU"
  REVFLOW_DEVICE=$GPU TORCH_DEVICE=cuda
else
  cargo build --release -p revflow-cli
  REVFLOW_DEVICE=cpu TORCH_DEVICE=cpu
fi
PY=bench/.venv/bin/python
REVFLOW=target/release/revflow
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for c in $CONFIGS; do
  echo "== $c" >&2
  "$REVFLOW" bench --configs "$c" --export "$work/$c" >&2
  # Same numbers, not just same shapes: the reference must reproduce revflow's log-likelihood.
  "$PY" bench/reference.py check "$work/$c" | tail -n 1 > "$work/$c.check.json"
  "$REVFLOW" bench --configs "$c" --iters "$ITERS" --device "$REVFLOW_DEVICE" --json > "$work/$c.revflow.json"
  batch=$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['batch'])" "$work/$c/config.json")
  OMP_NUM_THREADS=$THREADS "$PY" bench/reference.py time "$work/$c" --threads "$THREADS" \
    --batch "$batch" --iters "$ITERS" --device "$TORCH_DEVICE" | tail -n 1 > "$work/$c.torch.json"
done

"$PY" bench/table.py "$work" $CONFIGS
echo "$(date -u +%Y-%m-%d), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), PyTorch threads: $THREADS, iterations: $ITERS, devices: revflow $REVFLOW_DEVICE, PyTorch $TORCH_DEVICE"
