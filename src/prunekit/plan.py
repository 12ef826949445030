"""Pruning plans: which structures go, under which budget, and how scores become a plan.

A :class:`PruningPlan` is the output of every method: the ids of the removed
structures (plus optional entry-wise masks), the budget asked for and what was
met. It is JSON round-trippable and carries the structure signature and input
shapes needed to replay it on a fresh copy of the dense model.

:func:`select` removes structures in ascending score order until the budget is met:

    k* = min { k : removed_fraction(first k admissible structures) ≥ target }

where a structure is admissible while it is not the last one standing in its group
(the layer-collapse guard). Fractions of parameters and MACs are computed exactly
by :meth:`prunekit.structures.Structures.cost`.

Example:
    >>> import torch, prunekit
    >>> model = prunekit.models.create("resnet20")
    >>> structures = prunekit.find_structures(model, torch.randn(1, 3, 32, 32))
    >>> scores = prunekit.saliency(model, structures, None, method="l1")
    >>> plan = prunekit.select(structures, scores, prunekit.Budget(macs=0.5))
    >>> plan.achieved["macs"] >= 0.5
    True
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .structures import Structures

__all__ = ["Budget", "PruningPlan", "select", "BudgetError", "collapse_guard"]


class BudgetError(ValueError):
    """A budget that cannot be met or is malformed."""


@dataclass(frozen=True)
class Budget:
    """Fractions to **remove**: of structures, of parameters, of MACs (each in [0, 1)).

    Several fractions may be given; the plan then meets all of them.

    Example:
        >>> Budget(macs=0.5).targets()
        {'macs': 0.5}
    """

    structures: float | None = None
    params: float | None = None
    macs: float | None = None

    def __post_init__(self):
        for key, value in self.targets().items():
            if not (0.0 <= value < 1.0) or math.isnan(value):
                raise BudgetError(f"Budget.{key}={value}: a fraction to remove must be in [0, 1)")
        if not self.targets():
            raise BudgetError("Budget: give at least one of structures=, params=, macs=")

    def targets(self) -> dict:
        return {k: v for k, v in (("structures", self.structures), ("params", self.params), ("macs", self.macs))
                if v is not None}

    def to_dict(self) -> dict:
        return self.targets()


@dataclass
class PruningPlan:
    """The removed structures (ids into the model's :class:`Structures`) and what they achieve.

    ``achieved`` holds the removed fractions (structures, params, macs); ``remaining``
    the absolute counts after removal; ``entry_masks`` optional entry-wise keep masks
    ``{parameter_name: bool tensor}`` (CTF's fine-grained part); ``ignore`` the modules
    left untouched when the structures were found (replays find the same structures).
    """

    removed: list[int]
    num_structures: int
    signature: str
    input_spec: list
    budget: dict = field(default_factory=dict)
    achieved: dict = field(default_factory=dict)
    remaining: dict = field(default_factory=dict)
    removed_desc: list = field(default_factory=list)
    method: str = ""
    entry_masks: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    ignore: list = field(default_factory=list)

    @classmethod
    def from_removed(cls, structures: Structures, removed: Sequence[int], budget: dict | None = None,
                     method: str = "", entry_masks: dict | None = None) -> "PruningPlan":
        """A plan removing exactly ``removed`` (sorted ids), with its achieved fractions."""
        removed = sorted({int(i) for i in removed})
        for sid in removed:
            if not 0 <= sid < len(structures):
                raise IndexError(f"structure id {sid} out of range for {len(structures)} structures")
        after = structures.cost(removed)
        achieved = {
            "structures": len(removed) / max(len(structures), 1),
            "params": 1.0 - after["params"] / max(structures.total_params, 1),
            "macs": 1.0 - after["macs"] / max(structures.total_macs, 1),
        }
        return cls(removed=removed, num_structures=len(structures), signature=structures.signature(),
                   input_spec=structures.input_spec, budget=dict(budget or {}), achieved=achieved,
                   remaining={"params": after["params"], "macs": after["macs"],
                              "dense_params": structures.total_params, "dense_macs": structures.total_macs},
                   removed_desc=[structures.describe(i) for i in removed], method=method,
                   entry_masks=dict(entry_masks or {}), ignore=list(getattr(structures, "ignore", [])))

    def to_dict(self) -> dict:
        """JSON-serialisable form; entry masks are stored as flat indices of the removed entries."""
        masks = {name: {"shape": list(mask.shape), "zeros": torch.nonzero(~mask.flatten()).flatten().tolist()}
                 for name, mask in self.entry_masks.items()}
        return {"format": "prunekit.plan/1", "removed": self.removed, "num_structures": self.num_structures,
                "signature": self.signature, "input_spec": self.input_spec, "budget": self.budget,
                "achieved": self.achieved, "remaining": self.remaining, "removed_desc": self.removed_desc,
                "method": self.method, "entry_masks": masks, "meta": self.meta, "ignore": self.ignore}

    @classmethod
    def from_dict(cls, data: dict, source: str = "plan") -> "PruningPlan":
        if not isinstance(data, dict) or data.get("format") != "prunekit.plan/1":
            raise ValueError(f"{source}: not a prunekit plan (expected format 'prunekit.plan/1')")
        try:
            masks = {}
            for name, item in data.get("entry_masks", {}).items():
                mask = torch.ones(math.prod(item["shape"]), dtype=torch.bool)
                mask[torch.tensor(item["zeros"], dtype=torch.long)] = False
                masks[name] = mask.view(item["shape"])
            return cls(removed=[int(i) for i in data["removed"]], num_structures=int(data["num_structures"]),
                       signature=data["signature"], input_spec=data["input_spec"], budget=data.get("budget", {}),
                       achieved=data.get("achieved", {}), remaining=data.get("remaining", {}),
                       removed_desc=data.get("removed_desc", []), method=data.get("method", ""),
                       entry_masks=masks, meta=data.get("meta", {}), ignore=list(data.get("ignore", [])))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{source}: malformed plan field: {error}") from error

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str, source: str = "plan") -> "PruningPlan":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{source}: invalid JSON at line {error.lineno}: {error.msg}") from error
        return cls.from_dict(data, source)

    def check_matches(self, structures: Structures, where: str = "model") -> None:
        """Raise a clear error if this plan was made for different structures."""
        if len(structures) != self.num_structures or structures.signature() != self.signature:
            detail = ""
            for sid, desc in zip(self.removed, self.removed_desc):
                if sid >= len(structures) or structures.describe(sid) != list(desc):
                    have = structures.describe(sid) if sid < len(structures) else "nothing"
                    detail = f"; structure {sid} was {desc} in the plan but is {have} in the {where}"
                    break
            raise ValueError(
                f"plan does not match the {where}: the plan was made for {self.num_structures} structures "
                f"(signature {self.signature}), the {where} has {len(structures)} (signature "
                f"{structures.signature()}){detail}")


def _admissible_order(structures: Structures, scores: torch.Tensor) -> list[int]:
    """Ascending-score order (stable on ties), filtered by :func:`collapse_guard`."""
    return collapse_guard(structures, sorted(range(len(structures)), key=lambda i: (float(scores[i]), i)))


def collapse_guard(structures: Structures, order) -> list[int]:
    """The structures of ``order``, in order, skipping any whose removal would empty its group or a layer.

    A layer is emptied when every output of one producing weight dim is gone; an output
    removed by two structures (a head and a head dimension) counts once.

    Example:
        >>> import torch, prunekit
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> s = prunekit.find_structures(m, torch.randn(1, 3))
        >>> collapse_guard(s, [0, 1, 2, 3])
        [0, 1, 2]
    """
    checker = structures.collapse_checker()
    return [int(sid) for sid in order if checker.admit(int(sid))]


def select(structures: Structures, scores, budget: Budget, normalize: str | None = None,
           method: str = "") -> PruningPlan:
    """Turn one score per structure into a plan that meets ``budget``.

    Args:
        structures: from :func:`prunekit.find_structures`.
        scores: ``scores[i]`` belongs to ``structures[i]``; lower means remove first.
        budget: fractions to remove (:class:`Budget`).
        normalize: ``None`` (rank by score), ``"params"`` or ``"macs"``: rank by
            ``score / cost`` — prunekit's cost-normalised extension (the SOSP paper's
            "scaled variant"), which removes cheap-to-lose, expensive-to-keep structures first.

    Returns:
        A :class:`PruningPlan` removing the shortest admissible prefix that meets every
        target; raises :class:`BudgetError` if even removing all admissible structures
        cannot meet it.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if scores.numel() != len(structures):
        raise ValueError(f"select: got {scores.numel()} scores for {len(structures)} structures")
    if torch.isnan(scores).any():
        bad = torch.nonzero(torch.isnan(scores)).flatten()[:5].tolist()
        raise ValueError(f"select: NaN scores for structures {bad} ({[structures.describe(i) for i in bad]})")
    if normalize is not None:
        if normalize not in ("params", "macs"):
            raise ValueError(f"select: normalize must be None, 'params' or 'macs', got {normalize!r}")
        costs = torch.tensor([max(getattr(s, normalize), 1) for s in structures], dtype=torch.float64)
        scores = scores / costs
    targets = budget.targets()
    order = _admissible_order(structures, scores)

    def met(k: int) -> bool:
        plan_cost = structures.cost(order[:k])
        fractions = {"structures": k / len(structures),
                     "params": 1 - plan_cost["params"] / structures.total_params,
                     "macs": 1 - plan_cost["macs"] / max(structures.total_macs, 1)}
        return all(fractions[key] >= target - 1e-12 for key, target in targets.items())

    if not met(len(order)):
        full = PruningPlan.from_removed(structures, order)
        raise BudgetError(f"budget {targets} cannot be met without emptying a layer: removing every admissible "
                          f"structure reaches {({k: round(v, 4) for k, v in full.achieved.items()})}")
    low, high = 0, len(order)  # met(high) is True; find the smallest such k
    while low < high:
        mid = (low + high) // 2
        if met(mid):
            high = mid
        else:
            low = mid + 1
    return PruningPlan.from_removed(structures, order[:low], budget=targets, method=method)
