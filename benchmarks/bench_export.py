"""Exported pruned model: torch eager against onnxruntime on the CPU (issue 16, item 8).

ResNet-20 (CIFAR-10 shape, random weights), its L1-pruned copy at 50 % of the MACs removed
(``select`` with ``Budget(macs=0.5)``, materialized), both exported with
:func:`prunekit.core.export.to_onnx` (dynamo exporter, dynamic batch, checked against the
model), then timed at batch 1 and 64 with one thread:

* ``eager``: the PyTorch module (``torch.set_num_threads(threads)``, eval, no_grad);
* ``onnxruntime``: an ``InferenceSession`` (CPU provider, ``intra_op_num_threads=threads``,
  ``inter_op_num_threads=1``, default graph optimisations ``ORT_ENABLE_ALL``) wrapped in a
  module that converts the input to numpy and the output back (part of the time, as a user
  would pay it);
* ``onnxruntime_extended``: the same with ``ORT_ENABLE_EXTENDED``, i.e. without the layout
  optimisations (``ORT_ENABLE_ALL`` runs convolutions in a channel-blocked ``NCHWc`` layout
  where the channel counts allow it; a pruned model's odd counts may not).

Timings: :func:`prunekit.core.measure.time_in_rounds` (``warmup`` untimed passes, median of
``repeats`` passes, best of ``rounds`` rounds taken in alternation over the four variants),
once keeping the median and once the fastest pass (``min_ms``); and ``cpu_ms``: the fastest
**thread CPU time** (``time.thread_time``) of ``repeats`` passes, which does not count the
time the thread waits for the CPU, the steadier figure on a shared machine (with one thread,
torch and onnxruntime both run on the calling thread). The load average when the run started
is recorded: on a loaded machine wall-clock figures are upper bounds. Every ONNX file is run
against its model first (max |Δ|).

``--multiple-of 1 8`` (issue 14, channel multiples) compares instead the dense model with one
L1 plan per ``k`` (``select(..., multiple_of=k)``, same ``Budget(macs=0.5)``), in eager PyTorch
and onnxruntime (both optimisation levels), batch 1 and 64: every round times every variant in
turn (the order rotating by one each round), and the JSON gives the **median over the rounds**
of each round's median pass (``median_ms``), the best round, the fastest pass and the fastest
thread CPU time, with each plan's kept widths; default output ``results/export_multiple_of.json``.

Usage:
    python benchmarks/bench_export.py [--threads 1] [--repeats 10] [--rounds 3] [--out benchmarks/results/export.json]
    python benchmarks/bench_export.py --multiple-of 1 8 [--rounds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import prunekit
from prunekit.core.export import to_onnx
from prunekit.core.measure import device_name, measure_latency, time_in_rounds

from cputime import cpu_times_ms  # benchmarks/ is on sys.path when a script here runs

BATCHES = (1, 64)


class OnnxRuntimeModule(nn.Module):
    """An onnxruntime session behind an ``nn.Module`` call: numpy in, tensor out."""

    def __init__(self, path: Path, threads: int, level: str = "ORT_ENABLE_ALL"):
        super().__init__()
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, {self.name: x.numpy()})[0])


def cpu_ms(model: nn.Module, x: torch.Tensor, repeats: int, warmup: int, threads: int) -> float:
    """Fastest thread CPU time (ms) of a forward pass."""
    return min(cpu_times_ms(model, x, repeats, threads, warmup))


def pruned_resnet20(seed: int = 0, multiple_of: int = 1) -> tuple[nn.Module, nn.Module, torch.Tensor, dict]:
    torch.manual_seed(seed)
    dense = prunekit.models.create("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    structures = prunekit.find_structures(dense, x)
    scores = prunekit.saliency(dense, structures, None, method="l1")
    plan = prunekit.select(structures, scores, prunekit.Budget(macs=0.5), multiple_of=multiple_of)
    small = prunekit.materialize(dense, plan, structures).eval()
    counts = {name: prunekit.count(m, x) for name, m in (("dense", dense), ("pruned", small))}
    return dense, small, x, {name: {"params": c["params"], "macs": c["macs"]} for name, c in counts.items()}


def _exported(models: dict, x: torch.Tensor, folder: Path, threads: int) -> tuple[dict, dict]:
    """``{name_eager, name_onnxruntime, name_onnxruntime_extended: module}`` and each ONNX file's max |Δ|."""
    variants, max_abs = {}, {}
    probe = torch.randn(4, 3, 32, 32)
    for name, model in models.items():
        path = to_onnx(model, x, folder / f"{name}.onnx")
        variants[f"{name}_eager"] = model
        for suffix, level in (("", "ORT_ENABLE_ALL"), ("_extended", "ORT_ENABLE_EXTENDED")):
            session = OnnxRuntimeModule(path, threads, level)
            with torch.no_grad():
                max_abs[f"{name}{suffix}"] = float((session(probe) - model(probe)).abs().max())
            variants[f"{name}_onnxruntime{suffix}"] = session
    return variants, max_abs


