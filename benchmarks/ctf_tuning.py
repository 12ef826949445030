"""The baselines' knobs searched as CTF's defaults were: synthetic SBU folds 1–2, rates 0.9 / 0.95 / 0.99.

CTF's defaults got, among others, a search over the split of the 20 epochs between masks and
fine-tuning (8 + 12 against 12 + 8, folds 1–2, ``docs/ctf.md``). Here the two regularised
baselines get that split and their strength: ``l1`` and ``group-lasso`` at splits 8 + 12 / 12 + 8
and strengths 1e-4 / 1e-3 / 1e-2 (6 settings each), every setting a run of
``benchmarks/bench_ctf.py`` (same dense models, same fine-tuning) on folds 1–2, seed 0. The table
gives mean accuracy per setting and rate; the setting with the best mean over the three rates is
the tuned one.

Command:
    python benchmarks/ctf_tuning.py --out benchmarks/results/ctf_tuning.json
    python benchmarks/ctf_tuning.py --summarize benchmarks/results/ctf_tuning.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPLITS = ((8, 12), (12, 8))
STRENGTHS = (1e-4, 1e-3, 1e-2)


def run(methods, folds, seeds, rates, out: Path) -> dict:
    parts = []
    start = time.perf_counter()
    for method, (mask, ft), strength in itertools.product(methods, SPLITS, STRENGTHS):
        part = Path(tempfile.mkdtemp(prefix="ctf_tuning_")) / f"{method}_{mask}_{ft}_{strength:g}.json"
        cmd = [sys.executable, str(HERE / "bench_ctf.py"), "--dataset", "sbu", "--folds", *map(str, folds),
               "--seeds", *map(str, seeds), "--rates", *map(str, rates), "--methods", method, "--epochs", str(mask),
               "--finetune", str(ft), "--lasso-strength", f"{strength:g}", "--no-overhead", "--out", str(part)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        rows = json.loads(part.read_text())["rows"]
        parts.append({"method": method, "split": [mask, ft], "strength": strength, "command": " ".join(cmd[1:]),
                      "rows": [{k: r[k] for k in ("fold", "seed", "target_rate", "accuracy", "rate")} for r in rows]})
        out.write_text(json.dumps({"settings": parts}, indent=1))
        print(f"{method} {mask}+{ft} {strength:g}: "
              + ", ".join(f"{r['target_rate']}: {r['accuracy']:.3f}" for r in rows), flush=True)
    result = {"benchmark": "ctf_tuning", "folds": folds, "seeds": seeds, "rates": rates, "settings": parts,
              "seconds": time.perf_counter() - start}
    return summarize(result)


def summarize(result: dict) -> dict:
    table, best = [], {}
    for s in result["settings"]:
        per_rate = {}
        for r in s["rows"]:
            per_rate.setdefault(r["target_rate"], []).append(r["accuracy"])
        means = {rate: statistics.mean(v) for rate, v in sorted(per_rate.items())}
        overall = statistics.mean(means.values())
        table.append({"method": s["method"], "split": s["split"], "strength": s["strength"], "per_rate": means,
                      "mean": overall})
        if s["method"] not in best or overall > best[s["method"]]["mean"]:
            best[s["method"]] = table[-1]
    result["table"], result["best"] = table, best
    return result


def markdown(result: dict) -> str:
    rates = sorted({r for row in result["table"] for r in row["per_rate"]})
    lines = ["| method | split | strength | " + " | ".join(f"{r:g}" for r in rates) + " | mean |",
             "|---|---|---|" + "---|" * (len(rates) + 1)]
    for row in result["table"]:
        mark = "**" if result["best"][row["method"]] is row else ""
        lines.append(f"| {row['method']} | {row['split'][0]} + {row['split'][1]} | {row['strength']:g} | "
                     + " | ".join(f"{100 * row['per_rate'][r]:.1f}" for r in rates)
                     + f" | {mark}{100 * row['mean']:.1f}{mark} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["l1", "group-lasso"])
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.9, 0.95, 0.99])
    parser.add_argument("--out", default=str(HERE / "results" / "ctf_tuning.json"))
    parser.add_argument("--summarize", metavar="JSON")
    args = parser.parse_args()
    if args.summarize:
        result = summarize(json.loads(Path(args.summarize).read_text()))
        out = Path(args.summarize)
    else:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        result = run(args.methods, args.folds, args.seeds, args.rates, out)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
