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

Usage:
    python benchmarks/bench_export.py [--threads 1] [--repeats 10] [--rounds 3] [--out benchmarks/results/export.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

import prunekit
from prunekit.core.export import to_onnx
from prunekit.core.measure import device_name, time_in_rounds

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


def pruned_resnet20(seed: int = 0) -> tuple[nn.Module, nn.Module, torch.Tensor, dict]:
    torch.manual_seed(seed)
    dense = prunekit.models.create("resnet20").eval()
    x = torch.randn(1, 3, 32, 32)
    structures = prunekit.find_structures(dense, x)
    scores = prunekit.saliency(dense, structures, None, method="l1")
    plan = prunekit.select(structures, scores, prunekit.Budget(macs=0.5))
    small = prunekit.materialize(dense, plan, structures).eval()
    counts = {name: prunekit.count(m, x) for name, m in (("dense", dense), ("pruned", small))}
    return dense, small, x, {name: {"params": c["params"], "macs": c["macs"]} for name, c in counts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    parser.add_argument("--repeats", type=int, default=10, help="timed passes per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds taken in alternation (best kept)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed passes before each timing")
    parser.add_argument("--out", default="benchmarks/results/export.json", help="JSON result file")
    args = parser.parse_args()

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
