"""Find the prunable structures of any ``nn.Module``, and what each one costs.

The model runs once under prunekit's dimension-flow analysis
(:mod:`prunekit.core.analysis`): every width is followed through every ATen op —
views, permutes, concatenations, splits, einsums, attention, norms, embeddings,
grouped and transposed convolutions, recurrent gates. A **structure** is a set of
indices that must be removed together (one class of atoms): a channel of a residual
stream, a Linear neuron, an attention head, a head dimension, a hidden unit of an
LSTM across its gates. Its ``slices`` are the parameter slices that produce it
(zeroing them zeroes it: what the criteria scale), its ``consumers`` the slices that
read it (removed with it). Whatever the analysis cannot follow — an op without a
rule, the model's inputs and outputs, a normalisation statistic, a reshape it
cannot factor — is **frozen**: never part of a structure. A :class:`FrozenWarning`
names the ops without a rule and the share of parameters they froze.

Before returning, a **probe** removes one structure of every group, materializes,
and compares with the masked model; groups that fail (a size the forward computes
from a constant prunekit cannot see) are frozen too, so every structure returned
can be materialized.

Costs are exact: parameters are products of kept widths per tensor, MACs are
products of kept widths per counted op (convolutions, matrix products, attention),
so :meth:`Structures.cost` gives the parameter and MAC count of the model with any
set of structures removed without materializing.

Example:
    >>> import torch, prunekit
    >>> model = prunekit.models.create("resnet20")
    >>> structures = prunekit.find_structures(model, torch.randn(1, 3, 32, 32))
    >>> len(structures) > 0, structures.frozen["share"] < 0.1
    (True, True)
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .analysis import trace as run_trace
from .analysis.atoms import NONE
from .blocks import PrunableBlock
from .structure_types import Structure

__all__ = ["Structure", "Structures", "find_structures", "UnsupportedModelError", "FrozenWarning",
           "input_spec_of", "inputs_from_spec", "unwrap"]

log = logging.getLogger(__name__)


#: the probe compares in float64: an exact removal agrees to ~1e-15 (~1e-7 where a model computes a norm
#: in float32 on purpose, as Llama's RMSNorm does); a changed scale or statistic is off by 1e-5 or more
PROBE_TOLERANCE = 1e-6
#: groups × parameters up to which every group is probed alone (else all at once, then bisection)
PROBE_EACH_BUDGET = 50_000_000


class UnsupportedModelError(RuntimeError):
    """The model cannot be analysed at all (its forward fails on the example inputs); the message says why."""


class FrozenWarning(UserWarning):
    """Part of the model was frozen (left unpruned) because the analysis has no rule for an op or module."""


# --------------------------------------------------------------------------- inputs


def unwrap(model: nn.Module) -> nn.Module:
    """The original module of a ``torch.compile``d model (analysis and names use it)."""
    return getattr(model, "_orig_mod", model)


#: integer inputs up to this size are stored whole in the spec (replays see the same ids and masks)
MAX_STORED_VALUES = 65536


def _spec_of_tensor(t: torch.Tensor) -> dict:
    item = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
    if not t.is_floating_point() and t.numel():
        item["low"], item["high"] = int(t.min()), int(t.max())
        if t.numel() <= MAX_STORED_VALUES:  # token ids, masks: control flow may depend on them
            item["values"] = t.flatten().tolist()
    return item


def input_spec_of(example_inputs) -> list | dict:
    """Shapes, dtypes (and integer ranges) of example inputs, JSON-serialisable, to rebuild them later."""
    if isinstance(example_inputs, Mapping):
        return {"kwargs": {k: _spec_of_tensor(v) for k, v in example_inputs.items() if torch.is_tensor(v)}}
    tensors = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    return [_spec_of_tensor(t) for t in tensors]


#: dtype names an input spec may use (plans are read from files: never ``getattr(torch, name)``)
DTYPES = {name: getattr(torch, name) for name in (
    "float16", "bfloat16", "float32", "float64", "complex64", "complex128",
    "uint8", "int8", "int16", "int32", "int64", "bool")}


def _tensor_from_spec(item: dict, generator, reference) -> torch.Tensor:
    if item.get("dtype") not in DTYPES:
        raise ValueError(f"input spec: unknown dtype {item.get('dtype')!r}; expected one of {sorted(DTYPES)}")
    dtype = DTYPES[item["dtype"]]
    if dtype.is_floating_point:
        if reference is not None:
            return torch.randn(item["shape"], generator=generator, dtype=reference.dtype).to(reference.device)
        return torch.randn(item["shape"], generator=generator, dtype=dtype)
    if "values" in item:
        return torch.tensor(item["values"], dtype=dtype).view(item["shape"])
    if "low" in item:
        if dtype == torch.bool:
            return torch.randint(int(item["low"]), int(item["high"]) + 1, item["shape"], generator=generator).bool()
        return torch.randint(int(item["low"]), int(item["high"]) + 1, item["shape"], generator=generator, dtype=dtype)
    return torch.zeros(item["shape"], dtype=dtype)


def inputs_from_spec(spec, model: nn.Module | None = None):
    """Deterministic example inputs rebuilt from :func:`input_spec_of` (the analysis needs shapes only).

    Floating inputs take the dtype and device of ``model``'s parameters when it is given;
    integer inputs are drawn in the range the original inputs had.
    """
    generator = torch.Generator().manual_seed(0)
    reference = next((p for p in model.parameters() if p.is_floating_point()), None) if model is not None else None
    if isinstance(spec, Mapping):
        return {k: _tensor_from_spec(v, generator, reference) for k, v in spec["kwargs"].items()}
    tensors = [_tensor_from_spec(item, generator, reference) for item in spec]
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


# ----------------------------------------------------------------------- structures


@dataclass
class GroupInfo:
    """Structures of one kind over the same tensors (a layer's channels, a block's heads); never all removed."""

    id: int
    kind: str
    root: str
    size: int
    members: list[int] = field(default_factory=list)


class _Closure:
    """For one label array: the structure ids whose removal removes each index (``-1`` padded)."""

    __slots__ = ("matrix", "n")

    def __init__(self, matrix: np.ndarray):
        self.matrix = matrix
        self.n = matrix.shape[0]

    def kept(self, removed_ext: np.ndarray) -> int:
        if self.matrix.shape[1] == 0:
            return self.n
        return self.n - int(removed_ext[self.matrix].any(axis=1).sum())

    def kept_indices(self, removed_ext: np.ndarray) -> np.ndarray:
        if self.matrix.shape[1] == 0:
            return np.arange(self.n)
        return np.nonzero(~removed_ext[self.matrix].any(axis=1))[0]


class Structures(Sequence[Structure]):
    """The prunable structures of a model, with an exact cost model.

    Indexing and iteration give :class:`Structure` objects; ``groups`` lists the
    groups; :meth:`cost` counts parameters and MACs after removing a set;
    ``frozen`` reports what was left unpruned and why.
    """

    def __init__(self, items, groups, tensors, terms, constant, input_spec, model_name, frozen, ignore, plan_data):
        self._items: list[Structure] = items
        self.groups: list[GroupInfo] = groups
        self._tensors = tensors        # param name -> [closure per dim]   (parameters only: counted)
        self._terms = terms            # (constant, [closure per iteration dim])  MAC terms
        self._constant = constant      # (params, macs) outside any labelled tensor / term
        self.input_spec = input_spec
        self.model_name = model_name
        self.frozen = frozen
        self.ignore = list(ignore)
        self._plan_data = plan_data    # what materialize needs: per tensor closures, owners, attributes
        full = self.cost(())
        self.total_params, self.total_macs = full["params"], full["macs"]
        self._alone_costs()

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):
        return self._items[index]

    def __iter__(self):
        return iter(self._items)

    def __repr__(self) -> str:
        kinds = defaultdict(int)
        for s in self._items:
            kinds[s.kind] += 1
        return (f"Structures({self.model_name}: {len(self)} structures {dict(kinds)} in {len(self.groups)} groups, "
                f"{self.total_params} params, {self.total_macs} MACs, {self.frozen['share']:.1%} of params frozen)")

    def _removed_ext(self, removed) -> np.ndarray:
        ext = np.zeros(len(self._items) + 1, dtype=bool)
        for sid in removed:
            ext[int(sid)] = True
        return ext

    def cost(self, removed: Iterable[int]) -> dict:
        """Exact ``{"params", "macs"}`` of the model with structures ``removed`` taken out.

        Each tensor keeps ``∏_d kept_d`` entries and each counted op costs
        ``c · ∏_d kept_d`` MACs over its iteration dims (e.g. a convolution
        ``N·H'W'·k² · C_out,kept · C_in/g,kept``); everything else is a constant.
        """
        ext = self._removed_ext(removed)
        params, macs = self._constant
        for closures in self._tensors.values():
            params += math.prod(c.kept(ext) for c in closures)
        for const, closures in self._terms:
            macs += const * math.prod(c.kept(ext) for c in closures)
        return {"params": int(params), "macs": int(macs)}

    def _alone_costs(self) -> None:
        """``params`` / ``macs`` of every structure: what removing it alone saves (vectorised)."""
        n_items = len(self._items)
        hits: dict[int, np.ndarray] = {}  # closure id -> per structure: indices it removes there

        def removed_by(c: _Closure) -> np.ndarray:
            if id(c) not in hits:
                m = np.sort(c.matrix, axis=1)
                first = np.ones(m.shape, dtype=bool)
                first[:, 1:] = m[:, 1:] != m[:, :-1]  # a structure counted once per index
                sids = m[(m >= 0) & first]
                hits[id(c)] = np.bincount(sids, minlength=n_items).astype(np.float64)
            return hits[id(c)]

        def saved(closures, const) -> np.ndarray:
            closures = [c for c in closures]
            full = float(const) * math.prod(c.n for c in closures)
            kept = np.full(n_items, float(const))
            touched = np.zeros(n_items, dtype=bool)
            for c in closures:
                h = removed_by(c) if c.matrix.shape[1] else np.zeros(n_items)
                touched |= h > 0
                kept *= c.n - h
            return np.where(touched, full - kept, 0.0)

        params = np.zeros(n_items)
        macs = np.zeros(n_items)
        for closures in self._tensors.values():
            params += saved(closures, 1)
        for const, closures in self._terms:
            macs += saved(closures, const)
        for s in self._items:
            s.params, s.macs = int(round(params[s.id])), int(round(macs[s.id]))

    def collapse_checker(self) -> "_CollapseChecker":
        """An incremental check that no producing weight dim (a layer's outputs) becomes empty."""
        return _CollapseChecker(self)

    def signature(self) -> str:
        """A hash of every structure's (layer, kind, index, slices): plans check it before replaying."""
        text = json.dumps([[s.layer, s.kind, s.meta.get("index"), [[n, d, len(i)] for n, d, i in s.slices]]
                           for s in self._items])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self, sid: int) -> list:
        s = self._items[sid]
        return [s.layer, s.kind, s.meta.get("index")]

    def keep_indices(self, removed: Iterable[int]) -> dict[str, list[torch.Tensor | None]]:
        """For every labelled parameter/buffer, the kept indices per dim (``None`` = all kept)."""
        ext = self._removed_ext(removed)
        out = {}
        for name, closures in self._plan_data["all_tensors"].items():
            dims = []
            for c in closures:
                if c.matrix.shape[1] == 0:
                    dims.append(None)
                    continue
                gone = ext[c.matrix].any(axis=1)
                dims.append(torch.from_numpy(np.nonzero(~gone)[0]) if gone.any() else None)
            out[name] = dims
        return out

    def kept_width(self, closure_key, removed) -> int:
        return self._plan_data["attr_closures"][closure_key].kept(self._removed_ext(removed))

    def summary(self) -> str:
        """A per-group table (structures, width, coupled tensors, params/MACs share) and the frozen parts.

        The rows as plain data: :func:`prunekit.core.summary.summary_rows`.
        """
        from .summary import summary_table
        return summary_table(self)


