"""Bottleneck detection and expand-pruning (SOSP paper, "expand-pruning").

1. Prune a trained network with a global criterion (SOSP-H by default) and read the
   layer-wise pruning ratios: ``ratio(group) = removed members / members``.
2. Groups whose ratio is low are bottlenecks — the criterion wants to keep them. prunekit's
   rule **[ours]**: a block is a bottleneck when its ratio is below
   ``cutoff × overall ratio`` (default ``cutoff = 0.5``), the overall ratio being the
   fraction of all structures removed.
3. Widen bottleneck blocks ×2 (baseline: every block ×1.1), train the widened network,
   prune it back to the original pruned network's parameter count, and compare accuracy
   at equal parameters.

Methods see structures and groups only; the architecture supplies how a block is
widened (:data:`WIDENERS`).

Example:
    >>> import torch, prunekit
    >>> model = prunekit.models.create("attention_gcn", channels=(8, 8, 16)).eval()
    >>> s = prunekit.find_structures(model, prunekit.models.example_inputs(model, batch=1))
    >>> plan = prunekit.select(s, prunekit.saliency(model, s, None, "l1"), prunekit.Budget(structures=0.5))
    >>> ratios = layer_ratios(s, plan)
    >>> sorted(ratios)[0]
    'blocks.0.gcn:head'
"""
from __future__ import annotations

from .models.gcn import skeleton_gcn_block_of, widen_skeleton_gcn
from .plan import PruningPlan
from .structures import Structures

__all__ = ["layer_ratios", "find_bottlenecks", "widen_bottlenecks", "widen_uniform", "WIDENERS"]

# architecture name -> (block of a layer name, widen(kwargs, {block: factor}))
WIDENERS = {
    "attention_gcn": (skeleton_gcn_block_of, widen_skeleton_gcn),
    "stgcn": (skeleton_gcn_block_of, widen_skeleton_gcn),
}


def layer_ratios(structures: Structures, plan: PruningPlan) -> dict[str, float]:
    """Fraction of each group's structures the plan removes, keyed ``"<root>:<kind>"``."""
    removed = set(plan.removed)
    ratios = {}
    for group in structures.groups:
        kind = structures[group.members[0]].kind
        ratios[f"{group.root}:{kind}"] = sum(m in removed for m in group.members) / len(group.members)
    return dict(sorted(ratios.items()))


def find_bottlenecks(structures: Structures, plan: PruningPlan, cutoff: float = 0.5,
                     kinds: tuple = ("unit", "channel", "neuron")) -> list[str]:
    """Groups (of the given kinds) pruned less than ``cutoff ×`` the overall structure ratio. [ours]"""
    overall = len(plan.removed) / max(len(structures), 1)
    ratios = layer_ratios(structures, plan)
    return [name for name, ratio in ratios.items()
            if name.rsplit(":", 1)[1] in kinds and ratio < cutoff * overall]


def widen_bottlenecks(arch: dict, bottlenecks: list[str], factor: float = 2.0) -> dict:
    """The registered architecture ``arch`` (``{"name", "kwargs"}``) with bottleneck blocks widened."""
    if arch["name"] not in WIDENERS:
        raise ValueError(f"bottleneck expansion: no widening rule for architecture {arch['name']!r}; "
                         f"known: {sorted(WIDENERS)}")
    block_of, widen = WIDENERS[arch["name"]]
    blocks = {block_of(name.rsplit(":", 1)[0]) for name in bottlenecks} - {None}
    return {"name": arch["name"], "kwargs": widen(arch["kwargs"], {b: factor for b in blocks})}


def widen_uniform(arch: dict, factor: float = 1.1) -> dict:
    """The baseline: every block widened by ``factor``."""
    if arch["name"] not in WIDENERS:
        raise ValueError(f"bottleneck expansion: no widening rule for architecture {arch['name']!r}")
    _, widen = WIDENERS[arch["name"]]
    n = len(arch["kwargs"].get("channels", (32, 32, 64, 64)))
    return {"name": arch["name"], "kwargs": widen(arch["kwargs"], {b: factor for b in range(n)})}
