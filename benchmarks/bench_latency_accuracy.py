"""Accuracy at equal measured latency: latency-budget plans against MAC-budget plans (issue 14).

ResNet-20 (width 0.5) trained to a plateau on full Fashion-MNIST (the checkpoints of
``benchmarks/sosp_dense.py``), one thread, CPU. Per seed (= the dense network's seed):

1. A :class:`prunekit.LatencyModel` at ``--batch`` (default 64) and the scores of ``--criterion``
   (default ``l1``, data-free; a loss-based criterion scores ``--prune-samples`` fixed training samples),
   ranked under ``--group-norm`` (default ``mean``; ``none``: the raw scores) by both plans.
2. Per target ``f``: the **latency plan**, :func:`prunekit.select_to_latency` (closed loop: the
   plan timed, the request corrected); its measured saving ``m``.
3. The **MAC plan of the same measured speed**: ``Budget(macs=g)`` with ``g`` found by bisection
   (from ``m``), each candidate timed pass by pass **against the latency plan's model**, until the
   median time ratio is within ``--match`` of 1 (at most ``--match-steps`` timed plans). Timing the
   two plans against each other, not each against the dense model, matches the speeds the
   comparison is about; a drift of the machine between two timings cancels in the pairs.
4. Each plan timed against the dense model pass by pass (:func:`prunekit.core.measure.time_paired`,
   ``--pairs`` pairs; the reported saving is one minus the median of the pairs' time ratios), the
   kept pair timed once more against each other (``macs_over_latency_ms``), then both plans
   fine-tuned alike (``bench_sosp.finetune``: ``--ft-epochs`` on a fixed 20k subset, lr 0.01) and
   evaluated on the 10k test images.

Summary: per target, mean ± std over seeds of accuracy, measured saving and MACs of both plans,
the paired difference latency − MAC plan (win / tie / loss), and the kept pairs' time ratio.
Goal: the latency plan no worse than the MAC plan of the same measured speed.

    python benchmarks/bench_latency_accuracy.py --seeds 0 1 2 3 4 --targets 0.3 0.5 --ft-epochs 3 \
        --out benchmarks/results/latency_accuracy_h2h.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import prunekit  # noqa: E402
from benchmarks.bench_sosp import finetune, score  # noqa: E402
from benchmarks.sosp_dense import FASHION, dense_path, load as load_dataset  # noqa: E402
from benchmarks.store import Store, machine, markdown_table, paired, stats  # noqa: E402
from prunekit.core import allocator  # noqa: E402
from prunekit.core.measure import time_paired  # noqa: E402
from prunekit.pipeline.dataspec import batches as make_batches  # noqa: E402
from prunekit.pipeline.train import evaluate  # noqa: E402

KEY = ("seed", "target", "plan")


def matched_mac_plan(model, structures, scores, rival, x, goal: float, args, options: dict) -> tuple:
    """``(plan, tried, ratio)``: the ``Budget(macs=g)`` plan whose pruned model runs as fast as ``rival`` (the
    latency plan's model), timed **against it** pass by pass (:func:`time_paired`, ``args.pairs`` pairs), by
    bisection on g from ``goal`` (the rival's measured saving) until the median time ratio MAC / rival is
    within ``args.match`` of 1; every budget tried with its ratio, and the kept plan's ratio. ``options``:
    :func:`prunekit.select`'s, as for the rival."""
    lo, hi, tried = 0.0, 0.95, []
    g = min(max(goal, lo), hi)  # a rival measured slower than dense (goal < 0) starts from no MAC cut
    for _ in range(args.match_steps):
        plan = prunekit.select(structures, scores, prunekit.Budget(macs=g), **options)
        pruned = prunekit.materialize(model, plan, structures).eval()
        ratio = time_paired(rival, pruned, x, args.batch, pairs=args.pairs, warmup=2, threads=1)["ratio"]
        tried.append({"macs": g, "ratio_to_latency_plan": ratio})
        if abs(ratio - 1) <= args.match:
            break
        lo, hi = (g, hi) if ratio > 1 else (lo, g)  # slower than the rival: cut more MACs
        g = (lo + hi) / 2
    best = min(tried, key=lambda t: abs(t["ratio_to_latency_plan"] - 1))
    return (prunekit.select(structures, scores, prunekit.Budget(macs=best["macs"]), **options), tried,
            best["ratio_to_latency_plan"])


def run_seed(seed, data, store, args):
    dense = prunekit.load(dense_path(args.cache, "resnet20", args.width, seed)).eval()
    x = data["train"][0][:1]
    structures = prunekit.find_structures(dense, x)
    scores = score(dense, structures, data["prune"], args.criterion, seed)
    options = {"group_norm": None if args.group_norm == "none" else args.group_norm}
    lat = prunekit.LatencyModel.measure(dense, x, structures, batch_size=args.batch, threads=1, rounds=args.rounds,
                                        cache_dir=False)
    dense_acc = evaluate(dense, data["test"])["accuracy"]
    for f in args.targets:
        if store.done(seed=seed, target=f, plan="latency") and store.done(seed=seed, target=f, plan="macs"):
            continue
        t0 = time.perf_counter()
        plan_lat = prunekit.select_to_latency(dense, structures, scores, f, lat, x, rounds=args.loop_rounds,
                                              check_rounds=args.rounds, **options)
        loop = plan_lat.meta["latency_loop"]
        goal = loop["rounds"][loop["chosen"]]["measured_fraction"]
        lat_model = prunekit.materialize(dense, plan_lat, structures).eval()
        plan_mac, tried, search_ratio = matched_mac_plan(dense, structures, scores, lat_model, x, goal, args,
                                                       options)
        named = {"latency": lat_model, "macs": prunekit.materialize(dense, plan_mac, structures).eval()}
        timed = {kind: time_paired(dense, pruned, x, args.batch, pairs=args.pairs, warmup=2, threads=1)
                 for kind, pruned in named.items()}
        head_to_head = time_paired(named["latency"], named["macs"], x, args.batch, pairs=args.pairs, warmup=2,
                                   threads=1)  # a fresh timing of the kept pair, apart from the search's
        for kind, plan in (("latency", plan_lat), ("macs", plan_mac)):
            pruned, t = named[kind], timed[kind]
            acc_oneshot = evaluate(pruned, data["test"])["accuracy"]
            acc = evaluate(finetune(pruned, data, args, seed), data["test"])["accuracy"]
            counted = prunekit.count(pruned, x)
            store.add({"seed": seed, "target": f, "plan": kind, "accuracy": acc, "acc_oneshot": acc_oneshot,
                       "dense_accuracy": dense_acc, "measured_saving": 1 - t["ratio"],
                       "measured_over_requested": (1 - t["ratio"]) / f, "ratio_iqr": t["ratio_iqr"],
                       "pairs": t["pairs"], "dense_ms": t["reference_ms"], "ms": t["candidate_ms"],
                       "search_saving": goal if kind == "latency" else None,
                       "search_ratio": search_ratio, "macs_over_latency_ms": head_to_head["ratio"],
                       "head_to_head_iqr": head_to_head["ratio_iqr"],
                       "macs": counted["macs"], "params": counted["params"], "macs_removed": plan.achieved["macs"],
                       "widths": list(plan.kept_widths(structures).values()), "selection": plan.meta["selection"],
                       "search": loop["rounds"] if kind == "latency" else tried,
                       "loop_steady": loop.get("steady") if kind == "latency" else None,
                       "seconds": time.perf_counter() - t0})
            print(f"seed {seed} target {f} {kind}: saving {1 - t['ratio']:.3f}, MACs removed "
                  f"{plan.achieved['macs']:.3f}, acc {acc_oneshot:.3f} -> {acc:.3f}", flush=True)


def summarize(rows) -> dict:
    out = {}
    for f in sorted({r["target"] for r in rows}):
        part = [r for r in rows if r["target"] == f]
        cell = {}
        for kind in ("latency", "macs"):
            mine = [r for r in part if r["plan"] == kind]
            if mine:
                cell[kind] = {k: stats([r[k] for r in mine])
                              for k in ("accuracy", "acc_oneshot", "measured_saving", "macs_removed")}
                cell[kind]["measured_over_requested"] = [round(r["measured_over_requested"], 3) for r in mine]
        h2h = [r["macs_over_latency_ms"] for r in part if r["plan"] == "latency" and "macs_over_latency_ms" in r]
        if h2h:
            cell["macs_over_latency_ms"] = stats(h2h)
        for value in ("accuracy", "acc_oneshot", "measured_saving"):
            cell[f"latency_minus_macs_{value}"] = paired(part, value, "plan", "latency", match=("seed",)).get("macs")
        out[str(f)] = cell
    return out


def markdown(result) -> str:
    s = result["summary"]

    def pm(stat, scale=100):
        return f"{scale * stat['mean']:.1f} ± {scale * stat['std']:.1f}"

    def d(cell):
        return "–" if cell is None else (f"{100 * cell['mean']:+.2f} ± {100 * cell['sem']:.2f} "
                                         f"({cell['wins']}/{cell['ties']}/{cell['losses']})")
    rows = []
    for f, c in s.items():
        for kind in ("latency", "macs"):
            if kind in c:
                ratios = ", ".join(f"{v:.2f}" for v in c[kind]["measured_over_requested"])
                rows.append([f"{float(f):.0%}", kind, pm(c[kind]["measured_saving"]), ratios,
                             pm(c[kind]["macs_removed"]), pm(c[kind]["acc_oneshot"]), pm(c[kind]["accuracy"])])
        h2h = c.get("macs_over_latency_ms")
        rows.append([f"{float(f):.0%}", "latency − macs", d(c["latency_minus_macs_measured_saving"]),
                     "" if h2h is None else f"MAC / latency plan time {h2h['mean']:.3f} ± {h2h['std']:.3f}", "",
                     d(c["latency_minus_macs_acc_oneshot"]), d(c["latency_minus_macs_accuracy"])])
    meta = result["meta"]
    ranked = f"{meta.get('scores', 'l1')} scores, group_norm {meta['protocol'].get('group_norm', 'mean')}"
    return (f"# Accuracy at equal measured latency: ResNet-20 (w 0.5), Fashion-MNIST, CPU 1 thread, {ranked}\n\n"
            + markdown_table(["target", "plan", "measured saving %", "measured / requested (per seed)",
                              "MACs removed %", "one-shot acc %", "acc after FT %"], rows)
            + f"\n\nCommand: `{result['meta']['command']}`\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--criterion", default="l1", help="saliency method of both plans (prunekit.saliency)")
    p.add_argument("--group-norm", default="mean", choices=["mean", "max", "sum", "none"],
                   help="prunekit.select's group_norm for both plans ('none': the raw scores)")
    p.add_argument("--prune-samples", type=int, default=1024, help="training samples a loss-based criterion scores")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--loop-rounds", type=int, default=6)
    p.add_argument("--match", type=float, default=0.03,
                   help="MAC plan accepted when its time over the latency plan's is within this of 1")
    p.add_argument("--match-steps", type=int, default=6)
    p.add_argument("--pairs", type=int, default=30, help="passes per model in the final timing of each plan")
    p.add_argument("--ft-samples", type=int, default=20000)
    p.add_argument("--ft-epochs", type=int, default=1)
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data", default=FASHION)
    p.add_argument("--cache", default="runs/sosp")
    p.add_argument("--out", default="benchmarks/results/latency_accuracy.json")
    args = p.parse_args(argv)
    missing = [seed for seed in args.seeds if not (dense_path(args.cache, "resnet20", args.width, seed) /
                                                   "prunekit.json").exists()]
    if missing:  # before the data are read: training one takes ~46 min on one thread
        p.error(f"no trained dense network under {args.cache} for seed(s) {missing}: train them first with "
                f"python benchmarks/sosp_dense.py --models resnet20 --width {args.width:g} --epochs 15 --seeds "
                + " ".join(map(str, missing)))
    torch.set_num_threads(1)
    (X, y), test, _ = load_dataset("resnet20", args.data)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(1234))  # bench_sosp's fixed subsets
    ft_idx, prune_idx = perm[:args.ft_samples], perm[:args.prune_samples]
    data = {"train": (X, y), "ft": (X[ft_idx], y[ft_idx]), "test": test,
            "prune": make_batches(X[prune_idx], y[prune_idx], 128)}
    protocol = {k: getattr(args, k) for k in ("width", "batch", "rounds", "loop_rounds", "match", "pairs",
                                              "ft_samples", "ft_epochs", "ft_lr", "batch_size")}
    timing = {"allocator": allocator.pin()}  # what every timing below runs under (prunekit's CPU timings pin it)
    if (args.criterion, args.group_norm) != ("l1", "mean"):  # the earlier files' protocol stays as it was
        protocol.update(criterion=args.criterion, group_norm=args.group_norm, prune_samples=args.prune_samples)
    store = Store(args.out, key=KEY, meta={"protocol": protocol, "machine": machine(1), "scores": args.criterion,
                                           "timing": timing},
                  resume=True, must_match=("protocol",))
    ft_args = SimpleNamespace(**vars(args))
    for seed in args.seeds:
        run_seed(seed, data, store, ft_args)
        store.save(summarize, markdown)
    print(markdown(store.save(summarize, markdown)))


if __name__ == "__main__":
    main()
