"""Latency budgets (CPU, one thread; or ``--device cuda``): requested vs measured latency reduction.

For each model (``--models``, default ResNet-56) and batch size, a :class:`prunekit.LatencyModel`
is measured (its cost recorded), L1 scores select per target one plan under
``Budget(latency=f)`` (open loop: the latency model's prediction), one with
:func:`prunekit.select_to_latency` (closed loop: the plan is timed and the request
corrected, ``--loop-rounds`` at most; ``latency-loop`` rows; with ``--no-hold-ablation`` the
same loop again with ``avoid_steps=False`` on the same tables, ``latency-loop-nohold`` rows) and one under
``Budget(macs=f)``; per batch size, what ``LatencyModel.measure(multiple_of="auto")`` would
choose (:func:`prunekit.core.latency.probe_steps`, in ``latency_models[...]["steps"]``). Each
materialized plan is then timed **pass by pass against the dense model**
(:func:`prunekit.core.measure.time_paired`: ``max(30, 2 × rounds × repeats)`` pairs, the median
of the pairs' time ratios), a timing independent of the loop's own: the ``measured`` columns.
The dense model and all plans of a batch size are also timed together in one rotation
(``*_rotation`` fields; one dense reference for every plan, so a drift of the dense model's
time moves every row of the batch size alike).
Reported per row: the requested fraction, the measured latency reduction
``1 − median(t_pruned / t_dense)``, their ratio, the latency model's predicted reduction and its
error (predicted − measured, and predicted ms / measured ms − 1).

Command:
    python benchmarks/bench_latency.py            # JSON + markdown in benchmarks/results/latency.*
    python benchmarks/bench_latency.py --models resnet56 vgg16 mobilenetv2 attention_gcn --out F.json
    python benchmarks/bench_latency.py --device cuda --batch-sizes 64 512 --out F.json   # GPU: every timing synchronized
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import prunekit
from prunekit.core import allocator
from prunekit.core.latency import probe_steps
from prunekit.core.measure import device_name, time_in_rounds, time_paired, with_batch

RESULTS = Path(__file__).resolve().parent / "results"


KINDS = ("latency", "latency-loop", "macs")


def _plans(f, model, structures, scores, lats, x, loop_rounds, rounds, relax, nohold=False):
    """``{kind: plan}`` for one target: open loop, closed loop, MACs, the closed loop on tables sampled
    at channel multiples (``latency-loop-x<k>``), and where the closed loop reports the target out of
    reach, the closed loop again with ``max_group_ratio=relax`` (``latency-loop-relaxed``)."""
    lat = lats[1]
    out = {}
    for kind in KINDS:
        try:
            if kind == "latency-loop":
                out[kind] = prunekit.select_to_latency(model, structures, scores, f, lat, x, rounds=loop_rounds,
                                                       check_rounds=rounds)
            else:
                out[kind] = prunekit.select(structures, scores, prunekit.Budget(**{kind: f}), latency=lat)
        except prunekit.BudgetError as error:
            print(f"{kind}={f}: {error}", flush=True)
    if nohold:  # the ablation: the same loop without holding a group at a latency step
        out["latency-loop-nohold"] = prunekit.select_to_latency(model, structures, scores, f, lat, x,
                                                                rounds=loop_rounds, check_rounds=rounds,
                                                                avoid_steps=False)
    for k, lat_k in lats.items():
        if k > 1:
            out[f"latency-loop-x{k}"] = prunekit.select_to_latency(model, structures, scores, f, lat_k, x,
                                                                   rounds=loop_rounds, check_rounds=rounds)
    loop = out.get("latency-loop")
    if relax and loop is not None and not loop.meta["latency_loop"]["reachable"]:
        out["latency-loop-relaxed"] = prunekit.select_to_latency(model, structures, scores, f, lat, x,
                                                                 rounds=loop_rounds, check_rounds=rounds,
                                                                 max_group_ratio=relax)
    return out


def _row(name, b, kind, f, plan, lat, ms, pair, pruned, structures, x) -> dict:
    """One row; ``pair`` is the plan's own timing against the dense model, ``ms`` the rotation's."""
    measured = 1.0 - pair["ratio"]
    rotation = 1.0 - ms[f"{kind}{f}"] / ms["dense"]
    predicted = lat.saved_fraction(plan.removed)
    counted = prunekit.count(pruned, x)
    widths = plan.kept_widths(structures).values()
    row = {"model": name, "batch_size": b, "budget": kind, "requested": f, "measured_reduction": measured,
           "ratio_measured_requested": measured / f, "predicted_reduction": predicted,
           "prediction_error": predicted - measured,
           "prediction_error_ms_rel": lat.predict(plan.removed) / pair["candidate_min_ms"] - 1.0,  # tables: fastest
           "dense_ms_now": pair["reference_ms"], "pruned_ms": pair["candidate_ms"], "pairs": pair["pairs"],
           "ratio_iqr": pair["ratio_iqr"],
           "measured_reduction_rotation": rotation, "ratio_rotation": rotation / f,
           "dense_ms_rotation": ms["dense"], "pruned_ms_rotation": ms[f"{kind}{f}"],
           "macs_removed": plan.achieved["macs"], "params_removed": plan.achieved["params"],
           "macs": counted["macs"], "params": counted["params"], "min_width": min(widths),
           "max_group_ratio": plan.meta["selection"]["max_group_ratio"],
           "multiple_of": plan.meta["selection"]["multiple_of"]}
    if "latency_loop" in plan.meta:
        loop = plan.meta["latency_loop"]
        row["loop_rounds"] = loop["rounds"]
        row.update({f"loop_{k}": loop[k] for k in ("chosen", "stopped", "dense_spread", "steady", "steps")})
        row["reachable"] = loop["reachable"]
    return row


def run(batch_sizes=(1, 64), targets=(0.3, 0.5, 0.7), rounds=3, threads=1, cache_dir=False, name="resnet56",
        loop_rounds=4, multiples=(), relax=None, nohold=False, device="cpu"):
    torch.manual_seed(0)
    model = prunekit.models.create(name, num_classes=10).eval().to(device)
    x = prunekit.models.example_inputs(name, batch=1).to(device)
    structures = prunekit.find_structures(model, x)
    scores = prunekit.saliency(model, structures, None, method="l1")
    rows, models_info = [], {}
    for b in batch_sizes:
        lats = {}
        for k in (1, *multiples):
            start = time.perf_counter()
            lats[k] = prunekit.LatencyModel.measure(model, x, structures, batch_size=b, threads=threads,
                                                    device=device, rounds=rounds, cache_dir=cache_dir, verbose=True, multiple_of=k)
            lat = lats[k]
            models_info[f"b{b}" if k == 1 else f"b{b} x{k}"] = {
                "dense_ms": lat.dense_ms, "floor_ms": lat.floor_ms, "constant_ms": lat.constant_ms,
                "additivity_error_at_floor": lat.additivity_error,
                "multiplicative_error_at_floor": lat.measured.get("floor_multiplicative_error"),
                "classes": len(lat.measured["classes"]),
                "timed_models": sum(isinstance(v, float) for key, v in lat.measured.items()
                                    if key != "floor_multiplicative_error"),
                "repeats_used": lat.measured["settings_used"].get("repeats_used"),
                "measure_s": time.perf_counter() - start, "multiple_of": k}
        lat = lats[1]
        start = time.perf_counter()
        steps = probe_steps(model, structures, with_batch(x, b), b, threads=threads, device=device, rounds=rounds)
        models_info[f"b{b}"]["steps"] = {**steps, "seconds": time.perf_counter() - start}
        print(f"{name} b{b} step probe: multiple_of {steps['multiple_of']}, excess "
              f"{[round(p['excess'], 4) for p in steps['probes']]}", flush=True)
        named, plans = {"dense": model}, {}
        for f in targets:
            for kind, plan in _plans(f, model, structures, scores, lats, x, loop_rounds, rounds, relax,
                                     nohold).items():
                plans[(kind, f)] = plan
                named[f"{kind}{f}"] = prunekit.materialize(model, plan, structures).eval()
        timing = dict(rounds=rounds, repeats=lat.measured["settings_used"]["repeats_used"], warmup=2, threads=threads,
                      statistic="min_ms")
        ms = time_in_rounds(named, x, b, **timing)
        for (kind, f), plan in plans.items():
            k = plan.meta["selection"]["multiple_of"]
            pair = time_paired(model, named[f"{kind}{f}"], x, b, pairs=max(30, 2 * rounds * timing["repeats"]),
                               warmup=2, threads=threads)
            row = _row(name, b, kind, f, plan, lats.get(k, lat), ms, pair, named[f"{kind}{f}"], structures, x)
            rows.append(row)
            print(f"{name} b{b} {kind}={f}: measured -{row['measured_reduction']:.1%} (ratio "
                  f"{row['ratio_measured_requested']:.2f}), predicted -{row['predicted_reduction']:.1%}, "
                  f"MACs -{plan.achieved['macs']:.1%}", flush=True)
    return {"benchmark": "latency", "model": name, "scores": "l1", "threads": threads, "allocator": allocator.regime(),
            "device": str(device), "device_name": device_name(device),
            "machine": platform.machine(), "processor": platform.processor(), "torch": torch.__version__,
            "timing": "each plan pass by pass against the dense model, median of the pairs' time ratios "
                      f"(time_paired); the *_rotation fields: dense and all plans of a batch size timed in turn, "
                      f"fastest pass per round, best of {rounds} rounds; "
                      + ("2-core machine" if str(device) == "cpu" else "each pass synchronized"),
            "latency_models": {f"{name} {b}": m for b, m in models_info.items()}, "rows": rows}


def step_bracket(row, tolerance: float = 0.03) -> bool:
    """Whether a closed loop's rounds ever bracketed the window with a step-shaped gap
    (``prunekit.core.latency_loop._find_step`` on the recorded rounds, after each round), held or
    not: a kernel switch or, on a noisy machine, two timings of neighbouring plans that disagree."""
    from prunekit.core.latency_loop import _find_step
    history = row.get("loop_rounds") or []
    return any(_find_step(history, None, list(range(k)), row["requested"], tolerance) is not None
               for k in range(1, len(history) + 1))


def summary(rows) -> list[dict]:
    """Per budget kind: rows, rows with measured / requested >= 0.9, within +-10 % of the request (paired
    timing; ``*_rotation``: the rotation's), mean and max |prediction error| (points)."""
    out = []
    for kind in dict.fromkeys(r["budget"] for r in rows):
        part = [r for r in rows if r["budget"] == kind]
        errors = [abs(r["prediction_error"]) * 100 for r in part]
        out.append({"budget": kind, "rows": len(part),
                    "ratio_ge_0.9": sum(r["ratio_measured_requested"] >= 0.9 for r in part),
                    "within_10pct": sum(abs(r["ratio_measured_requested"] - 1) <= 0.1 for r in part),
                    "ratio_ge_0.9_rotation": sum(r.get("ratio_rotation", 0.0) >= 0.9 for r in part),
                    "within_10pct_rotation": sum(abs(r.get("ratio_rotation", 0.0) - 1) <= 0.1 for r in part),
                    "out_of_reach": sum(r.get("reachable") is False for r in part),
                    "step_brackets": sum(step_bracket(r) for r in part if "loop_rounds" in r),
                    "steps_held": sum(bool(r.get("loop_steps")) for r in part),
                    "mean_abs_error_pts": sum(errors) / len(errors), "max_abs_error_pts": max(errors)})
    return out


def summary_table(rows) -> list[str]:
    """The summary as markdown table lines."""
    lines = ["| budget | rows | measured / requested >= 0.9 | within +-10 % | same, rotation timing | "
             "out of reach (loop) | loops with a step-shaped bracket / a step held | "
             "mean / max abs. prediction error |", "|---|---|---|---|---|---|---|---|"]
    for c in summary(rows):
        lines.append(f"| {c['budget']} | {c['rows']} | {c['ratio_ge_0.9']} | {c['within_10pct']} | "
                     f"{c['ratio_ge_0.9_rotation']} / {c['within_10pct_rotation']} | "
                     f"{c['out_of_reach']} | {c['step_brackets']} / {c['steps_held']} | "
                     f"{c['mean_abs_error_pts']:.1f} / {c['max_abs_error_pts']:.1f} points |")
    return lines


def markdown(result) -> str:
    on_cpu = result.get("device", "cpu") == "cpu"  # files before --device: CPU
    where = f"CPU, {result['threads']} thread" if on_cpu else result["device_name"]
    lines = [f"# Latency budgets: {result['model']}, {where}, L1 scores", "",
             f"Timing: {result['timing']}. torch {result['torch']}.", "",
             "| model, batch | dense ms | floor ms (measured) | additive err. at floor | mult. err. at floor | classes "
             "| models timed | measure s |", "|---|---|---|---|---|---|---|---|"]
    for b, m in result["latency_models"].items():
        lines.append(f"| {b} | {m['dense_ms']:.2f} | {m['floor_ms']:.2f} | {m['additivity_error_at_floor']:+.2f} | "
                     f"{m['multiplicative_error_at_floor']:+.2f} | {m['classes']} | {m['timed_models']} | "
                     f"{m['measure_s']:.0f} |")
    lines += ["", *summary_table(result["rows"])]
    lines += ["", "| model | batch | budget | requested | measured reduction | measured/requested | rotation | "
              "predicted | pred. error | MACs removed | min width |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        mark = " (out of reach)" if r.get("reachable") is False else ""
        lines.append(f"| {r.get('model', result['model'])} | {r['batch_size']} | {r['budget']}{mark} | "
                     f"{r['requested']:.0%} | {r['measured_reduction']:.1%} | "
                     f"{r['ratio_measured_requested']:.2f} | {r.get('ratio_rotation', float('nan')):.2f} | "
                     f"{r['predicted_reduction']:.1%} | "
                     f"{r['prediction_error']:+.1%} | {r['macs_removed']:.1%} | {r['min_width']} |")
    return "\n".join(lines) + "\n"


def _write(parts, args, seconds) -> dict:
    result = {**parts[0], "model": ", ".join(p["model"] for p in parts), "rows": [r for p in parts for r in p["rows"]],
              "latency_models": {k: v for p in parts for k, v in p["latency_models"].items()}}
    result["seconds"] = seconds
    result["command"] = "python benchmarks/bench_latency.py " + " ".join(
        f"--{k.replace('_', '-')}" + ("" if v is True else f" {' '.join(map(str, v)) if isinstance(v, list) else v}")
        for k, v in vars(args).items()
        if k != "out" and v not in (None, []) and v is not False)  # what the parser would refuse
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result) + f"\nCommand: `{result['command']}` "
                                                         f"({result['seconds']:.0f} s).\n")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--models", nargs="+", default=["resnet56"], choices=prunekit.models.names())
    parser.add_argument("--loop-rounds", type=int, default=6, help="closed loop: at most this many plans timed")
    parser.add_argument("--multiple-of", type=int, nargs="*", default=[],
                        help="also tables sampled at these channel multiples, and closed-loop plans on them")
    parser.add_argument("--relax", type=float, default=None,
                        help="where the closed loop reports the target out of reach: again with this max_group_ratio")
    parser.add_argument("--no-hold-ablation", action="store_true",
                        help="also the closed loop with avoid_steps=False on the same tables (latency-loop-nohold)")
    parser.add_argument("--out", default=str(RESULTS / "latency.json"))
    parser.add_argument("--summarize", metavar="JSON", help="print the summary table of a results file, run nothing")
    args = parser.parse_args()
    if args.summarize:
        print("\n".join(summary_table(json.loads(Path(args.summarize).read_text())["rows"])))
        return
    start = time.perf_counter()
    parts = []
    for name in args.models:  # the file is rewritten after each model: a later failure keeps the earlier ones
        parts.append(run(args.batch_sizes, args.targets, args.rounds, args.threads, name=name,
                         loop_rounds=args.loop_rounds, multiples=args.multiple_of, relax=args.relax,
                         nohold=args.no_hold_ablation, device=args.device))
        result = _write(parts, args, time.perf_counter() - start)
    print(markdown(result))
    print(f"command: {result['command']}  ({result['seconds']:.0f} s) -> {args.out}")


if __name__ == "__main__":
    main()
