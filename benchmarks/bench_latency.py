"""Latency budgets (CPU, one thread): requested vs measured latency reduction.

For each model (``--models``, default ResNet-56) and batch size, a :class:`prunekit.LatencyModel`
is measured (its cost recorded), L1 scores select per target one plan under
``Budget(latency=f)`` (open loop: the latency model's prediction), one with
:func:`prunekit.select_to_latency` (closed loop: the plan is timed and the request
corrected, ``--loop-rounds`` at most; ``latency-loop`` rows) and one under
``Budget(macs=f)``; the dense model and all materialized plans are then timed
together in alternating rounds (:func:`prunekit.core.measure.time_in_rounds`: every round
times every model once, fastest pass per round, best of ``--rounds``), so a load change
of the shared machine hits all of them alike. Reported per row: the requested fraction,
the measured latency reduction ``1 − t_pruned / t_dense``, their ratio, the latency
model's predicted reduction and its error (predicted − measured, and predicted ms /
measured ms − 1, against the dense latency measured at table time).

Command:
    python benchmarks/bench_latency.py            # JSON + markdown in benchmarks/results/latency.*
    python benchmarks/bench_latency.py --models resnet56 vgg16 mobilenetv2 attention_gcn --out F.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import prunekit
from prunekit.core.measure import time_in_rounds

RESULTS = Path(__file__).resolve().parent / "results"


KINDS = ("latency", "latency-loop", "macs")


def _plan(kind, f, model, structures, scores, lat, x, loop_rounds, rounds):
    if kind == "latency-loop":
        return prunekit.select_to_latency(model, structures, scores, f, lat, x, rounds=loop_rounds,
                                          check_rounds=rounds)
    return prunekit.select(structures, scores, prunekit.Budget(**{kind: f}), latency=lat)


def run(batch_sizes=(1, 64), targets=(0.3, 0.5, 0.7), rounds=3, threads=1, cache_dir=False, name="resnet56",
        loop_rounds=4):
    torch.manual_seed(0)
    model = prunekit.models.create(name, num_classes=10).eval()
    x = prunekit.models.example_inputs(name, batch=1)
    structures = prunekit.find_structures(model, x)
    scores = prunekit.saliency(model, structures, None, method="l1")
    rows, models_info = [], {}
    for b in batch_sizes:
        start = time.perf_counter()
        lat = prunekit.LatencyModel.measure(model, x, structures, batch_size=b, threads=threads, rounds=rounds,
                                            cache_dir=cache_dir, verbose=True)
        measure_s = time.perf_counter() - start
        models_info[b] = {"dense_ms": lat.dense_ms, "floor_ms": lat.floor_ms, "constant_ms": lat.constant_ms,
                          "additivity_error_at_floor": lat.additivity_error,
                          "multiplicative_error_at_floor": lat.measured.get("floor_multiplicative_error"),
                          "classes": len(lat.measured["classes"]), "timed_models": sum(isinstance(v, float) for k, v in lat.measured.items()
                                             if k != "floor_multiplicative_error"),
                          "repeats_used": lat.measured["settings_used"].get("repeats_used"),
                          "measure_s": measure_s}
        named, plans = {"dense": model}, {}
        for f in targets:
            for kind in KINDS:
                try:
                    plan = _plan(kind, f, model, structures, scores, lat, x, loop_rounds, rounds)
                except prunekit.BudgetError as error:
                    print(f"b{b} {kind}={f}: {error}", flush=True)
                    continue
                plans[(kind, f)] = plan
                named[f"{kind}{f}"] = prunekit.materialize(model, plan, structures).eval()
        ms = time_in_rounds(named, x, b, rounds=rounds, repeats=lat.measured["settings_used"]["repeats_used"],
                            warmup=2, threads=threads, statistic="min_ms")
        for (kind, f), plan in plans.items():
            measured = 1.0 - ms[f"{kind}{f}"] / ms["dense"]
            predicted = lat.saved_fraction(plan.removed)
            counted = prunekit.count(named[f"{kind}{f}"], x)
            row = {"model": name, "batch_size": b, "budget": kind, "requested": f, "measured_reduction": measured,
                   "ratio_measured_requested": measured / f, "predicted_reduction": predicted,
                   "prediction_error": predicted - measured,
                   "prediction_error_ms_rel": lat.predict(plan.removed) / ms[f"{kind}{f}"] - 1.0,
                   "dense_ms_now": ms["dense"], "pruned_ms": ms[f"{kind}{f}"],
                   "macs_removed": plan.achieved["macs"], "params_removed": plan.achieved["params"],
                   "macs": counted["macs"], "params": counted["params"],
                   "min_width": min(len(g.members) - len(set(g.members) & set(plan.removed))
                                    for g in structures.groups)}
            if "latency_loop" in plan.meta:
                row["loop_rounds"] = plan.meta["latency_loop"]["rounds"]
            rows.append(row)
            print(f"{name} b{b} {kind}={f}: measured -{measured:.1%} (ratio {measured / f:.2f}), predicted "
                  f"-{predicted:.1%}, MACs -{plan.achieved['macs']:.1%}", flush=True)
    return {"benchmark": "latency", "model": name, "scores": "l1", "threads": threads,
            "machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
            "timing": f"fastest pass per round, best of {rounds} alternating rounds (dense and all plans of a "
                      "batch size timed in turn); shared 2-core machine",
            "latency_models": {f"{name} b{b}": m for b, m in models_info.items()}, "rows": rows}


def markdown(result) -> str:
    lines = [f"# Latency budgets: {result['model']}, CPU, {result['threads']} thread, L1 scores", "",
             f"Timing: {result['timing']}. torch {result['torch']}.", "",
             "| model, batch | dense ms | floor ms (measured) | additive err. at floor | mult. err. at floor | classes "
             "| models timed | measure s |", "|---|---|---|---|---|---|---|---|"]
    for b, m in result["latency_models"].items():
        lines.append(f"| {b} | {m['dense_ms']:.2f} | {m['floor_ms']:.2f} | {m['additivity_error_at_floor']:+.2f} | "
                     f"{m['multiplicative_error_at_floor']:+.2f} | {m['classes']} | {m['timed_models']} | "
                     f"{m['measure_s']:.0f} |")
    lines += ["", "| model | batch | budget | requested | measured reduction | measured/requested | predicted | "
              "pred. error | MACs removed | min width |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r.get('model', result['model'])} | {r['batch_size']} | {r['budget']} | {r['requested']:.0%} | {r['measured_reduction']:.1%} | "
                     f"{r['ratio_measured_requested']:.2f} | {r['predicted_reduction']:.1%} | "
                     f"{r['prediction_error']:+.1%} | {r['macs_removed']:.1%} | {r['min_width']} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["resnet56"], choices=prunekit.models.names())
    parser.add_argument("--loop-rounds", type=int, default=4, help="closed loop: at most this many plans timed")
    parser.add_argument("--out", default=str(RESULTS / "latency.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    parts = [run(args.batch_sizes, args.targets, args.rounds, args.threads, name=name, loop_rounds=args.loop_rounds)
             for name in args.models]
    result = {**parts[0], "model": ", ".join(args.models), "rows": [r for p in parts for r in p["rows"]],
              "latency_models": {k: v for p in parts for k, v in p["latency_models"].items()}}
    result["seconds"] = time.perf_counter() - start
    result["command"] = "python benchmarks/bench_latency.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items() if k != "out")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result) + f"\nCommand: `{result['command']}` "
                                                         f"({result['seconds']:.0f} s).\n")
    print(markdown(result))
    print(f"command: {result['command']}  ({result['seconds']:.0f} s) -> {out}")


if __name__ == "__main__":
    main()
