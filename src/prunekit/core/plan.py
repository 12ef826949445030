"""Pruning plans: which structures go, under which budget, and how scores become a plan.

A :class:`PruningPlan` is the output of every method: the ids of the removed
structures (plus optional entry-wise masks), the budget asked for and what was
met. It is JSON round-trippable and carries the structure signature and input
shapes needed to replay it on a fresh copy of the dense model.

:func:`select` first rescales the scores within each group (a layer's channels, a
block's heads: :func:`group_normalize`, default ``"mean"``), then removes structures in
ascending order of the rescaled score until the budget is met:

    k* = min { k : removed_fraction(first k admissible structures) ≥ target }

where a structure is admissible while it is not the last one standing in its group or
layer (the layer-collapse guard) and its group has lost fewer than
``⌊max_group_ratio · n⌋`` of its ``n`` members (default 0.8). Fractions of parameters
and MACs are computed exactly by :meth:`prunekit.core.structures.Structures.cost`.
``select(..., group_norm=None, max_group_ratio=None)`` is the selection as in the SOSP
paper: one global ranking of the raw scores. Why the defaults: ``docs/selection.md``.
``select(..., multiple_of=8)`` ranks chunks of a group's members instead, so every group
keeps all its members or a multiple of 8 (:func:`_chunk_order`).

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

import hashlib
import heapq
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping, Sequence

import torch

from .structures import Structures

if TYPE_CHECKING:  # pragma: no cover
    from .latency import LatencyModel

__all__ = ["Budget", "PruningPlan", "select", "select_family", "BudgetError", "collapse_guard", "group_normalize", "GROUP_NORMS",
           "DEFAULT_GROUP_NORM", "DEFAULT_MAX_GROUP_RATIO", "broadcast_plan", "check_same_plan", "PlanMismatchError"]


class BudgetError(ValueError):
    """A budget that cannot be met or is malformed."""


@dataclass(frozen=True)
class Budget:
    """Fractions to **remove**: of structures, of parameters, of MACs, of latency (each in [0, 1)).

    Several fractions may be given; the plan then meets all of them. ``latency`` is a
    fraction of the dense latency *predicted* by a :class:`prunekit.LatencyModel` measured
    on the target, which :func:`select` then needs (``select(..., latency=lat)``).

    Example:
        >>> Budget(macs=0.5).targets()
        {'macs': 0.5}
    """

    structures: float | None = None
    params: float | None = None
    macs: float | None = None
    latency: float | None = None

    def __post_init__(self):
        for key, value in self.targets().items():
            if not (0.0 <= value < 1.0) or math.isnan(value):
                raise BudgetError(f"Budget.{key}={value}: a fraction to remove must be in [0, 1)")
        if not self.targets():
            raise BudgetError("Budget: give at least one of structures=, params=, macs=, latency=")

    def targets(self) -> dict:
        return {k: v for k, v in (("structures", self.structures), ("params", self.params), ("macs", self.macs),
                                  ("latency", self.latency)) if v is not None}

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

    def kept_widths(self, structures: Structures) -> dict[int, int]:
        """Members each group keeps, ``{group id: n_g − |removed ∩ g|}``.

        Example:
            >>> import torch, torch.nn as nn, prunekit
            >>> m = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
            >>> s = prunekit.find_structures(m, torch.randn(1, 4))
            >>> PruningPlan.from_removed(s, s.groups[0].members[:2]).kept_widths(s)
            {0: 4}
        """
        gone = set(self.removed)
        return {g.id: len(g.members) - len(gone.intersection(g.members)) for g in structures.groups}

    def to_dict(self) -> dict:
        """JSON-serialisable form; entry masks are stored as flat indices of the removed entries."""
        masks = {name: {"shape": list(mask.shape), "zeros": torch.nonzero(~mask.flatten()).flatten().tolist()}
                 for name, mask in self.entry_masks.items()}
        return {"format": "prunekit.core.plan/1", "removed": self.removed, "num_structures": self.num_structures,
                "signature": self.signature, "input_spec": self.input_spec, "budget": self.budget,
                "achieved": self.achieved, "remaining": self.remaining, "removed_desc": self.removed_desc,
                "method": self.method, "entry_masks": masks, "meta": self.meta, "ignore": self.ignore}

    @classmethod
    def from_dict(cls, data: dict, source: str = "plan") -> "PruningPlan":
        if not isinstance(data, dict) or data.get("format") != "prunekit.core.plan/1":
            raise ValueError(f"{source}: not a prunekit plan (expected format 'prunekit.core.plan/1')")
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


GROUP_NORMS = (None, "mean", "max", "sum", "gaussian")


def group_normalize(structures: Structures, scores, mode: str | None) -> torch.Tensor:
    """Scores rescaled within each group of ``structures.groups`` (``mode=None``: unchanged).

    For the members ``s_g`` of one group (a layer's channels, a block's heads):

    * ``"mean"``: ``s / mean(|s_g|)``  (Torch-Pruning's default normalizer, with ``|·|``
      so that signed user scores keep their sign);
    * ``"max"``: ``s / max(|s_g|)``;
    * ``"sum"``: ``s / sum(|s_g|)`` (a member of a wide group gets a smaller score);
    * ``"gaussian"``: ``(s − mean(s_g)) / std(s_g)`` (population std).

    A group whose denominator is 0 (all scores 0, or all equal for ``"gaussian"``) gets
    0 for ``"gaussian"`` and keeps its scores otherwise. Scores then compare across
    groups on one scale, whatever the layer's magnitude: a criterion whose raw values
    differ by orders of magnitude between layers no longer empties the smallest-scored one.

    Example:
        >>> import torch, prunekit
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU(), torch.nn.Linear(2, 3),
        ...                         torch.nn.ReLU(), torch.nn.Linear(3, 1))
        >>> s = prunekit.find_structures(m, torch.randn(1, 3))
        >>> [len(g.members) for g in s.groups]
        [2, 3]
        >>> group_normalize(s, [1.0, 3.0, 10.0, 20.0, 30.0], "mean").tolist()
        [0.5, 1.5, 0.5, 1.0, 1.5]
    """
    if mode not in GROUP_NORMS:
        raise ValueError(f"group_norm must be one of {GROUP_NORMS}, got {mode!r}")
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten().clone()
    if mode is None:
        return scores
    for group in structures.groups:
        idx = torch.as_tensor(group.members, dtype=torch.long)
        if idx.numel() == 0:
            continue
        s = scores[idx]
        if mode == "gaussian":
            std = s.std(correction=0)
            scores[idx] = (s - s.mean()) / std if std > 0 else torch.zeros_like(s)
            continue
        denom = {"mean": s.abs().mean, "max": s.abs().max, "sum": s.abs().sum}[mode]()
        if denom > 0:
            scores[idx] = s / denom
    return scores


def _group_caps(structures: Structures, max_group_ratio: float | None, min_group_width: int,
                max_removed: Mapping[int, int] | None = None) -> dict[int, int]:
    """How many members of each group may go: ``min(⌊r·n⌋, n − min_group_width, max_removed[g])`` (never below 0)."""
    caps = {}
    for group in structures.groups:
        n = len(group.members)
        cap = n - min_group_width
        if max_group_ratio is not None:
            cap = min(cap, math.floor(max_group_ratio * n + 1e-9))
        if max_removed and group.id in max_removed:
            cap = min(cap, int(max_removed[group.id]))
        caps[group.id] = max(cap, 0)
    return caps


def _admissible_order(structures: Structures, scores: torch.Tensor, max_group_ratio: float | None = None,
                      min_group_width: int = 1, max_removed: Mapping[int, int] | None = None) -> list[int]:
    """Ascending-score order (stable on ties), filtered by :func:`collapse_guard` and the group caps.

    With the defaults (no ratio, width 1) this is the collapse guard alone. A structure
    is skipped once its group has lost ``⌊max_group_ratio · n⌋`` members or is down to
    ``min_group_width`` (see :func:`select`).
    """
    order = sorted(range(len(structures)), key=lambda i: (float(scores[i]), i))
    if max_group_ratio is None and min_group_width <= 1 and not max_removed:
        return collapse_guard(structures, order)
    caps = _group_caps(structures, max_group_ratio, min_group_width, max_removed)
    checker = structures.collapse_checker()
    out = []
    for sid in order:
        g = structures[sid].group
        if caps[g] > 0 and checker.admit(sid):
            caps[g] -= 1
            out.append(sid)
    return out


#: marginal saving (ms) below which a structure counts as saving nothing (ranked after every saving one)
_MIN_GAIN_MS = 1e-12


def _latency_order(structures: Structures, keys: torch.Tensor, latency: "LatencyModel",
                   max_group_ratio: float | None, min_group_width: int,
                   max_removed: Mapping[int, int] | None = None) -> list[int]:
    """Greedy order on score per predicted millisecond saved, filtered like :func:`_admissible_order`.

    Within a group, members go in ascending score. Across groups, the next structure is
    the one with the smallest ``score / Δ_g(k_g)``, where ``Δ_g(k)`` is the latency the
    model predicts removing one more member of group ``g`` saves when ``k`` are gone (the
    slope of its piecewise-linear table, so it changes as a group is thinned). Members the
    collapse guard or the group caps refuse are skipped; the order is the same whatever the
    budget, so plans for larger fractions contain those for smaller ones.
    """
    caps = _group_caps(structures, max_group_ratio, min_group_width, max_removed)
    checker = structures.collapse_checker()
    queues = {g.id: sorted(g.members, key=lambda i: (float(keys[i]), i)) for g in structures.groups}
    pos = {gid: 0 for gid in queues}
    gone = {gid: 0 for gid in queues}
    heap: list = []

    def push(gid: int) -> None:
        if pos[gid] < len(queues[gid]) and caps[gid] > 0:
            sid = queues[gid][pos[gid]]
            gain = latency.marginal(gid, gone[gid])
            key = float(keys[sid]) / gain if gain > _MIN_GAIN_MS else math.inf
            heapq.heappush(heap, (key, float(keys[sid]), sid, gid))

    for gid in queues:
        push(gid)
    out = []
    while heap:
        _, _, sid, gid = heapq.heappop(heap)
        pos[gid] += 1
        if checker.admit(sid):
            out.append(sid)
            caps[gid] -= 1
            gone[gid] += 1
        push(gid)
    return out


def _group_chunks(members: Sequence[int], multiple_of: int) -> list[list[int]]:
    """One group's removal chunks, in order: its ``n mod k`` lowest members, then ``k`` at a time.

    ``members`` are sorted by ascending key. Removing the first chunk and then any others keeps
    a multiple of ``k`` members (or all ``n``); :func:`_chunk_order` removes at most ``n − k``.
    """
    first = len(members) % multiple_of
    chunks = [list(members[:first])] if first else []
    for start in range(first, len(members), multiple_of):
        chunks.append(list(members[start:start + multiple_of]))
    return chunks


def _admit_chunk(checker, chunk: Sequence[int]) -> bool:
    """Admit every member of ``chunk`` to the collapse ``checker``, or none (its state rolled back)."""
    alive = {key: checker.alive[key].copy() for sid in chunk for key, _ in checker.rows[sid]}
    group = checker.structures[chunk[0]].group
    left = checker.group_left[group]
    for sid in chunk:
        if not checker.admit(sid):
            checker.alive.update(alive)
            checker.group_left[group] = left
            return False
    return True


def _chunk_order(structures: Structures, keys: torch.Tensor, multiple_of: int, max_group_ratio: float | None,
                 min_group_width: int, latency: "LatencyModel | None" = None,
                 max_removed: Mapping[int, int] | None = None) -> list[list[int]]:
    """The removal order over chunks (:func:`_group_chunks`), filtered by the collapse guard and the caps.

    Without ``latency``, chunks go by the ascending **sum** of their members' keys (a chunk is
    ranked like one structure: by what removing it loses; ties: lowest member id), so the small
    ``n mod k`` chunks, which round each group down to a multiple, come early; with it,
    greedily by ``Σ key / Δms`` of the whole chunk (:func:`_latency_order` per chunk).
    Chunks of one group go in their order while the group keeps ``k`` and its cap
    (:func:`_group_caps`) allows the whole chunk (a group of ``n ≤ k`` stays whole); a chunk
    the collapse guard refuses is skipped (its group's remaining chunks too when it is the
    ``n mod k`` one, which the others need first). With ``k = 1`` this is
    :func:`_admissible_order` (or :func:`_latency_order`), one structure per chunk.
    """
    caps = _group_caps(structures, max_group_ratio, min_group_width, max_removed)
    caps = {g.id: min(caps[g.id], len(g.members) - multiple_of) for g in structures.groups}  # k stay
    queues = {g.id: _group_chunks(sorted(g.members, key=lambda i: (float(keys[i]), i)), multiple_of)
              for g in structures.groups}
    pos = {gid: 0 for gid in queues}
    gone = {gid: 0 for gid in queues}
    heap: list = []

    def push(gid: int) -> None:
        if pos[gid] >= len(queues[gid]) or gone[gid] + len(queues[gid][pos[gid]]) > caps[gid]:
            return
        chunk = queues[gid][pos[gid]]
        total = math.fsum(float(keys[i]) for i in chunk)
        if latency is None:
            heapq.heappush(heap, (total, chunk[0], gid))
            return
        gain = latency.saved(gid, gone[gid] + len(chunk)) - latency.saved(gid, gone[gid])
        heapq.heappush(heap, (total / gain if gain > _MIN_GAIN_MS else math.inf, total, chunk[0], gid))

    for gid in queues:
        push(gid)
    checker = structures.collapse_checker()
    out = []
    while heap:
        gid = heapq.heappop(heap)[-1]
        chunk = queues[gid][pos[gid]]
        pos[gid] += 1
        if _admit_chunk(checker, chunk):
            out.append(chunk)
            gone[gid] += len(chunk)
        elif len(chunk) < multiple_of:  # the n mod k chunk stays: so do the others
            continue
        push(gid)
    return out


def _removal_chunks(structures: Structures, keys: torch.Tensor, targets: dict, latency, max_group_ratio,
                    min_group_width: int, multiple_of: int,
                    max_removed: Mapping[int, int] | None = None) -> list[list[int]]:
    """:func:`select`'s order as chunks removed together (one structure each when ``multiple_of`` is 1)."""
    if multiple_of > 1:
        return _chunk_order(structures, keys, multiple_of, max_group_ratio, min_group_width,
                            latency if "latency" in targets else None, max_removed)
    if "latency" in targets:
        order = _latency_order(structures, keys, latency, max_group_ratio, min_group_width, max_removed)
    else:
        order = _admissible_order(structures, keys, max_group_ratio, min_group_width, max_removed)
    return [[sid] for sid in order]


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


