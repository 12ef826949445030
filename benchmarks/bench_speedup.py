"""Measured speed-up of materialized models against their MAC reduction (issue 2).

For ResNet-56 and VGG-16 (CIFAR-sized 3×32×32 inputs, 10 classes), plans remove 30 / 50 /
70 % of the MACs by L1 magnitude; the plans are materialized and timed at batch 1 and 64
on the CPU. The figure of merit is

    ratio = measured speed-up / MAC reduction,   MAC reduction = dense MACs / pruned MACs

(1.0 is the physical limit; the goal is ≥ 0.8 at batch 64).

Usage:
    python benchmarks/bench_speedup.py [--repeats 20] [--threads 2] [--out benchmarks/results/speedup.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import prunekit


def run(models=("resnet56", "vgg16"), fractions=(0.3, 0.5, 0.7), batch_sizes=(1, 64), repeats=20, threads=None):
    rows = []
    for name in models:
        torch.manual_seed(0)
        model = prunekit.models.create(name, num_classes=10).eval()
        x = torch.randn(1, 3, 32, 32)
        start = time.perf_counter()
        structures = prunekit.find_structures(model, x)
        find_s = time.perf_counter() - start
        scores = prunekit.saliency(model, structures, None, method="l1")
        dense_latency = prunekit.measure_latency(model, x, batch_sizes=batch_sizes, repeats=repeats, threads=threads)
        dense_count = prunekit.count(model, x)
        for fraction in fractions:
            start = time.perf_counter()
            plan = prunekit.select(structures, scores, prunekit.Budget(macs=fraction))
            small = prunekit.materialize(model, plan, structures)
            prune_s = time.perf_counter() - start
            counted = prunekit.count(small, x)
            latency = prunekit.measure_latency(small, x, batch_sizes=batch_sizes, repeats=repeats, threads=threads)
            mac_reduction = dense_count["macs"] / counted["macs"]
            row = {"model": name, "macs_removed_target": fraction, "macs_removed": 1 - 1 / mac_reduction,
                   "params_dense": dense_count["params"], "params": counted["params"],
                   "macs_dense": dense_count["macs"], "macs": counted["macs"], "mac_reduction": mac_reduction,
                   "find_structures_s": find_s, "select_and_materialize_s": prune_s, "batches": {}}
            for b in batch_sizes:
                dense_ms = dense_latency["batches"][b]["median_ms"]
                ms = latency["batches"][b]["median_ms"]
                speedup = dense_ms / ms
                row["batches"][b] = {"dense_median_ms": dense_ms, "median_ms": ms,
                                     "dense_iqr_ms": dense_latency["batches"][b]["iqr_ms"],
                                     "iqr_ms": latency["batches"][b]["iqr_ms"],
                                     "speedup": speedup, "speedup_per_mac_reduction": speedup / mac_reduction}
            rows.append(row)
            print(f"{name} -{fraction:.0%} MACs: reduction {mac_reduction:.2f}x, " + ", ".join(
                f"b{b}: {row['batches'][b]['speedup']:.2f}x (ratio {row['batches'][b]['speedup_per_mac_reduction']:.2f})"
                for b in batch_sizes), flush=True)
    return {"benchmark": "speedup", "machine": platform.machine(), "processor": platform.processor(),
            "threads": threads or torch.get_num_threads(), "torch": torch.__version__, "repeats": repeats, "rows": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/speedup.json")
    args = parser.parse_args()
    result = run(repeats=args.repeats, threads=args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
