#!/usr/bin/env python3
"""Scaling efficiency of data-parallel training, on paper (README, Distributed training).

Weak scaling: every rank keeps its batch, so its compute per step T_c stays as measured; a
step adds one all-reduce of the gradients, which revflow does after the backward pass (no
overlap). A ring all-reduce of S bytes over N ranks takes

    T_ar = 2 (N - 1) / N * S / B  +  2 (N - 1) * a

(bandwidth B per link and direction, latency a per message; Patarasuk & Yuan 2009), and the
efficiency is T_c / (T_c + T_ar). Usage: bench/allreduce_model.py NAME:T_c_ms:S_MB ...
"""

import sys

NETWORKS = [
    # name, bytes/s per direction, latency per message (s)
    ("10 Gbit/s Ethernet", 10e9 / 8, 30e-6),
    ("100 Gbit/s InfiniBand", 100e9 / 8, 3e-6),
    ("NVLink 4 (450 GB/s)", 450e9, 2e-6),
]
RANKS = [8, 64, 512]


def allreduce_seconds(size_bytes, ranks, bandwidth, latency):
    return 2 * (ranks - 1) / ranks * size_bytes / bandwidth + 2 * (ranks - 1) * latency


def main(args):
    models = []
    for a in args:
        name, ms, mb = a.split(":")
        models.append((name, float(ms) / 1e3, float(mb) * 1e6))
    print("| model (compute per step, gradient) | network | " + " | ".join(f"{n} ranks" for n in RANKS) + " |")
    print("|---|---|" + "---|" * len(RANKS))
    for name, compute, size in models:
        for net, bandwidth, latency in NETWORKS:
            cells = []
            for n in RANKS:
                t = allreduce_seconds(size, n, bandwidth, latency)
                cells.append(f"{100 * compute / (compute + t):.0f} % ({1e3 * t:.1f} ms)")
            print(f"| {name} ({1e3 * compute:.0f} ms, {size / 1e6:.2f} MB) | {net} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["digits:27:0.62"])
