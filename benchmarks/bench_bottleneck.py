"""Expand-pruning (SOSP paper) vs uniform ×1.1 widening at equal parameters, on SYNTHETIC SBU fold 1.

Per seed: train the attention GCN, prune 50 % of its parameters with SOSP-H, read the
layer-wise ratios, widen the bottleneck blocks ×2 (and, as the baseline, every block
×1.1), train both, prune each back to the original pruned parameter count with SOSP-H,
fine-tune every pruned network for the same number of epochs, and compare accuracy.

Usage:
    python benchmarks/bench_bottleneck.py [--seeds 0,1,2] [--epochs 20] [--finetune 6]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

import prunekit
from prunekit.bottleneck import find_bottlenecks, layer_ratios, widen_bottlenecks, widen_uniform
from prunekit.experiment import load_data, prune_and_finetune
from prunekit.report import plot_layer_ratios
from prunekit.train import fit

BASE = {"name": "attention_gcn", "kwargs": {"graph": "sbu", "num_classes": 8, "channels": [32, 32, 64, 64]}}


def train(arch, data, epochs, seed):
    torch.manual_seed(seed)
    model = prunekit.models.create(arch["name"], **arch["kwargs"])
    fit(model, data[0], data[1], epochs=epochs, lr=0.05, batch_size=32, seed=seed, progress=False, weight_decay=5e-4)
    return model.eval()


def prune_to(model, data, params_target, finetune, seed):
    structures = prunekit.find_structures(model, data[0][0][:1])
    fraction = 1 - params_target / structures.total_params
    row = prune_and_finetune(model, structures, data[0], data[1], "sosp-h", prunekit.Budget(params=fraction),
                             finetune_epochs=finetune, lr=0.01, seed=seed)
    return row, structures


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--finetune", type=int, default=6)
    parser.add_argument("--cutoff", type=float, default=0.5)
    parser.add_argument("--out", default="benchmarks/results/bottleneck.json")
    args = parser.parse_args()
    train_data, test_data, _ = load_data({"format": "synthetic-sbu", "seed": 0, "fold": 1},
                                         cache=tempfile.mkdtemp(prefix="prunekit-bn-"))
    data = (train_data, test_data)
    runs = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        dense = train(BASE, data, args.epochs, seed)
        dense_params = prunekit.count(dense, train_data[0][:1])["params"]
        original, structures = prune_to(dense, data, dense_params * 0.5, args.finetune, seed)
        ratios = layer_ratios(structures, original["plan"])
        bottlenecks = find_bottlenecks(structures, original["plan"], cutoff=args.cutoff)
        if seed == 0:
            Path("benchmarks/results").mkdir(parents=True, exist_ok=True)
            plot_layer_ratios(ratios, "benchmarks/results/bottleneck_layer_ratios.png",
                              "SOSP-H layer-wise pruning ratios, attention GCN, 50 % params (synthetic SBU)")
        result = {"seed": seed, "dense_params": dense_params, "target_params": original["params"],
                  "ratios": ratios, "bottlenecks": bottlenecks,
                  "original": {"accuracy": original["accuracy"], "params": original["params"]}}
        for label, arch in (("expand_x2", widen_bottlenecks(BASE, bottlenecks, 2.0)), ("uniform_x1.1", widen_uniform(BASE, 1.1))):
            wide = train(arch, data, args.epochs, seed)
            row, _ = prune_to(wide, data, original["params"], args.finetune, seed)
            result[label] = {"arch": arch["kwargs"]["channels"], "accuracy": row["accuracy"], "params": row["params"],
                             "wide_params": prunekit.count(wide, train_data[0][:1])["params"]}
        runs.append(result)
        print(json.dumps({k: v for k, v in result.items() if k != "ratios"}), flush=True)
    summary = {}
    for label in ("original", "expand_x2", "uniform_x1.1"):
        accs = [r[label]["accuracy"] for r in runs]
        summary[label] = {"mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                          "params_mean": statistics.mean(r[label]["params"] for r in runs)}
    out = {"benchmark": "bottleneck", "data": "SYNTHETIC SBU fold 1", "epochs": args.epochs,
           "finetune": args.finetune, "cutoff": args.cutoff, "runs": runs, "summary": summary}
    Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    _plot(summary, "benchmarks/results/bottleneck_accuracy_vs_params.png")
    print(json.dumps(summary, indent=1))


def _plot(summary, path):
    from prunekit.report import _pyplot
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, item in summary.items():
        ax.errorbar([item["params_mean"]], [item["mean"]], yerr=[item["std"]], marker="o", capsize=4, label=label)
    ax.set_xlabel("parameters after pruning")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
