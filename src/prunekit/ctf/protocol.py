"""One protocol for CTF and every baseline: train the masks, finalize at the rate, materialize, fine-tune, evaluate.

:func:`run` gives every method the same budget of ``epochs + finetune_epochs`` epochs from
the same model:

* CTF-like methods (``ctf``, ``ctf-fixed``, ``channel-only``, ``column-only``,
  ``row-only``) and the regularisers (``group-lasso``: ℓ2,1 over output columns, ``l1``)
  train ``epochs`` epochs at ``lr`` with their callback, finalize at exactly ``rate``
  (structured masks: within one group), then fine-tune ``finetune_epochs``;
* one-shot methods (``magnitude``: global ``|W|``; ``magnitude-normalized``: ``|W| / rms(W^ℓ)``
  per layer; ``random``) prune at once and fine-tune ``epochs + finetune_epochs``.

Fine-tuning is the same for every method: the model materialized from the plan, its remaining
zeros frozen (:class:`~prunekit.ctf.common.FrozenZeros`), SGD momentum 0.9 with a cosine
schedule at :data:`FINETUNE` ``["lr"]`` and ``["weight_decay"]`` (the weight decay of every
training phase of the protocol).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

from torch import nn

from ..core.materialize import materialize
from ..core.measure import count
from ..core.plan import PruningPlan
from ..pipeline.oneshot import nonzero_params
from ..pipeline.train import evaluate, fit
from .baselines import GroupLasso, magnitude_prune, random_prune, structured_ctf
from .common import FrozenZeros
from .ctf import CTF

__all__ = ["run", "CTFResult", "METHODS", "FINETUNE"]

# Fine-tuning after pruning, chosen once for every method: lr 0.05, no weight decay (the settings of
# benchmarks/bench_ctf.py, which measured RESULTS §8: every method there fine-tuned at 0.05 without decay).
# The training phases (masks, regulariser) use the run's ``lr`` and the same weight decay.
FINETUNE = {"lr": 0.05, "weight_decay": 0.0}

_CTF_LIKE = {"ctf": {}, "ctf-fixed": {"thresholds": "fixed"}, "channel-only": {"granularity": "channel"},
             "column-only": {"granularity": "column"}, "row-only": {"granularity": "row"}}
_LASSO = {"group-lasso": "column", "l1": "entry"}
_ONE_SHOT = ("magnitude", "magnitude-normalized", "random")
METHODS = tuple(_CTF_LIKE) + tuple(_LASSO) + _ONE_SHOT


@dataclass
class CTFResult:
    """What :func:`run` measured; :meth:`row` is its JSON-able summary.

    ``rate`` is the target, ``rate_reached`` the removed (cost-weighted) fraction of the
    prunable weights; ``params``, ``macs`` (:func:`prunekit.count`, per sample) and
    ``nonzero_params`` count the returned ``model`` (materialized and fine-tuned).
    ``accuracy_masks``: the CTF-like model with its learned masks before finalize (else
    ``None``). ``report``: CTF's :meth:`~prunekit.ctf.CTF.report` (``rank_fix``,
    ``zeroed_by``, ``attributed``…, no per-layer detail) or the baseline's settings.
    ``history``: ``fit`` histories (``train``, ``finetune``) and CTF's per-epoch ``masks`` rows.
    """

    method: str
    rate: float
    cost: str
    plan: PruningPlan
    model: nn.Module
    rate_reached: float
    accuracy: float | None
    accuracy_before_finetune: float | None
    accuracy_masks: float | None
    params: int
    macs: int
    nonzero_params: int
    seconds: float
    epochs: int
    finetune_epochs: int
    report: dict = field(default_factory=dict)
    history: dict = field(default_factory=dict)

    def row(self) -> dict:
        """The numbers as a JSON-able dict (no model, no plan; ``structures_removed`` from the plan)."""
        return {"method": self.method, "budget": {"weights": self.rate, "cost": self.cost},
                "achieved": {**self.plan.achieved, "weights": self.rate_reached}, "accuracy": self.accuracy,
                "accuracy_before_finetune": self.accuracy_before_finetune, "accuracy_masks": self.accuracy_masks,
                "params": self.params, "macs": self.macs, "nonzero_params": self.nonzero_params,
                "structures_removed": len(self.plan.removed), "seconds": self.seconds, "epochs": self.epochs,
                "finetune_epochs": self.finetune_epochs, "report": self.report, "history": self.history}


def _accuracy(model: nn.Module, data) -> float | None:
    return None if data is None else evaluate(model, data)["accuracy"]


def _callback(method: str, model: nn.Module, rate: float, example, cost: str, options: dict):
    if method in _LASSO:
        return GroupLasso(model, rate, granularity=_LASSO[method], example_inputs=example, cost=cost, **options)
    settings = {**_CTF_LIKE[method], **options}
    granularity = settings.pop("granularity", None)
    if granularity is not None:
        return structured_ctf(model, rate, granularity, example_inputs=example, cost=cost, **settings)
    return CTF(model, rate, example_inputs=example, cost=cost, **settings)


def _learn(method: str, model: nn.Module, rate: float, train, test, *, epochs: int, cost: str, fit_options: dict,
           options: dict) -> tuple[PruningPlan, float, float | None, dict, dict]:
    """Masks or regulariser for ``epochs``, then finalize: ``(plan, rate reached, accuracy_masks, report, history)``."""
    callback = _callback(method, model, rate, train[0][:2], cost, options)
    history = {"train": fit(model, train, test, epochs=epochs, callbacks=[callback], **fit_options) if epochs else {}}
    trained = _accuracy(model.eval(), test)
    if isinstance(callback, GroupLasso):
        plan = callback.finalize()
        return plan, plan.meta["rate"], None, {"strength": callback.strength, "accuracy_regularised": trained}, history
    kept = callback.kept_fraction()["binary"]
    plan = callback.finalize()
    report = {k: v for k, v in callback.report().items() if k not in ("layers", "thresholds")}
    report["kept_masks"] = kept  # the binary kept fraction the masks reached themselves (frozen ones: after the fix)
    history["masks"] = list(callback.history)
    return plan, report["rate"], trained, report, history


def _one_shot(method: str, model: nn.Module, rate: float, example, cost: str, seed: int, options: dict):
    if method == "random":
        plan = random_prune(model, rate, seed=seed, example_inputs=example, cost=cost, **options)
    else:
        plan = magnitude_prune(model, rate, example_inputs=example, cost=cost,
                               normalize=method == "magnitude-normalized", **options)
    return plan, plan.meta["rate"], None, {k: v for k, v in plan.meta.items() if k != "names"}, {}


def run(model: nn.Module, train, test, rate: float, *, epochs: int, finetune_epochs: int, method: str = "ctf",
        cost: str = "params", lr: float = 0.05, batch_size: int = 32, seed: int = 0,
        finetune_lr: float | None = None, rewind: bool = False, **options) -> CTFResult:
    """Prune a copy of ``model`` to ``rate`` with ``method`` (one of :data:`METHODS`), fine-tune, evaluate, count.

    ``train`` / ``test``: ``(X, y)`` tensors (``test`` may be ``None``: no accuracies). The
    rate counts the prunable weights (every weight of dimension ≥ 2 but the classifier's),
    each entry weighted by 1 (``cost="params"``) or by its MACs per sample (``"macs"``).
    ``options`` go to the method: :class:`~prunekit.ctf.CTF`'s options
    (:class:`~prunekit.ctf.options.CTFOptions`), :class:`~prunekit.ctf.GroupLasso`'s
    ``strength``, or the one-shot function's keywords. ``finetune_lr`` overrides
    ``FINETUNE["lr"]`` for every method alike. ``model`` is not modified.

    ``rewind=True`` (mask-learning methods; a diagnostic): the learned plan is applied to
    ``model``'s own weights, which are then fine-tuned ``epochs + finetune_epochs`` epochs —
    the one-shot baselines' schedule with the learned masks' choice, so a comparison with them
    isolates *which* weights the masks keep from what the mask phase's training did.

    Example:
        >>> import torch, prunekit
        >>> m = prunekit.models.create("attention_gcn", channels=(8, 8))
        >>> X, y = torch.randn(8, 3, 16, 30), torch.randint(0, 8, (8,))
        >>> r = run(m, (X, y), (X, y), 0.9, epochs=1, finetune_epochs=1)
        >>> round(r.rate_reached, 3), r.nonzero_params < r.params, r.macs == prunekit.count(r.model, X[:1])["macs"]
        (0.9, True, True)
    """
    if method not in METHODS:
        raise ValueError(f"run: method must be one of {METHODS}, got {method!r}")
    if rewind and method in _ONE_SHOT:
        raise ValueError(f"run: rewind applies to the methods that learn masks, not to {method!r}")
    if epochs < 0 or finetune_epochs < 0:
        raise ValueError(f"run: epochs and finetune_epochs must be ≥ 0, got {epochs} and {finetune_epochs}")
    start = time.perf_counter()
    learner = copy.deepcopy(model).train()
    fit_options = {"lr": lr, "batch_size": batch_size, "seed": seed, "progress": False,
                   "weight_decay": FINETUNE["weight_decay"]}
    if method in _ONE_SHOT:
        learned = _one_shot(method, learner.eval(), rate, train[0][:2], cost, seed, options)
        mask_epochs, ft_epochs = 0, epochs + finetune_epochs
    else:
        learned = _learn(method, learner, rate, train, test, epochs=epochs, cost=cost, fit_options=fit_options,
                         options=options)
        mask_epochs, ft_epochs = epochs, finetune_epochs
    plan, reached, accuracy_masks, report, history = learned
    if rewind:  # the learned choice, from the weights every one-shot baseline starts from
        learner, ft_epochs = copy.deepcopy(model).eval(), epochs + finetune_epochs
    pruned = materialize(learner.eval(), plan)
    before = _accuracy(pruned, test)
    if ft_epochs:
        frozen = FrozenZeros(pruned)
        history["finetune"] = fit(pruned, train, test, epochs=ft_epochs,
                                  **{**fit_options, "lr": FINETUNE["lr"] if finetune_lr is None else finetune_lr})
        frozen.remove()
    pruned.eval()
    counted = count(pruned, train[0][:1])
    return CTFResult(method=method, rate=float(rate), cost=cost, plan=plan, model=pruned, rate_reached=reached,
                     accuracy=_accuracy(pruned, test), accuracy_before_finetune=before,
                     accuracy_masks=accuracy_masks, params=counted["params"], macs=counted["macs"],
                     nonzero_params=nonzero_params(pruned), seconds=time.perf_counter() - start,
                     epochs=mask_epochs, finetune_epochs=ft_epochs, report=report, history=history)
