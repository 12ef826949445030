"""What CTF and its baselines share: the prunable weights, their layouts and costs, and masks → plan.

* :func:`prunable_weights` – every ``weight`` parameter of dimension ≥ 2 except the
  classifier's (the module whose output *is* the model output, else the last
  ``nn.Linear``) and anything in ``exclude``.
* :func:`weight_layouts` – ``K`` (blocks) per weight, from the :class:`PrunableBlock`
  that owns it: heads (``internal_structures``) or adjacency subsets
  (``out_channel_slices``); 1 for a plain layer.
* :func:`entry_costs` – the budget cost of one entry of each weight: 1 (parameters) or
  its MACs per sample (output positions of a convolution, tokens of a linear layer).
* :func:`fix_to_budget` – the rank fix that makes a binary mask keep exactly the
  target cost (within one entry, or one group for structured-only masks).
* :func:`plan_from_masks` – multiply the masks in, find the structures whose weight
  slices are all zero, remove them (with the layer-collapse guard) and return a
  :class:`~prunekit.core.plan.PruningPlan` whose ``entry_masks`` hold the remaining zeros.

Example:
    >>> import torch, prunekit
    >>> model = prunekit.models.create("attention_gcn", channels=(8, 16))
    >>> names, classifier = prunable_weights(model, prunekit.models.example_inputs(model))
    >>> classifier, "blocks.0.gcn.value.weight" in names
    ('fc', True)
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import nn

from ..core.blocks import PrunableBlock
from ..core.plan import PruningPlan, collapse_guard
from ..core.structures import Structures, find_structures

__all__ = ["output_is_constant", "prunable_weights", "weight_layouts", "head_ties", "entry_costs", "fix_to_budget",
           "plan_from_masks", "resolve_example_inputs", "count_kept", "FrozenZeros"]


def resolve_example_inputs(model: nn.Module, example_inputs=None):
    """``example_inputs`` or, for a model built by :func:`prunekit.models.create`, its example batch."""
    if example_inputs is not None:
        return example_inputs
    from ..models import example_inputs as registry_inputs

    try:
        return registry_inputs(model, batch=2)
    except ValueError as error:
        raise ValueError("CTF needs example_inputs (a batch the model accepts) to find the classifier, "
                         f"the MACs and the structures: {error}") from error


def _call(model: nn.Module, inputs):
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


@torch.no_grad()
def output_is_constant(model: nn.Module, inputs) -> bool | None:
    """Whether ``model``'s output is the same for every example of ``inputs``: no path from the input is left.

    Evaluated in eval mode (the training state is restored). ``None`` when it cannot tell:
    fewer than two distinct examples in the first input tensor, or no floating output with
    one row per example.

    Example:
        >>> import torch
        >>> m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
        >>> x = torch.randn(2, 3)
        >>> output_is_constant(m, x)
        False
        >>> _ = m[0].weight.data.zero_()
        >>> output_is_constant(m, x)
        True
    """
    from ..criteria._common import _first_tensor

    first = _first_tensor(inputs)
    if first is None or first.dim() == 0 or first.shape[0] < 2 or bool((first == first[:1]).all()):
        return None
    was_training = model.training
    try:
        out = _first_tensor(_call(model.eval(), inputs))
    finally:
        model.train(was_training)
    if out is None or not out.is_floating_point() or out.dim() == 0 or out.shape[0] != first.shape[0]:
        return None
    return bool(torch.allclose(out, out[:1].expand_as(out), rtol=1e-6, atol=1e-9))


def _weight_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{parameter name: module}`` for every module's own ``weight`` of dimension ≥ 2.

    A weight shared by several modules (tied embeddings) is listed once, under its first
    name; a weight another parametrization already owns (weight norm) is left to it,
    unless that parametrization is CTF's own mask.
    """
    found, seen = {}, set()
    for mname, module in model.named_modules():
        weight = module._parameters.get("weight") if hasattr(module, "_parameters") else None
        if weight is None and hasattr(module, "parametrizations") and "weight" in module.parametrizations:
            plist = module.parametrizations["weight"]
            if not hasattr(plist, "original") or not all(type(p).__name__ == "CTFMask" for p in plist):
                continue  # e.g. weight norm (original0 / original1): not CTF's to mask
            weight = plist.original
        if isinstance(weight, torch.Tensor) and weight.dim() >= 2 and id(weight) not in seen:
            seen.add(id(weight))
            found[f"{mname}.weight" if mname else "weight"] = module
    return found


