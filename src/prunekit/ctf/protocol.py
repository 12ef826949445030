"""The CTF protocol end to end: learn the masks, finalize at the rate, materialize, fine-tune, evaluate."""
from __future__ import annotations

import copy
import time

from ..core.materialize import materialize
from ..core.measure import count
from ..pipeline.oneshot import nonzero_params
from ..pipeline.train import evaluate, fit
from .ctf import CTF
from .common import FrozenZeros

__all__ = ["ctf_and_finetune"]


def ctf_and_finetune(model, train, test, rate: float, *, epochs: int, finetune_epochs: int, lr: float,
                     cost: str = "params", batch_size: int = 32, seed: int = 0, **ctf_options) -> dict:
    """One CTF row: learn the masks on a copy of ``model`` for ``epochs`` epochs, finalize at exactly
    ``rate``, materialize the structured part, fine-tune ``finetune_epochs`` epochs with the
    remaining zeros frozen, evaluate and count. ``model`` is not modified.

    Example:
        >>> import torch, prunekit
        >>> m = prunekit.models.create("attention_gcn", channels=(8, 8))
        >>> X, y = torch.randn(8, 3, 16, 30), torch.randint(0, 8, (8,))
        >>> row = ctf_and_finetune(m, (X, y), (X, y), 0.9, epochs=1, finetune_epochs=1, lr=0.05)
        >>> round(row["achieved"]["weights"], 3), row["nonzero_params"] < row["params"]
        (0.9, True)
    """
    xtr, _ = train
    start = time.perf_counter()
    learner = copy.deepcopy(model).train()
    ctf = CTF(learner, rate, example_inputs=xtr[:2], cost=cost, **ctf_options)
    fit(learner, train, None, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=False,
        weight_decay=5e-4, callbacks=[ctf])
    plan = ctf.finalize()
    report = ctf.report()
    pruned = materialize(learner.eval(), plan)
    prune_s = time.perf_counter() - start
    before = evaluate(pruned, test)["accuracy"]
    if finetune_epochs:
        frozen = FrozenZeros(pruned)
        fit(pruned, train, None, epochs=finetune_epochs, lr=lr * 0.2, batch_size=batch_size, seed=seed,
            progress=False, weight_decay=5e-4)
        frozen.remove()
    counted = count(pruned.eval(), xtr[:1])
    return {"method": "ctf", "budget": {"weights": rate}, "accuracy_before_finetune": before,
            "achieved": {**plan.achieved, "weights": report["rate"]}, "accuracy": evaluate(pruned, test)["accuracy"],
            "params": counted["params"], "macs": counted["macs"], "nonzero_params": nonzero_params(pruned),
            "zeroed_by": report["zeroed_by"], "prune_seconds": prune_s, "plan": plan, "model": pruned}
