"""CTF against its baselines on synthetic SBU / FPHA: the paper's table, mean ± std over seeds.

Protocol:

1. Data: synthetic SBU (``prunekit.data.write_sbu``, data seed 0), one or more folds
   (``--folds``, the official 5-fold protocol), or synthetic FPHA
   (``prunekit.data.write_fpha``, data seed 0, the 1:1 split); default transform.
2. Model: ``attention_gcn`` with channels (16, 32, 32); for every seed and fold a dense
   model is trained ``--pretrain`` epochs (initialisation and shuffling seeded by the seed).
3. From that checkpoint every method gets the same budget of ``--epochs + --finetune``
   training epochs (SGD momentum 0.9, cosine, batch 32), through one protocol,
   :func:`prunekit.ctf.run` (the same as ``prunekit prune --method ctf``):

   * **ctf** – CTF masks (all four granularities, the defaults of :class:`prunekit.ctf.CTF`:
     learnable thresholds, last quarter of the epochs with the masks frozen) trained at ``--lr``
     for the first number of ``--ctf-split`` (default 8) epochs, finalized, materialized, then
     fine-tuned the second (default 12) with the zeros frozen (8 + 12 against 12 + 8: ``docs/ctf.md``);
   * **column-only**, **row-only** (and **channel-only**) – the structured-only variants
     (:func:`prunekit.ctf.structured_ctf`), ``--epochs`` (default 12) with masks, then
     ``--finetune`` (default 8);
   * **ctf-fixed** – CTF with fixed thresholds, same schedule;
   * **group-lasso** – :class:`prunekit.ctf.GroupLasso` (column groups, ``--lasso-strength``)
     for ``--epochs`` epochs, thresholded to the rate, fine-tuned ``--finetune`` epochs;
     **l1** – the same with ``granularity="entry"``;
   * **magnitude** – global unstructured magnitude pruning right away, then
     ``--epochs + --finetune`` epochs of fine-tuning with the zeros frozen;
     **magnitude-normalized** – the same ranking ``|W| / rms(W^ℓ)`` within each layer;
   * **random** – :func:`prunekit.ctf.random_prune` (entries, seeded), then the same;
   * **ctf-rewind** (a diagnostic) – CTF's learned plan applied to the dense weights, then the
     one-shot baselines' ``--epochs + --finetune`` epochs of fine-tuning (``run(..., rewind=True)``):
     against them it isolates which weights CTF keeps from what its mask phase trained.

   Every fine-tuning runs at ``--ft-lr`` (default ``prunekit.ctf.FINETUNE["lr"]`` = 0.05,
   the ``--lr`` default), without weight decay, for every method alike (until this went
   through :func:`prunekit.ctf.run`, one-shot methods fine-tuned at ``--lr``: the same default;
   the rows are unchanged, checked at the smallest settings).

   Rates are fractions of the prunable weights (every weight of dimension ≥ 2 but the
   classifier's).
4. Each row: test accuracy after pruning and after fine-tuning, the removed fraction
   reached, parameters of the materialized model (physical and nonzero), its MACs per
   sample (entry zeros still counted: they are not removed physically), the part removed
   structurally, median latency (batch 16, 1 thread, 10 repeats), and the same after
   :func:`prunekit.sparsify` (layers with ≥ 70 % zeros stored sparse where their own timing
   says that is faster; the converted layers are listed); the nonzero entries of every weight
   (``nonzero_per_weight``: ``[nonzero, entries]`` of the materialized model). ``--cost macs`` makes the rate a
   fraction of the MACs per sample instead of the weights (``prunekit.ctf.run``'s ``cost``).
5. Summary: per method and rate, mean ± std (sample std) over seeds × folds; a markdown
   table next to the JSON (same name, ``.md``); the goal check (CTF ≥ every baseline at
   every rate ≥ 0.9, within 1 point of dense at 0.9).
6. Training overhead: seconds per epoch with CTF masks / dense (goal ≤ 1.3), medians of
   alternated rounds; ``--remeasure-overhead F.json`` times it again (on an idle machine)
   and records the load average.
7. ``--continued`` also trains every dense model ``--epochs + --finetune`` epochs more: the
   dense reference with as much training as a pruned row.

Usage:
    python benchmarks/bench_ctf.py --dataset sbu --folds 1 2 3 4 5 --seeds 0 1 2 --continued \\
        --out benchmarks/results/ctf_sbu.json
    python benchmarks/bench_ctf.py --resummarize benchmarks/results/ctf_sbu.json   # summary + table again
    python benchmarks/bench_ctf.py ... --resume --out F.json      # run only the rows F.json lacks
    python benchmarks/bench_ctf.py --merge A.json B.json --out all.json   # parts run in parallel
    python benchmarks/bench_ctf.py --remeasure-overhead all.json  # the overhead timed again, load recorded
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import prunekit
from prunekit.ctf import CTF, FINETUNE, METHODS as ALL_METHODS, run
from prunekit.pipeline.dataspec import load_data as load_spec
from prunekit.pipeline.train import evaluate, fit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.store import paired, stats, write_json  # noqa: E402

CHANNELS = (16, 32, 32)
NUM_CLASSES = {"sbu": 8, "fpha": 45}
METHODS = ("ctf", "magnitude", "random", "column-only", "row-only", "group-lasso")
DIAGNOSTICS = ("ctf-rewind",)  # rows that are not baselines: left out of the goal's "best baseline"
BATCH = 32


def log(message: str) -> None:
    print(message, flush=True)


_DATA: dict = {}


def load_data(dataset: str, fold: int):
    """``(Xtr, ytr, Xte, yte)`` of the synthetic data set (data seed 0; FPHA without its known bad sequences)."""
    key = (dataset, fold if dataset == "sbu" else None)
    if key not in _DATA:
        spec = {"format": f"synthetic-{dataset}", "seed": 0,
                **({"fold": fold} if dataset == "sbu" else {"skip_known_bad": True})}
        (Xtr, ytr), (Xte, yte), _ = load_spec(spec, cache=tempfile.mkdtemp(prefix=f"{dataset}_synth_"))
        _DATA[key] = (Xtr, ytr, Xte, yte)
    return _DATA[key]


def new_model(dataset: str, seed: int, state=None):
    torch.manual_seed(seed)
    model = prunekit.models.create("attention_gcn", graph=dataset, channels=CHANNELS,
                                   num_classes=NUM_CLASSES[dataset])
    if state is not None:
        model.load_state_dict(state)
    return model


def latency_ms(model, x) -> float:
    result = prunekit.measure_latency(model, x, repeats=10, threads=1)
    return next(iter(result["batches"].values()))["median_ms"]


def sparse_latency(model, x) -> dict:
    """The pruned model through :func:`prunekit.sparsify` (each layer with ≥ 70 % zeros stored sparse
    where its own timing says that is faster): its latency and the layers converted."""
    fast, report = prunekit.sparsify(model.eval(), example_inputs=x, threads=1)
    return {"latency_sparse_ms_b16": latency_ms(fast, x),
            "sparse_layers": [e["name"] for e in report if e["converted"]]}


def continue_dense(model, data, epochs, lr, seed) -> float:
    """Train the dense model ``epochs`` more (the reference with as much training as a pruned row): test accuracy."""
    Xtr, ytr, Xte, yte = data
    history = fit(model, (Xtr, ytr), (Xte, yte), epochs=epochs, lr=lr, batch_size=BATCH, progress=False, seed=seed,
                  weight_decay=FINETUNE["weight_decay"])
    return history["eval_accuracy"][-1]


def split(method, args) -> tuple[int, int]:
    """``(epochs with masks, fine-tuning epochs)`` of a mask-training method: ``--ctf-split`` for
    CTF itself, ``--epochs`` / ``--finetune`` for the others (the same total either way)."""
    if method in ("ctf", "ctf-rewind") and args.ctf_split:
        return tuple(args.ctf_split)
    return args.epochs, args.finetune


def run_method(method, state, data, rate, args, seed, x_latency) -> dict:
    """One row: :func:`prunekit.ctf.run` from the dense checkpoint, with the benchmark's split of the epoch budget."""
    Xtr, ytr, Xte, yte = data
    epochs, ft_epochs = split(method, args)
    options = {"strength": args.lasso_strength} if method in ("group-lasso", "l1") else {}
    if method in ("ctf", "ctf-rewind"):
        options = dict(args.ctf_options or {})
    if method == "ctf-rewind":  # CTF's plan on the dense weights, then the one-shot baselines' fine-tuning
        options["rewind"] = True
    result = run(new_model(args.dataset, seed, state), (Xtr, ytr), (Xte, yte), rate, epochs=epochs,
                 finetune_epochs=ft_epochs, method="ctf" if method == "ctf-rewind" else method, lr=args.lr,
                 finetune_lr=args.ft_lr, batch_size=BATCH, seed=seed, cost=args.cost, **options)
    plan, report = result.plan, result.report
    row = {"accuracy_pruned": result.accuracy_before_finetune, "accuracy": result.accuracy,
           "rate": result.rate_reached, "params": result.params, "nonzero_params": result.nonzero_params,
           "macs": result.macs, "structures_removed": len(plan.removed),
           "structured_params_removed": plan.achieved["params"], "structured_macs_removed": plan.achieved["macs"],
           "latency_ms_b16": latency_ms(result.model, x_latency), **sparse_latency(result.model, x_latency),
           "seconds": result.seconds,
           "nonzero_per_weight": {n: [int((w != 0).sum()), w.numel()] for n, w in result.model.named_parameters()
                                  if w.dim() >= 2}}
    if "masks" in result.history:  # CTF and its structured-only variants
        masks = result.history["masks"]
        row.update({"accuracy_masks": result.accuracy_masks, "kept_masks": report["kept_masks"],
                    "attributed": report["attributed"], "rank_fix": report["rank_fix"],
                    "hard_phase": report.get("hard_phase"),
                    "kept_per_epoch": [round(r["binary"], 4) for r in masks],
                    "target_per_epoch": [round(r["target"], 4) for r in masks],
                    "mask_epochs": epochs, "finetune_epochs": result.finetune_epochs})
    elif "accuracy_regularised" in report:  # group lasso / l1
        row.update({"accuracy_regularised": report["accuracy_regularised"], "strength": report["strength"]})
    return row


