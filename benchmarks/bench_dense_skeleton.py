"""Dense accuracy of the skeleton GCNs on SYNTHETIC SBU (5-fold mean) and SYNTHETIC FPHA (1:1 split).

Usage:
    python benchmarks/bench_dense_skeleton.py [--epochs 30] [--models attention_gcn,stgcn] [--datasets sbu,fpha]
        [--threads 1]
        [--out benchmarks/results/dense_skeleton.json]

The data are prunekit's synthetic generator in the real on-disk formats (seed 0),
read back by the real loaders with their official protocols.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import prunekit
from prunekit.pipeline.dataspec import load_data
from prunekit.pipeline.train import evaluate, fit


def train_once(model_name: str, spec: dict, cache: str, epochs: int, seed: int = 0) -> dict:
    (xtr, ytr), (xte, yte), info = load_data(spec, cache=cache)
    torch.manual_seed(seed)
    model = prunekit.models.create(model_name, graph=info["graph"], num_classes=len(info["classes"]))
    start = time.perf_counter()
    fit(model, (xtr, ytr), (xte, yte), epochs=epochs, lr=0.05, batch_size=32, seed=seed, progress=False,
        weight_decay=5e-4)
    row = {"accuracy": evaluate(model, (xte, yte))["accuracy"], "train": len(xtr), "test": len(xte),
           "seconds": time.perf_counter() - start, "params": prunekit.count(model, xtr[:1])["params"]}
    print(f"  {model_name} {spec}: accuracy {row['accuracy']:.3f} ({row['seconds']:.0f} s)", flush=True)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--models", default="attention_gcn,stgcn")
    parser.add_argument("--datasets", default="sbu,fpha", help="sbu (5 folds) and/or fpha (1:1 split)")
    parser.add_argument("--difficulty", type=float, help="synthetic FPHA difficulty (default: the tuned one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/dense_skeleton.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cache = tempfile.mkdtemp(prefix="prunekit-bench-")
    results = {"benchmark": "dense_skeleton", "data": "SYNTHETIC (prunekit generator, seed 0)", "epochs": args.epochs,
               "threads": torch.get_num_threads(), "torch": torch.__version__, "models": {}}
    datasets = args.datasets.split(",")
    for name in args.models.split(","):
        entry = results["models"][name] = {}
        if "sbu" in datasets:
            folds = [train_once(name, {"format": "synthetic-sbu", "seed": 0, "fold": k}, cache, args.epochs)
                     for k in range(1, 6)]
            accs = [f["accuracy"] for f in folds]
            entry.update({"sbu_folds": folds, "sbu_mean": statistics.mean(accs), "sbu_std": statistics.stdev(accs)})
            print(f"{name}: SBU 5-fold mean {statistics.mean(accs):.3f} ± {statistics.stdev(accs):.3f} "
                  f"(folds {[round(a, 3) for a in accs]})", flush=True)
        if "fpha" in datasets:
            difficulty = args.difficulty if args.difficulty is not None else prunekit.data.default_difficulty("fpha")
            entry["fpha"] = train_once(name, {"format": "synthetic-fpha", "seed": 0, "difficulty": difficulty}, cache,
                                       args.epochs)
            entry["fpha"]["difficulty"] = difficulty
            print(f"{name}: FPHA 1:1 {entry['fpha']['accuracy']:.3f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
