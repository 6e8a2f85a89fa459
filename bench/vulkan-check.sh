#!/usr/bin/env bash
# The wgpu path against the CPU backend, on whatever adapter wgpu finds: Mesa's software
# Vulkan driver (lavapipe) on a machine without a GPU, a real GPU elsewhere. A tiny Glow
# trained on the CPU is evaluated, encoded, decoded and sampled on both devices, and one
# short training runs on each from the same seed. Output: one line per check, then PASS or
# FAIL. Needs a wgpu build: `cargo build --release -p revflow-cli --features wgpu`; on Debian
# without a GPU, `apt-get install mesa-vulkan-drivers libvulkan1`. REVFLOW names the binary,
# DEVICE the GPU device (default vulkan: wgpu pinned to Vulkan, never OpenGL). CI runs it
# through `tests/vulkan.rs`.
set -euo pipefail
B=${REVFLOW:-$(cd "$(dirname "$0")/.." && pwd)/target/release/revflow}
GPU=${DEVICE:-vulkan}
echo "device $GPU: $("$B" devices --json | python3 -c "import json,sys; print(', '.join(d['device'] + ' ' + d['name'] for d in json.load(sys.stdin)))")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
tiny=(--levels 2 --depth 2 --hidden 16 --batch-size 32 --n-bits 4 --eval-every 1000)
fail=0
check() { # name, ok (0/1), details
    if [ "$2" = 1 ]; then echo "ok    $1: $3"; else echo "FAIL  $1: $3"; fail=1; fi
}
rel() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(abs(a-b)/max(abs(b),1e-12))" "$1" "$2"; }
below() { python3 -c "import sys; print(int(float(sys.argv[1]) <= float(sys.argv[2])))" "$1" "$2"; }

"$B" train "${tiny[@]}" --steps 40 --out cpu-run --device cpu >/dev/null 2>&1
# 1. The same checkpoint's test bits/dim on both devices.
a=$("$B" eval cpu-run --device cpu --json | python3 -c "import json,sys; print(json.load(sys.stdin)['bits_per_dim'])")
b=$("$B" eval cpu-run --device "$GPU" --json | python3 -c "import json,sys; print(json.load(sys.stdin)['bits_per_dim'])")
r=$(rel "$b" "$a")
check "eval: a CPU-trained checkpoint on $GPU" "$(below "$r" 1e-4)" "cpu $a, $GPU $b bits/dim, relative difference $r"

# 2. Encoded on wgpu, decoded on the CPU: the same pixels.
"$B" encode cpu-run test:0..32 --device "$GPU" --out z.safetensors >/dev/null
"$B" decode cpu-run z.safetensors --device cpu --out back >/dev/null
"$B" encode cpu-run test:0..32 --device cpu --out zc.safetensors >/dev/null
"$B" decode cpu-run zc.safetensors --device cpu --out backc >/dev/null
same=$(python3 - <<'EOF'
import os, hashlib
def digest(d): return [hashlib.sha256(open(os.path.join(d, f), 'rb').read()).hexdigest() for f in sorted(os.listdir(d))]
a, b = digest('back'), digest('backc')
print(sum(x == y for x, y in zip(a, b)), len(a))
EOF
)
check "encode on $GPU, decode on the CPU" "$([ "${same% *}" = "${same#* }" ] && echo 1 || echo 0)" "$same images identical to the CPU's round trip"

# 3. Samples of one seed on both devices: the same latents (drawn on the host).
"$B" sample cpu-run -n 16 --seed 3 --device cpu --csv sc.csv --out sc.png >/dev/null
"$B" sample cpu-run -n 16 --seed 3 --device "$GPU" --csv sw.csv --out sw.png >/dev/null
frac=$(python3 -c "
a=open('sc.csv').read().split(); b=open('sw.csv').read().split()
va=[float(x) for l in a for x in l.split(',')]; vb=[float(x) for l in b for x in l.split(',')]
print(sum(x==y for x,y in zip(va,vb))/len(va))")
check "samples of seed 3" "$(below 0.99 "$frac")" "fraction of pixels equal on $GPU and cpu: $frac"

# 4. Training on each device from the same seed: the same loss curve for a few steps.
"$B" train "${tiny[@]}" --steps 5 --out wgpu-run --device "$GPU" >/dev/null 2>&1
"$B" train "${tiny[@]}" --steps 5 --out cpu-run5 --device cpu >/dev/null 2>&1
worst=$(python3 - <<'EOF'
import json
def losses(d): return [json.loads(l)['loss'] for l in open(d + '/metrics.jsonl') if '"loss"' in l]
a, b = losses('cpu-run5'), losses('wgpu-run')
print(max(abs(x - y) / abs(x) for x, y in zip(a, b)), len(a))
EOF
)
check "5 training steps on $GPU" "$(below "${worst% *}" 1e-3)" "largest relative loss difference ${worst% *} over ${worst#* } steps"

# 5. The run records where it trained.
where=$(python3 -c "
import json
print(next(json.loads(l)['device'] for l in open('wgpu-run/metrics.jsonl') if '\"started\"' in l))")
check "the run records its device" "$([ -n "$where" ] && [ "${where#cpu}" = "$where" ] && echo 1 || echo 0)" "metrics.jsonl: trained on $where"

# 6. No adapter (the Vulkan and EGL drivers hidden), or an index past the adapters: one line
# and exit code 2, not cubecl's panic.
refused() { # name, expected text, command...
    local name=$1 want=$2 rc=0 out ok=0; shift 2
    "$@" >/dev/null 2>err.txt || rc=$?
    # Only revflow's own lines: the Vulkan loader and Mesa may add warnings of theirs.
    out=$(grep '^revflow:' err.txt || true)
    if [ "$rc" = 2 ] && [ "$(printf '%s\n' "$out" | wc -l)" = 1 ] && [[ "$out" == *"$want"* ]] \
        && ! grep -q panicked err.txt; then ok=1; fi
    check "$name" "$ok" "exit $rc: $out"
}
refused "no adapter" "no GPU adapter could be opened" \
    env VK_ICD_FILENAMES=/nonexistent.json __EGL_VENDOR_LIBRARY_FILENAMES=/nonexistent.json \
    "$B" eval cpu-run --device wgpu
refused "an index past the adapters" "adapter(s)" "$B" eval cpu-run --device wgpu:64

[ "$fail" = 0 ] && echo PASS || { echo FAIL; exit 1; }