def overhead(dataset, state, data, epochs=4, rounds=2):
    """Median seconds per training epoch (no evaluation) with CTF masks / dense, rounds alternated."""
    Xtr, ytr, _, _ = data
    times = {"dense": [], "ctf": []}
    for _ in range(rounds):
        for kind in ("dense", "ctf"):
            model = new_model(dataset, 0, state)
            callbacks = [CTF(model, 0.9, example_inputs=Xtr[:2], hard=0.0)] if kind == "ctf" else []
            history = fit(model, (Xtr, ytr), epochs=epochs, lr=0.05, batch_size=BATCH, progress=False,
                          callbacks=callbacks)
            times[kind].extend(history["seconds"][1:])
    dense, ctf = statistics.median(times["dense"]), statistics.median(times["ctf"])
    return {"dense_s_per_epoch": dense, "ctf_s_per_epoch": ctf, "ratio": ctf / dense, "epochs_timed": len(times["ctf"]),
            "note": "soft masks throughout (hard=0): the costlier phase"}


def remeasured_overhead(dataset, rounds=3, epochs=4):
    """:func:`overhead` on fold 1 (FPHA: the 1:1 split), seed 0, after 2 dense epochs, with the load average.

    The timing does not depend on the weights (soft masks compute densely); the load average
    (1 minute, before and after) says whether other work shared the machine.
    """
    torch.set_num_threads(1)
    data = load_data(dataset, 1)
    model = new_model(dataset, 0)
    fit(model, data[:2], epochs=2, lr=0.05, batch_size=BATCH, progress=False, seed=0)
    load_before = os.getloadavg()[0]
    measured = overhead(dataset, copy.deepcopy(model.state_dict()), data, epochs=epochs, rounds=rounds)
    measured["load_average_1min"] = [load_before, os.getloadavg()[0]]
    measured["note"] += f"; re-measured by --remeasure-overhead, {rounds} rounds of {epochs} epochs"
    return measured


