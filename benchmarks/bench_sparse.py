"""Sparse vs dense inference for entry-wise sparse weights (issue 5, item 3).

CTF's entry masks leave exact zeros in the kept weights. This benchmark asks at which
rate of zeros storing the weights sparse (:func:`prunekit.core.sparse.sparsify`) beats the
dense kernels on the CPU:

* **model**: the attention GCN (``attention_gcn``, graph ``sbu``, 8 classes, input
  ``example_inputs(model, batch=B)`` = ``[B, 3, 32, 30]``) with a random ``rate`` of
  the entries of every prunable weight (dim ≥ 2, not the classifier) set to zero, for
  ``rate`` in 0.5 … 0.99. Timed (``min_sparsity=0.25``: every ``Conv2d`` is eligible,
  the dense classifier is not): the dense model; ``sparsify(measure=False)`` (every
  eligible layer converted) with CSR and with COO weights; ``sparsify(measure=True)``
  with CSR and with COO (each layer converted only where it timed faster on its real
  input at that batch);

      speedup = dense median / sparse median   (> 1: sparse faster)

* **micro**: one 1×1 convolution 64→64 and 128→128 on a ``[B, C, 32, 30]`` activation
  (the GCN's frames × joints): dense ``nn.Conv2d`` (what the models run), the same
  product as a dense GEMM (``torch.matmul(W, x.view(B, C, -1))``, a reference for how
  fast dense can be), and ``SparseConv2d`` (CSR, COO).

All timings: :func:`prunekit.measure_latency`, ``threads`` threads, batch 1 and 16,
median of ``repeats`` passes, best of ``rounds`` rounds taken in alternation (so slow
drifts of a shared machine hit every variant alike); the fastest single pass (``min``)
and the median **thread CPU time** of a pass (``time.thread_time``, best of the rounds)
are recorded too: on a loaded machine a long pass is far more likely to be preempted
than a short one, which inflates wall-clock speed-ups of fast variants, while the
thread's CPU time does not count the time it waits. Every sparse model's
output is checked against the dense one (max |Δ| / max |y|).

Usage:
    python benchmarks/bench_sparse.py [--repeats 8] [--rounds 3] [--threads 1] [--out benchmarks/results/sparse.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import prunekit
from prunekit.core.sparse import SparseConv2d, sparsify
from prunekit.core.measure import device_name

from cputime import cpu_times_ms  # benchmarks/ is on sys.path when a script here runs

RATES = (0.5, 0.7, 0.9, 0.95, 0.98, 0.99)
BATCHES = (1, 16)
MODEL_VARIANTS = ("forced_csr", "forced_coo", "measured_csr", "measured_coo")
MICRO_VARIANTS = ("dense_gemm", "csr", "coo")


def zero_entries(model: nn.Module, rate: float, seed: int = 0) -> nn.Module:
    """Zero a random ``rate`` of every prunable weight (dim ≥ 2) except the classifier ``fc``, in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 and not name.startswith("fc."):
                p.mul_(torch.rand(p.shape, generator=gen) >= rate)
    return model


def cpu_ms(model: nn.Module, x, repeats: int, threads: int) -> float:
    """Median thread CPU time (ms) of a forward pass (:func:`cputime.cpu_times_ms`)."""
    return statistics.median(cpu_times_ms(model, x, repeats, threads))


def time_in_rounds(named_models: dict, x, batch: int, repeats: int, threads: int, rounds: int) -> dict:
    """Per model at ``batch``: wall-clock median (ms, :func:`prunekit.measure_latency`), best
    of ``rounds`` alternating rounds, the fastest pass, and the best median thread CPU time."""
    best: dict = {}
    for _ in range(rounds):
        for name, model in named_models.items():
            stats = prunekit.measure_latency(model, x, batch_sizes=[batch], warmup=3, repeats=repeats,
                                             threads=threads)["batches"][batch]
            cpu = cpu_ms(model.eval(), x, repeats, threads)
            if name not in best:
                best[name] = {"median_ms": stats["median_ms"], "iqr_ms": stats["iqr_ms"], "min_ms": stats["min_ms"],
                              "cpu_ms": cpu}
            elif stats["median_ms"] < best[name]["median_ms"]:
                best[name].update(median_ms=stats["median_ms"], iqr_ms=stats["iqr_ms"])
            best[name]["min_ms"] = min(best[name]["min_ms"], stats["min_ms"])
            best[name]["cpu_ms"] = min(best[name]["cpu_ms"], cpu)
    return best


