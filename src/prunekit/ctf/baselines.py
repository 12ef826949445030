"""The baselines CTF is compared against, on the same weights, costs and plans.

Every baseline masks the same weights as :class:`~prunekit.ctf.CTF` (every ``weight`` of
dimension ≥ 2 but the classifier's), meets the rate the same way (a rank fix to the exact
kept count, or to within one group for structured masks) and returns a
:class:`~prunekit.core.plan.PruningPlan` through :func:`~prunekit.ctf.common.plan_from_masks`,
leaving the model masked in place.

* :func:`magnitude_prune` – global unstructured magnitude pruning: keep the
  ``(1 − r) N`` largest ``|W_e|`` over all prunable weights (raw magnitudes; with
  ``normalize=True``, ``|W_e| / rms(W^ℓ)`` per layer).
* :func:`random_prune` – the same with seeded random scores (entries, or whole groups).
* :func:`structured_ctf` – CTF restricted to one structured granularity
  (``"channel"``, ``"column"``, ``"row"``): the structured-only variants.
* :class:`GroupLasso` – a training callback adding
  ``μ Σ_ℓ Σ_g √|g| ‖W^ℓ_g‖₂`` over the groups of one granularity (``"entry"`` gives the
  ℓ1 penalty ``μ Σ |W_e|``), then :meth:`GroupLasso.finalize` thresholds to the rate:
  groups with the smallest rms ``‖W_g‖₂ / √|g|`` go first.

Example:
    >>> import torch, prunekit
    >>> model = prunekit.models.create("attention_gcn", channels=(8, 16))
    >>> plan = magnitude_prune(model, 0.5)
    >>> round(plan.meta["rate"], 4)
    0.5
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..core.plan import PruningPlan
from .common import (
    count_kept, entry_costs, fix_to_budget, plan_from_masks, prunable_weights, resolve_example_inputs, weight_layouts,
)
from .ctf import CTF

__all__ = ["magnitude_prune", "random_prune", "structured_ctf", "GroupLasso", "group_ids"]

_STRUCTURED = ("channel", "column", "row")


def group_ids(shape: Sequence[int], blocks: int, granularity: str) -> torch.Tensor:
    """Group index of every entry of a weight ``[K·Cc, R, *kernel]`` for one granularity.

    ``channel``: the block ``k``; ``column``: the output unit ``j``; ``row``: the input unit
    ``i``; ``entry``: the flat index.

    Example:
        >>> group_ids((4, 2), blocks=2, granularity="column").tolist()
        [[0, 0], [1, 1], [0, 0], [1, 1]]
    """
    shape = tuple(int(s) for s in shape)
    k, cc, r, kk = blocks, shape[0] // blocks, shape[1], math.prod(shape[2:])
    if granularity == "entry":
        return torch.arange(math.prod(shape)).view(shape)
    index = {"channel": torch.arange(k).view(k, 1, 1, 1), "column": torch.arange(cc).view(1, cc, 1, 1),
             "row": torch.arange(r).view(1, 1, r, 1)}[granularity]
    return index.expand(k, cc, r, kk).reshape(shape)


def _setup(model, rate, example_inputs, cost, exclude, params):
    if not (0.0 <= float(rate) < 1.0):
        raise ValueError(f"rate must be in [0, 1), got {rate}")
    example_inputs = resolve_example_inputs(model, example_inputs)
    names, classifier = prunable_weights(model, example_inputs, exclude or (), params)
    if not names:
        raise ValueError(f"{type(model).__name__} has no prunable weight (dim ≥ 2, not the classifier)")
    costs = entry_costs(model, names, example_inputs, cost)
    weights = dict(model.named_parameters())
    total = sum(costs[n] * weights[n].numel() for n in names)
    keep = float(round((1 - rate) * total)) if cost == "params" else (1 - rate) * total
    return example_inputs, names, classifier, costs, weights, keep, total


def _finish(model, method, rate, cost, names, costs, total, masks, example_inputs, extra=None) -> PruningPlan:
    plan = plan_from_masks(model, masks, example_inputs, method=method, budget={"rate": rate, "cost": cost})
    kept, _ = count_kept(model, names, costs)
    plan.meta.update({"rate": 1 - kept / total, "target_rate": rate, "cost": cost, "names": list(names),
                      **(extra or {})})
    return plan


@torch.no_grad()
def magnitude_prune(model: nn.Module, rate: float, *, example_inputs=None, cost: str = "params",
                    exclude: Sequence | None = None, params: Sequence[str] | None = None,
                    normalize: bool = False) -> PruningPlan:
    """Global unstructured magnitude pruning to ``rate`` (in place); returns the plan.

    Keeps the entries with the largest ``|W_e|`` (``normalize=True``: ``|W_e| / rms(W^ℓ)``),
    exactly ``round((1 − r) N)`` of them with ``cost="params"``; with ``cost="macs"`` the
    kept MACs are within one entry of ``(1 − r)`` of the total. ``plan.meta["rate"]`` is
    the removed fraction reached.
    """
    example_inputs, names, _, costs, weights, keep, total = _setup(model, rate, example_inputs, cost, exclude, params)
    scores = {}
    for n in names:
        w = weights[n].detach().abs()
        scores[n] = w / (w.pow(2).mean().sqrt() + 1e-12) if normalize else w
    if cost == "macs":  # the cheapest magnitude per MAC goes first
        scores = {n: s / costs[n] for n, s in scores.items()}
    masks = fix_to_budget({n: torch.ones_like(scores[n], dtype=torch.bool) for n in names}, scores, costs, keep)
    return _finish(model, "magnitude", rate, cost, names, costs, total, masks, example_inputs)


@torch.no_grad()
def random_prune(model: nn.Module, rate: float, *, seed: int = 0, granularity: str = "entry",
                 example_inputs=None, cost: str = "params", exclude: Sequence | None = None,
                 params: Sequence[str] | None = None) -> PruningPlan:
    """Remove random entries (or random groups of ``granularity``) to ``rate`` (in place).

    Scores come from a ``torch.Generator`` seeded with ``seed``: the same seed gives the same plan.
    """
    example_inputs, names, _, costs, weights, keep, total = _setup(model, rate, example_inputs, cost, exclude, params)
    generator = torch.Generator().manual_seed(int(seed))
    masks = {n: torch.ones(weights[n].shape, dtype=torch.bool) for n in names}
    if granularity == "entry":
        scores = {n: torch.rand(weights[n].shape, generator=generator) for n in names}
        fixed = fix_to_budget(masks, scores, costs, keep)
    elif granularity in _STRUCTURED:
        layouts = weight_layouts(model, names)
        groups = {n: group_ids(weights[n].shape, layouts[n][0], granularity) for n in names
                  if granularity != "channel" or layouts[n][0] > 1}
        scores = {n: torch.rand(int(g.max()) + 1, generator=generator)[g] for n, g in groups.items()}
        frozen_cost = sum(costs[n] * masks[n].numel() for n in names if n not in groups)
        fixed = fix_to_budget({n: masks[n] for n in groups}, scores, costs, keep - frozen_cost, groups)
        fixed.update({n: masks[n] for n in names if n not in groups})
    else:
        raise ValueError(f"granularity must be 'entry', 'channel', 'column' or 'row', got {granularity!r}")
    fixed = {n: m.to(weights[n].device) for n, m in fixed.items()}
    return _finish(model, f"random-{granularity}", rate, cost, names, costs, total, fixed, example_inputs,
                   {"seed": seed})


def structured_ctf(model: nn.Module, rate: float, granularity: str = "column", **kwargs) -> CTF:
    """CTF with one structured granularity only (``"channel"``, ``"column"`` or ``"row"``).

    Same masks, penalty and schedule; :meth:`CTF.finalize` fixes the rate with whole
    groups. ``"channel"`` gates blocks only (heads, adjacency subsets): plain layers, which
    have no block factor, stay dense, and one block of each weight stays, so it cannot
    reach high rates on models made mostly of plain layers (23 % on the benchmark's
    attention GCN, ``docs/ctf.md``); above :meth:`CTF.max_rate` it warns and aims at that rate instead.
    """
    if granularity not in _STRUCTURED:
        raise ValueError(f"structured_ctf: granularity must be one of {_STRUCTURED}, got {granularity!r}")
    return CTF(model, rate, granularities=(granularity,), **kwargs)


class GroupLasso:
    """Group-lasso (or ℓ1) regulariser callback, thresholded to the rate by :meth:`finalize`.

    ``extra_loss = μ Σ_ℓ Σ_g √|g| ‖W^ℓ_g‖₂`` over the groups of ``granularity`` (the layout
    of :class:`CTF`: ``channel`` = blocks, ``column`` = output units, ``row`` = input units);
    ``granularity="entry"`` is the ℓ1 penalty ``μ Σ |W_e|``.

    Example:
        >>> import torch, prunekit
        >>> model = prunekit.models.create("attention_gcn", channels=(8, 16))
        >>> lasso = GroupLasso(model, rate=0.5, strength=1e-3)
        >>> float(lasso.extra_loss(model).detach()) > 0
        True
        >>> plan = lasso.finalize()
        >>> plan.meta["rate"] >= 0.5
        True
    """

    def __init__(self, model: nn.Module, rate: float, *, strength: float = 1e-4, granularity: str = "column",
                 example_inputs=None, cost: str = "params", exclude: Sequence | None = None,
                 params: Sequence[str] | None = None):
        if granularity not in _STRUCTURED + ("entry",):
            raise ValueError(f"GroupLasso: granularity must be 'channel', 'column', 'row' or 'entry', "
                             f"got {granularity!r}")
        self.model, self.rate, self.strength, self.granularity, self.cost = model, rate, strength, granularity, cost
        (self.example_inputs, self.names, self.classifier, self.costs, _, self.keep,
         self.total) = _setup(model, rate, example_inputs, cost, exclude, params)
        layouts = weight_layouts(model, self.names)
        weights = dict(model.named_parameters())
        self.groups = {}
        for n in self.names:
            if granularity == "channel" and layouts[n][0] == 1:
                continue  # plain layers have no block
            self.groups[n] = group_ids(weights[n].shape, layouts[n][0], granularity).to(weights[n].device)
        self.finalized = False

    def _group_norms(self, w: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ng = int(g.max()) + 1
        sq = torch.zeros(ng, dtype=w.dtype, device=w.device).index_add(0, g.flatten(), w.flatten().pow(2))
        size = torch.bincount(g.flatten(), minlength=ng).to(w.dtype)
        return sq, size

    def extra_loss(self, model: nn.Module | None = None) -> torch.Tensor:
        if self.finalized:
            raise RuntimeError("GroupLasso: already finalized")
        weights = dict(self.model.named_parameters())
        total = None
        for n, g in self.groups.items():
            w = weights[n]
            if self.granularity == "entry":
                term = w.abs().sum()
            else:
                sq, size = self._group_norms(w, g)
                term = (size.sqrt() * torch.sqrt(sq + 1e-12)).sum()
            total = term if total is None else total + term
        return self.strength * total

    @torch.no_grad()
    def finalize(self) -> PruningPlan:
        """Threshold to the rate: lowest group rms first (entries: lowest ``|W_e|``), in place."""
        weights = dict(self.model.named_parameters())
        masks = {n: torch.ones(weights[n].shape, dtype=torch.bool, device=weights[n].device) for n in self.names}
        scores = {}
        for n, g in self.groups.items():
            w = weights[n].detach()
            if self.granularity == "entry":
                scores[n] = w.abs()
            else:
                sq, size = self._group_norms(w, g)
                scores[n] = torch.sqrt(sq / size)[g]
        frozen_cost = sum(self.costs[n] * masks[n].numel() for n in self.names if n not in self.groups)
        fixed = fix_to_budget({n: masks[n] for n in self.groups}, scores, self.costs, self.keep - frozen_cost,
                              None if self.granularity == "entry" else self.groups)
        fixed.update({n: masks[n] for n in self.names if n not in self.groups})
        self.finalized = True
        return _finish(self.model, f"group-lasso-{self.granularity}", self.rate, self.cost, self.names, self.costs,
                       self.total, fixed, self.example_inputs, {"strength": self.strength})
