"""SOSP against every other criterion on the same structures, and against Torch-Pruning itself (issue 13).

Networks trained to convergence by ``benchmarks/sosp_dense.py``: CIFAR-style nets on Fashion-MNIST
(full 60k / 10k), ``--model attention_gcn``, the skeleton GCN on SYNTHETIC SBU fold 1 (264 / 67
sequences), or ``--model mlp``, an MLP on scikit-learn's digits (1,347 / 450; the fast sanity row).
A flag left unset takes the data set's value (:data:`DEFAULTS`: for the GCN every training sequence
prunes and fine-tunes, 6 epochs at batch 32, no iterative rows, no samples sweep). ``--select JSON``
passes options to ``prunekit.select`` for every row on prunekit's structures (recorded in the protocol).
Per seed (= the dense network's seed), per budget (fraction of MACs removed), per method:

* ``schedule="one-shot"``: score on ``--prune-samples`` training samples, ``prunekit.select``
  with its defaults, materialize; test accuracy at once (``acc_oneshot``, the direct test of a
  loss-change criterion) and after ``--ft-epochs`` epochs on a fixed ``--ft-samples`` subset
  (``accuracy``).
* ``schedule="one-shot-bn"`` (``--bn METHOD …``): the same, with the pruned network's BatchNorm
  statistics re-estimated on the pruning samples first (``prunekit.pipeline.recalibrate_batchnorm``:
  no labels, no weight changes), so the one-shot accuracy measures the criterion and not stale
  statistics; fine-tuned from there.
* ``schedule="iterative"``: ``--steps`` rounds of (re-score the current network, remove
  MACs down to ``(1 − budget)^(i/steps)`` of the dense MACs, fine-tune 1/steps of the same
  fine-tuning budget); same total fine-tuning samples as one-shot.

Methods, comparison (a) — criterion against criterion on prunekit's structures, one selection:
prunekit's ``sosp-h sosp-i taylor obd l1 random`` and Torch-Pruning's importances re-expressed as
scores over the same structures (``tp-magnitude@pk``: Σ w² over the structure's weight slices,
``tp-taylor@pk``: Σ |w ⊙ g|, ``tp-hessian@pk``: Σ w² ⊙ Σ_n g_n² (per-sample squared gradients),
each the mean over the structure's weight slices and consumer slices, as Torch-Pruning's group
reduction ``mean``; biases left out as Torch-Pruning does). Comparison (b) — library against
library: ``tp-magnitude tp-taylor tp-hessian`` run through Torch-Pruning's own ``MetaPruner``
(``bench_criteria_accuracy.tp_prune``: global pruning, ratio binary-searched to the MAC budget).
``--samples-sweep`` adds SOSP-H one-shot rows with other numbers of pruning samples. A method
``NAME@T<t>`` (``sosp-h@T4``) is prunekit's criterion on the cross-entropy at temperature ``t``
(``prunekit.criteria.CrossEntropy(temperature=t)``: softened predictions, see docs/criteria.md).
On the GCN, Torch-Pruning cannot remove attention heads (prunekit's structures include them), so
the library rows (b) differ from (a) in their structures as well as their criterion; only (a)
isolates the criterion.

Rows go to one results store (``benchmarks/store.py``; resumable, ``--out``), summarised with
paired differences SOSP-H − every other method (same seed and budget) and win/tie/loss.

    python benchmarks/bench_sosp.py --model resnet20 --width 0.5 --seeds 0 1 2
    python benchmarks/bench_sosp.py --model attention_gcn --seeds 0 1 2 --out benchmarks/results/sosp_gcn.json
    python benchmarks/bench_sosp.py --model mlp --seeds 0 1 2 3 4 5 6 7 8 9 --out benchmarks/results/sosp_digits.json
    python benchmarks/bench_sosp.py --merge A.json B.json --out benchmarks/results/sosp.json   # parts run apart
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import prunekit  # noqa: E402
from benchmarks.sosp_dense import DIGITS, FASHION, SBU, dataset_of, dense_path, load as load_dataset  # noqa: E402
from benchmarks.store import Store, machine, markdown_table, merge, paired, stats  # noqa: E402
from prunekit.criteria import CrossEntropy  # noqa: E402
from prunekit.pipeline.dataspec import batches as make_batches  # noqa: E402
from prunekit.pipeline.recalibrate import recalibrate_batchnorm  # noqa: E402
from prunekit.pipeline.train import evaluate, fit  # noqa: E402

PK = ("sosp-h", "sosp-i", "taylor", "obd", "l1", "random")
TP_ON_PK = ("tp-magnitude@pk", "tp-taylor@pk", "tp-hessian@pk")
TP_LIB = ("tp-magnitude", "tp-taylor", "tp-hessian")
CLASSIFIER = {"resnet20": "fc", "vgg11": "classifier", "mlp": "classifier", "attention_gcn": "fc"}
KEY = ("seed", "schedule", "method", "budget", "samples")
DEFAULTS = {  # per data set (sosp_dense.dataset_of): what a flag left unset means
    "fashion": {"width": 0.5, "prune_samples": 1024, "ft_samples": 20000, "ft_epochs": 1, "batch_size": 128,
                "iterative": ["sosp-h", "taylor", "tp-magnitude@pk", "l1"], "samples_sweep": [256, 4096]},
    "digits": {"width": 1.0, "prune_samples": 256, "ft_samples": 1347, "ft_epochs": 5, "batch_size": 64,
               "iterative": ["sosp-h", "taylor", "tp-magnitude@pk", "l1"], "samples_sweep": [64, 1024]},
    "sbu": {"width": 1.0, "prune_samples": 264, "ft_samples": 264, "ft_epochs": 6, "batch_size": 32,
            "iterative": [], "samples_sweep": []},
}
NOTES = {"digits": "scikit-learn digits, 450 test images: 0.22 points per image. No BatchNorm: the one-shot accuracy "
                   "is the criterion's own.",
         "sbu": "Torch-Pruning cannot remove attention heads: the library rows differ from the others in their "
                "structures as well as their criterion, so only the one-shot rows (prunekit's structures, "
                "one selection) isolate the criterion. 67 test sequences: 1.5 points per sequence."}


# ----------------------------------------------------------------------------- scores

def _weight_slices(structure):
    return [(n, d, i) for n, d, i in list(structure.slices) + list(structure.consumers) if n.endswith("weight")]


def _per_sample_sq_grads(model, batches):
    sq = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for xb, yb in batches:
        for i in range(len(xb)):
            model.zero_grad()
            F.cross_entropy(model(xb[i:i + 1]), yb[i:i + 1]).backward()
            for n, p in model.named_parameters():
                if p.grad is not None:
                    sq[n] += p.grad.square()
    model.zero_grad()
    return sq


def _grads(model, batches):
    model.zero_grad()
    for xb, yb in batches:
        F.cross_entropy(model(xb), yb).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return grads


def tp_scores(model, structures, batches, method: str) -> torch.Tensor:
    """Torch-Pruning's importances as one score per prunekit structure (see the module docstring)."""
    params = dict(model.named_parameters())
    if method == "tp-magnitude@pk":
        element = {n: p.detach().square() for n, p in params.items()}
    elif method == "tp-taylor@pk":
        g = _grads(model, batches)
        element = {n: (p.detach() * g[n]).abs() for n, p in params.items() if n in g}
    elif method == "tp-hessian@pk":
        sq = _per_sample_sq_grads(model, batches)
        element = {n: p.detach().square() * sq[n] for n, p in params.items()}
    else:
        raise ValueError(method)
    scores = []
    for s in structures:
        parts = [element[n].index_select(d, torch.as_tensor(i)).sum() for n, d, i in _weight_slices(s) if n in element]
        scores.append(torch.stack(parts).mean() if parts else torch.tensor(0.0))
    return torch.stack(scores).double()