DEFAULT_GROUP_NORM = "mean"
DEFAULT_MAX_GROUP_RATIO = 0.8


def _check_select_args(structures, scores, targets, normalize, group_norm, max_group_ratio, min_group_width,
                       latency, multiple_of: int = 1, max_removed: Mapping[int, int] | None = None) -> None:
    """:func:`select`'s argument checks, each with its own message."""
    if scores.numel() != len(structures):
        raise ValueError(f"select: got {scores.numel()} scores for {len(structures)} structures")
    if torch.isnan(scores).any():
        bad = torch.nonzero(torch.isnan(scores)).flatten()[:5].tolist()
        raise ValueError(f"select: NaN scores for structures {bad} ({[structures.describe(i) for i in bad]})")
    if normalize not in (None, "params", "macs"):
        raise ValueError(f"select: normalize must be None, 'params' or 'macs', got {normalize!r}")
    if group_norm not in GROUP_NORMS:
        raise ValueError(f"select: group_norm must be one of {GROUP_NORMS}, got {group_norm!r}")
    if group_norm == "gaussian" and normalize is not None:
        raise ValueError("select: group_norm='gaussian' makes scores negative, so score / cost (normalize="
                         f"{normalize!r}) would invert their order; use 'mean', 'max' or 'sum' with normalize")
    if max_group_ratio is not None and not (0.0 < max_group_ratio <= 1.0):
        raise ValueError(f"select: max_group_ratio must be in (0, 1] or None, got {max_group_ratio!r}")
    if isinstance(min_group_width, bool) or not isinstance(min_group_width, int) or min_group_width < 1:
        raise ValueError(f"select: min_group_width must be an int >= 1, got {min_group_width!r}")
    if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1:
        raise ValueError(f"select: multiple_of must be an int >= 1, got {multiple_of!r}")
    _check_max_removed(structures, max_removed or {})
    if latency is not None:
        latency.check_structures(structures)
    if "latency" in targets:
        if latency is None:
            raise BudgetError(
                f"Budget(latency={targets['latency']}) needs a latency model of this model on the target: "
                "lat = prunekit.LatencyModel.measure(model, example_inputs, batch_size=…, threads=…, device=…), "
                "then select(structures, scores, budget, latency=lat)")
        if normalize is not None:
            raise ValueError(f"select: normalize={normalize!r} cannot be combined with a latency budget, which "
                             "already ranks by score per predicted millisecond saved")
        check_latency_group_norm(group_norm)


