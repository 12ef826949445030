"""The core: what a structure and a plan are, and what a plan does to a model.

* :mod:`~prunekit.core.structures` — find the prunable structures of any model
  (:mod:`~prunekit.core.analysis` follows every dimension through the traced graph);
* :mod:`~prunekit.core.plan` — budgets and the selection of what to remove;
* :mod:`~prunekit.core.materialize` — the physically smaller model (with
  :mod:`~prunekit.core.pruned_layers`, :mod:`~prunekit.core.pruned_attention`), or masks;
* :mod:`~prunekit.core.measure` — parameters, MACs, latency, dense against pruned;
  :mod:`~prunekit.core.latency` — latency models and budgets;
* :mod:`~prunekit.core.sparse` — unstructured zeros stored sparse;
* :mod:`~prunekit.core.io` — save and load pruned models; :mod:`~prunekit.core.summary` —
  per-layer tables; :mod:`~prunekit.core.blocks` — the extension protocol;
  :mod:`~prunekit.core.export` — ONNX and ``torch.export`` files.

Example:
    >>> from prunekit.core import find_structures, select, Budget
    >>> callable(find_structures) and callable(select)
    True
"""
from .blocks import PrunableBlock
from .export import to_onnx, to_torch_export
from .io import load, save
from .latency import LatencyModel
from .latency_loop import select_to_latency
from .materialize import apply_masks, materialize
from .measure import compare, count, measure_latency
from .plan import Budget, BudgetError, PruningPlan, broadcast_plan, check_same_plan, select, select_family
from .sparse import sparsify
from .structures import Structure, Structures, UnsupportedModelError, find_structures

__all__ = [
    "find_structures", "Structures", "Structure", "UnsupportedModelError", "PrunableBlock",
    "Budget", "BudgetError", "PruningPlan", "select", "select_family", "select_to_latency", "broadcast_plan", "check_same_plan",
    "apply_masks", "materialize", "count", "compare", "measure_latency", "LatencyModel", "sparsify", "save", "load",
    "to_onnx", "to_torch_export",
]