def score(model, structures, batches, method: str, seed: int) -> torch.Tensor:
    """``method@T<t>`` (e.g. ``sosp-h@T4``): prunekit's criterion on the cross-entropy at temperature ``t``."""
    base, _, temperature = method.partition("@T")
    if temperature:
        return prunekit.saliency(model, structures, batches, base, loss=CrossEntropy(temperature=float(temperature)))
    if method in TP_ON_PK:
        return tp_scores(model, structures, batches, method)
    options = {"seed": seed} if method == "random" else {}
    data = None if method in ("l1", "random") else batches
    return prunekit.saliency(model, structures, data, method, **options)


# ----------------------------------------------------------------------------- rows

def _describe(model, x, kept=None) -> dict:
    counted = prunekit.count(model, x)
    return {"params": counted["params"], "macs": counted["macs"], **({"kept_by_layer": kept} if kept else {})}


def kept_by_layer(structures, plan) -> dict:
    """``{layer: [kept, total]}`` structures per layer: where a criterion prunes differently."""
    removed, out = set(plan.removed), {}
    for s in structures:
        kept_total = out.setdefault(s.layer, [0, 0])
        kept_total[0] += s.id not in removed
        kept_total[1] += 1
    return out


def prune_once(model, method, fraction, data, args, seed, cache=None):
    """``cache``: ``{method: (scores, seconds)}`` of this very model and these pruning samples, so the
    one-shot rows of one dense model score it once for all budgets (the seconds are the scoring's)."""
    x = data["train"][0][:1]
    structures = prunekit.find_structures(model, x)
    if cache is not None and method in cache:
        scores, seconds = cache[method]
    else:
        t0 = time.perf_counter()
        scores = score(model, structures, data["prune"], method, seed)
        seconds = time.perf_counter() - t0
        if cache is not None:
            cache[method] = (scores, seconds)
    t0 = time.perf_counter()
    plan = prunekit.select(structures, scores, prunekit.Budget(macs=fraction), method=method, **getattr(args, "select", {}))
    seconds += time.perf_counter() - t0
    return prunekit.materialize(model, plan, structures), kept_by_layer(structures, plan), seconds