def check_latency_group_norm(group_norm: str | None) -> None:
    """Refuse ``group_norm="gaussian"`` with a latency budget (callers that time first check it up front).

        >>> check_latency_group_norm(None)
    """
    if group_norm == "gaussian":
        raise ValueError("select: group_norm='gaussian' makes scores negative, so score / ms saved would invert "
                         "their order; use 'mean', 'max', 'sum' or None with a latency budget")


def _check_max_removed(structures, max_removed: Mapping[int, int]) -> None:
    ids = {g.id for g in structures.groups}
    for gid, n in max_removed.items():
        if gid not in ids:
            raise ValueError(f"select: max_removed names group {gid!r}, which is not one of the "
                             f"{len(ids)} groups of these structures")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"select: max_removed[{gid}] must be an int >= 0, got {n!r}")


def _unmet_budget_error(targets, reached_fractions, unlimited_fractions, max_group_ratio,
                        min_group_width, multiple_of: int = 1,
                        max_removed: Mapping[int, int] | None = None) -> BudgetError:
    """The error naming the limit that keeps ``targets`` out of reach (the caps, or the collapse guard)."""
    reached = {k: round(v, 4) for k, v in reached_fractions.items()}
    limits = []
    if max_group_ratio is not None:
        limits.append(f"max_group_ratio={max_group_ratio} (at most {max_group_ratio:.0%} of each group removed)")
    if min_group_width > 1:
        limits.append(f"min_group_width={min_group_width} (each group keeps {min_group_width})")
    if multiple_of > 1:
        limits.append(f"multiple_of={multiple_of} (each group keeps all its members or a multiple of "
                      f"{multiple_of}, at least {multiple_of})")
    if max_removed:
        limits.append(f"max_removed on {len(max_removed)} group(s)")
    also = ""
    if limits:
        free = unlimited_fractions()
        if all(free[key] >= t - 1e-12 for key, t in targets.items()):
            return BudgetError(
                f"budget {targets} cannot be met with {' and '.join(limits)}: removing every structure "
                f"these limits allow reaches {reached}; raise max_group_ratio / lower min_group_width"
                f"{' / lower multiple_of' if multiple_of > 1 else ''}{' / raise max_removed' if max_removed else ''}"
                f", or pass max_group_ratio=None, min_group_width=1{', multiple_of=1' if multiple_of > 1 else ''}"
                f"{', max_removed=None' if max_removed else ''}")
        also = f" (with {' and '.join(limits)}: {reached})"
        reached = {k: round(v, 4) for k, v in free.items()}
    return BudgetError(f"budget {targets} cannot be met without emptying a layer: removing every admissible "
                       f"structure reaches {reached}{also}")


