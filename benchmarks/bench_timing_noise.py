"""How precisely one timing measures a plan's latency saving: rounds of passes against pass-by-pass pairs.

For each model and batch size, an L1 plan removing ``--macs`` of the MACs is materialized, and its
saving over the dense model is measured ``--repeat`` times by each of two timings, taken in turn
(three readings):

- **rounds** (the closed loop's timing before 2026-12-03): ``time_in_rounds`` over the two
  models, ``--rounds`` alternating rounds of ``repeats`` passes each (the latency model's
  ``repeats_used`` rule), fastest pass per round, best round: ``1 − t_plan / t_dense``;
- **pairs** (:func:`prunekit.core.measure.time_paired`): ``max(15, rounds × repeats)`` pairs of
  passes, one of each model, read two ways: the median of the pairs' ratios,
  ``1 − median(t_plan / t_dense)`` (``pairs_median_ratio``), and the fastest pass of each,
  ``1 − min t_plan / min t_dense`` (``pairs_fastest``).

Per timing: mean, standard deviation and range of the measured saving over the repeats (the
spread a closed loop steers through), and the dense model's time across all passes. Both
timings cost about the same machine time (the pairs read once, two ways).

    python benchmarks/bench_timing_noise.py --models resnet56 mobilenetv2 --batch-sizes 1 64 --repeat 10
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import prunekit  # noqa: E402
from benchmarks.store import machine, write_json  # noqa: E402
from prunekit.core.latency import _repeats_for  # noqa: E402
from prunekit.core.measure import time_in_rounds, time_paired  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TIMINGS = ("rounds", "pairs_median_ratio", "pairs_fastest")


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values), "min": min(values), "max": max(values),
            "values": values}


def run_one(name: str, b: int, args) -> dict:
    torch.manual_seed(0)
    model = prunekit.models.create(name, num_classes=10).eval()
    x = prunekit.models.example_inputs(name, batch=1)
    structures = prunekit.find_structures(model, x)
    scores = prunekit.saliency(model, structures, None, method="l1")
    plan = prunekit.select(structures, scores, prunekit.Budget(macs=args.macs))
    pruned = prunekit.materialize(model, plan, structures).eval()
    reps = _repeats_for(model, x, b, args.threads, None)
    pairs = max(15, args.rounds * reps)
    rounds, paired, fastest, dense_ms = [], [], [], []
    start = time.perf_counter()
    for _ in range(args.repeat):
        per_round: list[dict] = []
        ms = time_in_rounds({"dense": model, "plan": pruned}, x, b, rounds=args.rounds, repeats=reps, warmup=2,
                            threads=args.threads, statistic="min_ms", per_round=per_round)
        rounds.append(1.0 - ms["plan"] / ms["dense"])
        dense_ms += [r["dense"] for r in per_round]
        p = time_paired(model, pruned, x, b, pairs=pairs, warmup=2, threads=args.threads)
        paired.append(1.0 - p["ratio"])
        fastest.append(1.0 - p["fastest_ratio"])
    row = {"model": name, "batch_size": b, "macs_removed": plan.achieved["macs"], "repeats_per_round": reps,
           "pairs": pairs, "rounds": _stats(rounds), "pairs_median_ratio": _stats(paired),
           "pairs_fastest": _stats(fastest),
           "dense_round_ms": {"min": min(dense_ms), "max": max(dense_ms)}, "seconds": time.perf_counter() - start}
    print(f"{name} b{b}: " + "; ".join(f"{k} {row[k]['mean']:.3f} ± {row[k]['std']:.3f} [{row[k]['min']:.3f}, "
                                     f"{row[k]['max']:.3f}]" for k in TIMINGS)
          + f"; dense per round {min(dense_ms):.1f}-{max(dense_ms):.1f} ms", flush=True)
    return row


def markdown(result: dict) -> str:
    lines = ["| model | batch | MACs removed | " + " | ".join(f"{k}: saving mean ± std [range]" for k in TIMINGS)
             + " | dense ms, fastest pass per round |", "|---|---|---|" + "---|" * (len(TIMINGS) + 1)]
    for r in result["rows"]:
        cells = [f"{r[k]['mean']:.1%} ± {r[k]['std']:.1%} [{r[k]['min']:.1%}, {r[k]['max']:.1%}]" for k in TIMINGS]
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['macs_removed']:.0%} | " + " | ".join(cells)
                     + f" | {r['dense_round_ms']['min']:.1f}–{r['dense_round_ms']['max']:.1f} |")
    return "\n".join(lines) + f"\n\nCommand: `{result['command']}`\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet56"], choices=prunekit.models.names())
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--macs", type=float, default=0.5, help="the plan: this fraction of the MACs removed (L1)")
    parser.add_argument("--repeat", type=int, default=10, help="measurements per timing")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "timing_noise.json"))
    args = parser.parse_args()
    rows = [run_one(name, b, args) for name in args.models for b in args.batch_sizes]
    command = ("python benchmarks/bench_timing_noise.py --models " + " ".join(args.models) + " --batch-sizes "
               + " ".join(map(str, args.batch_sizes)) + f" --macs {args.macs} --repeat {args.repeat} --rounds "
               f"{args.rounds} --threads {args.threads}")
    result = {"benchmark": "timing_noise", "machine": machine(args.threads), "command": command, "rows": rows}
    out = Path(args.out)
    write_json(out, result)
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