class _CollapseChecker:
    """``admit(sid)`` is True (and records the removal) unless it would empty a layer's outputs or a group.

    Exact with products: an index removed by two structures (head ``h`` and head-dim
    ``d``) is counted once.
    """

    def __init__(self, structures: Structures):
        self.structures = structures
        self.alive = {key: np.ones(c.n, dtype=bool) for key, c in structures._plan_data["layer_closures"].items()}
        self.rows = structures._plan_data["layer_rows"]   # sid -> [(key, index array)]
        self.group_left = {g.id: len(g.members) for g in structures.groups}

    def admit(self, sid: int) -> bool:
        g = self.structures[sid].group
        if self.group_left[g] <= 1:
            return False
        hits = self.rows[sid]
        for key, idx in hits:
            alive = self.alive[key]
            if alive.sum() - alive[idx].sum() < 1:
                return False
        for key, idx in hits:
            self.alive[key][idx] = False
        self.group_left[g] -= 1
        return True


def _resolve_ignored(model: nn.Module, ignore) -> list[str]:
    names = {m: n for n, m in model.named_modules()}
    modules = dict(model.named_modules())
    out = []
    for item in ignore:
        if isinstance(item, str):
            if item not in modules:
                raise ValueError(f"ignore: no module named {item!r} in {type(model).__name__}")
            root = modules[item]
        else:
            if item not in names:
                raise ValueError(f"ignore: {type(item).__name__} is not a submodule of {type(model).__name__}")
            root = item
        out.extend(names[m] for m in root.modules())
    return sorted(set(out))


