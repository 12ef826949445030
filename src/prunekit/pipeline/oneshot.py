"""One-shot pruning as one row of a comparison: score, select, materialize, fine-tune, evaluate, count."""
from __future__ import annotations

import time

import torch

from ..core.materialize import materialize
from ..core.measure import count
from ..core.latency_loop import select_to_latency
from ..core.plan import Budget, select
from ..criteria import needs_data, saliency
from .dataspec import batches
from .train import evaluate, fit

__all__ = ["prune_and_finetune", "nonzero_params"]


def prune_and_finetune(model, structures, train, test, method: str, budget: Budget, *, finetune_epochs: int,
                       lr: float, num_samples: int = 256, batch_size: int = 32, seed: int = 0, latency=None,
                       latency_rounds: int = 1, select_options: dict | None = None) -> dict:
    """One row of a comparison: score, select, materialize, fine-tune, evaluate, count (latency: :func:`prunekit.core.measure.time_in_rounds`).

    ``latency``: a :class:`prunekit.LatencyModel` for :func:`select` (needed by ``Budget(latency=…)``);
    with a latency budget alone and ``latency_rounds > 1`` the plan comes from the closed loop,
    :func:`prunekit.select_to_latency` (at most ``latency_rounds`` plans timed), as on the command line.
    ``select_options`` go to :func:`select` (``group_norm``, ``max_group_ratio``, …)."""
    xtr, ytr = train
    start = time.perf_counter()
    data = batches(xtr[:num_samples], ytr[:num_samples], batch_size) if needs_data(method) else None
    options = {"seed": seed} if method == "random" else {}
    scores = saliency(model, structures, data, method, **options)
    targets = budget.targets()
    if set(targets) == {"latency"} and latency_rounds > 1:
        plan = select_to_latency(model, structures, scores, targets["latency"], latency, xtr[:1],
                                 rounds=latency_rounds, method=method, **(select_options or {}))
    else:
        plan = select(structures, scores, budget, method=method, latency=latency, **(select_options or {}))
    pruned = materialize(model, plan, structures)
    prune_s = time.perf_counter() - start
    before = evaluate(pruned, test)["accuracy"]
    if finetune_epochs:
        fit(pruned, train, test, epochs=finetune_epochs, lr=lr, batch_size=batch_size, seed=seed, progress=False,
            weight_decay=5e-4)
    after = evaluate(pruned, test)
    counted = count(pruned, xtr[:1])
    return {"method": method, "budget": budget.to_dict(), "achieved": plan.achieved,
            "accuracy_before_finetune": before, "accuracy": after["accuracy"],
            "params": counted["params"], "macs": counted["macs"], "prune_seconds": prune_s,
            "plan": plan, "model": pruned}


def nonzero_params(model) -> int:
    """Parameters that are not exactly zero (what a sparse layout would store)."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())