def summarise(t: dict) -> dict:
    """ms / iqr / min / cpu ms per variant and speed-ups (dense / variant) of wall medians,
    of wall minima and of thread CPU times."""
    dense = t["dense"]
    return {"ms": {k: v["median_ms"] for k, v in t.items()},
            "iqr_ms": {k: v["iqr_ms"] for k, v in t.items()},
            "min_ms": {k: v["min_ms"] for k, v in t.items()},
            "cpu_ms": {k: v["cpu_ms"] for k, v in t.items()},
            "speedup": {k: dense["median_ms"] / v["median_ms"] for k, v in t.items() if k != "dense"},
            "speedup_of_min": {k: dense["min_ms"] / v["min_ms"] for k, v in t.items() if k != "dense"},
            "speedup_cpu": {k: dense["cpu_ms"] / v["cpu_ms"] for k, v in t.items() if k != "dense"}}


class DenseGemm1x1(nn.Module):
    """A dense 1×1 convolution as one batched GEMM: ``W [C_o, C_i] @ x [B, C_i, H·W]`` (+ bias)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.register_buffer("weight", conv.weight.detach().flatten(1).clone())
        self.register_buffer("bias", conv.bias.detach().clone())

    def forward(self, x):
        n, _, h, w = x.shape
        return (torch.matmul(self.weight, x.view(n, x.shape[1], h * w)) + self.bias.view(-1, 1)).view(n, -1, h, w)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def bench_model(rates, batches, repeats, rounds, threads) -> list[dict]:
    rows = []
    for rate in rates:
        torch.manual_seed(0)
        model = zero_entries(prunekit.models.create("attention_gcn", graph="sbu", num_classes=8).eval(), rate)
        forced = {layout: sparsify(model, min_sparsity=0.25, measure=False, layout=layout)[0].eval()
                  for layout in ("csr", "coo")}
        for b in batches:
            x = prunekit.models.example_inputs(model, batch=b)
            measured, reports = {}, {}
            for layout in ("csr", "coo"):
                m, reports[layout] = sparsify(model, min_sparsity=0.25, example_inputs=x, measure=True,
                                              layout=layout, threads=threads, repeats=repeats)
                measured[layout] = m.eval()
            report = reports["coo"]
            variants = {"dense": model, "forced_csr": forced["csr"], "forced_coo": forced["coo"],
                        "measured_csr": measured["csr"], "measured_coo": measured["coo"]}
            with torch.no_grad():
                ref = model(x)
                errs = {k: rel_err(m(x), ref) for k, m in variants.items() if k != "dense"}
            t = time_in_rounds(variants, x, b, repeats, threads, rounds)
            layers = [r for r in report if r["dense_ms"] is not None]
            row = {"rate": rate, "batch": b,
                   "sparsity": sum(r["sparsity"] for r in layers) / max(len(layers), 1),
                   **summarise(t),
                   "max_rel_err": errs,
                   "measured_converted": {k: [r["name"] for r in rep if r["converted"]] for k, rep in reports.items()},
                   "measured_candidates": len(layers),
                   # per-layer timings of sparsify(measure=True, layout="coo"): how much of the
                   # model's time the eligible layers take, dense and sparse
                   "layers_dense_ms_sum": sum(r["dense_ms"] for r in layers),
                   "layers_sparse_ms_sum": sum(r["sparse_ms"] for r in layers),
                   "layers": [{k: r[k] for k in ("name", "sparsity", "dense_ms", "sparse_ms", "converted")}
                              for r in report]}
            rows.append(row)
            print(f"model rate {rate:<4} b{b:<2}  dense {row['ms']['dense']:7.2f} ms | " + " | ".join(
                f"{k} {row['ms'][k]:7.2f} ms ({row['speedup'][k]:.2f}x)" for k in MODEL_VARIANTS)
                + f" | converted coo {len(row['measured_converted']['coo'])}/{len(layers)}", flush=True)
    return rows


def bench_micro(rates, batches, repeats, rounds, threads) -> list[dict]:
    rows = []
    for c in (64, 128):
        for rate in rates:
            torch.manual_seed(0)
            conv = zero_entries(nn.Sequential(nn.Conv2d(c, c, 1)), rate).eval()
            variants = {"dense": conv, "dense_gemm": DenseGemm1x1(conv[0]),
                        "csr": nn.Sequential(SparseConv2d.from_dense(conv[0], layout="csr")),
                        "coo": nn.Sequential(SparseConv2d.from_dense(conv[0], layout="coo"))}
            for b in batches:
                x = torch.randn(b, c, 32, 30)
                t = time_in_rounds(variants, x, b, repeats, threads, rounds)
                row = {"layer": f"conv1x1 {c}->{c}", "input": [b, c, 32, 30], "rate": rate, "batch": b, **summarise(t)}
                rows.append(row)
                print(f"micro {row['layer']:<18} rate {rate:<4} b{b:<2}  dense {row['ms']['dense']:7.3f} ms | " + " | ".join(
                    f"{k} {row['ms'][k]:7.3f} ms ({row['speedup'][k]:.2f}x)" for k in MICRO_VARIANTS), flush=True)
    return rows


def table(result: dict) -> str:
    """Markdown tables: wall median ms (speed-up of wall medians; speed-up of thread CPU times)."""
    def cell(r, k, fmt):
        return f"{r['ms'][k]:{fmt}} ({r['speedup'][k]:.2f}x; {r['speedup_cpu'][k]:.2f}x)"

    lines = ["attention_gcn (sbu): wall median ms (speed-up: of wall medians; of thread CPU times)", "",
             "| rate | batch | dense | forced CSR | forced COO | measured CSR | measured COO | converted CSR/COO | conv layers dense/sparse ms |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["model"]:
        conv = r["measured_converted"]
        lines.append(f"| {r['rate']} | {r['batch']} | {r['ms']['dense']:.2f} | "
                     + " | ".join(cell(r, k, ".2f") for k in MODEL_VARIANTS)
                     + f" | {len(conv['csr'])}/{len(conv['coo'])} of {r['measured_candidates']}"
                     + f" | {r['layers_dense_ms_sum']:.2f}/{r['layers_sparse_ms_sum']:.2f} |")
    lines += ["", "1×1 conv on [B, C, 32, 30]: wall median ms (speed-up vs nn.Conv2d: of wall medians; of thread CPU times)", "",
              "| layer | rate | batch | nn.Conv2d | dense GEMM | CSR | COO |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["micro"]:
        lines.append(f"| {r['layer']} | {r['rate']} | {r['batch']} | {r['ms']['dense']:.3f} | "
                     + " | ".join(cell(r, k, ".3f") for k in MICRO_VARIANTS) + " |")
    return "\n".join(lines)


def run(rates=RATES, batches=BATCHES, repeats=8, rounds=3, threads=1) -> dict:
    start = time.perf_counter()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    micro = bench_micro(rates, batches, repeats, rounds, threads)
    model = bench_model(rates, batches, repeats, rounds, threads)
    return {"benchmark": "sparse", "machine": platform.machine(), "processor": device_name("cpu"),
            "cpu_count": os.cpu_count(), "load_average_at_start": load, "threads": threads,
            "torch": torch.__version__, "mkl": torch.backends.mkl.is_available(), "repeats": repeats,
            "rounds": rounds, "timing": f"median of {repeats} passes, best of {rounds} alternating rounds",
            "model": model, "micro": micro, "wall_s": time.perf_counter() - start}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rates", type=float, nargs="+", default=list(RATES))
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--out", default="benchmarks/results/sparse.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = run(tuple(args.rates), tuple(args.batches), args.repeats, args.rounds, args.threads)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"wrote {args.out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