# ----------------------------------------------------------------------------- summary

def summarize(rows, dense_rows, methods, rates) -> dict:
    keys = ("accuracy", "accuracy_pruned", "rate", "params", "nonzero_params", "macs", "latency_ms_b16",
            "latency_sparse_ms_b16", "structured_params_removed", "seconds")
    table = []
    for rate in rates:
        for method in methods:
            group = [r for r in rows if r["method"] == method and r["target_rate"] == rate]
            if group:  # files written before a key was measured lack it
                summary = {k: stats([r[k] for r in group]) for k in keys if all(k in r for r in group)}
                table.append({"method": method, "target_rate": rate, **summary})
    dense = {k: stats([d[k] for d in dense_rows]) for k in ("accuracy", "params", "macs", "latency_ms_b16")}
    continued = [d["accuracy_continued"] for d in dense_rows if "accuracy_continued" in d]
    if continued:
        dense["accuracy_continued"] = stats(continued)
    goal = {}
    if "ctf" in methods:
        for rate in rates:
            cell = {r["method"]: r["accuracy"]["mean"] for r in table if r["target_rate"] == rate}
            reached = {r["method"]: r["rate"]["mean"] for r in table if r["target_rate"] == rate}
            if "ctf" not in cell:
                continue
            # a baseline that stopped short of the rate (structured-only: one group per weight stays)
            # is not a comparison at that rate
            others = {m: a for m, a in cell.items() if m not in ("ctf", *DIAGNOSTICS) and reached[m] >= rate - 0.005}
            short = {m: reached[m] for m in cell if m not in ("ctf", *DIAGNOSTICS) and m not in others}
            best = max(others, key=others.get) if others else None
            entry = {"ctf": cell["ctf"], "best_baseline": best, "best_baseline_accuracy": others.get(best),
                     "ctf_beats_every_baseline": all(cell["ctf"] >= a for a in others.values()),
                     "short_of_the_rate": short}
            if abs(rate - 0.9) < 1e-9:
                entry["within_1pt_of_dense"] = cell["ctf"] >= dense["accuracy"]["mean"] - 0.01
                if "accuracy_continued" in dense:
                    entry["within_1pt_of_dense_continued"] = cell["ctf"] >= dense["accuracy_continued"]["mean"] - 0.01
            goal[str(rate)] = entry
    out = {"table": table, "dense": dense, "goal": goal, "paired": paired_differences(rows, methods, rates)}
    for reference in (m for m in DIAGNOSTICS if m in methods):  # the diagnostic against everything else
        out[f"paired_{reference}"] = paired_differences(rows, methods, rates, reference=reference)
    return out


