"""CTF: coarse-to-fine learned pruning (Sahbi, 2024), its baselines, and the shared machinery.

Train with the masks as a :func:`prunekit.pipeline.train.fit` callback, then finalize into a
:class:`~prunekit.core.plan.PruningPlan` and materialize it::

    ctf = CTF(model, rate=0.9, cost="params")              # attaches ψ to every prunable weight
    fit(model, train, test, epochs=E, callbacks=[ctf])     # CE + λ((f − k_t)/(1 − r))², τ annealed
    plan = ctf.finalize()                                  # exact rate; plain module again
    small = prunekit.materialize(model, plan)              # structured part removed physically
    ctf.report()                                           # what each granularity removed

or run the whole protocol, for CTF or any baseline, in one call (:mod:`prunekit.ctf.protocol`)::

    result = prunekit.ctf.run(model, (X, y), (Xt, yt), 0.9, epochs=8, finetune_epochs=12, method="ctf")

Settings: :class:`~prunekit.ctf.options.CTFOptions` (``CTF(model, rate, options)`` or keywords).

Masks (:mod:`prunekit.ctf.masks`): ``W = Ŵ ⊙ Ch ⊙ Col ⊙ Row ⊙ E`` with band-stop gates
``b(u) = σ((u − a)/τ) + σ((−u − a)/τ)`` on the magnitude of each block, output unit, input
unit and entry. Baselines (:mod:`prunekit.ctf.baselines`): global and layer-normalised magnitude, random,
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
from .ctf import CTF
from .masks import GRANULARITIES, CTFMask, HeadTie, Temperature, band_stop
from .options import DEFAULT_A_INIT, CTFOptions
from .protocol import FINETUNE, METHODS, CTFResult, run

__all__ = [
    "CTF", "CTFOptions", "run", "CTFResult", "METHODS", "FINETUNE", "CTFMask", "HeadTie", "Temperature", "band_stop", "GRANULARITIES", "DEFAULT_A_INIT",
    "magnitude_prune", "random_prune", "structured_ctf", "GroupLasso", "group_ids",
    "FrozenZeros", "fix_to_budget", "plan_from_masks", "prunable_weights", "weight_layouts",
]
