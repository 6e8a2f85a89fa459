#!/usr/bin/env bash
# MAF and IAF against the coupling flows on the generated 2-D sets, at equal steps: test
# bits/dim, training time per step, and the time to sample or score 1,000 points (the two
# directions: MAF samples in D passes and scores in one; IAF the other way round).
#
#   bench/autoregressive-compare.sh               # moons checkerboard rings 2spirals, seed 0
#   SETS=moons STEPS=500 bench/autoregressive-compare.sh
#
# Every flow has 8 steps (ActNorm → mixing → layer) and networks of two hidden layers of 64.
set -euo pipefail
cd "$(dirname "$0")/.."
SETS=${SETS:-moons checkerboard rings 2spirals}
SEED=${SEED:-0}
STEPS=${STEPS:-2000}
BATCH=${BATCH:-256}
SAMPLES=${SAMPLES:-20000}
N=${N:-20000}

cargo build --release -p revflow-cli >&2
B=target/release/revflow
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

FLOWS=(
  "affine-coupling|--model vector --coupling affine"
  "spline-coupling|--model vector --coupling spline"
  "maf-affine|--model maf"
  "maf-spline|--model maf --coupling spline"
  "iaf-affine|--model iaf"
  "iaf-spline|--model iaf --coupling spline"
)
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

printf '%-14s %-16s %9s %9s %16s %16s\n' set flow bits/dim ms/step "sample ms/1000" "score ms/1000"
for set in $SETS; do
  for entry in "${FLOWS[@]}"; do
    name=${entry%%|*}
    opts=${entry#*|}
    run="$work/$set-$name"
    # shellcheck disable=SC2086 # opts is a list of options
    "$B" train --data "$set" --samples "$SAMPLES" --seed "$SEED" --steps "$STEPS" \
      --batch-size "$BATCH" --eval-every "$STEPS" $opts --out "$run" --json >"$run.json" 2>/dev/null
    bpd=$(json '["test_bits_per_dim"]' <"$run.json")
    ms=$(python3 - "$run/metrics.jsonl" <<'PY'
import json, sys
steps = [l for l in map(json.loads, open(sys.argv[1])) if "loss" in l]
print(1000 * (steps[-1]["seconds"] - steps[0]["seconds"]) / (len(steps) - 1))
PY
)
    sample=$("$B" sample "$run" -n "$N" --temperature 1 --out "$work/s.png" --json 2>/dev/null | json '["seconds"]')
    score=$("$B" score "$run" test --out "$work/scores" --json 2>/dev/null | json '["inputs"]["seconds"]')
    test_n=$("$B" score "$run" test --out "$work/scores" --json 2>/dev/null | json '["inputs"]["count"]')
    python3 -c "
import sys
set, name, bpd, ms, sample, score, n, test_n = sys.argv[1:]
print(f'{set:<14} {name:<16} {float(bpd):9.3f} {float(ms):9.2f} {1000*float(sample)*1000/int(n):16.2f} {1000*float(score)*1000/int(test_n):16.2f}')
" "$set" "$name" "$bpd" "$ms" "$sample" "$score" "$N" "$test_n"
  done
done
echo "$(date -u +%Y-%m-%d), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), seed $SEED, steps $STEPS, batch $BATCH, $SAMPLES training points, $N samples timed"