def _rounds(variants: dict, xb: torch.Tensor, args) -> dict:
    """Every round times every variant in turn (start rotating); per variant the round statistics."""
    names = list(variants)
    per: dict = {name: {"median_ms": [], "min_ms": [], "cpu_ms": []} for name in names}
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            stats = measure_latency(variants[name], xb, batch_sizes=[len(xb)], warmup=args.warmup,
                                    repeats=args.repeats, threads=args.threads)["batches"][len(xb)]
            per[name]["median_ms"].append(stats["median_ms"])
            per[name]["min_ms"].append(stats["min_ms"])
            per[name]["cpu_ms"].append(cpu_ms(variants[name], xb, args.repeats, 1, args.threads))
    return {name: {"median_ms": statistics.median(v["median_ms"]), "best_round_ms": min(v["median_ms"]),
                   "min_ms": min(v["min_ms"]), "cpu_ms": min(v["cpu_ms"]), "round_medians_ms": v["median_ms"]}
            for name, v in per.items()}


def _kept_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def main_multiple_of(args) -> None:
    """Dense against the L1 plans with ``multiple_of=k`` for each k, at the same MAC budget."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    models, counts = {}, {}
    for k in args.multiple_of:
        dense, small, x, c = pruned_resnet20(multiple_of=k)
        models.setdefault("dense", dense)
        models[f"k{k}"] = small
        counts.setdefault("dense", c["dense"])
        counts[f"k{k}"] = {**c["pruned"], "macs_removed": 1 - c["pruned"]["macs"] / c["dense"]["macs"],
                           "conv_widths": _kept_widths(small)}
    with tempfile.TemporaryDirectory() as folder:
        variants, max_abs = _exported(models, x, Path(folder), args.threads)
        results = {}
        for b in BATCHES:
            row = results[str(b)] = _rounds(variants, x.repeat(b, 1, 1, 1), args)
            for kind in ("eager", "onnxruntime", "onnxruntime_extended"):
                for k in args.multiple_of:
                    row[f"speedup_k{k}_over_dense_{kind}"] = (row[f"dense_{kind}"]["median_ms"]
                                                               / row[f"k{k}_{kind}"]["median_ms"])
            print(f"batch {b}: " + ", ".join(f"{n} {v['median_ms']:.2f} ms (cpu {v['cpu_ms']:.2f})"
                                             for n, v in row.items() if isinstance(v, dict)), flush=True)
    out = {
        "benchmark": "export_multiple_of", "model": "resnet20",
        "pruning": "l1, Budget(macs=0.5), select(..., multiple_of=k), materialized", "multiple_of": args.multiple_of,
        "counts": counts, "onnx_max_abs_difference": max_abs, "threads": args.threads, "repeats": args.repeats,
        "rounds": args.rounds, "warmup": args.warmup, "statistic": "median over rounds of each round's median pass",
        "torch": torch.__version__, "onnxruntime": ort.__version__, "cpu": device_name("cpu"),
        "platform": platform.platform(), "load_average_1min": load,
        "load_average_1min_end": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "batches": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds taken in alternation (best kept)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed passes before each timing")
    parser.add_argument("--out", help="JSON result file (default results/export.json, or "
                        "results/export_multiple_of.json with --multiple-of)")
    parser.add_argument("--multiple-of", type=int, nargs="+", metavar="K",
                        help="compare the dense model with one plan per select(..., multiple_of=K) instead")
    args = parser.parse_args()
    if args.multiple_of:
        args.out = args.out or "benchmarks/results/export_multiple_of.json"
        return main_multiple_of(args)
    args.out = args.out or "benchmarks/results/export.json"

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    dense, small, x, counts = pruned_resnet20()
    variants, export_s, max_abs = {}, {}, {}
    with tempfile.TemporaryDirectory() as folder:
        for name, model in (("dense", dense), ("pruned", small)):
            t0 = time.perf_counter()
            path = to_onnx(model, x, Path(folder) / f"{name}.onnx")
            export_s[name] = time.perf_counter() - t0
            variants[f"{name}_eager"] = model
            for suffix, level in (("", "ORT_ENABLE_ALL"), ("_extended", "ORT_ENABLE_EXTENDED")):
                session = OnnxRuntimeModule(path, args.threads, level)
                probe = torch.randn(4, 3, 32, 32)
                with torch.no_grad():
                    max_abs[f"{name}{suffix}"] = float((session(probe) - model(probe)).abs().max())
                variants[f"{name}_onnxruntime{suffix}"] = session
        results = {}
        for b in BATCHES:
            xb = x.repeat(b, 1, 1, 1)
            common = dict(rounds=args.rounds, repeats=args.repeats, warmup=args.warmup, threads=args.threads)
            median = time_in_rounds(variants, xb, **common)
            fastest = time_in_rounds(variants, xb, statistic="min_ms", **common)
            results[b] = {name: {"median_ms": median[name], "min_ms": fastest[name],
                                 "cpu_ms": cpu_ms(m, xb, args.repeats, args.warmup, args.threads)}
                          for name, m in variants.items()}
            row = results[b]
            row["speedup_onnxruntime_over_eager_pruned"] = row["pruned_eager"]["median_ms"] / row[
                "pruned_onnxruntime"]["median_ms"]
            row["speedup_onnxruntime_over_eager_pruned_cpu"] = row["pruned_eager"]["cpu_ms"] / row[
                "pruned_onnxruntime"]["cpu_ms"]
            for kind in ("eager", "onnxruntime", "onnxruntime_extended"):
                row[f"speedup_pruned_over_dense_{kind}"] = (row[f"dense_{kind}"]["median_ms"]
                                                            / row[f"pruned_{kind}"]["median_ms"])
                row[f"speedup_pruned_over_dense_{kind}_cpu"] = (row[f"dense_{kind}"]["cpu_ms"]
                                                                / row[f"pruned_{kind}"]["cpu_ms"])
            print(f"batch {b}: " + ", ".join(f"{n} {v['median_ms']:.2f} ms (min {v['min_ms']:.2f}, "
                                             f"cpu {v['cpu_ms']:.2f})"
                                             for n, v in row.items() if isinstance(v, dict)), flush=True)
    out = {
        "benchmark": "export", "model": "resnet20", "pruning": "l1, Budget(macs=0.5), materialized",
        "counts": counts, "macs_removed": 1 - counts["pruned"]["macs"] / counts["dense"]["macs"],
        "export_seconds": export_s, "onnx_max_abs_difference": max_abs, "threads": args.threads,
        "repeats": args.repeats, "rounds": args.rounds, "warmup": args.warmup,
        "torch": torch.__version__, "onnxruntime": ort.__version__, "numpy": np.__version__,
        "cpu": device_name("cpu"), "platform": platform.platform(), "load_average_1min": load,
        "batches": {str(b): r for b, r in results.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