def _trace(model: nn.Module, example_inputs, modules: Iterable[nn.Module]):
    """Run one forward; return (model output, {module: (input shape, output, call order)})."""
    record: dict = {}
    hooks = []
    for module in set(modules):
        def hook(mod, args, output, _record=record):
            first = args[0] if args else None
            _record.setdefault(mod, (tuple(first.shape) if torch.is_tensor(first) else None, output, len(_record)))
        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = _call(model, example_inputs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return output, record


def _find_classifier(model: nn.Module, example_inputs, weights: dict[str, nn.Module]) -> str | None:
    """The module whose output is the model's output (traced on ``example_inputs``), else the last ``nn.Linear``.

    When the traced output comes from no weight module and the model has no ``nn.Linear``,
    the last weight module called is the classifier.
    """
    names = {m: n for n, m in model.named_modules()}
    if example_inputs is not None:
        output, record = _trace(model, example_inputs, weights.values())
        last = [m for m, (_, out, _) in record.items() if out is output]  # an outer module's comes last
        if last:
            return names[last[-1]]
        if record and not any(isinstance(m, nn.Linear) for m in record):
            return names[max(record, key=lambda m: record[m][2])]
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _excluded(model: nn.Module, exclude: Sequence, weights: dict[str, nn.Module]) -> tuple[set[int], set[str]]:
    """``(ids of excluded modules, excluded parameter names)`` from names, parameter names or modules."""
    excluded_modules, excluded_params = set(), set()
    modules = dict(model.named_modules())
    for item in exclude or ():
        if isinstance(item, nn.Module):
            excluded_modules.update(id(m) for m in item.modules())
        elif item in weights:
            excluded_params.add(item)
        elif item in modules:
            excluded_modules.update(id(m) for m in modules[item].modules())
        else:
            raise ValueError(f"exclude: {item!r} is neither a module nor a weight of {type(model).__name__}")
    return excluded_modules, excluded_params


def prunable_weights(model: nn.Module, example_inputs=None, exclude: Sequence = (),
                     params: Sequence[str] | None = None) -> tuple[list[str], str | None]:
    """The weights CTF masks, and the classifier module left out.

    Args:
        model: any module.
        example_inputs: one batch; used to find the classifier as the module whose output
            is the model's output (without it, or if none is: the last ``nn.Linear``).
        exclude: module names, parameter names or modules to leave dense as well.
        params: explicit parameter names to mask instead of the default selection.

    Returns:
        ``(names, classifier_name)`` in ``named_parameters`` order.
    """
    weights = _weight_modules(model)
    if params is not None:
        missing = [p for p in params if p not in weights]
        if missing:
            raise ValueError(f"params {missing}: not the weight (dim ≥ 2) of any module of {type(model).__name__}")
        return [p for p in weights if p in set(params)], None
    classifier = _find_classifier(model, example_inputs, weights)
    excluded_modules, excluded_params = _excluded(model, exclude, weights)
    selected = []
    for pname, module in weights.items():
        mname = pname.rsplit(".", 1)[0] if "." in pname else ""
        if mname == classifier or pname in excluded_params or id(module) in excluded_modules:
            continue
        selected.append(pname)
    return selected, classifier


def _owner_block(model: nn.Module, pname: str) -> tuple[str, PrunableBlock] | None:
    """The innermost :class:`PrunableBlock` holding parameter ``pname``, with its name."""
    parts = pname.split(".")[:-1]
    found = None
    module = model
    for i, part in enumerate(parts):
        module = getattr(module, part)
        if isinstance(module, PrunableBlock):
            found = (".".join(parts[: i + 1]), module)
    return found


def _weight_shape(model: nn.Module, pname: str) -> tuple[int, ...]:
    module = model.get_submodule(pname.rsplit(".", 1)[0]) if "." in pname else model
    if hasattr(module, "parametrizations") and "weight" in module.parametrizations:
        return tuple(module.parametrizations["weight"].original.shape)
    return tuple(module.weight.shape)


def _layouts_from_structures(structures: Structures | None) -> dict[str, tuple[int, str]]:
    """Weights whose dim-0 rows the analysis splits into equal contiguous blocks of ``head`` structures
    (attention heads, key/value groups, adjacency subsets): ``{name: (K, "group<g>")}``."""
    if structures is None:
        return {}
    blocks: dict[tuple[str, int], list] = {}
    for s in structures:
        if s.kind != "head":
            continue
        for n, d, idxs in s.slices:
            if d == 0:
                blocks.setdefault((n, s.group), []).append(idxs)
    out = {}
    for (name, group), rows in blocks.items():
        rows = sorted(rows)
        size = len(rows[0])
        if len(rows) >= 2 and all(r == list(range(k * size, (k + 1) * size)) for k, r in enumerate(rows)):
            out[name] = (len(rows), f"group{group}")
    return out


def weight_layouts(model: nn.Module, names: Sequence[str],
                   structures: Structures | None = None) -> dict[str, tuple[int, str | None]]:
    """``{name: (K, tie)}``: the number of blocks of each weight and its head-tie key.

    A weight whose dim-0 rows the owning block partitions, by ``internal_structures()``,
    into equal contiguous slices (attention heads) gets ``K`` = number of units and
    ``tie`` = the block's name; a weight whose output unit ``c`` owns rows ``{k·Cc + c}``
    in ``out_channel_slices`` (graph-convolution subsets) gets ``K`` = rows per unit.
    Any other weight whose rows the structure analysis splits into ``K`` contiguous
    ``head`` structures (a user's attention heads or graph subsets) gets that ``K`` and
    the heads' group as tie; anything else ``K = 1``.
    """
    found = _layouts_from_structures(structures)
    layouts = {}
    for pname in names:
        shape = _weight_shape(model, pname)
        owner = _owner_block(model, pname)
        k, tie = 1, None
        if owner is not None:
            bname, block = owner
            rel = pname[len(bname) + 1:]
            units = block.internal_structures()
            rows = [next((list(i) for n, d, i in unit if n == rel and d == 0), None) for unit in units]
            if len(units) >= 2 and all(r is not None for r in rows):
                size = len(rows[0])
                if size * len(units) == shape[0] and all(r == list(range(h * size, (h + 1) * size))
                                                         for h, r in enumerate(rows)):
                    k, tie = len(units), bname
            if k == 1:
                first = next((list(i) for n, d, i in block.out_channel_slices([0]) if n == rel and d == 0), None)
                if first and len(first) > 1 and shape[0] % len(first) == 0:
                    width = shape[0] // len(first)
                    second = next((list(i) for n, d, i in block.out_channel_slices([1]) if n == rel and d == 0), None) \
                        if width > 1 else None
                    if first == [b * width for b in range(len(first))] and \
                            (second is None or second == [b * width + 1 for b in range(len(first))]):
                        k = len(first)
        if owner is None and pname in found:
            k, tie = found[pname]
        layouts[pname] = (k, tie)
    return layouts


def head_ties(layouts: dict) -> dict[str, list[str]]:
    """``{tie key: [weight names]}`` for the tie keys shared by at least one weight."""
    ties: dict[str, list[str]] = {}
    for pname, (_, tie) in layouts.items():
        if tie is not None:
            ties.setdefault(tie, []).append(pname)
    return ties


def entry_costs(model: nn.Module, names: Sequence[str], example_inputs=None, cost: str = "params") -> dict[str, float]:
    """Budget cost of one entry of each weight: ``1`` or its MACs per sample.

    A convolution weight entry is used once per output position (``H_out·W_out``); a
    linear weight entry once per token (input elements / in_features); other modules
    count 1. Graph aggregations (einsum with the adjacency) are not weight entries and
    are not counted.
    """
    if cost == "params":
        return {n: 1.0 for n in names}
    if cost != "macs":
        raise ValueError(f"cost must be 'params' or 'macs', got {cost!r}")
    if example_inputs is None:
        raise ValueError("cost='macs' needs example_inputs")
    modules = {n: (model.get_submodule(n.rsplit(".", 1)[0]) if "." in n else model) for n in names}
    _, record = _trace(model, example_inputs, modules.values())
    costs = {}
    for pname, module in modules.items():
        if module not in record:
            raise ValueError(f"cost='macs': {pname} is not used in the forward pass of the example inputs")
        in_shape, out, _ = record[module]
        batch = in_shape[0] if in_shape else 1
        if isinstance(module, nn.modules.conv._ConvNd):
            costs[pname] = float(out.numel() // (batch * out.shape[1]))
        elif isinstance(module, nn.Linear):
            costs[pname] = float(math.prod(in_shape) // (batch * module.in_features))
        else:
            costs[pname] = 1.0
    return costs


def count_kept(model: nn.Module, names: Sequence[str], costs: dict | None = None) -> tuple[float, float]:
    """``(kept, total)``: the (cost-weighted) count of nonzero entries of ``names``."""
    params = dict(model.named_parameters())
    kept = total = 0.0
    for n in names:
        w = params[n]
        c = 1.0 if costs is None else costs[n]
        kept += c * int((w != 0).sum())
        total += c * w.numel()
    return kept, total


def fix_to_budget(masks: dict[str, torch.Tensor], scores: dict[str, torch.Tensor], costs: dict[str, float],
                  keep: float, groups: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Adjust binary keep-masks so that their kept cost meets ``keep``.

    Too much kept: the kept units with the lowest score are dropped, fewest first, until
    at most ``keep`` is kept. Too little: the pruned units with the highest score are
    revived while at most ``keep`` is kept. A unit is an entry, or, with ``groups``
    (``{name: long tensor of group ids in the weight's shape}``), a group of entries
    scored by its mean score (so structured-only masks stay structured): a group is kept
    when any entry is, dropping it zeroes it, reviving it restores it whole, and the last
    kept group of a weight is never dropped (the rate may then stay out of reach).

    With entry units the result is within one entry's cost of ``keep`` (exact when
    counting parameters and ``keep`` is an integer); with groups, within one group.

    Example:
        >>> m = {"w": torch.tensor([True, True, False, False])}
        >>> s = {"w": torch.tensor([0.1, 0.9, 0.5, 0.2])}
        >>> fix_to_budget(m, s, {"w": 1.0}, keep=3)["w"].tolist()
        [True, True, True, False]
        >>> fix_to_budget(m, s, {"w": 1.0}, keep=1)["w"].tolist()
        [False, True, False, False]
    """
    units_score, units_kept, units_drop, units_add, layout = [], [], [], [], []
    for n, m in masks.items():
        m = m.flatten().bool()
        s = scores[n].flatten().double()
        c = float(costs[n])
        if groups is None:
            units_score.append(s)
            units_kept.append(m)
            units_drop.append(torch.full_like(s, c))
            units_add.append(torch.full_like(s, c))
            layout.append((n, None, m.numel()))
        else:
            g = groups[n].flatten().long()
            ng = int(g.max()) + 1 if g.numel() else 0
            size = torch.bincount(g, minlength=ng).double()
            kept_count = torch.zeros(ng, dtype=torch.float64).index_add_(0, g, m.double())
            units_score.append(torch.zeros(ng, dtype=torch.float64).index_add_(0, g, s) / size.clamp(min=1))
            units_kept.append(kept_count > 0)
            units_drop.append(kept_count * c)
            units_add.append(size * c)
            layout.append((n, g, ng))
    score, kept = torch.cat(units_score), torch.cat(units_kept)
    drop_cost, add_cost = torch.cat(units_drop), torch.cat(units_add)
    current = float(sum(float(costs[n]) * float(m.sum()) for n, m in masks.items()))
    drop = torch.zeros_like(kept)
    add = torch.zeros_like(kept)
    if current > keep:
        idx = torch.nonzero(kept).flatten()
        order = idx[torch.argsort(score[idx], stable=True)]
        if groups is None:
            cum = torch.cumsum(drop_cost[order], 0)
            n_drop = min(int((cum < current - keep - 1e-9).sum()) + 1, len(order))
            drop[order[:n_drop]] = True
        else:  # whole groups, never the last kept group of a weight (no layer collapse)
            owner = torch.cat([torch.full((count,), i) for i, (_, _, count) in enumerate(layout)])
            left = torch.zeros(len(layout), dtype=torch.long).index_add_(0, owner, kept.long()).tolist()
            total = current
            for u in order.tolist():
                if total <= keep + 1e-9:
                    break
                if left[int(owner[u])] > 1:
                    left[int(owner[u])] -= 1
                    drop[u] = True
                    total -= float(drop_cost[u])
    elif current < keep:
        idx = torch.nonzero(~kept).flatten()
        order = idx[torch.argsort(-score[idx], stable=True)]
        cum = torch.cumsum(add_cost[order], 0)
        n_add = int((cum <= keep - current + 1e-9).sum())
        add[order[:n_add]] = True
    out, offset = {}, 0
    for n, g, count in layout:
        d, a = drop[offset: offset + count], add[offset: offset + count]
        offset += count
        m = masks[n].flatten().bool().clone()
        if g is not None:
            d, a = d[g], a[g]
        m[d] = False
        m[a] = True
        out[n] = m.view(masks[n].shape)
    return out


def _removable(structures: Structures, params: dict[str, torch.Tensor], weight_names: set[str]) -> list[int]:
    """Structures whose slices in weights (dim ≥ 2) are all exactly zero, within the collapse guard."""
    candidates = []
    for s in structures:
        weight_slices = [(n, d, i) for n, d, i in s.slices if n in weight_names]
        if not weight_slices:
            continue
        if all(not bool(params[n].detach().index_select(d, torch.as_tensor(i, dtype=torch.long)).any())
               for n, d, i in weight_slices):
            candidates.append(s.id)
    return collapse_guard(structures, candidates)  # id order; keeps the last member of a group or layer


def plan_from_masks(model: nn.Module, masks: dict[str, torch.Tensor], example_inputs, *, method: str = "",
                    budget: dict | None = None, meta: dict | None = None,
                    structures: Structures | None = None) -> PruningPlan:
    """Apply binary keep-masks to ``model`` in place and split them into a structured and an entry part.

    1. ``W ← W ⊙ M`` for every masked weight.
    2. A structure (from :func:`prunekit.find_structures`) is removed when every slice it
       has in a weight of dimension ≥ 2 is exactly zero — an output channel / unit whose
       column is zero, a head whose query, key and value rows are — keeping at least one
       structure per group and per layer (the collapse guard).
    3. The removed structures' other slices (biases, BatchNorm affine, a head's graph)
       are zeroed too, so the model equals ``apply_masks(model, plan)`` and
       ``materialize(model, plan)`` computes the same outputs.
    4. ``entry_masks`` keep the zeros outside removed structures.
    """
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].dtype))
    if structures is None:
        structures = find_structures(model, example_inputs)
    weight_names = set(_weight_modules(model))
    removed = _removable(structures, params, weight_names)
    covered = {n: torch.zeros(params[n].shape, dtype=torch.bool) for n in masks}
    with torch.no_grad():
        for sid in removed:
            for name, dim, idxs in structures[sid].slices:
                index = torch.as_tensor(idxs, dtype=torch.long)
                params[name].index_fill_(dim, index.to(params[name].device), 0.0)
                if name in covered:
                    covered[name].index_fill_(dim, index, True)
    entry_masks = {}
    for name, mask in masks.items():
        remaining = mask.cpu().bool() | covered[name]
        if not bool(remaining.all()):
            entry_masks[name] = remaining
    plan = PruningPlan.from_removed(structures, removed, budget=budget, method=method, entry_masks=entry_masks)
    plan.meta.update(meta or {})
    return plan


class _KeepMask(nn.Module):
    """Parametrization ``W ↦ W ⊙ M`` with a fixed binary ``M`` (zeros stay zero and get no gradient)."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


class FrozenZeros:
    """Keep the current zeros of weights at zero during fine-tuning; :meth:`remove` when done.

    Attaches ``W ↦ W ⊙ 1[W ≠ 0]`` to each weight (default: every ``weight`` of dimension ≥ 2
    that has a zero), so the optimizer cannot regrow pruned entries.

    Example:
        >>> lin = torch.nn.Linear(3, 2)
        >>> with torch.no_grad(): lin.weight[0, 0] = 0.0
        >>> frozen = FrozenZeros(lin)
        >>> lin.weight.sum().backward()
        >>> float(lin.parametrizations.weight.original.grad[0, 0])
        0.0
        >>> frozen.remove(); float(lin.weight[0, 0].detach())
        0.0
    """

    def __init__(self, model: nn.Module, names: Sequence[str] | None = None):
        from torch.nn.utils import parametrize

        self.model = model
        weights = _weight_modules(model)
        params = dict(model.named_parameters())
        chosen = list(names) if names is not None else [n for n in weights if not bool(params[n].all())]
        self.names = []
        for n in chosen:
            keep = (params[n].detach() != 0)
            parametrize.register_parametrization(weights[n], "weight", _KeepMask(keep.to(params[n].dtype)))
            self.names.append(n)
        self._modules = {n: weights[n] for n in self.names}

    def remove(self) -> None:
        from torch.nn.utils import parametrize

        for module in self._modules.values():
            if parametrize.is_parametrized(module, "weight"):
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        self._modules = {}
