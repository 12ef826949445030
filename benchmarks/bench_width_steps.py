"""Is latency a staircase in the kept width? One class of groups thinned one channel at a time.

For each model (``--models``) and batch size, the class of groups (groups with the same shapes,
thinned together, as :meth:`prunekit.LatencyModel.measure` does) of at least 32 members that
costs the most MACs is
thinned to every kept width in ``[n/2 - span, n/2 + span]``; the dense model and every variant are
timed in alternating rounds (:func:`prunekit.core.measure.time_in_rounds`, fastest pass per round,
best of ``--rounds``). Reported per width: ms, and for every multiple ``k`` in 4 / 8 / 16 / 32, the
mean ms of widths ``jk + 1`` over that of ``jk`` (how much one channel above a multiple costs).
A piecewise-linear table sampled at three widths (the latency model's default) cannot see steps;
tables sampled at multiples of ``k`` (``LatencyModel.measure(multiple_of=k)``) are measured at the
widths that plans keeping multiples of ``k`` (``select(multiple_of=k)``) land on.

Command:
    python benchmarks/bench_width_steps.py --models resnet56 vgg16 mobilenetv2 --batch-sizes 1 64
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import prunekit
from prunekit.core.latency import _group_classes, _thin
from prunekit.core.measure import time_in_rounds

RESULTS = Path(__file__).resolve().parent / "results"


def heaviest_class(model, structures, min_size: int = 32) -> list[int]:
    """The class of groups whose members cost the most MACs together, among groups of at least
    ``min_size`` members where there are any."""
    classes = _group_classes(model, structures, "shape")
    wide = [gids for gids in classes if len(structures.groups[gids[0]].members) >= min_size]
    return max(wide or classes, key=lambda gids: sum(structures[i].macs for g in gids for i in structures.groups[g].members))


def steps(name: str, batch: int, span: int, rounds: int, threads: int) -> dict:
    torch.manual_seed(0)
    model = prunekit.models.create(name, num_classes=10).eval()
    x = prunekit.models.example_inputs(name, batch=1)
    structures = prunekit.find_structures(model, x)
    gids = heaviest_class(model, structures)
    n = len(structures.groups[gids[0]].members)
    widths = list(range(max(1, n // 2 - span), min(n, n // 2 + span + 1)))
    named = {"dense": model}
    for w in widths:
        plan = prunekit.PruningPlan.from_removed(structures, _thin(structures, gids, n - w))
        named[f"w{w}"] = prunekit.materialize(model, plan, structures).eval()
    ms = time_in_rounds(named, x, batch, rounds=rounds, repeats=10, warmup=2, threads=threads, statistic="min_ms")
    per_width = {w: ms[f"w{w}"] for w in widths}
    jumps = {}
    for k in (4, 8, 16, 32):
        ratios = [per_width[w + 1] / per_width[w] for w in widths if w % k == 0 and w + 1 in per_width]
        if ratios:
            jumps[k] = statistics.mean(ratios)
    return {"model": name, "batch_size": batch, "groups": len(gids), "group_size": n, "dense_ms": ms["dense"],
            "ms_per_width": per_width, "one_above_multiple_over_multiple": jumps}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet56", "vgg16", "mobilenetv2"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--span", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "width_steps.json"))
    args = parser.parse_args()
    start = time.perf_counter()
    rows = [steps(m, b, args.span, args.rounds, args.threads) for m in args.models for b in args.batch_sizes]
    lines = ["| model | batch | class (groups × members) | ms at kept widths | one above a multiple of 4 / 8 / 16 / 32 |",
             "|---|---|---|---|---|"]
    for r in rows:
        shown = ", ".join(f"{w}: {v:.2f}" for w, v in r["ms_per_width"].items())
        jumps = " / ".join(f"{r['one_above_multiple_over_multiple'].get(k, float('nan')):.2f}" for k in (4, 8, 16, 32))
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['groups']} × {r['group_size']} | {shown} | {jumps} |")
    result = {"benchmark": "width_steps", "threads": args.threads, "torch": torch.__version__, "rows": rows,
              "seconds": time.perf_counter() - start, "command": "python benchmarks/bench_width_steps.py --models "
              + " ".join(args.models) + " --batch-sizes " + " ".join(map(str, args.batch_sizes))}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text("\n".join(lines) + f"\n\nCommand: `{result['command']}` "
                                                        f"({result['seconds']:.0f} s).\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
