"""Find the prunable structures of any ``nn.Module``, and what each one costs.

Discovery is built on Torch-Pruning's ``DependencyGraph`` (it traces the autograd
graph and couples channels tied by residual adds, concatenations, BatchNorm and
depthwise convolutions), plus prunekit's own rules:

* modules deriving from :class:`prunekit.models.layers.PrunableBlock` (graph
  convolutions, multi-head graph attention, or a user's custom layer) are pruned by
  their own methods, registered as Torch-Pruning customized pruners — the view into
  ``K`` adjacency subsets and the einsum with the adjacency stay inside the block;
* their internal units (attention heads) become structures of their own;
* channels that reach the model output (the classifier's logits) are never structures.

Every structure carries ``slices`` (zeroing them zeroes its output), ``params`` and
``macs`` (what removing it alone saves). :meth:`Structures.cost` gives the exact
parameter and MAC count of the model with any set of structures removed, from a cost
model per layer (a product of kept input and output widths), so budgets are met
exactly without materializing.

Example:
    >>> import torch, prunekit
    >>> model = prunekit.models.create("resnet20")
    >>> structures = prunekit.find_structures(model, torch.randn(1, 3, 32, 32))
    >>> len(structures) > 0, structures[0].slices[0][1]
    (True, 0)
"""
from __future__ import annotations

import hashlib
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
import torch_pruning as tp
from torch import nn

from .measure import call_model
from .models.layers import PrunableBlock
from .structure_types import SliceSpec, Structure

__all__ = ["Structure", "Structures", "find_structures", "UnsupportedModelError", "input_spec_of", "inputs_from_spec"]


class UnsupportedModelError(RuntimeError):
    """The analysis met an op or layer it cannot prune; the message names it and the escape hatches."""


ESCAPE_HATCHES = (
    "Escape hatches: pass ignore=[module or 'module.name'] to find_structures to leave it untouched, "
    "or make the layer a prunekit.models.layers.PrunableBlock (implement prune_out_channels, "
    "prune_in_channels, out_channel_slices, cost) so prunekit prunes it by your rule."
)


# --------------------------------------------------------------------------- inputs


def input_spec_of(example_inputs) -> list[dict]:
    """Shapes and dtypes of example inputs, JSON-serialisable (to rebuild them later)."""
    tensors = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    return [{"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")} for t in tensors]


def inputs_from_spec(spec: Sequence[dict], model: nn.Module | None = None):
    """Deterministic example inputs rebuilt from :func:`input_spec_of` (structure tracing needs shapes only).

    Floating inputs take the dtype and device of ``model``'s parameters when it is given.
    """
    generator = torch.Generator().manual_seed(0)
    reference = next((p for p in model.parameters() if p.is_floating_point()), None) if model is not None else None
    tensors = []
    for item in spec:
        dtype = getattr(torch, item["dtype"])
        if dtype.is_floating_point:
            if reference is not None:
                tensors.append(torch.randn(item["shape"], generator=generator, dtype=reference.dtype).to(reference.device))
                continue
            tensors.append(torch.randn(item["shape"], generator=generator, dtype=dtype))
        else:
            tensors.append(torch.zeros(item["shape"], dtype=dtype))
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


# ---------------------------------------------------------------- Torch-Pruning rules


class _BlockPruner(tp.pruner.BasePruningFunc):
    """Torch-Pruning customized pruner that delegates to a :class:`PrunableBlock`'s own methods."""

    TARGET_MODULES = PrunableBlock

    def prune_out_channels(self, layer, idxs):
        layer.prune_out_channels(sorted(int(i) for i in idxs))
        return layer

    def prune_in_channels(self, layer, idxs):
        layer.prune_in_channels(sorted(int(i) for i in idxs))
        return layer

    def get_out_channels(self, layer):
        return layer.out_channels

    def get_in_channels(self, layer):
        return layer.in_channels


_BLOCK_PRUNER = _BlockPruner()


