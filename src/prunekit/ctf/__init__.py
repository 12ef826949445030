"""CTF: coarse-to-fine learned pruning (Sahbi, 2024), its baselines, and the shared machinery.

Train with the masks as a :func:`prunekit.pipeline.train.fit` callback, then finalize into a
:class:`~prunekit.core.plan.PruningPlan` and materialize it::

    ctf = CTF(model, rate=0.9, cost="params")              # attaches ψ to every prunable weight
    fit(model, train, test, epochs=E, callbacks=[ctf])     # CE + λ(Σψ/N − (1 − r))², τ annealed
    plan = ctf.finalize()                                  # exact rate; plain module again
    small = prunekit.materialize(model, plan)              # structured part removed physically
    ctf.report()                                           # what each granularity removed

Masks (:mod:`prunekit.ctf.masks`): ``W = Ŵ ⊙ Ch ⊙ Col ⊙ Row ⊙ E`` with band-stop gates
``b(u) = σ((u − a)/τ) + σ((−u − a)/τ)`` on the magnitude of each block, output unit, input
unit and entry. Baselines (:mod:`prunekit.ctf.baselines`): global magnitude, random,
structured-only CTF, group lasso / ℓ1 thresholded to the rate.

Example:
    >>> import torch, prunekit
    >>> model = prunekit.models.create("attention_gcn", channels=(8, 16))
    >>> ctf = CTF(model, rate=0.5)
    >>> sorted(ctf.report()["zeroed_by"])
    ['channel', 'column', 'entry', 'row']
    >>> plan = ctf.finalize()
    >>> round(ctf.report()["rate"], 3), len(list(model.parameters())) == len(dict(model.named_parameters()))
    (0.5, True)
"""
from .baselines import GroupLasso, group_ids, magnitude_prune, random_prune, structured_ctf
from .common import FrozenZeros, fix_to_budget, plan_from_masks, prunable_weights, weight_layouts
from .ctf import CTF, DEFAULT_A_INIT
from .masks import GRANULARITIES, CTFMask, HeadTie, Temperature, band_stop

__all__ = [
    "CTF", "CTFMask", "HeadTie", "Temperature", "band_stop", "GRANULARITIES", "DEFAULT_A_INIT",
    "magnitude_prune", "random_prune", "structured_ctf", "GroupLasso", "group_ids",
    "FrozenZeros", "fix_to_budget", "plan_from_masks", "prunable_weights", "weight_layouts",
]
