"""The demo: synthetic SBU-format data → attention GCN → every method at two MAC budgets → report.

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
from ..core.measure import count, time_in_rounds
from ..core.plan import Budget
from ..core.structures import find_structures
from ..ctf.protocol import ctf_and_finetune
from .dataspec import load_data
from .oneshot import prune_and_finetune
from .train import evaluate, fit

__all__ = ["run_demo", "DEMO_METHODS"]
log = logging.getLogger(__name__)  # the CLI shows it on stdout

DEMO_METHODS = ("random", "l1", "l2", "taylor", "obd", "sosp-h", "sosp-i")


def run_demo(out_dir: str | Path = "runs/demo", quick: bool = False, seed: int = 0) -> list[dict]:
    """The main job: synthetic SBU-format data → attention GCN → every method at two MAC budgets → report.

    Writes ``report.md``, ``results.json`` and PNG plots under ``out_dir`` and logs the table (``prunekit demo`` shows it).
    ``quick`` runs a reduced version (smaller model, fewer epochs, one budget) in about a minute.
    """
    from .report import write_report

    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    spec = {"format": "synthetic-sbu", "seed": seed, "fold": 1, "length": 24 if quick else 32}
    (xtr, ytr), (xte, yte), info = load_data(spec, cache=out_dir / "data")
    log.info(f"data: SYNTHETIC SBU-format, fold 1: {len(xtr)} train / {len(xte)} test sequences, input {tuple(xtr.shape[1:])}")
    channels = (16, 16, 32) if quick else (32, 32, 64, 64)
    model = models.create("attention_gcn", graph="sbu", num_classes=len(info["classes"]), channels=channels)
    epochs, finetune_epochs = (6, 1) if quick else (30, 6)
    fit(model, (xtr, ytr), (xte, yte), epochs=epochs, lr=0.05, batch_size=32, seed=seed, progress=not quick,
        weight_decay=5e-4)
    model.eval()
    dense_eval = evaluate(model, (xte, yte))
    dense_count = count(model, xtr[:1])
    rows = [{"method": "dense", "budget": {}, "achieved": {"macs": 0.0, "params": 0.0, "structures": 0.0},
             "accuracy": dense_eval["accuracy"], "params": dense_count["params"], "macs": dense_count["macs"]}]
    pruned_models = {0: model}
    log.info(f"dense attention GCN: accuracy {dense_eval['accuracy']:.3f}, {dense_count['params']} params")
    structures = find_structures(model, xtr[:1])
    budgets = (0.5,) if quick else (0.5, 0.7)
    methods = ("random", "l1", "taylor", "sosp-h") if quick else DEMO_METHODS
    for fraction in budgets:
        for method in methods:
            row = prune_and_finetune(model, structures, (xtr, ytr), (xte, yte), method, Budget(macs=fraction),
                                     finetune_epochs=finetune_epochs, lr=0.01, num_samples=128 if quick else 256,
                                     seed=seed)
            pruned_models[len(rows)] = row.pop("model")
            row["plan"] = row["plan"].to_dict()["removed"]
            rows.append(row)
            log.info(f"  {method:7s} -{fraction:.0%} MACs: accuracy {row['accuracy']:.3f} "
                  f"(before fine-tune {row['accuracy_before_finetune']:.3f})")
    ctf_epochs = (2, 1) if quick else (8, 2)
    for rate in (0.9,):
        row = ctf_and_finetune(model, (xtr, ytr), (xte, yte), rate, epochs=ctf_epochs[0], finetune_epochs=ctf_epochs[1],
                               lr=0.05, seed=seed)
        pruned_models[len(rows)] = row.pop("model")
        row["plan"] = row["plan"].to_dict()["removed"]
        rows.append(row)
        log.info(f"  ctf     -{rate:.0%} weights: accuracy {row['accuracy']:.3f} "
              f"(before fine-tune {row['accuracy_before_finetune']:.3f}), {row['nonzero_params']} nonzero params")
    for index, ms in time_in_rounds(pruned_models, xtr[:1], batch_size=1, repeats=10).items():
        rows[index]["latency_ms"] = ms
    meta = {"data": info, "epochs": epochs, "finetune_epochs": finetune_epochs, "seed": seed, "quick": quick,
            "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(), "torch": torch.__version__}
    table = write_report(rows, out_dir, meta, title="prunekit demo: attention GCN on SYNTHETIC SBU-format data")
    log.info(table)
    log.info(f"report: {out_dir / 'report.md'} ({meta['seconds']:.0f} s)")
    return rows