def finetune(model, data, args, seed, share=1.0):
    if not args.ft_epochs:  # --ft-epochs 0: one-shot only (accuracy = the one-shot accuracy)
        return model.eval()
    X, y = data["ft"]
    n = int(len(X) * share)
    fit(model, (X[:n], y[:n]), None, epochs=args.ft_epochs, lr=args.ft_lr, weight_decay=5e-4, batch_size=args.batch_size,
        seed=seed, progress=False)
    return model.eval()


def one_shot(dense, method, budget, data, args, seed, recalibrate=False) -> dict:
    pruned, kept, seconds = prune_once(dense, method, budget, data, args, seed, data.get("scores"))
    if recalibrate:  # BatchNorm statistics re-estimated on the pruning samples (no labels, no training)
        recalibrate_batchnorm(pruned, data["prune"])
    acc_oneshot = evaluate(pruned.eval(), data["test"])["accuracy"]
    acc = evaluate(finetune(pruned, data, args, seed), data["test"])["accuracy"]
    return {"acc_oneshot": acc_oneshot, "accuracy": acc, "score_seconds": seconds,
            **_describe(pruned, data["train"][0][:1], kept)}


def iterative(dense, method, budget, data, args, seed) -> dict:
    x = data["train"][0][:1]
    dense_macs = prunekit.count(dense, x)["macs"]
    model, seconds = dense, 0.0
    for step in range(1, args.steps + 1):
        target = dense_macs * (1 - budget) ** (step / args.steps)
        fraction = 1 - target / prunekit.count(model, x)["macs"]
        model, _, s = prune_once(model, method, fraction, data, args, seed)
        seconds += s
        if step == args.steps:
            acc_oneshot = evaluate(model.eval(), data["test"])["accuracy"]  # before the last fine-tuning
        model = finetune(model, data, args, seed + step, share=1 / args.steps)
    acc = evaluate(model, data["test"])["accuracy"]
    return {"acc_oneshot": acc_oneshot, "accuracy": acc, "score_seconds": seconds, **_describe(model, x)}