def build_dependency_graph(model: nn.Module, example_inputs) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph with prunekit's rules registered for every PrunableBlock type."""
    block_types = {type(m) for m in model.modules() if isinstance(m, PrunableBlock)}
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():  # the tracer follows autograd; callers may be under no_grad
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example_inputs, customized_pruners={t: _BLOCK_PRUNER for t in block_types}
            )
    except Exception as error:  # Torch-Pruning raises bare errors from deep inside tracing
        raise UnsupportedModelError(
            f"Torch-Pruning could not trace {type(model).__name__}: {type(error).__name__}: {error}. "
            + ESCAPE_HATCHES
        ) from error
    finally:
        model.train(was_training)
    return graph


# ----------------------------------------------------------------------- cost model

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


@dataclass
class _LayerCost:
    """Exact parameter/MAC count of one layer as a function of its kept widths."""

    name: str
    kind: str  # conv | depthwise | linear | norm | block | other
    out_total: int = 0
    in_total: int = 0
    internal_total: int = 0
    params_full: int = 0
    macs_full: int = 0
    geometry: dict = field(default_factory=dict)
    module: nn.Module | None = None

    def evaluate(self, out_kept: int, in_kept: int, internal_kept: int) -> tuple[int, int]:
        g = self.geometry
        if self.kind == "conv":
            weight = out_kept * (in_kept // g["groups"]) * g["kernel"]
            return weight + (out_kept if g["bias"] else 0), weight * g["positions"]
        if self.kind == "depthwise":
            kept = min(out_kept, in_kept)
            weight = kept * g["kernel"] * g["multiplier"]
            return weight + (kept * g["multiplier"] if g["bias"] else 0), weight * g["positions"]
        if self.kind == "linear":
            weight = out_kept * in_kept
            return weight + (out_kept if g["bias"] else 0), weight * g["tokens"]
        if self.kind == "norm":
            return g["per_channel"] * out_kept, 0
        if self.kind == "block":
            return self.module.cost(in_kept, out_kept, internal_kept, g["input_shape"])
        # other: scale by the kept fraction of each width it has
        fraction = 1.0
        if self.out_total:
            fraction *= out_kept / self.out_total
        if self.in_total:
            fraction *= in_kept / self.in_total
        return round(self.params_full * fraction), round(self.macs_full * fraction)


def _layer_cost(name: str, module: nn.Module, shapes: dict) -> _LayerCost | None:
    own_params = sum(p.numel() for p in module.parameters(recurse=isinstance(module, PrunableBlock)))
    if own_params == 0:
        return None
    in_shape, out_shape = shapes.get(name, (None, None))
    if isinstance(module, PrunableBlock):
        cost = _LayerCost(name, "block", module.out_channels, module.in_channels,
                          len(module.internal_structures()), module=module, geometry={"input_shape": in_shape})
    elif isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        if out_shape is None:
            return None
        positions = math.prod(out_shape) // module.out_channels
        kernel = math.prod(module.kernel_size)
        depthwise = module.groups == module.in_channels and module.groups > 1
        cost = _LayerCost(name, "depthwise" if depthwise else "conv", module.out_channels, module.in_channels,
                          geometry={"groups": module.groups, "kernel": kernel, "positions": positions,
                                    "bias": module.bias is not None,
                                    "multiplier": module.out_channels // module.in_channels})
    elif isinstance(module, nn.Linear):
        if in_shape is None:
            return None
        tokens = math.prod(in_shape) // module.in_features
        cost = _LayerCost(name, "linear", module.out_features, module.in_features,
                          geometry={"tokens": tokens, "bias": module.bias is not None})
    elif isinstance(module, _NORM_TYPES) and getattr(module, "weight", None) is not None and module.weight.dim() == 1:
        cost = _LayerCost(name, "norm", module.weight.shape[0],
                          geometry={"per_channel": own_params // module.weight.shape[0]})
    else:
        cost = _LayerCost(name, "other", params_full=own_params)
    cost.params_full, cost.macs_full = cost.evaluate(cost.out_total, cost.in_total, cost.internal_total) \
        if cost.kind != "other" else (own_params, 0)
    return cost


def _record_shapes(model: nn.Module, example_inputs) -> dict:
    shapes: dict[str, tuple] = {}
    hooks = []
    for name, module in model.named_modules():
        def hook(mod, args, output, name=name):
            first = args[0] if args else None
            shapes[name] = (tuple(first.shape) if torch.is_tensor(first) else None,
                            tuple(output.shape) if torch.is_tensor(output) else None)
        hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            call_model(model, example_inputs)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


# ----------------------------------------------------------------------- structures


@dataclass
class GroupInfo:
    """A set of structures that must never all be removed (a coupled channel group, or a block's heads)."""

    id: int
    kind: str  # "channel" or "internal"
    root: str  # root module name (channel) or block name (internal)
    size: int
    members: list[int] = field(default_factory=list)


class Structures(Sequence[Structure]):
    """The prunable structures of a model, with an exact cost model.

    Indexing and iteration give :class:`Structure` objects; ``groups`` lists the
    coupled groups; :meth:`cost` counts parameters and MACs after removing a set.
    """

    def __init__(self, items, groups, layer_costs, touches, constant, input_spec, model_name):
        self._items: list[Structure] = items
        self.groups: list[GroupInfo] = groups
        self._layer_costs: dict[str, _LayerCost] = layer_costs
        self._touches: list[list[tuple[str, str, tuple[int, ...]]]] = touches
        self._constant = constant  # params / MACs outside the cost model (never change)
        self.input_spec = input_spec
        self.model_name = model_name
        full = self.cost(())
        self.total_params, self.total_macs = full["params"], full["macs"]
        for s in items:
            alone = self.cost((s.id,))
            s.params, s.macs = self.total_params - alone["params"], self.total_macs - alone["macs"]

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
                f"{self.total_params} params, {self.total_macs} MACs)")

    def cost(self, removed: Iterable[int]) -> dict:
        """Exact ``{"params", "macs"}`` of the model with structures ``removed`` taken out.

        Each layer's count is a product of its kept widths, e.g. a convolution keeps
        ``out_kept · in_kept/groups · k_h·k_w`` weights and costs that many MACs per output
        position; everything outside the cost model is a constant.
        """
        removed_idx: dict[tuple[str, str], set[int]] = defaultdict(set)
        for sid in removed:
            for layer, role, idxs in self._touches[sid]:
                removed_idx[(layer, role)].update(idxs)
        params, macs = self._constant
        for name, lc in self._layer_costs.items():
            p, m = lc.evaluate(lc.out_total - len(removed_idx.get((name, "out"), ())),
                               lc.in_total - len(removed_idx.get((name, "in"), ())),
                               lc.internal_total - len(removed_idx.get((name, "internal"), ())))
            params += p
            macs += m
        return {"params": int(params), "macs": int(macs)}

    def output_widths(self) -> dict[str, int]:
        """Output width of every costed layer (the collapse guard keeps each one ≥ 1)."""
        return {name: lc.out_total for name, lc in self._layer_costs.items() if lc.out_total}

    def outputs_removed(self, sid: int) -> list[tuple[str, int]]:
        """``(layer, number of its outputs)`` that removing structure ``sid`` takes away."""
        return [(layer, len(idxs)) for layer, role, idxs in self._touches[sid] if role == "out"]

    def signature(self) -> str:
        """A hash of every structure's (layer, kind, index): plans check it before replaying."""
        text = json.dumps([[s.layer, s.kind, s.meta.get("index")] for s in self._items])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def describe(self, sid: int) -> list:
        s = self._items[sid]
        return [s.layer, s.kind, s.meta.get("index")]


def _resolve_ignored(model: nn.Module, ignore) -> set[nn.Module]:
    modules = dict(model.named_modules())
    ignored = set()
    for item in ignore:
        if isinstance(item, str):
            if item not in modules:
                raise ValueError(f"ignore: no module named {item!r} in {type(model).__name__}")
            ignored.update(modules[item].modules())
        else:
            ignored.update(item.modules())
    return ignored


def _slices_for(module_name: str, module, role: str, idxs: list[int], graph) -> list[SliceSpec]:
    prefix = f"{module_name}." if module_name else ""
    if isinstance(module, nn.Parameter):
        return [(graph._param_to_name[module], 0, idxs)]
    if isinstance(module, PrunableBlock):
        return [(prefix + n, d, i) for n, d, i in module.out_channel_slices(idxs)]
    slices = []
    for pname, param in module.named_parameters(recurse=False):
        if isinstance(module, nn.modules.conv._ConvNd) and module.transposed and pname == "weight":
            slices.append((prefix + pname, 1, idxs))
        elif param.dim() >= 1:
            slices.append((prefix + pname, 0, idxs))
    return slices


def find_structures(model: nn.Module, example_inputs, ignore: Sequence = ()) -> Structures:
    """Find every prunable structure of ``model`` and the groups that must go together.

    Args:
        model: any ``nn.Module``; it is traced, never modified.
        example_inputs: a tensor or tuple of tensors for one forward pass (shapes matter,
            values do not). MACs are counted for this batch.
        ignore: modules (or their dotted names) whose outputs must not be pruned.

    Returns:
        :class:`Structures`, ordered deterministically (channel groups in module order,
        channels in index order, then internal units such as heads).

    Example:
        >>> s = find_structures(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)),
        ...                     torch.randn(1, 4))
        >>> len(s), s[0].slices
        (8, [('0.weight', 0, [0]), ('0.bias', 0, [0])])
    """
    from .measure import count

    ignored = _resolve_ignored(model, ignore)
    graph = build_dependency_graph(model, example_inputs)
    names = {m: n for n, m in model.named_modules()}
    shapes = _record_shapes(model, example_inputs)

    layer_costs: dict[str, _LayerCost] = {}
    for name, module in model.named_modules():
        if any(isinstance(parent, PrunableBlock) for parent in _parents(model, name)):
            continue  # a block's children are costed by the block
        lc = _layer_cost(name, module, shapes)
        if lc is not None:
            layer_costs[name] = lc

    block_types = tuple({type(m) for m in model.modules() if isinstance(m, PrunableBlock)})
    root_types = (nn.modules.conv._ConvNd, nn.Linear) + block_types
    items: list[Structure] = []
    touches: list[list] = []
    groups: list[GroupInfo] = []
    seen_out: set = set()
    for root_module in list(graph.module2node.keys()):
        if not isinstance(root_module, root_types) or root_module in seen_out or root_module in ignored:
            continue
        if root_module in graph.IGNORED_LAYERS_IN_TRACING:
            continue
        pruner = graph.get_pruner_of_module(root_module)
        if pruner is None or pruner.get_out_channels(root_module) is None:
            continue
        width = pruner.get_out_channels(root_module)
        _probe_one_channel(graph, root_module, pruner, names)
        group = graph.get_pruning_group(root_module, pruner.prune_out_channels, list(range(width)))
        per_channel_touch = [defaultdict(list) for _ in range(width)]
        prunable = True
        out_modules = []
        for item in group.items:
            dep, idxs, root_idxs = item.dep, item.idxs, item.root_idxs
            target = dep.target.module
            is_param_holder = isinstance(target, nn.Parameter) or (isinstance(target, nn.Module) and any(
                True for _ in target.parameters(recurse=isinstance(target, PrunableBlock))))
            role = "out" if (graph.is_out_channel_pruning_fn(dep.handler) or isinstance(target, nn.Parameter)) else "in"
            if len(dep.target.outputs) == 0 and not (is_param_holder and role == "in"):
                prunable = False  # these channels are (part of) the model output
            if not is_param_holder:
                continue
            if role == "out":
                seen_out.add(target)
                out_modules.append(target)
                if target in ignored:
                    prunable = False
            for idx, root_idx in zip(idxs, root_idxs):
                if root_idx is None:
                    raise UnsupportedModelError(
                        f"channel mapping lost between {names.get(root_module, '?')} and "
                        f"{names.get(target, type(target).__name__)}. " + ESCAPE_HATCHES)
                per_channel_touch[root_idx][(target, role)].append(int(idx))
        if not prunable:
            continue
        _check_channel_mapping(per_channel_touch, names, root_module)
        root_name = names.get(root_module, "")
        kind = "unit" if isinstance(root_module, PrunableBlock) else ("neuron" if isinstance(root_module, nn.Linear) else "channel")
        info = GroupInfo(id=len(groups), kind="channel", root=root_name, size=width)
        for channel in range(width):
            slices: list[SliceSpec] = []
            touch = []
            for (target, role), idxs in per_channel_touch[channel].items():
                tname = graph._param_to_name.get(target) if isinstance(target, nn.Parameter) else names[target]
                if role == "out":
                    slices.extend(_slices_for(names.get(target, ""), target, role, idxs, graph))
                if tname in layer_costs:  # parameter-free ops and a block's children are not costed
                    touch.append((tname, role, tuple(idxs)))
            sid = len(items)
            items.append(Structure(id=sid, layer=root_name, kind=kind, slices=slices, group=info.id,
                                   meta={"index": channel, "modules": sorted({names.get(m, "") for m in out_modules})}))
            touches.append(_merge_depthwise(touch, layer_costs))
            info.members.append(sid)
        groups.append(info)

    for name, module in model.named_modules():
        if not isinstance(module, PrunableBlock) or module in ignored:
            continue
        units = module.internal_structures()
        if len(units) < 2:
            continue
        info = GroupInfo(id=len(groups), kind="internal", root=name, size=len(units))
        prefix = f"{name}." if name else ""
        for index, unit_slices in enumerate(units):
            sid = len(items)
            items.append(Structure(id=sid, layer=name, kind=module.internal_structure_kind(),
                                   slices=[(prefix + n, d, i) for n, d, i in unit_slices], group=info.id,
                                   meta={"index": index, "modules": [name]}))
            touches.append([(name, "internal", (index,))])
            info.members.append(sid)
        groups.append(info)

    counted = count(model, example_inputs)
    modelled_params = sum(lc.params_full for lc in layer_costs.values())
    modelled_macs = sum(lc.macs_full for lc in layer_costs.values())
    constant = (counted["params"] - modelled_params, max(counted["macs"] - modelled_macs, 0))
    return Structures(items, groups, layer_costs, touches, constant, input_spec_of(example_inputs),
                      type(model).__name__)


def _width(module, role: str):
    if isinstance(module, nn.Parameter):
        return module.shape[0]
    if isinstance(module, PrunableBlock):
        return module.out_channels if role == "out" else module.in_channels
    if isinstance(module, nn.Linear):
        return module.out_features if role == "out" else module.in_features
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels if role == "out" else module.in_channels
    weight = getattr(module, "weight", None)
    return weight.shape[0] if weight is not None and weight.dim() >= 1 else None


def _mapping_error(root_name: str, where: str, role: str) -> UnsupportedModelError:
    return UnsupportedModelError(
        f"cannot map the output channels of {root_name!r} onto {where!r} ({role}put side): a view/reshape "
        f"between them splits or merges the channel dimension (e.g. a graph convolution viewing K·C channels "
        f"as K adjacency subsets). " + ESCAPE_HATCHES)


def _probe_one_channel(graph, root_module, pruner, names) -> None:
    """Trace channel 0 alone first: cheap, and it exposes garbled mappings before the full group blows up."""
    probe = graph.get_pruning_group(root_module, pruner.prune_out_channels, [0])
    for item in probe.items:
        target = item.dep.target.module
        if not isinstance(target, (nn.Module, nn.Parameter)):
            continue
        role = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
        width = _width(target, role)
        too_many = role == "out" and len(item.idxs) > 1 and not isinstance(target, nn.Parameter)
        if too_many or (width is not None and any(not 0 <= int(i) < width for i in item.idxs)):
            raise _mapping_error(names.get(root_module, "?"), names.get(target, type(target).__name__), role)


def _check_channel_mapping(per_channel_touch, names, root_module) -> None:
    """Each channel of a group must map to its own, in-range indices of every layer it touches.

    Torch-Pruning silently builds garbled groups through views that split a channel
    dimension (an ST-GCN graph convolution written as plain modules); refuse them.
    """
    claimed: dict = defaultdict(set)
    for channel, touches in enumerate(per_channel_touch):
        for (target, role), idxs in touches.items():
            width = _width(target, role)
            key = (id(target), role)
            bad_range = width is not None and any(not 0 <= i < width for i in idxs)
            if bad_range or claimed[key].intersection(idxs) or len(set(idxs)) != len(idxs):
                raise _mapping_error(names.get(root_module, "?"), names.get(target, type(target).__name__), role)
            claimed[key].update(idxs)


def _merge_depthwise(touch, layer_costs):
    """A depthwise conv is touched on both roles by one channel; count it once (as out)."""
    result = []
    for name, role, idxs in touch:
        if role == "in" and layer_costs[name].kind == "depthwise":
            continue
        result.append((name, role, idxs))
    return result


def _parents(model: nn.Module, name: str):
    parts = name.split(".") if name else []
    module = model
    for part in parts[:-1]:
        module = getattr(module, part)
        yield module