def find_structures(model: nn.Module, example_inputs, ignore: Sequence = (), probe: bool = True,
                    progress: bool | None = None) -> Structures:
    """Find every prunable structure of ``model`` and the groups they form.

    Args:
        model: any ``nn.Module`` (a ``torch.compile``d one is analysed through its
            original module); it runs once in eval mode and is never modified.
        example_inputs: a tensor, a tuple of tensors (positional arguments) or a dict
            (keyword arguments) for one forward pass. MACs are counted for this batch.
        ignore: modules (or dotted names) to leave untouched: their parameters and the
            widths they read or write are frozen. Recorded in plans, so replays agree.
        probe: materialize one structure of every group and freeze groups whose
            removal breaks the forward (default on; off only for speed).
        progress: a tqdm bar over the steps (trace, structures, probe): ``None`` (default)
            shows it only when stderr is a terminal (never in logs or CI output), ``True``
            always, ``False`` never. The result does not depend on it.

    Returns:
        :class:`Structures`, ordered deterministically (groups in parameter order,
        structures by their first index).

    Example:
        >>> s = find_structures(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)),
        ...                     torch.randn(1, 4))
        >>> len(s), s[0].slices, s[0].consumers
        (8, [('0.bias', 0, [0]), ('0.weight', 0, [0])], [('2.weight', 1, [0])])
    """
    disable = _bar_disabled(progress)
    model = unwrap(model)
    ignored = _resolve_ignored(model, ignore)
    with tqdm(total=3 if probe else 2, desc="find_structures", unit="step", leave=False, disable=disable,
              dynamic_ncols=True) as bar:
        bar.set_postfix_str("trace")
        try:
            t = run_trace(model, example_inputs, set(ignored))
        except Exception as error:
            raise UnsupportedModelError(
                f"{type(model).__name__}: the forward pass failed on the example inputs "
                f"({type(error).__name__}: {error}); pass inputs the model accepts (a tensor, a tuple, or a dict "
                f"of keyword arguments)") from error
        _tie_size_arguments(t)
        bar.update()
        bar.set_postfix_str("structures")
        extra_frozen: set[int] = set()
        structures = _build(model, t, example_inputs, ignored, extra_frozen)
        bar.update()
        if probe and len(structures):
            bar.set_postfix_str(f"probe {len(structures.groups)} groups")
            structures = _probe(model, t, example_inputs, ignored, structures, extra_frozen, disable)
        bar.update(bar.total - bar.n)
    unknown = structures.frozen["unknown"]
    if unknown:
        warnings.warn(
            f"{type(model).__name__}: left unpruned where prunekit has no rule — "
            + "; ".join(f"{op} in {mod or '<model>'}" for op, mod in unknown[:6])
            + (f" and {len(unknown) - 6} more" if len(unknown) > 6 else "")
            + f". {structures.frozen['share']:.1%} of the parameters are frozen in all "
              f"(see structures.frozen).", FrozenWarning, stacklevel=2)
    return structures


