"""Prints the comparison table from the JSON files bench/run.sh collected."""
import json
import sys

work, configs = sys.argv[1], sys.argv[2:]
print(f"{'config':<8} {'batch':>5} {'operation':<10} {'revflow ms':>11} {'PyTorch ms':>11} {'ratio':>7}")
for c in configs:
    rust = json.load(open(f"{work}/{c}.revflow.json"))[0]
    torch = json.load(open(f"{work}/{c}.torch.json"))
    check = json.load(open(f"{work}/{c}.check.json"))
    for op in ("train", "eval", "sample"):
        r, t = rust[f"{op}_ms"], torch[f"{op}_ms"]
        print(f"{c:<8} {rust['batch']:>5} {op:<10} {r:>11.1f} {t:>11.1f} {t / r:>7.2f}")
    print(
        f"{c:<8} peak memory: revflow {rust['peak_rss_mb']:.0f} MiB, PyTorch {torch['peak_rss_mb']:.0f} MiB; "
        f"log p max relative difference (f32): {check['max_rel_diff_f32']:.2e}"
    )
