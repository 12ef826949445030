"""Does a plan's measured saving depend on the process's history? glibc's malloc by default, and pinned.

For each model and batch size, L1 plans removing ``--macs`` of the MACs are materialized and each
is timed pass by pass against the dense model (:func:`prunekit.core.measure.time_paired`,
``--pairs`` pairs) in ``--processes`` fresh processes per allocator regime, the two regimes
alternating: ``default`` (``PRUNEKIT_MALLOC=default``: glibc's moving mmap and trim thresholds)
and ``pinned`` (:func:`prunekit.core.allocator.pin`, what prunekit's CPU timings do). Process ``i``
times the plans in an order rotated by ``i``: the same work, a different history of the heap.
Per regime and plan: the saving's mean, standard deviation and range over the processes, the
minor page faults per pass (dense, plan) and the dense model's median pass.

    python benchmarks/bench_allocator.py --models resnet56 mobilenetv2 --batch-sizes 64 --processes 4
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import prunekit  # noqa: E402
from benchmarks.store import command, machine, write_result  # noqa: E402
from prunekit.core.measure import time_paired  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
REGIMES = ("default", "pinned")


def child(name: str, b: int, macs: list[float], pairs: int, rotate: int, threads: int) -> dict:
    """One process: the plans timed against the dense model, in an order rotated by ``rotate``."""
    torch.manual_seed(0)
    model = prunekit.models.create(name, num_classes=10).eval()
    x = prunekit.models.example_inputs(name, batch=1)
    structures = prunekit.find_structures(model, x)
    scores = prunekit.saliency(model, structures, None, method="l1")
    pruned = {f: prunekit.materialize(model, prunekit.select(structures, scores, prunekit.Budget(macs=f)),
                                      structures).eval() for f in macs}
    order = macs[rotate % len(macs):] + macs[:rotate % len(macs)]
    out = {}
    for f in order:
        p = time_paired(model, pruned[f], x, b, pairs=pairs, warmup=2, threads=threads)
        out[str(f)] = {"saving": 1.0 - p["ratio"], "dense_ms": p["reference_ms"], "faults": p["faults_per_pass"],
                       "allocator": p["allocator"]}
    return out


def _spawn(args, name: str, b: int, regime: str, rotate: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    env.pop("PRUNEKIT_MALLOC", None)
    if regime == "default":
        env["PRUNEKIT_MALLOC"] = "default"
    cmd = [sys.executable, __file__, "--child", "--models", name, "--batch-sizes", str(b), "--pairs", str(args.pairs),
           "--threads", str(args.threads), "--rotate", str(rotate), "--macs", *map(str, args.macs)]
    done = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _stats(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "std": statistics.stdev(xs) if len(xs) > 1 else 0.0,
            "min": min(xs), "max": max(xs), "values": xs}


def run(args) -> dict:
    rows = []
    for name in args.models:
        for b in args.batch_sizes:
            runs = {r: [] for r in REGIMES}
            for i in range(args.processes):
                for regime in (REGIMES if i % 2 == 0 else REGIMES[::-1]):
                    runs[regime].append(_spawn(args, name, b, regime, i))
            for regime, outs in runs.items():
                for f in args.macs:
                    per = [o[str(f)] for o in outs]
                    row = {"model": name, "batch_size": b, "regime": regime, "macs": f,
                           "allocator": sorted({p["allocator"] for p in per}),
                           "saving": _stats([p["saving"] for p in per]),
                           "dense_ms": _stats([p["dense_ms"] for p in per]),
                           "faults_dense": statistics.fmean(p["faults"][0] for p in per),
                           "faults_plan": statistics.fmean(p["faults"][1] for p in per)}
                    rows.append(row)
                    s = row["saving"]
                    print(f"{name} b{b} {regime} macs={f}: saving {s['mean']:.3f} ± {s['std']:.3f} "
                          f"[{s['min']:.3f}, {s['max']:.3f}], faults/pass {row['faults_dense']:.0f} / "
                          f"{row['faults_plan']:.0f}, dense {row['dense_ms']['min']:.0f}-{row['dense_ms']['max']:.0f} ms",
                          flush=True)
    return {"meta": {"command": command(), "machine": machine(args.threads), "processes": args.processes,
                     "pairs": args.pairs}, "rows": rows}


def markdown(result: dict) -> str:
    lines = ["| model | batch | MACs removed (L1) | allocator | saving mean ± std [range] over processes | "
             "faults / pass dense, plan | dense ms (median pass), range |", "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        s, d = r["saving"], r["dense_ms"]
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['macs']:.0%} | {r['regime']} | {s['mean']:.1%} ± "
                     f"{s['std']:.1%} [{s['min']:.1%}, {s['max']:.1%}] | {r['faults_dense']:.0f}, "
                     f"{r['faults_plan']:.0f} | {d['min']:.0f}–{d['max']:.0f} |")
    return "\n".join(lines) + f"\n\nCommand: `{result['meta']['command']}`\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet56"], choices=prunekit.models.names())
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64])
    parser.add_argument("--macs", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--processes", type=int, default=4, help="fresh processes per allocator regime")
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rotate", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS / "allocator.json"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.models[0], args.batch_sizes[0], args.macs, args.pairs, args.rotate, args.threads)))
        return
    start = time.perf_counter()
    result = run(args)
    result["meta"]["seconds"] = time.perf_counter() - start
    write_result(Path(args.out), result, markdown)


if __name__ == "__main__":
    main()