def library(dense, method, budget, data, args, seed) -> dict:
    from benchmarks.bench_criteria_accuracy import tp_prune

    x = data["train"][0][:1]
    t0 = time.perf_counter()
    try:
        pruned, info = tp_prune(dense, x, data["prune"], method, budget, CLASSIFIER[args.model], args.tp_iters)
    except RuntimeError as exc:  # the budget is out of Torch-Pruning's reach on this network: a row that says so
        return {"error": str(exc)[:300], "acc_oneshot": None, "accuracy": None, "score_seconds": None}
    seconds = time.perf_counter() - t0
    acc_oneshot = evaluate(pruned.eval(), data["test"])["accuracy"]
    acc = evaluate(finetune(pruned, data, args, seed), data["test"])["accuracy"]
    return {"acc_oneshot": acc_oneshot, "accuracy": acc, "score_seconds": seconds,
            "tp_pruning_ratio": info["tp_pruning_ratio"], **_describe(pruned, x)}


# ----------------------------------------------------------------------------- summary

def summarize(rows) -> dict:
    rows = [r for r in rows if not r.get("error")]
    table = []
    cells = sorted({(r["schedule"], r["budget"], r["method"]) for r in rows if r["samples"] == r["base_samples"]})
    for schedule, budget, method in cells:
        group = [r for r in rows if (r["schedule"], r["budget"], r["method"]) == (schedule, budget, method)
                 and r["samples"] == r["base_samples"]]
        table.append({"schedule": schedule, "budget": budget, "method": method,
                      **{k: stats([r[k] for r in group]) for k in ("acc_oneshot", "accuracy", "params", "macs")}})
    comparisons = {}
    for schedule in sorted({r["schedule"] for r in rows}):
        for budget in sorted({r["budget"] for r in rows}):
            part = [r for r in rows if r["schedule"] == schedule and r["budget"] == budget
                    and r["samples"] == r["base_samples"]]
            for value in ("acc_oneshot", "accuracy"):
                if any(r["method"] == "sosp-h" for r in part):
                    comparisons[f"{schedule} {budget} {value}"] = paired(part, value, "method", "sosp-h",
                                                                         match=("seed",))
    sweep = {}
    for r in rows:
        if r["method"] == "sosp-h" and r["schedule"] == "one-shot":
            sweep.setdefault(str(r["budget"]), {}).setdefault(r["samples"], []).append(r)
    samples = {b: {n: {v: stats([r[v] for r in rs]) for v in ("acc_oneshot", "accuracy")}
                   for n, rs in sorted(by.items())} for b, by in sweep.items() if len(by) > 1}
    tempered = sorted({r["method"] for r in rows if r["method"].startswith("sosp-h@T")})
    recalibrated = {m: best_others(rows, m, ("one-shot-bn",)) for m in ["sosp-h"] + tempered}
    return {"table": table, "paired_sosp_h_minus": comparisons, "sosp_h_samples": samples, "best": best_others(rows),
            **({"best_tempered": {m: best_others(rows, m) for m in tempered}} if tempered else {}),
            **({"best_recalibrated": recalibrated} if any(recalibrated.values()) else {})}


