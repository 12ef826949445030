"""Measured speed-up of materialized models against their MAC reduction (issue 2).

For ResNet-56 and VGG-16 (CIFAR-sized 3×32×32 inputs, 10 classes), plans remove 30 / 50 /
70 % of the MACs by L1 magnitude; the plans are materialized and timed at batch 1 and 64
on the CPU. The figure of merit is

    ratio = measured speed-up / MAC reduction,   MAC reduction = dense MACs / pruned MACs

(1.0 is the physical limit; the goal is ≥ 0.8 at batch 64).

Usage:
    python benchmarks/bench_speedup.py [--repeats 10] [--threads 1] [--out benchmarks/results/speedup.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import prunekit
from prunekit.core.measure import time_in_rounds


def run(models=("resnet56", "vgg16"), fractions=(0.3, 0.5, 0.7), batch_sizes=(1, 64), repeats=10, threads=None):
    rows = []
    for name in models:
        torch.manual_seed(0)
        model = prunekit.models.create(name, num_classes=10).eval()
        x = torch.randn(1, 3, 32, 32)
        start = time.perf_counter()
        structures = prunekit.find_structures(model, x)
        find_s = time.perf_counter() - start
        scores = prunekit.saliency(model, structures, None, method="l1")
        dense_count = prunekit.count(model, x)
        pruned = {"dense": model}
        for fraction in fractions:
            start = time.perf_counter()
            plan = prunekit.select(structures, scores, prunekit.Budget(macs=fraction))
            pruned[fraction] = prunekit.materialize(model, plan, structures)
            counted = prunekit.count(pruned[fraction], x)
            rows.append({"model": name, "macs_removed_target": fraction,
                         "macs_removed": 1 - counted["macs"] / dense_count["macs"],
                         "params_dense": dense_count["params"], "params": counted["params"],
                         "macs_dense": dense_count["macs"], "macs": counted["macs"],
                         "mac_reduction": dense_count["macs"] / counted["macs"], "find_structures_s": find_s,
                         "select_and_materialize_s": time.perf_counter() - start, "batches": {}})
        per_batch = {b: time_in_rounds(pruned, x, b, rounds=3, repeats=repeats, threads=threads, full=True)
                     for b in batch_sizes}
        timings = {key: {b: per_batch[b][key] for b in batch_sizes} for key in pruned}
        for row in rows:
            if row["model"] != name:
                continue
            for b in batch_sizes:
                dense_ms = timings["dense"][b]["median_ms"]
                ms = timings[row["macs_removed_target"]][b]["median_ms"]
                row["batches"][b] = {"dense_median_ms": dense_ms, "median_ms": ms,
                                     "dense_iqr_ms": timings["dense"][b]["iqr_ms"],
                                     "iqr_ms": timings[row["macs_removed_target"]][b]["iqr_ms"],
                                     "speedup": dense_ms / ms, "speedup_per_mac_reduction": dense_ms / ms / row["mac_reduction"]}
            print(f"{name} -{row['macs_removed_target']:.0%} MACs: reduction {row['mac_reduction']:.2f}x, " + ", ".join(
                f"b{b}: {row['batches'][b]['speedup']:.2f}x (ratio {row['batches'][b]['speedup_per_mac_reduction']:.2f})"
                for b in batch_sizes), flush=True)
    return {"benchmark": "speedup", "machine": platform.machine(), "processor": platform.processor(),
            "threads": threads or torch.get_num_threads(), "torch": torch.__version__, "repeats": repeats,
            "timing": "median of repeats, best of 3 alternating rounds", "rows": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/speedup.json")
    args = parser.parse_args()
    result = run(repeats=args.repeats, threads=args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
