"""Prints the comparison table from the JSON files bench/run.sh collected."""
import json
import sys

work, configs = sys.argv[1], sys.argv[2:]
print(f"{'config':<8} {'batch':>5} {'operation':<10} {'revflow ms':>11} {'PyTorch ms':>11} {'ratio':>7}")
for c in configs:
    measured = json.load(open(f"{work}/{c}.revflow.json"))
    rust = measured["rows"][0]
    torch = json.load(open(f"{work}/{c}.torch.json"))
    check = json.load(open(f"{work}/{c}.check.json"))
    for op in ("train", "eval", "sample"):
        r, t = rust[f"{op}_ms"], torch[f"{op}_ms"]
        print(f"{c:<8} {rust['batch']:>5} {op:<10} {r:>11.1f} {t:>11.1f} {t / r:>7.2f}")
    print(
        f"{c:<8} peak memory: revflow {rust['peak_rss_mb']:.0f} MiB, PyTorch {torch['peak_rss_mb']:.0f} MiB; "
        f"log p max relative difference (f32): {check['max_rel_diff_f32']:.2e}"
    )
    # The same FLOP count for both: revflow's, from the model's convolutions.
    flop = rust["train_gflops"] * rust["train_ms"]
    gemm = measured.get("gemm_1024_gflops")
    yardstick = f"; a 1024×1024 matrix product in revflow reaches {gemm:.1f}" if gemm else ""
    print(
        f"{c:<8} training step GFLOP/s: revflow {rust['train_gflops']:.1f}, "
        f"PyTorch {flop / torch['train_ms']:.1f}{yardstick}"
    )
    if "logp_vs_cpu" in rust:  # a GPU run: its log p against revflow's CPU backend
        print(f"{c:<8} revflow log p on {measured['device']} vs its CPU backend: max relative difference {rust['logp_vs_cpu']:.1e}")
