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

With ``--tables N``, also the latency model's tables (:meth:`prunekit.LatencyModel.measure`) measured
``N`` times with each ``timing`` (``"rounds"``, ``"pairs"``), in turn: the error of their predicted
saving for three fixed L1 plans against the plans' saving timed pass by pass, and how much one
plan's prediction moves from one measurement to the next.

    python benchmarks/bench_timing_noise.py --models resnet56 mobilenetv2 --batch-sizes 1 64 --repeat 10
    python benchmarks/bench_timing_noise.py --models resnet56 --batch-sizes 1 64 --repeat 0 --tables 2
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
from benchmarks.store import machine, write_result  # noqa: E402
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


def run_tables(name: str, b: int, args) -> dict:
    """The latency model's tables measured ``--tables`` times by each timing, in turn: per timing, the
    predicted saving of three fixed L1 plans (MACs 30 / 50 / 70 % removed) against their saving timed pass
    by pass (60 pairs, once per repetition), and the cost of a measurement."""
    torch.manual_seed(0)
    model = prunekit.models.create(name, num_classes=10).eval()
    x = prunekit.models.example_inputs(name, batch=1)
    structures = prunekit.find_structures(model, x)
    scores = prunekit.saliency(model, structures, None, method="l1")
    plans = [prunekit.select(structures, scores, prunekit.Budget(macs=f)) for f in (0.3, 0.5, 0.7)]
    pruned = [prunekit.materialize(model, p, structures).eval() for p in plans]
    out = {timing: {"predicted": [], "seconds": []} for timing in ("rounds", "pairs")}
    measured = []
    for _ in range(args.tables):
        for timing in ("rounds", "pairs"):
            lat = prunekit.LatencyModel.measure(model, x, structures, batch_size=b, threads=args.threads,
                                                rounds=args.rounds, cache_dir=False, timing=timing)
            out[timing]["predicted"].append([lat.saved_fraction(p.removed) for p in plans])
            out[timing]["seconds"].append(lat.cost_s)
        measured.append([1.0 - time_paired(model, m, x, b, pairs=60, threads=args.threads)["ratio"] for m in pruned])
    for part in out.values():
        errors = [abs(p - m) for pred, meas in zip(part["predicted"], measured) for p, m in zip(pred, meas)]
        spreads = [statistics.stdev(column) for column in zip(*part["predicted"])] if args.tables > 1 else []
        part.update({"mean_abs_error": statistics.fmean(errors), "max_abs_error": max(errors),
                     "prediction_std": statistics.fmean(spreads) if spreads else None})
    row = {"model": name, "batch_size": b, "macs_removed": [p.achieved["macs"] for p in plans],
           "measured": measured, **out}
    print(f"{name} b{b} tables: " + "; ".join(
        f"{t} |error| {out[t]['mean_abs_error']:.3f} (max {out[t]['max_abs_error']:.3f}), std of predictions "
        f"{out[t]['prediction_std'] or 0:.3f}, {statistics.fmean(out[t]['seconds']):.0f} s" for t in out), flush=True)
    return row


def markdown(result: dict) -> str:
    lines = ["| model | batch | MACs removed | " + " | ".join(f"{k}: saving mean ± std [range]" for k in TIMINGS)
             + " | dense ms, fastest pass per round |", "|---|---|---|" + "---|" * (len(TIMINGS) + 1)] \
        if result["rows"] else []
    for r in result["rows"]:
        cells = [f"{r[k]['mean']:.1%} ± {r[k]['std']:.1%} [{r[k]['min']:.1%}, {r[k]['max']:.1%}]" for k in TIMINGS]
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['macs_removed']:.0%} | " + " | ".join(cells)
                     + f" | {r['dense_round_ms']['min']:.1f}–{r['dense_round_ms']['max']:.1f} |")
    if result.get("tables"):
        lines += ["", "| model | batch | table timing | mean / max abs. error of the predicted saving (3 plans × "
                  "repetitions) | std of a plan's prediction across repetitions | measure s |", "|---|---|---|---|---|---|"]
        for r in result["tables"]:
            for t in ("rounds", "pairs"):
                p = r[t]
                std = "–" if p["prediction_std"] is None else f"{p['prediction_std']:.1%}"
                lines.append(f"| {r['model']} | {r['batch_size']} | {t} | {p['mean_abs_error']:.1%} / "
                             f"{p['max_abs_error']:.1%} | {std} | {statistics.fmean(p['seconds']):.0f} |")
    return "\n".join(lines) + f"\n\nCommand: `{result['command']}`\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet56"], choices=prunekit.models.names())
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--macs", type=float, default=0.5, help="the plan: this fraction of the MACs removed (L1)")
    parser.add_argument("--repeat", type=int, default=10, help="measurements per timing (0: none)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tables", type=int, default=0,
                        help="also measure the latency model's tables this many times per timing (rounds, pairs)")
    parser.add_argument("--out", default=str(RESULTS / "timing_noise.json"))
    args = parser.parse_args()
    rows = [run_one(name, b, args) for name in args.models for b in args.batch_sizes] if args.repeat else []
    tables = [run_tables(name, b, args) for name in args.models for b in args.batch_sizes] if args.tables else []
    command = ("python benchmarks/bench_timing_noise.py --models " + " ".join(args.models) + " --batch-sizes "
               + " ".join(map(str, args.batch_sizes)) + f" --macs {args.macs} --repeat {args.repeat} --rounds "
               f"{args.rounds} --threads {args.threads}" + (f" --tables {args.tables}" if args.tables else "")
               + (f" --out {args.out}" if Path(args.out) != RESULTS / "timing_noise.json" else ""))
    result = {"benchmark": "timing_noise", "machine": machine(args.threads), "command": command, "rows": rows,
              "tables": tables}
    write_result(Path(args.out), result, markdown)


if __name__ == "__main__":
    main()