def paired_differences(rows, methods, rates, reference="ctf") -> dict:
    """``{rate: {method: {mean, sem, n, wins, ties, losses}}}``: accuracy of ``reference`` minus
    ``method`` on the same fold and seed (the same dense checkpoint), so the seed-to-seed spread
    that both share cancels (:func:`benchmarks.store.paired`)."""
    out = {}
    for rate in rates:
        part = [r for r in rows if r["target_rate"] == rate and r["method"] in methods]
        diffs = paired(part, "accuracy", "method", reference, match=("fold", "seed"))
        if diffs:
            out[str(rate)] = {m: diffs[m] for m in methods if m in diffs}
    return out


def _pm(stat, scale=1.0, digits=1):
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def markdown(result) -> str:  # noqa: C901
    s, p = result["summary"], result["protocol"]
    methods = p["methods"]
    lines = [f"# CTF vs baselines: {result['data']['dataset']}", "",
             f"attention_gcn {tuple(result['model']['channels'])}; seeds {p['seeds']}, "
             f"folds {result['data']['folds']}; "
             f"dense {p['pretrain_epochs']} epochs, then {p['epochs']} + {p['finetune']} epochs per method "
             + (f"(CTF {p['ctf_split'][0]} + {p['ctf_split'][1]}; " if p.get("ctf_split") else "(")
             + f"magnitude / random: {p['epochs'] + p['finetune']} of fine-tuning). Mean ± std over "
             f"{s['dense']['accuracy']['n']} runs. Accuracy in %.", "",
             f"Dense: accuracy {_pm(s['dense']['accuracy'], 100)}, {s['dense']['params']['mean']:.0f} params, "
             f"{s['dense']['macs']['mean'] / 1e6:.2f} M MACs, {s['dense']['latency_ms_b16']['mean']:.1f} ms "
             "(batch 16, 1 thread)." + (
                 f" Dense trained {p['epochs'] + p['finetune']} epochs more (the same total training as a pruned "
                 f"row): {_pm(s['dense']['accuracy_continued'], 100)} "
                 f"(n = {s['dense']['accuracy_continued']['n']})." if "accuracy_continued" in s["dense"] else ""), "",
             "## Accuracy after fine-tuning", "",
             "| rate | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    rates = p["rates"]
    cells = {(r["method"], r["target_rate"]): r for r in s["table"]}
    short = False
    for rate in rates:
        reached = {m: cells[(m, rate)]["rate"]["mean"] >= rate - 0.005 for m in methods if (m, rate) in cells}
        accs = {m: cells[(m, rate)]["accuracy"]["mean"] for m in reached if reached[m]}
        best = max(accs.values()) if accs else None
        row = []
        for m in methods:
            if (m, rate) not in cells:
                row.append("–")
                continue
            text = _pm(cells[(m, rate)]["accuracy"], 100)
            if not reached[m]:
                text += f" † ({cells[(m, rate)]['rate']['mean']:.3f})"
                short = True
            row.append(f"**{text}**" if m in accs and accs[m] == best else text)
        lines.append(f"| {rate:g} | " + " | ".join(row) + " |")
    if short:
        lines += ["", "† the rate was not reached (the removed fraction in brackets): a structured-only "
                      "method keeps one group of every weight."]
    lines += ["", "## Cost of the pruned models", "",
              "| rate | method | acc. % | acc. before FT % | rate reached | nonzero params | params | MACs (M) "
              "| structured params removed | latency ms | latency ms, sparsified |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for rate in rates:
        for m in methods:
            if (m, rate) not in cells:
                continue
            c = cells[(m, rate)]
            lines.append(f"| {rate:g} | {m} | {_pm(c['accuracy'], 100)} | {_pm(c['accuracy_pruned'], 100)} | "
                         f"{c['rate']['mean']:.4f} | {c['nonzero_params']['mean']:.0f} | {c['params']['mean']:.0f} | "
                         f"{c['macs']['mean'] / 1e6:.2f} | {c['structured_params_removed']['mean']:.3f} | "
                         f"{_pm(c['latency_ms_b16'], 1, 1)} | "
                         + (f"{_pm(c['latency_sparse_ms_b16'], 1, 1)} |" if "latency_sparse_ms_b16" in c else "– |"))
    if s.get("paired"):
        lines += ["", "## CTF minus each baseline, paired by fold and seed (points)", "",
                  "Mean ± standard error of the difference (wins / ties / losses of CTF).", "",
                  "| rate | " + " | ".join(m for m in methods if m != "ctf") + " |",
                  "|---|" + "---|" * (len(methods) - 1)]
        for rate in rates:
            cells_p = s["paired"].get(str(rate), {})
            row = []
            for m in methods:
                if m == "ctf":
                    continue
                d = cells_p.get(m)
                row.append("–" if d is None else f"{100 * d['mean']:+.1f} ± {100 * d['sem']:.1f} "
                                                 f"({d['wins']}/{d['ties']}/{d['losses']})")
            lines.append(f"| {rate:g} | " + " | ".join(row) + " |")
    for reference in (m for m in DIAGNOSTICS if s.get(f"paired_{m}")):
        others = [m for m in methods if m != reference]
        lines += ["", f"## {reference} (a diagnostic) minus each method, paired by fold and seed (points)", "",
                  "| rate | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
        for rate in rates:
            cells_p = s[f"paired_{reference}"].get(str(rate), {})
            if not cells_p:  # the diagnostic was not run at this rate
                continue
            row = ["–" if cells_p.get(m) is None else f"{100 * cells_p[m]['mean']:+.1f} ± {100 * cells_p[m]['sem']:.1f} "
                   f"({cells_p[m]['wins']}/{cells_p[m]['ties']}/{cells_p[m]['losses']})" for m in others]
            lines.append(f"| {rate:g} | " + " | ".join(row) + " |")
    if s["goal"]:
        lines += ["", "## Goal: CTF ≥ every baseline at rates ≥ 0.9, within 1 point of dense at 0.9", ""]
        for rate, g in s["goal"].items():
            if float(rate) < 0.9 or g["best_baseline"] is None:
                continue
            beats = g["ctf_beats_every_baseline"]
            text = (f"- rate {float(rate):g}: CTF {100 * g['ctf']:.1f} %, best baseline {g['best_baseline']} "
                    f"{100 * g['best_baseline_accuracy']:.1f} % ({'CTF ahead' if beats else 'CTF behind'})")
            if g.get("short_of_the_rate"):
                text += " (not compared, rate not reached: " + ", ".join(
                    f"{m} {r:.3f}" for m, r in g["short_of_the_rate"].items()) + ")"
            verdict = "met" if beats and g.get("within_1pt_of_dense", True) else "NOT met"
            if "within_1pt_of_dense" in g:
                text += (f"; dense {100 * s['dense']['accuracy']['mean']:.1f} % "
                         f"(within 1 point: {'yes' if g['within_1pt_of_dense'] else 'no'})")
            if "within_1pt_of_dense_continued" in g:
                strict = "met" if beats and g["within_1pt_of_dense_continued"] else "NOT met"
                text += (f"; dense trained as long {100 * s['dense']['accuracy_continued']['mean']:.1f} % "
                         f"(within 1 point: {'yes' if g['within_1pt_of_dense_continued'] else 'no'}): "
                         f"**{verdict}** against the dense model, **{strict}** against the dense model trained "
                         "as long")
                lines.append(text)
                continue
            lines.append(text + f": **{verdict}**")
    if result.get("training_overhead"):
        o = result["training_overhead"]
        lines += ["", f"Training overhead (s/epoch with CTF masks / dense): {o['ratio']:.2f} "
                      f"({o['ctf_s_per_epoch']:.2f} / {o['dense_s_per_epoch']:.2f} s; goal ≤ 1.3)"
                      + (" measured with a 1-minute load average of {:.1f} / {:.1f} (before / after).".format(
                          *o["load_average_1min"]) if "load_average_1min" in o else ".")]
    lines += ["", f"Machine: {result['machine']['platform']}, torch {result['machine']['torch']}, 1 thread, "
                  f"{result['machine']['note']}; {result['seconds'] / 60:.0f} min in all.", ""]
    return "\n".join(lines)


def write_result(path: Path, result: dict) -> None:
    """Recompute the summary of ``result`` and write it (JSON, atomically) and its markdown next to it."""
    p = result["protocol"]
    result["summary"] = summarize(result["rows"], result["dense"], p["methods"], p["rates"])
    write_json(path, result)
    path.with_suffix(".md").write_text(markdown(result))


def merge_results(results: list) -> dict:
    """One result from several runs of the same protocol: rows and dense models united (a row
    present in several files, same fold, seed, method and rate, is taken from the last of them),
    rates / methods / folds / seeds the union, seconds summed. The dense model of a fold and seed
    must reach the same accuracy in every file (each part retrains it)."""
    merged = copy.deepcopy(results[0])
    keys = ("pretrain_epochs", "epochs", "finetune", "lr", "ft_lr", "batch_size", "lasso_strength", "cost")
    for other in results[1:]:
        for k in keys:
            default = "params" if k == "cost" else None  # files from before --cost counted weights
            if other["protocol"].get(k, default) != merged["protocol"].get(k, default):
                raise ValueError(f"cannot merge: protocol {k} differs ({other['protocol'].get(k)} vs "
                                 f"{merged['protocol'].get(k)})")
        if other["model"] != merged["model"]:
            raise ValueError("cannot merge: different models")
    by_key, replaced = {}, 0
    for result in results:
        for row in result["rows"]:
            key = (row["fold"], row["seed"], row["method"], row["target_rate"])
            replaced += key in by_key
            by_key[key] = row  # a later file's run of the same row replaces an earlier one
    rows = list(by_key.values())
    dense = {}
    for result in results:
        for d in result["dense"]:
            known = dense.setdefault((d["fold"], d["seed"]), dict(d))
            if abs(known["accuracy"] - d["accuracy"]) > 1e-9:  # every part retrains the same dense model
                raise ValueError(f"cannot merge: fold {d['fold']} seed {d['seed']}: dense accuracy "
                                 f"{d['accuracy']:.4f} in one file, {known['accuracy']:.4f} in another")
            known.update({k: v for k, v in d.items() if k not in known})
    p = merged["protocol"]
    p["rates"] = sorted({r for res in results for r in res["protocol"]["rates"]})
    p["seeds"] = sorted({s for res in results for s in res["protocol"]["seeds"]})
    methods = [m for res in results for m in res["protocol"]["methods"]]
    p["methods"] = list(dict.fromkeys(methods))
    folds = [res["data"]["folds"] for res in results]
    if all(isinstance(f, list) for f in folds):
        merged["data"]["folds"] = sorted({x for f in folds for x in f})
    for res in results[1:]:
        merged["data"].setdefault("sizes", {}).update(res["data"].get("sizes", {}))
        if res.get("training_overhead"):  # the last file's measurement
            merged["training_overhead"] = res["training_overhead"]
    merged["rows"], merged["dense"] = rows, sorted(dense.values(), key=lambda d: (d["fold"] or 0, d["seed"]))
    merged["seconds"] = sum(res["seconds"] for res in results)
    splits = [res["protocol"].get("ctf_split") for res in results if res["protocol"].get("ctf_split")]
    p["ctf_split"] = splits[-1] if splits else None
    merged["merged_from"] = len(results)
    merged["rows_replaced_in_merge"] = replaced
    return merged


def main():  # noqa: C901
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("sbu", "fpha"), default="sbu")
    parser.add_argument("--folds", type=int, nargs="+", default=[1], help="SBU folds (FPHA: the 1:1 split)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.5, 0.7, 0.9, 0.95, 0.98, 0.99])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(ALL_METHODS) + list(DIAGNOSTICS),
                        help="ctf-rewind (a diagnostic): CTF's learned plan applied to the dense weights, then the "
                             "one-shot baselines' fine-tuning (--epochs + --finetune)")
    parser.add_argument("--pretrain", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=12, help="epochs with masks / regulariser")
    parser.add_argument("--finetune", type=int, default=8, help="fine-tuning epochs after finalize")
    parser.add_argument("--ctf-split", type=int, nargs=2, metavar=("MASK", "FT"), default=(8, 12),
                        help="CTF's own split of the budget: epochs with masks, then fine-tuning (measured: 8 + 12 "
                             "beat 12 + 8 at 0.9 and 0.99 on SBU folds 1-2; must sum to --epochs + --finetune)")
    parser.add_argument("--ctf-options", type=json.loads, default=None, metavar="JSON",
                        help='options of prunekit.ctf.CTF for the ctf rows only, e.g. \'{"ramp": 0.25}\' '
                             "(default: the library's defaults)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--ft-lr", type=float, default=FINETUNE["lr"],
                        help="fine-tuning lr of every method (default: prunekit.ctf.FINETUNE)")
    parser.add_argument("--lasso-strength", type=float, default=1e-3)
    parser.add_argument("--cost", choices=("params", "macs"), default="params",
                        help="what the rate counts: weights (1 each) or MACs per sample (prunekit.ctf.run's cost)")
    parser.add_argument("--no-overhead", action="store_true", help="skip the training-overhead timing")
    parser.add_argument("--continued", action="store_true",
                        help="also train each dense model --epochs + --finetune epochs more (the dense reference "
                             "with the same total training as every pruned row)")
    parser.add_argument("--out", default=None, help="default benchmarks/results/ctf_<dataset>.json")
    parser.add_argument("--resummarize", metavar="JSON", help="recompute the summary and markdown of a result file")
    parser.add_argument("--resume", action="store_true",
                        help="keep the rows already in --out and run only the missing ones (the dense model of a "
                             "fold and seed is retrained; training is deterministic on one thread)")
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="merge these result files (same data set and protocol) into --out; a row in "
                             "several files is taken from the last")
    parser.add_argument("--keep-folds", type=int, nargs="+", help="with --merge: keep only these SBU folds")
    parser.add_argument("--remeasure-overhead", metavar="JSON",
                        help="time the training overhead again (e.g. on an idle machine: the model of fold 1 / "
                             "seed 0 after 2 epochs, 3 rounds of 4 epochs) and store it in this result file")
    args = parser.parse_args()
    if args.ctf_split and sum(args.ctf_split) != args.epochs + args.finetune:
        parser.error(f"--ctf-split {args.ctf_split} must sum to --epochs + --finetune = {args.epochs + args.finetune}")
    if args.merge:
        if not args.out:
            parser.error("--merge needs --out")
        result = merge_results([json.loads(Path(f).read_text()) for f in args.merge])
        if args.keep_folds:
            result["rows"] = [r for r in result["rows"] if r["fold"] in args.keep_folds]
            result["dense"] = [d for d in result["dense"] if d["fold"] in args.keep_folds]
            result["data"]["folds"] = sorted(args.keep_folds)
        write_result(Path(args.out), result)
        log(Path(args.out).with_suffix(".md").read_text())
        return
    if args.remeasure_overhead:
        path = Path(args.remeasure_overhead)
        result = json.loads(path.read_text())
        result["training_overhead"] = remeasured_overhead(result["model"]["graph"])
        write_result(path, result)
        log(path.with_suffix(".md").read_text())
        return
    if args.resummarize:
        path = Path(args.resummarize)
        write_result(path, json.loads(path.read_text()))
        log(path.with_suffix(".md").read_text())
        return
    torch.set_num_threads(1)
    folds = args.folds if args.dataset == "sbu" else [None]
    out = Path(args.out or Path(__file__).parent / "results" / f"ctf_{args.dataset}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows, dense_rows, states = [], [], {}
    result = {
        "benchmark": f"ctf_{args.dataset}",
        "model": {"name": "attention_gcn", "graph": args.dataset, "channels": list(CHANNELS),
                  "num_classes": NUM_CLASSES[args.dataset]},
        "data": {"dataset": f"synthetic {args.dataset.upper()} (prunekit.data.write_{args.dataset} seed 0)",
                 "folds": folds if args.dataset == "sbu" else "1:1 split"},
        "protocol": {"pretrain_epochs": args.pretrain, "epochs": args.epochs, "finetune": args.finetune,
                     "lr": args.lr, "ft_lr": args.ft_lr, "batch_size": BATCH, "optimizer": "sgd momentum 0.9, cosine",
                     "seeds": args.seeds, "rates": args.rates, "methods": args.methods,
                     "lasso_strength": args.lasso_strength, "cost": args.cost,
                     "one_shot_finetune_epochs": args.epochs + args.finetune,
                     "ctf_split": list(args.ctf_split) if args.ctf_split else None,
                     "ctf_options": args.ctf_options},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": 1,
                    "note": "2-core CPU shared with other jobs"},
    }
    if args.resume and out.exists():
        previous = json.loads(out.read_text())
        rows, dense_rows = previous["rows"], previous["dense"]
        t0 -= previous.get("seconds", 0.0)
        p = result["protocol"]
        p["rates"] = sorted(set(p["rates"]) | set(previous["protocol"]["rates"]))
        p["methods"] = list(dict.fromkeys(previous["protocol"]["methods"] + p["methods"]))
        p["seeds"] = sorted(set(p["seeds"]) | set(previous["protocol"]["seeds"]))
        if isinstance(previous["data"]["folds"], list):
            result["data"]["folds"] = sorted(set(folds) | set(previous["data"]["folds"]))
        result["data"]["sizes"] = previous["data"].get("sizes", {})
        if previous.get("training_overhead"):
            result["training_overhead"] = previous["training_overhead"]
        log(f"resuming {out}: {len(rows)} rows, {len(dense_rows)} dense models")
    done = {(r["fold"], r["seed"], r["method"], r["target_rate"]) for r in rows}

    def save():
        result.update(dense=dense_rows, rows=rows, seconds=time.perf_counter() - t0)
        write_result(out, result)

    total = len(folds) * len(args.seeds) * len(args.rates) * len(args.methods)
    total = total - sum(1 for f, s, m, r in done if f in folds and s in args.seeds and m in args.methods
                        and r in args.rates) + len(rows)
    for fold in folds:
        data = load_data(args.dataset, fold)
        Xtr, ytr, Xte, yte = data
        result["data"].setdefault("sizes", {})[str(fold)] = {"train": len(ytr), "test": len(yte)}
        x_latency = Xte[:16]
        for seed in args.seeds:
            todo = [(rate, method) for rate in args.rates for method in args.methods
                    if (fold, seed, method, rate) not in done]
            if not todo:
                continue
            model = new_model(args.dataset, seed)
            fit(model, (Xtr, ytr), (Xte, yte), epochs=args.pretrain, lr=args.lr, batch_size=BATCH, progress=False,
                seed=seed)
            state = copy.deepcopy(model.state_dict())
            states[(fold, seed)] = state
            model.eval()
            counted = prunekit.count(model, x_latency[:1])
            dense = {"fold": fold, "seed": seed, "accuracy": evaluate(model, (Xte, yte))["accuracy"],
                     "params": counted["params"], "macs": counted["macs"],
                     "latency_ms_b16": latency_ms(model, x_latency)}
            if args.continued:
                longer = new_model(args.dataset, seed, state)
                dense["accuracy_continued"] = continue_dense(longer, data, args.epochs + args.finetune, args.lr, seed)
            stored = [d for d in dense_rows if d["fold"] == fold and d["seed"] == seed]
            if stored and abs(stored[0]["accuracy"] - dense["accuracy"]) > 1e-9:
                raise RuntimeError(f"fold {fold} seed {seed}: the retrained dense model reaches "
                                   f"{dense['accuracy']:.4f}, the stored one {stored[0]['accuracy']:.4f}; "
                                   "training is not reproducible here, resume is unsafe")
            if not stored:
                dense_rows.append(dense)
            else:
                stored[0].update({k: v for k, v in dense.items() if k not in stored[0]})
            log(f"[fold {fold} seed {seed}] dense: acc {dense['accuracy']:.3f} "
                f"(continued: {dense.get('accuracy_continued', float('nan')):.3f}), {dense['params']} params, "
                f"{dense['macs']} MACs, {dense['latency_ms_b16']:.1f} ms ({time.perf_counter() - t0:.0f}s)")
            for rate, method in todo:
                row = run_method(method, state, data, rate, args, seed, x_latency)
                row = {"dataset": args.dataset, "fold": fold, "seed": seed, "method": method, "target_rate": rate,
                       **row}
                rows.append(row)
                save()
                log(f"[{len(rows)}/{total}] fold {fold} seed {seed} {method:12s} r={rate:.2f}: "
                    f"acc {row['accuracy_pruned']:.3f} -> {row['accuracy']:.3f}, rate {row['rate']:.4f}, "
                    f"nonzero {row['nonzero_params']}, params {row['params']}, MACs {row['macs']}, "
                    f"{row['structures_removed']} structures, {row['latency_ms_b16']:.1f} ms "
                    f"({row['seconds']:.0f}s; {time.perf_counter() - t0:.0f}s in all)")
    if not args.no_overhead and states:
        fold, seed = next(iter(states))
        result["training_overhead"] = overhead(args.dataset, states[(fold, seed)], load_data(args.dataset, fold))
        o = result["training_overhead"]
        log(f"training overhead: {o['ratio']:.3f} ({o['ctf_s_per_epoch']:.2f} / {o['dense_s_per_epoch']:.2f} s)")
    save()
    log(f"wrote {out} and {out.with_suffix('.md')} in {result['seconds']:.0f}s")
    log(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
