"""prunekit: structured, second-order (SOSP) and learned (CTF) pruning for PyTorch, with measured gains.

Example:
    >>> import torch, prunekit
    >>> model = prunekit.models.create("resnet20").eval()
    >>> x = torch.randn(1, 3, 32, 32)
    >>> structures = prunekit.find_structures(model, x)
    >>> plan = prunekit.select(structures, prunekit.saliency(model, structures, None, method="l1"),
    ...                        prunekit.Budget(macs=0.5))
    >>> small = prunekit.materialize(model, plan)
    >>> prunekit.count(small, x)["macs"] <= 0.5 * prunekit.count(model, x)["macs"]
    True
"""
from . import data, models
from .criteria import saliency
from .ctf import CTF
from .core.io import load, save
from .core.latency import LatencyModel
from .core.latency_loop import select_to_latency
from .core.materialize import apply_masks, materialize
from .core.measure import compare, count, measure_latency
from .core.plan import Budget, BudgetError, PruningPlan, broadcast_plan, check_same_plan, select, select_family
from .core.sparse import sparsify
from .core.structures import Structure, Structures, UnsupportedModelError, find_structures

try:  # one source of truth: the version in pyproject.toml, as installed
    from importlib.metadata import PackageNotFoundError, version as _version

    __version__ = _version("prunekit")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "find_structures", "Structures", "Structure", "UnsupportedModelError",
    "Budget", "BudgetError", "LatencyModel", "PruningPlan", "select", "select_family", "select_to_latency", "broadcast_plan", "check_same_plan",
    "apply_masks", "materialize", "count", "compare", "measure_latency", "saliency", "CTF", "sparsify", "save", "load",
    "models", "data", "__version__",
]
