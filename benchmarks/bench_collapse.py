"""Layer collapse under global selection: the selection settings of ``prunekit.select`` on real digits.

A small CNN (three 3×3 convolutions with BatchNorm and ReLU, global average pooling,
a linear classifier; widths 16/32/32) is trained on scikit-learn's handwritten digits
(8×8, values / 16; a fixed stratified 75/25 split) per seed. For every criterion
(random, l1, taylor, obd, sosp-h, sosp-i; scores from the first ``--prune-samples``
training samples, model in eval mode) the scores are computed once and then selected
under every selection setting at every MAC budget (fraction of MACs removed), the plan
materialized and fine-tuned for ``--ft-epochs`` epochs (Adam, cosine). Recorded per row:
test accuracy before and after fine-tuning, the MAC fraction removed, the kept width of
every layer, the minimum, and whether a layer was left at one channel.

Settings (``select`` keyword arguments):
    paper        group_norm=None, max_group_ratio=None  (global ranking of raw scores, as in SOSP)
    mean/max/sum/gaussian        group_norm=…, no ratio limit
    ratio0.8                     raw scores, max_group_ratio=0.8
    mean+0.8, mean+0.9, max+0.8, gaussian+0.8   both

Identical plans (same removed set) of one seed are fine-tuned once (the fine-tuning is
deterministic given the plan and seed). (seed, criterion) tasks run in ``--jobs``
processes with one thread each. Results: ``--out`` (JSON) and a Markdown table next to it.

Usage (committed results):
    python benchmarks/bench_collapse.py --seeds 0 1 2 --jobs 2
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import prunekit
import prunekit.pipeline.train as T

METHODS = ("random", "l1", "taylor", "obd", "sosp-h", "sosp-i")
SETTINGS = {
    "paper": {"group_norm": None, "max_group_ratio": None},
    "mean": {"group_norm": "mean", "max_group_ratio": None},
    "max": {"group_norm": "max", "max_group_ratio": None},
    "sum": {"group_norm": "sum", "max_group_ratio": None},
    "gaussian": {"group_norm": "gaussian", "max_group_ratio": None},
    "ratio0.8": {"group_norm": None, "max_group_ratio": 0.8},
    "mean+0.8": {"group_norm": "mean", "max_group_ratio": 0.8},
    "mean+0.9": {"group_norm": "mean", "max_group_ratio": 0.9},
    "max+0.8": {"group_norm": "max", "max_group_ratio": 0.8},
    "gaussian+0.8": {"group_norm": "gaussian", "max_group_ratio": 0.8},
}
WIDTHS = (16, 32, 32)


def digits_cnn(widths=WIDTHS) -> nn.Sequential:
    """conv3×3-BN-ReLU ×3 (padding 1, 8×8 throughout), global average pooling, linear."""
    layers, c_in = [], 1
    for c in widths:
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))


def load_digits():
    (X, y), (Xt, yt) = prunekit.data.load_digits(test_fraction=0.25, seed=0)
    prep = lambda a: (torch.from_numpy(a) / 16.0).unsqueeze(1)  # noqa: E731
    return (prep(X), torch.from_numpy(y)), (prep(Xt), torch.from_numpy(yt))


def train_dense(seed, train, test, epochs, lr):
    torch.manual_seed(seed)
    model = digits_cnn()
    T.fit(model, train, epochs=epochs, optimizer="adam", lr=lr, batch_size=64, seed=seed, progress=False)
    return model.eval(), T.evaluate(model, test)["accuracy"]


def layer_widths(structures, removed) -> dict:
    kept = prunekit.PruningPlan.from_removed(structures, removed).kept_widths(structures)
    return {g.root: kept[g.id] for g in structures.groups}


def run_task(task):
    """All settings × budgets of one (seed, criterion): score once, select, materialize, fine-tune."""
    torch.set_num_threads(1)
    a = task["args"]
    train, test = load_digits()
    model = digits_cnn()
    model.load_state_dict(task["state"])
    model.eval()
    structures = prunekit.find_structures(model, train[0][:1])
    seed, method = task["seed"], task["method"]
    n = a["prune_samples"]
    batches = [(train[0][i:i + 64], train[1][i:i + 64]) for i in range(0, n, 64)]
    start = time.perf_counter()
    scores = prunekit.saliency(model, structures, None if method in ("l1", "random") else batches, method,
                               **({"seed": seed} if method == "random" else {}))
    score_s = time.perf_counter() - start
    cache, rows = {}, []
    for setting in a["settings"]:
        for budget in a["budgets"]:
            row = {"seed": seed, "method": method, "setting": setting, **SETTINGS[setting], "budget": budget,
                   "score_seconds": score_s}
            try:
                plan = prunekit.select(structures, scores, prunekit.Budget(macs=budget), method=method,
                                       **SETTINGS[setting])
            except prunekit.BudgetError as error:
                rows.append({**row, "error": str(error)})
                continue
            key = tuple(plan.removed)
            if key not in cache:
                pruned = prunekit.materialize(model, plan, structures)
                before = T.evaluate(pruned, test)["accuracy"]
                t0 = time.perf_counter()
                T.fit(pruned, train, epochs=a["ft_epochs"], optimizer="adam", lr=a["ft_lr"], batch_size=64,
                      seed=seed, progress=False)
                cache[key] = {"accuracy_before_finetune": before, "accuracy": T.evaluate(pruned, test)["accuracy"],
                              "finetune_seconds": time.perf_counter() - t0}
            widths = layer_widths(structures, plan.removed)
            rows.append({**row, "macs_removed": plan.achieved["macs"], "params_removed": plan.achieved["params"],
                         "widths": widths, "min_width": min(widths.values()),
                         "collapsed": min(widths.values()) <= 1, **cache[key]})
    return rows


def markdown(result) -> str:
    rows = [r for r in result["rows"] if "error" not in r]
    settings, methods, budgets = result["scale"]["settings"], result["scale"]["methods"], result["scale"]["budgets"]
    seeds = result["scale"]["seeds"]
    out = ["# Layer collapse: selection settings on the digits CNN", "",
           f"Command: `{result['command']}`", "",
           f"Machine: {result['machine']}, torch {result['torch']}, 1 thread per job, {result['scale']['jobs']} jobs; "
           f"{result['seconds']:.0f} s in all.", "",
           f"Dense CNN (widths {list(WIDTHS)}, {result['dense_macs']} MACs, {result['dense_params']} params): test "
           f"accuracy {', '.join(f'{d:.4f}' for d in result['dense_accuracy'])} (seeds {seeds}); "
           f"{result['scale']['dense_epochs']} epochs, fine-tuning {result['scale']['ft_epochs']} epochs.", "",
           "acc = test accuracy after fine-tuning, mean over seeds (in brackets: the worst seed); acc0 = before "
           "fine-tuning (one-shot); "
           "collapsed = seeds (of n) where a layer was left at 1 channel; min width = smallest kept layer "
           "width over seeds and layers.", ""]
    errors = [r for r in result["rows"] if "error" in r]
    if errors:
        out += [f"Budget errors: {len(errors)} rows (e.g. {errors[0]['setting']} {errors[0]['method']} "
                f"{errors[0]['budget']}: {errors[0]['error']})", ""]
    out += ["## Summary per setting (all criteria and budgets)", "",
            "| setting | group_norm | max_group_ratio | mean acc | worst acc | mean acc at 90% | mean acc0 | "
            "collapsed rows | min width |", "|---|---|---|---|---|---|---|---|---|"]
    for s in settings:
        rs = [r for r in rows if r["setting"] == s]
        if not rs:
            continue
        r90 = [r["accuracy"] for r in rs if r["budget"] == max(budgets)]
        out.append(f"| {s} | {SETTINGS[s]['group_norm']} | {SETTINGS[s]['max_group_ratio']} | "
                   f"{np.mean([r['accuracy'] for r in rs]):.4f} | {min(r['accuracy'] for r in rs):.4f} | "
                   f"{np.mean(r90):.4f} | {np.mean([r['accuracy_before_finetune'] for r in rs]):.4f} | "
                   f"{sum(r['collapsed'] for r in rs)}/{len(rs)} | "
                   f"{min(r['min_width'] for r in rs)} |")
    out += ["", "## Per criterion and budget", "",
            "Each cell: acc mean (worst seed) · collapsed seeds · min width.", "",
            "| setting | budget | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for s in settings:
        for b in budgets:
            cells = []
            for m in methods:
                rs = [r for r in rows if r["setting"] == s and r["budget"] == b and r["method"] == m]
                if not rs:
                    cells.append("—")
                    continue
                acc = [r["accuracy"] for r in rs]
                cells.append(f"{np.mean(acc):.3f} ({min(acc):.3f}) · {sum(r['collapsed'] for r in rs)}/{len(rs)} · "
                             f"{min(r['min_width'] for r in rs)}")
            out.append(f"| {s} | {b:.0%} | " + " | ".join(cells) + " |")
    out += ["", "## Kept widths per layer (seed 0)", "", "| setting | budget | " + " | ".join(methods) + " |",
            "|---|---|" + "---|" * len(methods)]
    for s in settings:
        for b in budgets:
            cells = []
            for m in methods:
                rs = [r for r in rows if r["setting"] == s and r["budget"] == b and r["method"] == m
                      and r["seed"] == seeds[0]]
                cells.append("/".join(str(v) for v in rs[0]["widths"].values()) if rs else "—")
            out.append(f"| {s} | {b:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--dense-epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--ft-epochs", type=int, default=5)
    p.add_argument("--ft-lr", type=float, default=1e-2)
    p.add_argument("--prune-samples", type=int, default=256)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/collapse.json")
    p.add_argument("--render", action="store_true", help="only rewrite the .md table from the JSON at --out")
    a = p.parse_args()
    if a.render:
        out = Path(a.out)
        out.with_suffix(".md").write_text(markdown(json.loads(out.read_text())))
        return
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    train, test = load_digits()
    states, dense_acc = {}, []
    for seed in a.seeds:
        model, acc = train_dense(seed, train, test, a.dense_epochs, a.lr)
        print(f"seed {seed}: dense test accuracy {acc:.4f}", flush=True)
        if acc < 0.97:
            print(f"warning: dense accuracy {acc:.4f} below 0.97", file=sys.stderr)
        states[seed] = {k: v.clone() for k, v in model.state_dict().items()}
        dense_acc.append(acc)
    counted = prunekit.count(model, train[0][:1])
    args = {"budgets": a.budgets, "settings": a.settings, "ft_epochs": a.ft_epochs, "ft_lr": a.ft_lr,
            "prune_samples": a.prune_samples}
    # slow criteria first so the two workers finish together
    tasks = [{"seed": s, "method": m, "state": states[s], "args": args}
             for m in sorted(a.methods, key=lambda m: m != "sosp-i") for s in a.seeds]
    rows = []
    with mp.get_context("spawn").Pool(a.jobs) as pool:
        for part in pool.imap_unordered(run_task, tasks):
            rows += part
            print(f"{part[0]['method']} seed {part[0]['seed']}: done ({time.perf_counter() - t_start:.0f} s)",
                  flush=True)
    rows.sort(key=lambda r: (a.settings.index(r["setting"]), r["budget"], a.methods.index(r["method"]), r["seed"]))
    result = {"command": "python " + " ".join(shlex.quote(x) for x in sys.argv),
              "machine": f"{platform.machine()} {platform.processor()}".strip(), "torch": torch.__version__,
              "scale": {**vars(a), "widths": list(WIDTHS)}, "dense_accuracy": dense_acc,
              "dense_macs": counted["macs"], "dense_params": counted["params"], "settings": SETTINGS,
              "seconds": time.perf_counter() - t_start, "rows": rows}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out} and {out.with_suffix('.md')} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