def select(structures: Structures, scores, budget: Budget, normalize: str | None = None,
           method: str = "", *, group_norm: str | None = DEFAULT_GROUP_NORM,
           max_group_ratio: float | None = DEFAULT_MAX_GROUP_RATIO, min_group_width: int = 1,
           latency: "LatencyModel | None" = None, multiple_of: int | None = None,
           max_removed: Mapping[int, int] | None = None) -> PruningPlan:
    """Turn one score per structure into a plan that meets ``budget``.

    Args:
        structures: from :func:`prunekit.find_structures`.
        scores: ``scores[i]`` belongs to ``structures[i]``; lower means remove first.
        budget: fractions to remove (:class:`Budget`).
        normalize: ``None`` (rank by score), ``"params"`` or ``"macs"``: rank by
            ``score / cost`` — prunekit's cost-normalised extension (the SOSP paper's
            "scaled variant"), which removes cheap-to-lose, expensive-to-keep structures first.
            Applied after ``group_norm``.
        group_norm: rescale the scores within each group before the global ranking
            (:func:`group_normalize`: ``"mean"``, ``"max"``, ``"sum"``, ``"gaussian"``, or
            ``None`` for the raw scores).
        max_group_ratio: remove at most ``⌊r · n⌋`` of the ``n`` members of any group
            (Torch-Pruning's ``max_pruning_ratio``); ``None``: no limit beyond the collapse guard.
        min_group_width: keep at least this many members of every group (1: the collapse
            guard's own floor).
        multiple_of: ``k``: every group keeps all its members or a multiple of ``k`` (at least
            ``k``; a group of ``≤ k`` stays whole), e.g. 8 for fast kernels (``docs/selection.md``).
            ``None``: the ``latency`` model's ``multiple_of`` (the widths its tables sampled), else 1.
        latency: a :class:`prunekit.LatencyModel` of this model (needed by
            ``Budget(latency=…)``; with any budget, ``plan.achieved["latency"]`` and
            ``plan.meta["latency"]`` then record the predicted latency).
        max_removed: ``{group id: n}``: remove at most ``n`` members of those groups, on top of
            the other limits (``0`` keeps a group whole; Torch-Pruning's per-layer ratios, by
            group). :func:`prunekit.select_to_latency` uses it to hold a group at a width past
            which the measured latency jumps.

    **Latency budgets** (``Budget(latency=f)``): structures are taken greedily by
    ``score / Δms`` (group-normalised score per millisecond the latency model predicts
    removing it saves, given what its group has already lost; :func:`_latency_order`),
    with the same collapse guard and group limits, until the predicted latency saved is
    at least ``f`` of the dense latency. ``normalize`` and ``group_norm="gaussian"`` are
    refused there (the division by Δms is the cost normalisation, and needs scores ≥ 0).

    Defaults (``group_norm="mean"``, ``max_group_ratio=0.8``) were chosen by
    ``benchmarks/bench_collapse.py`` (``docs/selection.md``): on a CNN trained on real
    digits (6 criteria × 50/70/90 % of MACs × 3 seeds, 5 fine-tuning epochs), ranking
    raw scores, whose scales differ by orders of magnitude between layers, left a layer
    at one channel in 20 of 54 plans (mean accuracy 0.785, worst 0.18); the defaults in
    none (0.965, worst 0.80). ``"gaussian"`` measured the same (0.965) but cannot be
    combined with ``normalize``; ``"max"`` still collapsed one plan, ``"sum"`` had the
    worst plan (0.63). ``group_norm=None, max_group_ratio=None`` is the selection as in
    the SOSP paper (one global ranking of the raw scores, only the collapse guard).

    ``select`` is deterministic: identical scores (bit for bit) and structures give the
    identical plan (ties broken by structure id), on any rank. Under ``torch.distributed``,
    :func:`prunekit.saliency` returns the same scores on every rank, so every rank selects
    the same plan; :func:`broadcast_plan` (rank 0 decides) and :func:`check_same_plan` make
    and verify one plan whatever the scores.

    Returns:
        A :class:`PruningPlan` removing the shortest admissible prefix (of chunks, with
        ``multiple_of``) that meets every target (``plan.meta["selection"]`` records the
        options); raises :class:`BudgetError` naming the limit (``max_group_ratio``,
        ``min_group_width``, ``multiple_of`` or the collapse guard) if even removing every
        admissible structure cannot meet it.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
    targets = budget.targets()
    if multiple_of is None:
        multiple_of = int(getattr(latency, "multiple_of", 1) or 1)
    _check_select_args(structures, scores, targets, normalize, group_norm, max_group_ratio, min_group_width,
                       latency, multiple_of, max_removed)
    keys = group_normalize(structures, scores, group_norm)
    if normalize is not None:
        costs = torch.tensor([max(getattr(s, normalize), 1) for s in structures], dtype=torch.float64)
        keys = keys / costs
    if "latency" in targets and (keys < 0).any():
        bad = torch.nonzero(keys < 0).flatten()[:5].tolist()
        raise ValueError(f"select: a latency budget needs scores >= 0 (score per ms saved), got negative "
                         f"scores for structures {bad}")
    chunks = _removal_chunks(structures, keys, targets, latency, max_group_ratio, min_group_width, multiple_of,
                             max_removed)
    order = [sid for chunk in chunks for sid in chunk]
    ends = [0]  # ends[c]: structures in the first c chunks
    for chunk in chunks:
        ends.append(ends[-1] + len(chunk))

    def fractions_of(removed) -> dict:
        out = dict(PruningPlan.from_removed(structures, removed).achieved)
        if latency is not None:
            out["latency"] = latency.saved_fraction(removed)
        return out

    def met(k: int) -> bool:
        plan_cost = structures.cost(order[:k])
        fractions = {"structures": k / len(structures),
                     "params": 1 - plan_cost["params"] / structures.total_params,
                     "macs": 1 - plan_cost["macs"] / max(structures.total_macs, 1)}
        if "latency" in targets:
            fractions["latency"] = latency.saved_fraction(order[:k])
        return all(fractions[key] >= target - 1e-12 for key, target in targets.items())

    if not met(len(order)):
        unlimited = (_latency_order(structures, keys, latency, None, 1) if "latency" in targets
                     else _admissible_order(structures, keys))
        raise _unmet_budget_error(targets, fractions_of(order), lambda: fractions_of(unlimited),
                                  max_group_ratio, min_group_width, multiple_of, max_removed)
    low, high = 0, len(chunks)  # met(ends[high]) is True; find the fewest chunks that meet it
    while low < high:
        mid = (low + high) // 2
        if met(ends[mid]):
            high = mid
        else:
            low = mid + 1
    plan = PruningPlan.from_removed(structures, order[:ends[low]], budget=targets, method=method)
    plan.meta["selection"] = {"group_norm": group_norm, "max_group_ratio": max_group_ratio,
                              "min_group_width": min_group_width, "normalize": normalize,
                              "multiple_of": multiple_of}
    if max_removed:
        plan.meta["selection"]["max_removed"] = {str(g): int(n) for g, n in sorted(max_removed.items())}  # JSON keys
    if "latency" in targets:
        plan.meta["selection"]["order"] = "score per predicted ms saved"
    if latency is not None:
        plan.achieved["latency"] = latency.saved_fraction(plan.removed)
        plan.meta["latency"] = {"predicted_ms": latency.predict(plan.removed), "dense_ms": latency.dense_ms,
                                "batch_size": latency.batch_size, "threads": latency.threads,
                                "device": latency.device, "device_name": latency.device_name,
                                "dtype": latency.dtype, "note": "predicted by the latency model (additive per group)"}
    return plan


# ---------------------------------------------------------------------------- one plan on every rank

class PlanMismatchError(RuntimeError):
    """The ranks of a ``torch.distributed`` group hold different pruning plans."""


def _plan_digest(plan: PruningPlan) -> bytes:
    """SHA-256 of what defines a plan: the removed ids, the structure count and signature, the entry masks."""
    h = hashlib.sha256()
    h.update(json.dumps({"removed": sorted(int(i) for i in plan.removed), "num_structures": int(plan.num_structures),
                         "signature": plan.signature}, sort_keys=True).encode())
    for name in sorted(plan.entry_masks):
        mask = torch.as_tensor(plan.entry_masks[name]).detach().to("cpu", torch.bool).contiguous()
        h.update(name.encode() + b"\0" + json.dumps(list(mask.shape)).encode() + b"\0")
        h.update(mask.flatten().to(torch.uint8).numpy().tobytes())
    return h.digest()


def select_family(structures: Structures, scores, budgets: Sequence[Budget], **options) -> list[PruningPlan]:
    """One plan per budget from the same scores: a family of models from one saliency pass.

    Every plan is :func:`select` with the same ``options`` (``multiple_of`` too); since
    :func:`select` removes the shortest prefix of one order that meets the budget, the plans are **nested**: a plan for
    a larger budget removes everything a smaller one removes (checked; ``plan.meta["family"]``
    records each plan's position). Pick the speed/accuracy point after the fact.

    Example:
        >>> import torch, prunekit
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> s = prunekit.find_structures(net, torch.randn(1, 4))
        >>> plans = select_family(s, torch.arange(8.0), [Budget(structures=f) for f in (0.25, 0.5)])
        >>> [len(p.removed) for p in plans], set(plans[0].removed) <= set(plans[1].removed)
        ([2, 4], True)
    """
    plans = [select(structures, scores, budget, **options) for budget in budgets]
    by_size = sorted(range(len(plans)), key=lambda i: len(plans[i].removed))
    for a, b in zip(by_size, by_size[1:]):
        if not set(plans[a].removed) <= set(plans[b].removed):  # select's prefix property broke
            raise RuntimeError(f"select_family: plan for {budgets[b]} does not contain the plan for {budgets[a]}")
    for i, plan in enumerate(plans):
        plan.meta["family"] = {"index": i, "of": len(plans), "nested": True}
    return plans


def broadcast_plan(plan: PruningPlan | None, src: int = 0, group=None, *, structures: Structures | None = None
                   ) -> PruningPlan:
    """Rank ``src`` decides, every rank of ``group`` receives: returns ``src``'s plan everywhere.

    Call it on every rank of the group. ``plan`` matters on ``src`` only (the other ranks may
    pass ``None``); ``src`` is a global rank, as for ``torch.distributed.broadcast``. The plan
    travels as its JSON (:meth:`PruningPlan.to_json`: removed ids, entry masks, budget, meta),
    in two broadcasts (length, bytes). With ``structures`` given, each rank checks the plan
    against its own structures (:meth:`PruningPlan.check_matches`). When ``torch.distributed``
    is not initialized (and ``group`` is ``None``), ``plan`` is returned as it is.

    Example:
        >>> import torch, prunekit
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> s = prunekit.find_structures(m, torch.randn(1, 3))
        >>> plan = prunekit.select(s, [1.0, 2.0, 3.0, 4.0], prunekit.Budget(structures=0.25))
        >>> broadcast_plan(plan) is plan   # one process: nothing to send
        True
    """
    from ..criteria.distributed import broadcast_tensor, resolve_group

    ctx = resolve_group(group)
    if ctx is None:
        if plan is None:
            raise ValueError("broadcast_plan: no plan to return (torch.distributed is not initialized, so this "
                             "process is the source)")
        if structures is not None:
            plan.check_matches(structures)
        return plan
    import torch.distributed as dist

    is_src = dist.get_rank() == src
    if is_src and not isinstance(plan, PruningPlan):
        raise ValueError(f"broadcast_plan: rank {src} (the source) must pass a PruningPlan, got {type(plan).__name__}")
    payload = plan.to_json().encode() if is_src else b""
    # group rank of src for broadcast_tensor (which takes a group rank)
    src_group_rank = src if ctx.group is None else dist.get_group_rank(ctx.group, src)
    length = broadcast_tensor(ctx, torch.tensor([len(payload)], dtype=torch.int64), src_group_rank)
    data = torch.zeros(int(length.item()), dtype=torch.uint8)
    if is_src:
        data.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
    data = broadcast_tensor(ctx, data, src_group_rank)
    received = plan if is_src else PruningPlan.from_json(data.numpy().tobytes().decode(),
                                                         source=f"plan from rank {src}")
    if structures is not None:
        received.check_matches(structures, where=f"model of rank {dist.get_rank()}")
    return received


def check_same_plan(plan: PruningPlan, group=None) -> None:
    """Raise :class:`PlanMismatchError` on every rank unless every rank of ``group`` holds the same plan.

    Compares a SHA-256 digest of the removed ids, the structure count and signature and the
    entry masks (not the budget or meta), gathered from every rank; one all-gather of 40 bytes
    per rank. A no-op when ``torch.distributed`` is not initialized (and ``group`` is ``None``).

    Example:
        >>> import torch, prunekit
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> s = prunekit.find_structures(m, torch.randn(1, 3))
        >>> check_same_plan(prunekit.select(s, [1.0, 2.0, 3.0, 4.0], prunekit.Budget(structures=0.25)))
    """
    from ..criteria.distributed import comm_device, resolve_group

    ctx = resolve_group(group)
    if ctx is None:
        return
    import torch.distributed as dist

    digest = _plan_digest(plan)
    mine = torch.tensor([len(plan.removed)] + [int.from_bytes(digest[i:i + 8], "little", signed=True)
                                               for i in range(0, 32, 8)], dtype=torch.int64)
    device = comm_device(ctx, mine.device)
    mine = mine.to(device)
    gathered = [torch.zeros_like(mine) for _ in range(ctx.world_size)]
    dist.all_gather(gathered, mine, group=ctx.group)
    rows = [tuple(int(v) for v in t.cpu()) for t in gathered]
    if all(r == rows[0] for r in rows):
        return
    differ = [r for r, row in enumerate(rows) if row != rows[0]]
    summary = ", ".join(f"rank {r}: {row[0]} removed (digest {(row[1] & 0xFFFFFFFF):08x})"
                        for r, row in enumerate(rows))
    raise PlanMismatchError(
        f"the ranks hold different pruning plans (ranks {differ} differ from group rank 0; {summary}). Pruning them "
        f"would give each rank a different model. Make one plan: compute the scores with prunekit.saliency under "
        f"torch.distributed (they are reduced over all ranks, so select gives the same plan), or let one rank "
        f"decide with prunekit.broadcast_plan(plan, src=0).")
