"""Apply a plan: as masks (same shapes, removed structures output zero) or physically.

``apply_masks`` zeroes every slice of every removed structure (and multiplies entry
masks in); ``materialize`` builds a physically smaller copy — Torch-Pruning removes
the coupled channels group by group, :class:`~prunekit.models.layers.PrunableBlock`
layers remove their own units and heads — whose outputs equal the masked model's:

    f_materialized(x) = f_masked(x)   (to float tolerance)

The input model is never modified.

Example:
    >>> import torch, prunekit
    >>> model = prunekit.models.create("vgg11", width=0.25).eval()
    >>> x = torch.randn(2, 3, 32, 32)
    >>> structures = prunekit.find_structures(model, x)
    >>> plan = prunekit.select(structures, prunekit.saliency(model, structures, None, "l2"), prunekit.Budget(structures=0.5))
    >>> small = prunekit.materialize(model, plan)
    >>> torch.allclose(small(x), prunekit.apply_masks(model, plan)(x), atol=1e-5)
    True
"""
from __future__ import annotations

import copy
from collections import defaultdict

import torch
from torch import nn

from .models.layers import PrunableBlock
from .plan import PruningPlan
from .structures import Structures, build_dependency_graph, find_structures, inputs_from_spec

__all__ = ["apply_masks", "materialize", "structures_for_plan"]


def structures_for_plan(model: nn.Module, plan: PruningPlan, structures: Structures | None = None) -> Structures:
    """The model's structures, checked against the plan's signature (clear error on mismatch)."""
    if structures is None:
        structures = find_structures(model, inputs_from_spec(plan.input_spec, model))
    plan.check_matches(structures)
    return structures


def _zero_slices(model: nn.Module, structures: Structures, removed) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for sid in removed:
            for name, dim, idxs in structures[sid].slices:
                params[name].index_fill_(dim, torch.as_tensor(idxs, dtype=torch.long), 0.0)


def _apply_entry_masks(model: nn.Module, plan: PruningPlan) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in plan.entry_masks.items():
            if name not in params:
                raise ValueError(f"plan entry mask for {name!r}: the model has no such parameter")
            if tuple(mask.shape) != tuple(params[name].shape):
                raise ValueError(f"plan entry mask for {name!r} has shape {tuple(mask.shape)}, "
                                 f"the parameter has {tuple(params[name].shape)}")
            params[name].mul_(mask.to(params[name].dtype))


def apply_masks(model: nn.Module, plan: PruningPlan, structures: Structures | None = None) -> nn.Module:
    """A copy of ``model`` with the plan's structures zeroed (same shapes).

    Zeroing a structure's slices zeroes its output, so the copy computes exactly
    what the materialized model computes.
    """
    structures = structures_for_plan(model, plan, structures)
    masked = copy.deepcopy(model)
    _apply_entry_masks(masked, plan)
    _zero_slices(masked, structures, plan.removed)
    masked.prunekit_plan = plan
    return masked


def materialize(model: nn.Module, plan: PruningPlan, structures: Structures | None = None) -> nn.Module:
    """A physically smaller copy of ``model`` with the plan's structures removed.

    Entry-wise masks stay as zeros in the kept weights. Raises a clear error if the
    plan was made for a different model.
    """
    structures = structures_for_plan(model, plan, structures)
    small = copy.deepcopy(model)
    _apply_entry_masks(small, plan)

    by_group: dict[int, list[int]] = defaultdict(list)
    for sid in plan.removed:
        by_group[structures[sid].group].append(structures[sid].meta["index"])
    modules = dict(small.named_modules())
    channel_groups = [g for g in structures.groups if g.kind == "channel" and by_group.get(g.id)]
    if channel_groups:
        graph = build_dependency_graph(small, inputs_from_spec(plan.input_spec, small))
        for group in channel_groups:
            root = modules[group.root]
            pruner = graph.get_pruner_of_module(root)
            graph.get_pruning_group(root, pruner.prune_out_channels, sorted(by_group[group.id])).prune()
    for group in structures.groups:
        if group.kind == "internal" and by_group.get(group.id):
            block = modules[group.root]
            assert isinstance(block, PrunableBlock)
            block.prune_internal(sorted(by_group[group.id]))
    small.prunekit_plan = plan
    return small
