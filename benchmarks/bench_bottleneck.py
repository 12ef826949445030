"""Expand-pruning (SOSP paper) vs uniform ×1.1 widening at equal parameters, on SYNTHETIC SBU fold 1.

Runs :func:`prunekit.pipeline.bottleneck.expand_pruning` on the attention GCN: train, prune 50 % of
the parameters with SOSP-H, widen the bottleneck blocks ×2 (baseline: every block ×1.1),
train, prune back to the original pruned parameter count, fine-tune, compare.

Usage:
    python benchmarks/bench_bottleneck.py [--seeds 0,1,2] [--epochs 20] [--finetune 6] [--sequences 6 8]
        [--group-norm mean] [--tag _raw]
    (same as: prunekit bottleneck configs/bottleneck/synthetic_sbu.yaml)
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from prunekit.pipeline.bottleneck import expand_pruning

ARCH = {"name": "attention_gcn", "kwargs": {"graph": "sbu", "num_classes": 8, "channels": [32, 32, 64, 64]}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--finetune", type=int, default=6)
    parser.add_argument("--cutoff", type=float, default=0.5)
    parser.add_argument("--sequences", type=int, nargs=2, metavar=("LO", "HI"), default=None,
                        help="synthetic sequences per (set, action), drawn in [LO, HI] (default 1 3: 67 test "
                             "sequences in fold 1; 6 8: about 4x as many)")
    parser.add_argument("--group-norm", default="none", choices=("mean", "none"),
                        help="select's group normalisation (none, the default: raw scores ranked across groups, as "
                             "in the paper; mean: select's own default, which finds no bottleneck)")
    parser.add_argument("--tag", default="", help="suffix of the result files (bottleneck<tag>.json, ...)")
    args = parser.parse_args()
    out = Path(f"runs/bench_bottleneck{args.tag}")
    spec = {"format": "synthetic-sbu", "seed": 0, "fold": 1}
    if args.sequences:
        spec["sequences"] = list(args.sequences)
    result = expand_pruning(ARCH, spec,
                            seeds=[int(s) for s in args.seeds.split(",")], epochs=args.epochs,
                            finetune=args.finetune, cutoff=args.cutoff, out_dir=out,
                            group_norm=None if args.group_norm == "none" else args.group_norm)
    results = Path("benchmarks/results")
    shutil.copy(out / "results.json", results / f"bottleneck{args.tag}.json")
    shutil.copy(out / "layer_ratios.png", results / f"bottleneck{args.tag}_layer_ratios.png")
    shutil.copy(out / "accuracy_vs_params.png", results / f"bottleneck{args.tag}_accuracy_vs_params.png")
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