def best_others(rows, reference: str = "sosp-h", schedules=("one-shot", "library")) -> dict:
    """Per budget and value: ``reference`` (SOSP-H or a tempered ``sosp-h@T<t>``) against the
    Torch-Pruning criterion with the highest mean (either form: re-expressed on prunekit's structures
    or the library's own) and against the criterion with the highest mean of all the others but the
    SOSP-H variants; paired by seed. The best is chosen after the fact. ``rows`` without failures;
    ``schedules``: the rows compared (``("one-shot-bn",)``: BatchNorm recalibrated before the test)."""
    base = [r for r in rows if r["schedule"] in schedules and r["samples"] == r["base_samples"]]
    out = {}
    for budget in sorted({r["budget"] for r in base}):
        part = [r for r in base if r["budget"] == budget]
        methods = sorted({r["method"] for r in part})
        if reference not in methods:
            continue
        for value in ("acc_oneshot", "accuracy"):
            means = {m: stats([r[value] for r in part if r["method"] == m])["mean"] for m in methods}
            diffs = paired(part, value, "method", reference, match=("seed",))
            cell = {"sosp-h": means[reference], "reference": reference}
            for label, pool in (("torch-pruning", TP_ON_PK + TP_LIB), ("all", methods)):
                others = [m for m in methods if m in pool and not m.startswith("sosp-h") and m in diffs]
                if others:
                    best = max(others, key=means.get)
                    cell[label] = {"method": best, "accuracy": means[best], "sosp_h_minus": diffs[best]}
            out[f"{budget} {value}"] = cell
    return out


def _best_rows(best: dict) -> list:
    rows = []
    for key, cell in best.items():
        for label in ("torch-pruning", "all"):
            if label in cell:
                b, d = cell[label], cell[label]["sosp_h_minus"]
                rows.append([key, f"{100 * cell['sosp-h']:.1f}", label, b["method"], f"{100 * b['accuracy']:.1f}",
                             f"{100 * d['mean']:+.2f} ± {100 * d['sem']:.2f}", f"{d['wins']}/{d['ties']}/{d['losses']}"])
    return rows


def _pct(stat):
    return f"{100 * stat['mean']:.1f} ± {100 * stat['std']:.1f}"


def markdown(result) -> str:
    s = result["summary"]
    meta = result["meta"]
    lines = [f"# SOSP benchmark ({meta['protocol']})", "", f"Command: `{meta['command']}`", ""]
    lines += [meta["note"], ""] if meta.get("note") else []
    lines += [f"- part: `{part['command']}`" for part in meta.get("parts", [])] + ([""] if meta.get("parts") else [])
    lines.append(markdown_table(["schedule", "MACs removed", "method", "one-shot acc (%)", "acc after FT (%)",
                                 "params", "n"],
                                [[r["schedule"], f"{r['budget']:.0%}", r["method"], _pct(r["acc_oneshot"]),
                                  _pct(r["accuracy"]), f"{r['params']['mean']:,.0f}", r["accuracy"]["n"]]
                                 for r in s["table"]]))
    lines += ["", "Paired SOSP-H − method (same seed), percentage points, mean ± s.e., wins/ties/losses:", ""]
    rows = []
    for key, per in s["paired_sosp_h_minus"].items():
        for method, d in per.items():
            rows.append([key, method, f"{100 * d['mean']:+.2f} ± {100 * d['sem']:.2f}",
                         f"{d['wins']}/{d['ties']}/{d['losses']}"])
    lines.append(markdown_table(["schedule budget value", "method", "SOSP-H − method", "W/T/L"], rows))
    tables = [("SOSP-H", "", s.get("best", {}))] + [(m, "", b) for m, b in s.get("best_tempered", {}).items()]
    tables += [(m if m != "sosp-h" else "SOSP-H", ", one-shot after BatchNorm recalibration", b)
               for m, b in s.get("best_recalibrated", {}).items() if b]
    for name, where, best in tables:
        lines += ["", f"{name} against the best other criterion (SOSP-H variants left out) by mean (chosen after "
                  f"the fact){where}, paired by seed:", ""]
        lines.append(markdown_table(["budget value", f"{name} (%)", "among", "best other", "its mean (%)",
                                     f"{name} − it", "W/T/L"], _best_rows(best)))
    kept = {}  # mean kept structures per layer, one-shot rows on prunekit's structures (where criteria differ)
    for r in result["rows"]:
        if r["schedule"] == "one-shot" and r.get("kept_by_layer") and r["samples"] == r["base_samples"]:
            for layer, (k, _) in r["kept_by_layer"].items():
                kept.setdefault((r["budget"], r["method"]), {}).setdefault(layer, []).append(k)
    if kept:
        layers = list(dict.fromkeys(layer for per in kept.values() for layer in per))
        totals = {layer: t for r in result["rows"] for layer, (_, t) in (r.get("kept_by_layer") or {}).items()}
        lines += ["", "Mean structures kept per layer (one-shot), of " + ", ".join(f"{totals[lay]} in {lay}"
                                                                                   for lay in layers) + ":", ""]
        lines.append(markdown_table(["MACs removed", "method", *layers],
                                    [[f"{b:.0%}", m, *(f"{sum(per[lay]) / len(per[lay]):.1f}" if lay in per else "–"
                                                      for lay in layers)]
                                     for (b, m), per in sorted(kept.items())]))
    failed = [r for r in result["rows"] if r.get("error")]
    lines += ["", "Rows that could not be run:", ""] if failed else []
    lines += [f"- seed {r['seed']} {r['schedule']} {r['method']} {r['budget']:.0%}: {r['error']}" for r in failed]
    for budget, by in s.get("sosp_h_samples", {}).items():
        lines += ["", f"SOSP-H one-shot at {float(budget):.0%} of the MACs against the number of pruning samples:", ""]
        lines.append(markdown_table(["samples", "one-shot acc (%)", "acc after FT (%)", "n"],
                                    [[n, _pct(v["acc_oneshot"]), _pct(v["accuracy"]), v["accuracy"]["n"]]
                                     for n, v in by.items()]))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main

