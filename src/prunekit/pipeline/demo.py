"""The demo, on SYNTHETIC SBU-format skeleton data, in two parts that tell the two methods' stories:

1. **Structured criteria** (random, L1, L2, Taylor, OBD, SOSP-H, SOSP-I) remove 50 % and 70 % of an
   attention GCN's MACs; every pruned model is fine-tuned alike. Next to L1's 50 %-of-MACs plan, L1 at
   ``Budget(latency=0.5)`` with a latency model measured at batch 1: predicted and measured latency
   of both plans (:func:`_latency_part`).
2. **CTF against magnitude** at several rates of the prunable weights, each method with the
   CTF benchmark's budget (:func:`prunekit.ctf.run`: CTF learns its masks 8 epochs and
   fine-tunes 12; global magnitude prunes at once and fine-tunes 20):
   accuracy against the fraction of weights removed and against measured latency, with and
   without :func:`prunekit.sparsify`.

Example:
    >>> from prunekit.pipeline.demo import run_demo
    >>> rows = run_demo("runs/demo", quick=True)   # doctest: +SKIP
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from .. import models
from ..core.latency import LatencyModel
from ..core.measure import count, time_in_rounds
from ..core.plan import Budget, BudgetError
from ..core.sparse import sparsify
from ..core.structures import find_structures
from ..ctf.protocol import run as run_ctf
from .dataspec import load_data
from .oneshot import prune_and_finetune
from .train import evaluate, fit

__all__ = ["run_demo", "DEMO_METHODS", "CTF_METHODS"]
log = logging.getLogger(__name__)  # the CLI shows it on stdout

DEMO_METHODS = ("random", "l1", "l2", "taylor", "obd", "sosp-h", "sosp-i")
CTF_METHODS = ("ctf", "magnitude")  # layer-normalised magnitude and the other baselines: benchmarks/bench_ctf.py

#: the two parts' settings: full demo and ``quick``
_SETTINGS = {
    False: {"channels": (32, 32, 64, 64), "epochs": 30, "finetune": 6, "budgets": (0.5, 0.7), "methods": DEMO_METHODS,
            "samples": 256, "ctf_channels": (16, 32, 32), "ctf_pretrain": 30, "ctf_split": (8, 12),
            "rates": (0.5, 0.9, 0.98), "ctf_methods": CTF_METHODS, "length": 32},
    True: {"channels": (16, 16, 32), "epochs": 6, "finetune": 1, "budgets": (0.5,), "methods": ("random", "l1", "taylor",
           "sosp-h"), "samples": 128, "ctf_channels": (8, 16), "ctf_pretrain": 4, "ctf_split": (2, 1),
           "rates": (0.9,), "ctf_methods": ("ctf", "magnitude"), "length": 24},
}


def _dense(channels, data, info, epochs: int, seed: int):
    torch.manual_seed(seed)
    model = models.create("attention_gcn", graph="sbu", num_classes=len(info["classes"]), channels=channels)
    fit(model, data[0], data[1], epochs=epochs, lr=0.05, batch_size=32, seed=seed, weight_decay=5e-4)
    model.eval()
    counted = count(model, data[0][0][:1])
    return model, {"method": "dense", "budget": {}, "achieved": {"macs": 0.0, "params": 0.0, "structures": 0.0,
                                                                "weights": 0.0},
                   "accuracy": evaluate(model, data[1])["accuracy"], "params": counted["params"],
                   "macs": counted["macs"], "nonzero_params": counted["params"]}


def _criteria_part(data, info, s: dict, seed: int) -> tuple[list, dict, dict]:
    """Part 1: every structured criterion at every MAC budget, fine-tuned alike; then the latency budget."""
    model, dense = _dense(s["channels"], data, info, s["epochs"], seed)
    log.info("part 1 — dense attention GCN %s: accuracy %.3f, %d params", s["channels"], dense["accuracy"],
             dense["params"])
    rows, models_ = [dense], {0: model}
    structures = find_structures(model, data[0][0][:1])
    for fraction in s["budgets"]:
        for method in s["methods"]:
            row = prune_and_finetune(model, structures, data[0], data[1], method, Budget(macs=fraction),
                                     finetune_epochs=s["finetune"], lr=0.01, num_samples=s["samples"], seed=seed)
            models_[len(rows)] = row.pop("model")
            row["plan"] = row["plan"].to_dict()["removed"]
            rows.append(row)
            log.info("  %-7s -%.0f%% MACs: accuracy %.3f (before fine-tune %.3f)", method, 100 * fraction,
                     row["accuracy"], row["accuracy_before_finetune"])
    for index, ms in time_in_rounds(models_, data[0][0][:1], batch_size=1, repeats=10).items():
        rows[index]["latency_ms"] = ms
    mac_index = next(i for i, row in enumerate(rows) if row["method"] == "l1" and row["budget"] == {"macs": 0.5})
    latency = _latency_part(model, structures, data, s, seed, rows[0], rows[mac_index], models_[mac_index])
    return rows, {"epochs": s["epochs"], "finetune_epochs": s["finetune"]}, latency


def _latency_part(model, structures, data, s: dict, seed: int, dense_row: dict, mac_row: dict, mac_model) -> dict:
    """Part 1b: L1 at ``Budget(latency=0.5)`` next to L1 at ``Budget(macs=0.5)``, predicted and measured.

    A :class:`~prunekit.LatencyModel` of the dense model is measured at batch 1 (the table's) with the
    current threads (not cached: the cost is part of the story); the latency plan comes from the
    closed loop (:func:`prunekit.select_to_latency`, at most 3 plans timed: fewer than the command
    line's 6, to keep the demo short) and is fine-tuned like the others; then the dense model and
    both plans are timed in alternation with the latency model's own statistic (fastest pass, best
    of 3 rounds), so ``measured / predicted`` is its error.
    """
    start, x = time.perf_counter(), data[0][0][:1]
    lat = LatencyModel.measure(model, x, structures, batch_size=1, cache_dir=False)
    meta = {"method": "l1", "fraction": 0.5, "batch_size": 1, "threads": lat.threads, "model_seconds": lat.cost_s,
            "statistic": lat.settings["statistic"], "classes": len(lat.measured["classes"]), "error": None}
    try:  # the same row as every MAC-budget row of part 1, under the latency budget
        row = prune_and_finetune(model, structures, data[0], data[1], "l1", Budget(latency=0.5),
                                 finetune_epochs=s["finetune"], lr=0.01, num_samples=s["samples"], seed=seed,
                                 latency=lat, latency_rounds=3)
    except BudgetError as error:  # a machine so noisy that the tables cannot promise half the latency
        log.warning("  l1 -50%% latency: %s", error)
        return {"rows": [], "meta": {**meta, "error": str(error), "seconds": time.perf_counter() - start}}
    pruned, plan = row.pop("model"), row.pop("plan")
    ms = time_in_rounds({"dense": model, "macs": mac_model, "latency": pruned}, x, batch_size=1, rounds=3,
                        repeats=int(lat.measured["settings_used"]["repeats_used"]), warmup=2, threads=lat.threads,
                        statistic=lat.settings["statistic"])
    rows = [{**{k: dense_row[k] for k in ("method", "budget", "accuracy", "params", "macs")}, "achieved": {},
             "predicted_ms": lat.dense_ms},
            {**{k: mac_row[k] for k in ("method", "budget", "accuracy", "accuracy_before_finetune", "params", "macs")},
             "achieved": {**mac_row["achieved"], "latency": lat.saved_fraction(mac_row["plan"])},
             "predicted_ms": lat.predict(mac_row["plan"])},
            {**{k: row[k] for k in ("method", "budget", "achieved", "accuracy_before_finetune", "accuracy", "params",
                                    "macs")}, "predicted_ms": plan.meta["latency"]["predicted_ms"],
             "latency_loop": plan.meta.get("latency_loop")}]
    for row, key in zip(rows, ("dense", "macs", "latency")):
        row["measured_ms"] = ms[key]
        row["predicted_saved"], row["measured_saved"] = 1 - row["predicted_ms"] / lat.dense_ms, 1 - ms[key] / ms["dense"]
    for row in rows[1:]:
        log.info("  l1      -50%% %-7s accuracy %.3f, %.1f%% of MACs removed, latency %.2f ms predicted / %.2f ms "
                 "measured (dense %.2f)", {"macs": "MACs:", "latency": "latency:"}[next(iter(row["budget"]))],
                 row["accuracy"], 100 * row["achieved"]["macs"], row["predicted_ms"], row["measured_ms"], ms["dense"])
    return {"rows": rows, "meta": {**meta, "seconds": time.perf_counter() - start}}


def _ctf_part(data, info, s: dict, seed: int) -> list:
    """Part 2: CTF and magnitude at every rate, the benchmark's budget, latency dense and sparsified."""
    model, dense = _dense(s["ctf_channels"], data, info, s["ctf_pretrain"], seed)
    log.info("part 2 — dense attention GCN %s: accuracy %.3f, %d params", s["ctf_channels"], dense["accuracy"],
             dense["params"])
    rows, models_ = [dense], {0: model}
    mask, finetune = s["ctf_split"]
    for rate in s["rates"]:
        for method in s["ctf_methods"]:
            # the same budget for every method: one-shot methods fine-tune mask + finetune epochs
            result = run_ctf(model, data[0], data[1], rate, epochs=mask, finetune_epochs=finetune, method=method,
                             seed=seed)
            row = {k: v for k, v in result.row().items() if k not in ("history", "report")}
            row["structured_params_removed"] = result.plan.achieved["params"]
            models_[len(rows)] = result.model
            rows.append(row)
            log.info("  %-20s %.0f%% of the weights: accuracy %.3f (before fine-tune %.3f), %d nonzero params",
                     method, 100 * rate, row["accuracy"], row["accuracy_before_finetune"], row["nonzero_params"])
    x = data[0][0][:16]
    sparse = {i: sparsify(m, example_inputs=x[:1])[0] for i, m in models_.items() if i}
    timed = time_in_rounds({**{("dense", i): m for i, m in models_.items()},
                            **{("sparse", i): m for i, m in sparse.items()}}, x, repeats=10)
    for (layout, index), ms in timed.items():
        rows[index]["latency_ms" if layout == "dense" else "latency_ms_sparsified"] = ms
    return rows


def run_demo(out_dir: str | Path = "runs/demo", quick: bool = False, seed: int = 0) -> dict:
    """Run both parts; write ``report.md``, ``results.json`` and the plots under ``out_dir``; log the tables.

    ``quick`` runs a reduced version (smaller models, fewer epochs, one budget, one rate) in about a minute.
    Returns ``{"criteria": rows, "ctf": rows, "latency": rows}``.
    """
    from .report import write_report

    s = _SETTINGS[bool(quick)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    train, test, info = load_data({"format": "synthetic-sbu", "seed": seed, "fold": 1, "length": s["length"]},
                                  cache=out_dir / "data")
    log.info("data: SYNTHETIC SBU-format, fold 1: %d train / %d test sequences, input %s", len(train[0]),
             len(test[0]), tuple(train[0].shape[1:]))
    rows, settings, latency = _criteria_part((train, test), info, s, seed)
    ctf_rows = _ctf_part((train, test), info, s, seed)
    meta = {"data": info, **settings, "seed": seed, "quick": bool(quick), "seconds": time.perf_counter() - t0,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "latency": latency["meta"],
            "ctf": {"channels": list(s["ctf_channels"]), "pretrain": s["ctf_pretrain"], "mask_epochs": s["ctf_split"][0],
                    "finetune_epochs": s["ctf_split"][1]}}
    table = write_report(rows, out_dir, meta, title="prunekit demo: attention GCN on SYNTHETIC SBU-format data",
                         ctf_rows=ctf_rows, latency_rows=latency["rows"])
    log.info("%s", table)
    log.info("report: %s (%.0f s)", out_dir / "report.md", meta["seconds"])
    return {"criteria": rows, "ctf": ctf_rows, "latency": latency["rows"]}