def _bar_disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for ``progress=``: ``None`` lets tqdm hide the bar off a terminal; ranks other
    than 0 of ``torch.distributed`` never show one."""
    if progress is not None and not isinstance(progress, bool):
        raise ValueError(f"progress must be True, False or None, got {progress!r}")
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
        return True
    return None if progress is None else not progress


def _tie_size_arguments(t) -> None:
    """A module attribute passed as a size to several views/splits (``head_dim`` for q, k and v) holds
    one number: the widths that read it keep the same count, so tie them position by position.
    An attribute also used as a number in ``forward`` (``/ math.sqrt(self.head_dim)``) keeps its
    value, so the widths it sizes are frozen."""
    A = t.atoms
    by_tag = defaultdict(list)
    for rec in t.sizes:
        by_tag[rec.tag].append(rec.labels)
    for (mname, attr), arrays in by_tag.items():
        if (mname, attr) in t.value_uses:
            for arr in arrays:
                A.freeze_array(arr, f"{mname}.{attr} is used as a number in forward (a scale), not only as a size")
            continue
        for other in arrays[1:]:
            if len(other) == len(arrays[0]):
                A.unify_arrays(arrays[0], other)
            else:
                A.freeze_array(other, f"{mname}.{attr} sizes widths of different lengths")
                A.freeze_array(arrays[0], f"{mname}.{attr} sizes widths of different lengths")
        t.attrs.append((mname, attr, arrays[0]))


def _light_copy(model: nn.Module, tensor_fn) -> nn.Module:
    """A copy of ``model`` for the probe: new module objects, parameter and buffer dicts and hook
    dicts (and shallow copies of plain dict/list/set attributes: caches); each parameter/buffer
    ``t`` becomes ``tensor_fn(name, t)`` (one object per tied tensor); every other attribute is
    shared with ``model`` (materializing replaces attributes, it does not mutate them). Ten times faster than ``copy.deepcopy`` on Hugging Face models (their configs)."""
    modules, tensors = {}, {}
    names = {id(t): n for n, t in list(model.named_parameters(remove_duplicate=False))
             + list(model.named_buffers(remove_duplicate=False))}

    def tensor(t):
        if t is None:
            return None
        if id(t) not in tensors:
            tensors[id(t)] = tensor_fn(names.get(id(t), ""), t)
        return tensors[id(t)]

    def clone(m: nn.Module) -> nn.Module:
        if id(m) in modules:
            return modules[id(m)]
        new = m.__class__.__new__(m.__class__)
        modules[id(m)] = new
        state = dict(m.__dict__)
        for key, value in state.items():
            if type(value) in (dict, list, set) or "hook" in key and isinstance(value, dict):
                state[key] = type(value)(value)  # hooks, caches: what forward or materialize may mutate
        state["_parameters"] = {k: tensor(v) for k, v in m._parameters.items()}
        state["_buffers"] = {k: tensor(v) for k, v in m._buffers.items()}
        state["_non_persistent_buffers_set"] = set(m._non_persistent_buffers_set)
        state["_modules"] = {k: clone(c) if c is not None else None for k, c in m._modules.items()}
        new.__dict__ = state
        return new

    return clone(model)


def _probe_copy(model: nn.Module) -> nn.Module:
    """Parameters and buffers cloned, the rest shared (see :func:`_light_copy`)."""
    def cloned(name, t):
        new = t.detach().clone()
        return nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new
    return _light_copy(model, cloned)


def _randomized(model: nn.Module, dtype: torch.dtype = torch.float64) -> nn.Module:
    """A copy of ``model`` in ``dtype`` whose parameters are seeded random values of unit-ish scale
    (BatchNorm statistics reset): the probe then depends on the architecture only, and no unit is dead.

    Only module objects and tensors are copied (:func:`_light_copy`), the old values never.
    """
    import zlib

    def random_like(name, t):
        if not t.is_floating_point():
            return t.clone()
        if not isinstance(t, nn.Parameter):
            return t.detach().to(dtype=dtype, copy=True)
        # seeded by name: the same values whatever order the parameters were registered in
        generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        noise = torch.randn(t.shape, generator=generator)  # float32: randn in float64 is 4x slower
        noise = noise.to(dtype)
        if t.dim() > 1:
            noise /= math.sqrt(max(1, t[0].numel()))
        else:
            noise = noise * 0.5 + (1.0 if name.endswith("weight") else 0.0)
        return nn.Parameter(noise.to(t.device), requires_grad=t.requires_grad)

    probe = _light_copy(model, random_like)
    with torch.no_grad():
        for module in probe.modules():  # trained statistics with random weights can kill every unit
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.running_mean is not None:
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
    return probe


def _enclosing_block(model: nn.Module, name: str, cache: dict | None = None) -> str | None:
    if cache is not None:
        if name not in cache:
            cache[name] = _enclosing_block(model, name)
        return cache[name]
    parts = name.split(".") if name else []
    for k in range(len(parts), 0, -1):
        prefix = ".".join(parts[:k])
        if isinstance(model.get_submodule(prefix), PrunableBlock):
            return prefix
    return None


def _tensor_order(model, t) -> list[str]:
    """Labelled tensors in module order, then by name: independent of registration order (a removed
    parametrization re-registers ``weight`` after ``bias``)."""
    module_rank = {n: i for i, (n, _) in enumerate(model.named_modules())}
    keyed = sorted((module_rank.get(n.rsplit(".", 1)[0] if "." in n else "", 0), n) for n, _ in model.named_parameters())
    order = {n: i for i, (_, n) in enumerate(keyed)}
    return sorted(t.labels, key=lambda n: (order.get(n, len(order)), n))


def _slices_by_leaf(t, names) -> tuple[list, dict, dict]:
    """Every labelled tensor dim ``tds[k] = (name, dim)`` and, per base atom (leaf), the tensor dims it
    touches and the indices there (``(td ids, index lists)``), grouped with one lexsort of all
    (leaf, tensor-dim, index) triples; and a sort key per leaf (first tensor dim, first index)."""
    A = t.atoms
    tds: list[tuple[str, int]] = []
    leaf_parts, td_parts, idx_parts = [], [], []
    for name in names:
        for d, arr in enumerate(t.labels[name]):
            m = A.leaf_matrix(arr)
            if not m.any():
                continue
            td = len(tds)
            tds.append((name, d))
            rows = np.arange(m.shape[0])
            for column in m.T:
                keep = column != NONE
                leaf_parts.append(column[keep])
                idx_parts.append(rows[keep])
                td_parts.append(np.full(int(keep.sum()), td, dtype=np.int64))
    per_leaf: dict[int, tuple] = {}
    sort_key: dict[int, tuple] = {}
    if not leaf_parts:
        return tds, per_leaf, sort_key
    L, T, I = np.concatenate(leaf_parts), np.concatenate(td_parts), np.concatenate(idx_parts)
    o = np.lexsort((I, T, L))
    L, T, I = L[o], T[o], I[o]
    cut = np.nonzero((np.diff(L) != 0) | (np.diff(T) != 0))[0] + 1
    starts = np.concatenate([[0], cut]).tolist()
    ends = np.concatenate([cut, [len(L)]]).tolist()
    I_list, T_list = I.tolist(), T[starts].tolist()
    log.debug("structures: %d (leaf, tensor dim) pairs, %d indices", len(starts), len(I_list))
    pair_leaf = L[starts]
    leaf_cut = (np.nonzero(np.diff(pair_leaf))[0] + 1).tolist()
    for p0, p1 in zip([0] + leaf_cut, leaf_cut + [len(starts)]):
        leaf = int(pair_leaf[p0])
        per_leaf[leaf] = (T_list[p0:p1], [I_list[starts[k]:ends[k]] for k in range(p0, p1)])
        sort_key[leaf] = (T_list[p0], I_list[starts[p0]])
    return tds, per_leaf, sort_key


def _make_structures(model, t, tds, per_leaf, sort_key) -> tuple[list, list, list]:
    """One structure per leaf that a parameter slice produces (others are frozen); groups are the
    leaves touching the same tensor dims. Returns ``(items, groups, leaf of each structure)``."""
    A = t.atoms
    # per tensor-dim, computed once: does it produce (a parameter dim no consumer contracts), its module
    td_produces = [bool(t.is_param.get(n)) and (n, d) not in t.contracted for n, d in tds]
    td_module = [n.rsplit(".", 1)[0] if "." in n else "" for n, _ in tds]
    items: list[Structure] = []
    groups: dict[tuple, GroupInfo] = {}
    group_list: list[GroupInfo] = []
    leaf_by_sid: list[int] = []
    block_cache: dict = {}
    for leaf in sorted(per_leaf, key=sort_key.__getitem__):
        td_list, idx_lists = per_leaf[leaf]
        producers = [(*tds[td], ix) for td, ix in zip(td_list, idx_lists) if td_produces[td]]
        if not producers:
            A.freeze(leaf, "no parameter produces it")
            continue
        consumers = [(*tds[td], ix) for td, ix in zip(td_list, idx_lists) if not td_produces[td]]
        key = tuple(td_list)  # the tensor dims it touches, in sorted order (one pair per dim)
        layer = producers[0][0].rsplit(".", 1)[0] if "." in producers[0][0] else ""
        kind = A.kind_of(leaf)
        block = _enclosing_block(model, layer, block_cache)
        if block is not None:  # prunekit's own graph layers name their units after the block
            layer, kind = block, ("unit" if kind == "channel" else kind)
        if key not in groups:
            groups[key] = GroupInfo(id=len(group_list), kind=kind, root=layer, size=0)
            group_list.append(groups[key])
        g = groups[key]
        sid = len(items)
        modules = sorted({td_module[td] for td in td_list})
        items.append(Structure(id=sid, layer=layer, kind=kind, slices=producers, group=g.id,
                               consumers=consumers, meta={"index": g.size, "modules": modules}))
        leaf_by_sid.append(leaf)
        g.members.append(sid)
        g.size += 1
    return items, group_list, leaf_by_sid


def _closure_maker(A, leaf_by_sid):
    """``closure(atoms)`` → :class:`_Closure` of the structure ids removing each index (cached)."""
    cache: dict[bytes, _Closure] = {}
    sid_lookup = np.full(A.size + 1, -1, dtype=np.int64)
    sid_lookup[np.asarray(leaf_by_sid, dtype=np.int64)] = np.arange(len(leaf_by_sid))
    sid_lookup[NONE] = -1

    def closure(arr) -> _Closure:
        r = A.roots(arr)
        key = r.tobytes()
        if key not in cache:
            m = sid_lookup[A.leaf_matrix(r)]
            m = m[:, (m >= 0).any(axis=0)] if m.size else m.reshape(len(r), 0)
            cache[key] = _Closure(np.ascontiguousarray(m))
        return cache[key]
    return closure


def _layer_rows(t, items, all_tensors) -> tuple[dict, list]:
    """For the collapse guard: producing weight dims (tensors of ≥ 2 dims) and the indices each
    structure removes there."""
    layer_closures, layer_rows = {}, [[] for _ in items]
    for s_ in items:
        for n, d, _ in s_.slices:
            if len(t.shapes[n]) >= 2 and f"{n}:{d}" not in layer_closures:
                layer_closures[f"{n}:{d}"] = all_tensors[n][d]
    for (n, d), blocks in t.segments.items():  # a packed weight (q/k/v rows): each block is a layer
        whole = layer_closures.pop(f"{n}:{d}", None)
        if whole is not None:
            for start, stop in sorted(blocks):
                layer_closures[f"{n}:{d}:{start}"] = _Closure(np.ascontiguousarray(whole.matrix[start:stop]))
    for key, c in layer_closures.items():
        rows, cols = np.nonzero(c.matrix >= 0)
        sids = c.matrix[rows, cols]
        o = np.lexsort((rows, sids))
        sids, rows = sids[o], rows[o]
        cut = np.nonzero(np.diff(sids))[0] + 1
        for part_s, part_r in zip(np.split(sids, cut), np.split(rows, cut)):
            if len(part_s):
                layer_rows[int(part_s[0])].append((key, part_r))
    return layer_closures, layer_rows


def _frozen_report(model, t, tensors) -> dict:
    """The share of parameters that no structure touches, and the ops without a rule."""
    from .measure import count_params
    total = max(count_params(model), 1)
    prunable = 0
    for name, cl in tensors.items():
        untouched = math.prod(c.n - int((c.matrix >= 0).any(axis=1).sum()) if c.matrix.shape[1] else c.n for c in cl)
        prunable += math.prod(t.shapes[name]) - untouched
    unknown = sorted(t.unknown, key=lambda k: (-t.unknown[k], k))
    return {"share": 1.0 - prunable / total, "prunable_params": prunable, "total_params": total, "unknown": unknown}


def _build(model, t, example_inputs, ignored, extra_frozen) -> Structures:
    """Structures, groups, the exact cost model and what materialize needs, from one trace."""
    from .measure import count_params
    A = t.atoms
    for root in extra_frozen:
        A.freeze(root, "removing it broke the forward (probe)")
    names = _tensor_order(model, t)
    tds, per_leaf, sort_key = _slices_by_leaf(t, names)
    items, group_list, leaf_by_sid = _make_structures(model, t, tds, per_leaf, sort_key)
    closure = _closure_maker(A, leaf_by_sid)
    all_tensors = {name: [closure(arr) for arr in t.labels[name]] for name in names}
    tensors = {name: cl for name, cl in all_tensors.items() if t.is_param.get(name)}
    terms = [(const, [closure(a) for a in arrays]) for const, arrays in t.mac_terms]
    constant = (count_params(model) - sum(math.prod(t.shapes[n]) for n in tensors), 0)
    layer_closures, layer_rows = _layer_rows(t, items, all_tensors)
    attr_closures = {(mname, attr): closure(arr) for mname, attr, arr in t.attrs}
    norms, rms_norms = {}, {}
    for mname, arr in t.norms:
        norms.setdefault(mname, closure(arr))
    for mname, arr in t.rms_norms:
        rms_norms.setdefault(mname, closure(arr))
    plan_data = {"norms": norms, "rms_norms": rms_norms, "caches": list(t.caches), "all_tensors": all_tensors,
                 "owners": t.owners, "attrs": list(attr_closures), "attr_closures": attr_closures,
                 "layer_closures": layer_closures, "layer_rows": layer_rows, "leaves": leaf_by_sid}
    modelled = sum(c * math.prod(x.n for x in cl) for c, cl in terms)
    if modelled != t.mac_formula_total:
        log.warning("MAC terms (%d) differ from the counted MACs (%d)", modelled, t.mac_formula_total)
    return Structures(items, group_list, tensors, terms, constant, input_spec_of(example_inputs),
                      type(model).__name__, _frozen_report(model, t, tensors), ignored, plan_data)


def _probe(model, t, example_inputs, ignored, structures, extra_frozen, disable: bool | None = True) -> Structures:
    """Remove a few structures of every group at once; bisect and freeze the groups whose removal fails.

    The probe runs on a copy with seeded random weights and inputs rebuilt from the
    input spec, so the structures depend on the architecture only, never on the weights.
    """
    from .materialize import MaterializeError, _materialize_checked, _to_double
    from .measure import count_params
    key = _probe_key(model, example_inputs, ignored, structures)
    if key in _PROBE_CACHE:
        bad = _PROBE_CACHE[key]
        if not bad:
            return structures
        return _refreeze(model, t, example_inputs, ignored, structures, extra_frozen, bad)
    each = len([g for g in structures.groups if len(g.members) > 1]) * count_params(model) <= PROBE_EACH_BUDGET
    # in float32 (float32 noise on ViT-S / BERT / ResNet-50: 0.7-4e-7 of the output scale, under the
    # tolerance); a difference above the tolerance is decided again in float64
    probe_model = _randomized(model, torch.float32)
    inputs = inputs_from_spec(input_spec_of(example_inputs), probe_model)

    def check(target, removed, inplace) -> bool:
        try:
            _materialize_checked(target, structures, removed, inputs, tolerance=PROBE_TOLERANCE, inplace=inplace,
                                 copy_fn=_probe_copy)  # (not inplace: its own float64 recheck)
        except MaterializeError:
            if not inplace:
                return True
            try:  # the float32 copy was consumed: decide again on a float64 one
                copy64 = _randomized(model, torch.float64)
                _materialize_checked(copy64, structures, removed, _to_double(inputs), tolerance=PROBE_TOLERANCE,
                                     inplace=True)
            except MaterializeError:
                return True
        return False

    def fails(group_ids, last: bool = False) -> bool:
        # group g loses 1, 2 or 3 members (g mod 3): two widths the code silently needs equal
        # (one sized from the other's shape) then differ, so the probe sees it
        nonlocal probe_model
        checker = structures.collapse_checker()
        removed = [sid for g in group_ids for sid in structures.groups[g].members[::-1][:1 + g % 3]
                   if checker.admit(sid)]
        target = probe_model if probe_model is not None else _randomized(model, torch.float32)
        probe_model = None if last else target  # the last use masks and slices the copy itself
        return check(target, removed, last)

    candidates = [g.id for g in structures.groups if len(g.members) > 1]
    bad: list[int] = []

    def search(ids, last=False):
        if not ids or not fails(ids, last):
            return
        if len(ids) == 1:
            bad.append(ids[0])
            return
        mid = len(ids) // 2
        search(ids[:mid])
        search(ids[mid:])

    if each:
        # small enough to probe every group alone: removals in other groups cannot hide a failure
        alone = tqdm(candidates, desc="probe", unit="group", leave=False, disable=disable, dynamic_ncols=True)
        bad.extend(g for g in alone if fails([g]))
        search([g for g in candidates if g not in bad])  # and the survivors together
    else:
        search(candidates, last=True)  # one pass when nothing fails; a bisection re-randomizes
    _PROBE_CACHE[key] = list(bad)
    if not bad:
        return structures
    return _refreeze(model, t, example_inputs, ignored, structures, extra_frozen, bad)


#: probe outcomes by architecture, input spec and ignore (the probe depends on nothing else)
_PROBE_CACHE: dict[str, list[int]] = {}


def _probe_key(model, example_inputs, ignored, structures) -> str:
    tensors = [(n, tuple(p.shape), str(p.dtype)) for n, p in model.named_parameters()]
    tensors += [(n, tuple(b.shape), str(b.dtype)) for n, b in model.named_buffers()]
    text = json.dumps([type(model).__module__ + "." + type(model).__qualname__, tensors,
                       [type(m).__qualname__ for m in model.modules()], input_spec_of(example_inputs),
                       sorted(ignored), len(structures),
                       [(g.root, g.kind, g.size) for g in structures.groups]], default=str)  # not signature(): 0.4 s
    return hashlib.sha256(text.encode()).hexdigest()


def _refreeze(model, t, example_inputs, ignored, structures, extra_frozen, bad) -> Structures:
    leaves = structures._plan_data["leaves"]
    roots = {leaves[sid] for g in bad for sid in structures.groups[g].members}
    log.info("probe froze %d groups of %s", len(bad), type(model).__name__)
    extra_frozen |= roots
    rebuilt = _build(model, t, example_inputs, ignored, extra_frozen)
    rebuilt.frozen["probe"] = [f"{structures.groups[g].root}:{structures.groups[g].kind}" for g in bad]
    return rebuilt