def load(args) -> dict:
    (X, y), (Xt, yt), _ = load_dataset(args.model, args.data, args.data_cache)
    g = torch.Generator().manual_seed(1234)  # fixed subsets, the same for every seed and method
    perm = torch.randperm(len(X), generator=g)
    prune_idx, ft_idx = perm[:args.prune_samples], perm[:args.ft_samples]
    return {"train": (X, y), "prune": make_batches(X[prune_idx], y[prune_idx], 128),
            "ft": (X[ft_idx], y[ft_idx]), "test": (Xt, yt), "perm": perm}


def plan_rows(args):
    rows = []
    for budget in args.budgets:
        rows += [("one-shot", m, budget, args.prune_samples) for m in args.methods]
        rows += [("iterative", m, budget, args.prune_samples) for m in args.iterative if budget in args.iterative_budgets]
        rows += [("library", m, budget, args.prune_samples) for m in args.library]
        rows += [("one-shot-bn", m, budget, args.prune_samples) for m in args.bn]
    rows += [("one-shot", "sosp-h", b, n) for n in args.samples_sweep for b in args.sweep_budgets]
    return rows


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    p.add_argument("--width", type=float, help="default: DEFAULTS of the model's data set (as for every None below)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    p.add_argument("--methods", nargs="+", default=list(PK + TP_ON_PK))
    p.add_argument("--library", nargs="*", default=list(TP_LIB))
    p.add_argument("--bn", nargs="*", default=[], metavar="METHOD",
                   help="also one-shot rows with the BatchNorm statistics recalibrated on the pruning samples "
                        "before the one-shot test and the fine-tuning (schedule one-shot-bn)")
    p.add_argument("--iterative", nargs="*")
    p.add_argument("--iterative-budgets", type=float, nargs="*", default=[0.7, 0.9])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--samples-sweep", type=int, nargs="*")
    p.add_argument("--sweep-budgets", type=float, nargs="*", default=[0.7])
    p.add_argument("--prune-samples", type=int)
    p.add_argument("--ft-samples", type=int)
    p.add_argument("--ft-epochs", type=int)
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, help="fine-tuning batch")
    p.add_argument("--tp-iters", type=int, default=10)
    p.add_argument("--data", default=FASHION, help="Fashion-MNIST's IDX folder")
    p.add_argument("--data-cache", default="runs/data", help="where SYNTHETIC SBU is generated")
    p.add_argument("--cache", default="runs/sosp")
    p.add_argument("--select", type=json.loads, default={}, metavar="JSON",
                   help="options of prunekit.select for every prunekit-structure row, e.g. '{\"normalize\": \"macs\"}' "
                        "or the paper's '{\"group_norm\": null, \"max_group_ratio\": null}' (default: its defaults)")
    p.add_argument("--out", default="benchmarks/results/sosp.json")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="merge these result files (one protocol) into --out")
    args = p.parse_args(argv)
    args.dataset = dataset_of(args.model)
    for name, value in DEFAULTS[args.dataset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def dense_row(dense, data, args, seed) -> dict:
    x = data["train"][0][:1]
    acc = evaluate(dense, data["test"])["accuracy"]
    return {"seed": seed, "schedule": "dense", "method": "dense", "budget": 0.0, "samples": args.prune_samples,
            "base_samples": args.prune_samples, "acc_oneshot": acc, "accuracy": acc, **_describe(dense, x)}


def main(argv=None):
    args = parse(argv)
    if args.merge:
        merge(args.merge, key=KEY, out=args.out, must_match=("protocol",)).save(summarize, markdown)
        return
    torch.set_num_threads(1)
    protocol = {"model": args.model, "width": args.width, "prune_samples": args.prune_samples,
                "ft_samples": args.ft_samples, "ft_epochs": args.ft_epochs, "ft_lr": args.ft_lr, "steps": args.steps}
    if args.dataset == "sbu":  # fixed on Fashion-MNIST, so out of its protocol (its files still resume)
        protocol |= {"data": SBU, "batch_size": args.batch_size}
    if args.dataset == "digits":
        protocol |= {"data": DIGITS, "batch_size": args.batch_size}
    if args.select:  # the defaults stay out of the protocol, so the earlier files still resume
        protocol |= {"select": args.select}
    meta = {"protocol": protocol, "machine": machine(1), **({"note": NOTES[args.dataset]} if args.dataset in NOTES else {})}
    store = Store(args.out, key=KEY, meta=meta, resume=True, must_match=("protocol",))
    data = load(args)
    for seed in args.seeds:
        dense = prunekit.load(dense_path(args.cache, args.model, args.width, seed)).eval()
        if not store.done(seed=seed, schedule="dense", method="dense", budget=0.0, samples=args.prune_samples):
            store.add(dense_row(dense, data, args, seed))
        scores = {}  # per number of pruning samples: {method: (scores, seconds)} of this dense model
        for schedule, method, budget, samples in plan_rows(args):
            key = {"seed": seed, "schedule": schedule, "method": method, "budget": budget, "samples": samples}
            if store.done(**key):
                continue
            run = {"one-shot": one_shot, "iterative": iterative, "library": library,
                   "one-shot-bn": partial(one_shot, recalibrate=True)}[schedule]
            idx = data["perm"][:samples]  # the base pruning samples are the first of the same permutation
            local = {**data, "scores": scores.setdefault(samples, {})}
            if samples != args.prune_samples:
                local["prune"] = make_batches(data["train"][0][idx], data["train"][1][idx], 128)
            t0 = time.perf_counter()
            row = run(dense, method, budget, local, args, seed)
            store.add({**key, "base_samples": args.prune_samples, **row, "seconds": time.perf_counter() - t0})
            print(seed, schedule, method, budget, samples, row.get("error") or
                  f"{row['acc_oneshot']:.3f} -> {row['accuracy']:.3f}", flush=True)
        store.save(summarize, markdown)
    store.save(summarize, markdown)


if __name__ == "__main__":
    main()
