"""Saliency on several CPU ranks (torch.distributed, gloo): time on 1 and 2 ranks, the speed-up.

For ResNet-56 (3×32×32, 10 classes) and the attention GCN (SBU layout, 8 classes), ``taylor``
and ``sosp-h`` score ``--samples`` random samples in batches of ``--batch``. With ``k`` ranks each
rank scores every ``k``-th sample (``prunekit.pipeline.train.rank_shard``) and the sums are
all-reduced (``prunekit.criteria.distributed``). Every rank runs one thread. Reported per
model, method and number of ranks: the median over ``--repeats`` of the slowest rank's wall
time (a barrier before each run, the reduction included), the speed-up over one rank, and the
largest relative difference of the scores from the one-rank scores (float rounding only).

Run it on an otherwise idle machine with at least as many cores as the largest ``--ranks``.

Usage:
    python benchmarks/bench_distributed.py [--samples 256] [--batch 32] [--repeats 3] [--ranks 1,2]
    python benchmarks/bench_distributed.py --smoke --out /tmp/distributed.json   # a few seconds, checks it runs
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import prunekit
from prunekit.core.measure import device_name
from prunekit.criteria import saliency
from prunekit.pipeline.train import rank_shard

MODELS = {"resnet56": {"num_classes": 10}, "attention_gcn": {}}
METHODS = ("taylor", "sosp-h")


def _case(name: str, samples: int):
    """(model, structures, X, y): the same on every rank."""
    torch.manual_seed(0)
    model = prunekit.models.create(name, **MODELS[name]).eval()
    example = prunekit.models.example_inputs(model, batch=1)
    structures = prunekit.find_structures(model, example)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((samples,) + tuple(example.shape[1:]), generator=g)
    with torch.no_grad():
        classes = model(example).shape[-1]
    y = torch.randint(0, classes, (samples,), generator=g)
    return model, structures, x, y


def _worker(rank: int, world: int, init_file: str, out_dir: str, options: dict) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=1800))
    rows = []
    try:
        for name in options["models"]:
            model, structures, x, y = _case(name, options["samples"])
            xs, ys = rank_shard(x, y)
            data = [(xs[i:i + options["batch"]], ys[i:i + options["batch"]])
                    for i in range(0, len(xs), options["batch"])]
            for method in options["methods"]:
                saliency(model, structures, data[:1], method)  # warm-up (and the same code path)
                times, scores = [], None
                for _ in range(options["repeats"]):
                    if world > 1:
                        dist.barrier()
                    start = time.perf_counter()
                    scores = saliency(model, structures, data, method)
                    elapsed = torch.tensor([time.perf_counter() - start], dtype=torch.float64)
                    if world > 1:
                        dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)  # the slowest rank decides
                    times.append(float(elapsed))
                rows.append({"model": name, "method": method, "ranks": world, "structures": len(structures),
                             "samples": options["samples"], "seconds": statistics.median(times), "all": times,
                             "scores": scores.tolist()})
    finally:
        if world > 1:
            dist.destroy_process_group()
    if rank == 0:
        Path(out_dir, f"world{world}.json").write_text(json.dumps(rows))


def run_world(world: int, options: dict) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(_worker, args=(world, os.path.join(tmp, "init"), tmp, options), nprocs=world,
                           start_method="spawn")
        return json.loads(Path(tmp, f"world{world}.json").read_text())


def summarise(rows: list[dict]) -> list[dict]:
    """One row per model, method and number of ranks, with the speed-up and the scores' difference."""
    base = {(r["model"], r["method"]): r for r in rows if r["ranks"] == 1}
    out = []
    for r in rows:
        one = base.get((r["model"], r["method"]))
        a, b = torch.tensor(r["scores"]), torch.tensor(one["scores"]) if one else None
        diff = float(((a - b).abs() / b.abs().clamp(min=1e-30)).max()) if one is not None else None
        out.append({k: v for k, v in r.items() if k != "scores"}
                   | {"speedup": one["seconds"] / r["seconds"] if one else None, "max_rel_diff_vs_1_rank": diff})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ranks", default="1,2", help="numbers of ranks, comma-separated (1 first)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--smoke", action="store_true", help="8 samples, 1 repeat: checks that it runs")
    parser.add_argument("--out", default="benchmarks/results/distributed.json")
    args = parser.parse_args()
    options = {"samples": 8 if args.smoke else args.samples, "batch": 4 if args.smoke else args.batch,
               "repeats": 1 if args.smoke else args.repeats, "models": args.models.split(","),
               "methods": args.methods.split(",")}
    worlds = [int(k) for k in args.ranks.split(",")]
    rows = [row for world in worlds for row in run_world(world, options)]
    result = {"benchmark": "distributed", "machine": device_name("cpu"), "platform": platform.platform(),
              "cpus": os.cpu_count(), "torch": torch.__version__, "threads_per_rank": 1, "backend": "gloo",
              "smoke": args.smoke, **{k: v for k, v in options.items() if k not in ("models", "methods")},
              "rows": summarise(rows)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for r in result["rows"]:
        speedup = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        print(f"{r['model']:14s} {r['method']:7s} ranks {r['ranks']}  {r['seconds']:8.2f} s  speed-up {speedup}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
