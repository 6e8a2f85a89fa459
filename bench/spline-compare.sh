#!/usr/bin/env bash
# revflow's rational-quadratic spline flow against zuko's neural spline flow (NSF) on the same
# 2-D points: the same training and test splits (written by `revflow data export`), steps,
# batch, learning rate and warm-up, a comparable network (8 transforms, two hidden layers of
# 64, 8 bins: 58.7 k parameters each), the same thread count, over several seeds. Prints one
# line per run and a table of means.
#
#   bench/spline-compare.sh                       # checkerboard rings 2spirals, seeds 0 1 2
#   SETS=checkerboard SEEDS=0 bench/spline-compare.sh
#   REVFLOW_OPTS="--coupling spline --permutation invconv" bench/spline-compare.sh
#
# THREADS (default 1): PyTorch's OpenMP threads degrade badly on shared cores (bench/README.md),
# so both sides run on one thread unless told otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
SETS=${SETS:-checkerboard rings 2spirals}
SEEDS=${SEEDS:-0 1 2}
STEPS=${STEPS:-2000}
BATCH=${BATCH:-256}
SAMPLES=${SAMPLES:-20000}
THREADS=${THREADS:-1}
REVFLOW_OPTS=${REVFLOW_OPTS:---coupling spline}

bash bench/setup.sh >&2
cargo build --release -p revflow-cli >&2
B=target/release/revflow
PY=bench/.venv/bin/python
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

results="$work/results.jsonl"
for set in $SETS; do
  for seed in $SEEDS; do
    d="$work/$set-$seed"
    "$B" data export "$set" --samples "$SAMPLES" --seed "$seed" --out "$d" >/dev/null
    z=$(OMP_NUM_THREADS=$THREADS "$PY" bench/zuko_nsf.py "$d/train.csv" "$d/test.csv" \
        --steps "$STEPS" --batch "$BATCH" --seed "$seed" --threads "$THREADS" | tail -n 1)
    # shellcheck disable=SC2086 # REVFLOW_OPTS is a list of options
    RAYON_NUM_THREADS=$THREADS "$B" train --data "$set" --samples "$SAMPLES" --seed "$seed" \
        --steps "$STEPS" --batch-size "$BATCH" --eval-every "$STEPS" $REVFLOW_OPTS \
        --out "$d/run" --json >"$d/revflow.json" 2>/dev/null
    r=$("$PY" - "$d" <<'PY'
import json, sys
d = sys.argv[1]
report = json.load(open(f"{d}/revflow.json"))
lines = [json.loads(l) for l in open(f"{d}/run/metrics.jsonl")]
steps = [l for l in lines if "loss" in l]
# Training time per step, from the first step's end to the last's (evaluation excluded).
ms = 1000 * (steps[-1]["seconds"] - steps[0]["seconds"]) / (len(steps) - 1)
print(json.dumps({"test_bits_per_dim": report["test_bits_per_dim"], "ms_per_step": ms}))
PY
)
    echo "{\"set\": \"$set\", \"seed\": $seed, \"zuko\": $z, \"revflow\": $r}" | tee -a "$results"
  done
done

"$PY" - "$results" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'set':<13}{'seeds':>6}  {'zuko bits/dim':>14} {'revflow bits/dim':>17}  {'zuko ms/step':>13} {'revflow ms/step':>16}")
for s in dict.fromkeys(r["set"] for r in rows):
    rs = [r for r in rows if r["set"] == s]
    zb = [r["zuko"]["test_bits_per_dim"] for r in rs]
    rb = [r["revflow"]["test_bits_per_dim"] for r in rs]
    zt = [r["zuko"]["ms_per_step"] for r in rs]
    rt = [r["revflow"]["ms_per_step"] for r in rs]
    sd = lambda v: st.stdev(v) if len(v) > 1 else 0.0
    print(f"{s:<13}{len(rs):>6}  {st.mean(zb):>8.3f} ±{sd(zb):.3f} {st.mean(rb):>11.3f} ±{sd(rb):.3f}  {st.mean(zt):>13.1f} {st.mean(rt):>16.1f}")
PY
echo "$(date -u +%Y-%m-%d), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), threads $THREADS, steps $STEPS, batch $BATCH, $SAMPLES training points, revflow options: $REVFLOW_OPTS"
