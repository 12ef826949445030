"""CTF against its baselines on synthetic SBU: a small version of the paper's table.

Protocol (one seed; the SBU test fold holds ~67 sequences, so one sequence = 1.5 points):

1. Synthetic SBU (``prunekit.data.write_sbu``, seed 0), fold 1, default transform.
2. ``attention_gcn`` with channels (16, 32, 32), trained dense for ``--pretrain`` epochs.
3. From that checkpoint, with the same budget of ``--epochs`` + ``--finetune`` epochs each:

   * **ctf** – CTF masks (all four granularities, learnable thresholds) trained for
     ``--epochs`` epochs, finalized, materialized, then fine-tuned ``--finetune`` epochs
     with the remaining zeros frozen;
   * **ctf-fixed** – the same with fixed thresholds (rate 0.9 only);
   * **column-only**, **channel-only** – the structured-only variants, same machinery;
   * **magnitude** – global unstructured magnitude pruning right away, then
     ``--epochs + --finetune`` epochs of fine-tuning with the zeros frozen.

   Rates 0.5 / 0.9 / 0.95 of the prunable weights (every weight but the classifier's).
4. Each row: test accuracy before and after fine-tuning, the removed fraction reached,
   parameters (physical and nonzero), MACs of the materialized model, the part removed
   structurally, median latency (batch 16, 1 thread), what each granularity removed.
5. Training overhead: seconds per epoch with CTF masks / dense (goal ≤ 1.3).

Usage:
    python benchmarks/bench_ctf.py [--rates 0.5 0.9 0.95] [--out benchmarks/results/ctf_quick.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

import prunekit
from prunekit.ctf import CTF, FrozenZeros, magnitude_prune, structured_ctf
from prunekit.data import default_transform, load_sbu, to_tensors, write_sbu
from prunekit.train import evaluate, fit

MODEL = {"name": "attention_gcn", "graph": "sbu", "channels": (16, 32, 32), "num_classes": 8}


def load_data(seed: int = 0):
    root = tempfile.mkdtemp(prefix="sbu_synth_")
    write_sbu(root, seed=seed)
    train, test = load_sbu(root, fold=1)
    transform = default_transform("sbu")
    Xtr, ytr = to_tensors(train, transform)
    Xte, yte = to_tensors(test, transform)
    return Xtr, ytr, Xte, yte


def new_model(state=None):
    torch.manual_seed(0)
    args = dict(MODEL)
    model = prunekit.models.create(args.pop("name"), **args)
    if state is not None:
        model.load_state_dict(state)
    return model


def nonzero_params(model) -> int:
    return sum(int((p != 0).sum()) for p in model.parameters())


def describe(small, plan, data, x_latency, acc_pruned, acc_final, seconds, extra) -> dict:
    counted = prunekit.count(small, x_latency[:1])
    latency = prunekit.measure_latency(small, x_latency, repeats=10, threads=1)
    ms = next(iter(latency["batches"].values()))["median_ms"]
    return {"accuracy_pruned": acc_pruned, "accuracy": acc_final,
            "rate": plan.meta.get("rate", plan.meta.get("ctf", {}).get("rate")),
            "params": counted["params"], "nonzero_params": nonzero_params(small), "macs": counted["macs"],
            "structures_removed": len(plan.removed), "structured_params_removed": plan.achieved["params"],
            "structured_macs_removed": plan.achieved["macs"], "latency_ms_b16": ms, "seconds": seconds, **extra}


def finetune(small, data, epochs, lr, seed=0):
    Xtr, ytr, Xte, yte = data
    frozen = FrozenZeros(small)
    history = fit(small, (Xtr, ytr), (Xte, yte), epochs=epochs, lr=lr, batch_size=32, progress=False, seed=seed)
    frozen.remove()
    return history["eval_accuracy"][-1]


def run_ctf(state, data, rate, epochs, ft_epochs, lr, x_latency, **ctf_kwargs):
    Xtr, ytr, Xte, yte = data
    model = new_model(state)
    start = time.perf_counter()
    granularity = ctf_kwargs.pop("granularity", None)
    if granularity:
        ctf = structured_ctf(model, rate, granularity, example_inputs=Xtr[:2], **ctf_kwargs)
    else:
        ctf = CTF(model, rate, example_inputs=Xtr[:2], **ctf_kwargs)
    fit(model, (Xtr, ytr), (Xte, yte), epochs=epochs, lr=lr, batch_size=32, progress=False, callbacks=[ctf])
    model.eval()
    acc_soft = evaluate(model, (Xte, yte))["accuracy"]
    plan = ctf.finalize()
    acc_pruned = evaluate(model, (Xte, yte))["accuracy"]
    small = prunekit.materialize(model, plan)
    acc_final = finetune(small, data, ft_epochs, lr * 0.4)
    report = ctf.report()
    extra = {"accuracy_soft_masks": acc_soft, "zeroed_by": report["zeroed_by"], "attributed": report["attributed"],
             "rank_fix": report["rank_fix"], "kept_per_epoch": [round(r["binary"], 4) for r in ctf.history],
             "target_per_epoch": [round(r["target"], 4) for r in ctf.history]}
    plan.meta["rate"] = report["rate"]
    return describe(small, plan, data, x_latency, acc_pruned, acc_final, time.perf_counter() - start, extra)


def run_magnitude(state, data, rate, epochs, lr, x_latency):
    Xtr, ytr, Xte, yte = data
    model = new_model(state).eval()
    start = time.perf_counter()
    plan = magnitude_prune(model, rate, example_inputs=Xtr[:2])
    acc_pruned = evaluate(model, (Xte, yte))["accuracy"]
    small = prunekit.materialize(model, plan)
    acc_final = finetune(small, data, epochs, lr)
    return describe(small, plan, data, x_latency, acc_pruned, acc_final, time.perf_counter() - start, {})


def overhead(state, data, epochs=4, rounds=2):
    """Median seconds per training epoch (no evaluation) with CTF masks / dense, rounds alternated."""
    Xtr, ytr, _, _ = data
    times = {"dense": [], "ctf": []}
    for _ in range(rounds):
        for kind in ("dense", "ctf"):
            model = new_model(state)
            callbacks = [CTF(model, 0.9, example_inputs=Xtr[:2])] if kind == "ctf" else []
            history = fit(model, (Xtr, ytr), epochs=epochs, lr=0.05, batch_size=32, progress=False,
                          callbacks=callbacks)
            times[kind].extend(history["seconds"][1:])
    dense, ctf = statistics.median(times["dense"]), statistics.median(times["ctf"])
    return {"dense_s_per_epoch": dense, "ctf_s_per_epoch": ctf, "ratio": ctf / dense, "epochs_timed": len(times["ctf"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.5, 0.9, 0.95])
    parser.add_argument("--pretrain", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--finetune", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--methods", nargs="+",
                        default=["ctf", "magnitude", "column-only", "channel-only", "ctf-fixed"])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ctf_quick.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    data = load_data()
    Xtr, ytr, Xte, yte = data
    x_latency = Xte[:16]
    model = new_model()
    fit(model, (Xtr, ytr), (Xte, yte), epochs=args.pretrain, lr=args.lr, batch_size=32, progress=False)
    state = copy.deepcopy(model.state_dict())
    dense_acc = evaluate(model.eval(), (Xte, yte))["accuracy"]
    dense_count = prunekit.count(model, x_latency[:1])
    dense_latency = next(iter(prunekit.measure_latency(model, x_latency, repeats=10, threads=1)["batches"].values()))
    print(f"dense: acc {dense_acc:.3f}, {dense_count['params']} params, {dense_count['macs']} MACs", flush=True)
    rows = []
    for rate in args.rates:
        for method in args.methods:
            if method == "ctf-fixed" and rate != 0.9:
                continue
            if method == "magnitude":
                row = run_magnitude(state, data, rate, args.epochs + args.finetune, args.lr, x_latency)
            else:
                kwargs = {"ctf": {}, "ctf-fixed": {"thresholds": "fixed"}, "column-only": {"granularity": "column"},
                          "channel-only": {"granularity": "channel"}}[method]
                row = run_ctf(state, data, rate, args.epochs, args.finetune, args.lr, x_latency, **kwargs)
            row = {"method": method, "target_rate": rate, **row}
            rows.append(row)
            print(f"{method:13s} r={rate:.2f}: acc {row['accuracy_pruned']:.3f} -> {row['accuracy']:.3f}, "
                  f"rate {row['rate']:.4f}, nonzero {row['nonzero_params']}, params {row['params']}, "
                  f"MACs {row['macs']}, {row['structures_removed']} structures, "
                  f"{row['latency_ms_b16']:.2f} ms ({row['seconds']:.0f}s)", flush=True)
    cost = overhead(state, data)
    print(f"training overhead: {cost['ratio']:.3f} ({cost['ctf_s_per_epoch']:.2f} / {cost['dense_s_per_epoch']:.2f} s)")
    result = {
        "benchmark": "ctf_quick", "model": {**MODEL, "channels": list(MODEL["channels"])},
        "data": {"dataset": "synthetic SBU (prunekit.data.write_sbu seed 0)", "fold": 1, "train": len(ytr),
                 "test": len(yte)},
        "protocol": {"pretrain_epochs": args.pretrain, "ctf_epochs": args.epochs, "finetune_epochs": args.finetune,
                     "lr": args.lr, "batch_size": 32, "optimizer": "sgd momentum 0.9, cosine", "seed": 0,
                     "magnitude_finetune_epochs": args.epochs + args.finetune},
        "dense": {"accuracy": dense_acc, "params": dense_count["params"], "macs": dense_count["macs"],
                  "latency_ms_b16": dense_latency["median_ms"]},
        "rows": rows, "training_overhead": cost,
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1,
                    "note": "2-core CPU shared with other jobs"},
        "seconds": time.perf_counter() - t0,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out} in {result['seconds']:.0f}s")


if __name__ == "__main__":
    main()
