"""Apply a plan: as masks (same shapes, removed structures zeroed) or physically.

``apply_masks`` zeroes every slice that produces or reads a removed structure (and
multiplies entry masks in); ``materialize`` builds a physically smaller copy: every
parameter and buffer is sliced along the dims the analysis labelled, and the width
attributes that ``forward`` reads (``in_features``, ``groups``, ``hidden_size``,
``num_heads``/``head_dim``-style attributes passed to views, …) are updated. It then
**checks itself** on the example inputs:

    f_materialized(x) = f_masked(x)   (relative error ≤ 1e-5 of the output scale)

and raises :class:`MaterializeError` naming the structures involved if not
(``check=False`` skips the check). The input model is never modified.

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

import torch
from torch import nn

from .analysis.trace import flatten_tensors
from .plan import PruningPlan
from .structures import Structures, find_structures, inputs_from_spec, unwrap

__all__ = ["apply_masks", "materialize", "structures_for_plan", "MaterializeError", "output_error"]

#: relative error (to the output scale) above which materialized and masked models differ
TOLERANCE = 1e-5


class MaterializeError(RuntimeError):
    """The materialized model does not compute what the masked model computes (or does not run)."""


def structures_for_plan(model: nn.Module, plan: PruningPlan, structures: Structures | None = None) -> Structures:
    """The model's structures (with the plan's ``ignore``), checked against the plan's signature."""
    if structures is None:
        structures = find_structures(model, inputs_from_spec(plan.input_spec, unwrap(model)), ignore=plan.ignore)
    plan.check_matches(structures)
    return structures


def _zero_slices(model: nn.Module, structures: Structures, removed) -> None:
    tensors = dict(model.named_parameters())
    tensors.update(dict(model.named_buffers()))
    with torch.no_grad():
        for sid in removed:
            s = structures[sid]
            for name, dim, idxs in list(s.slices) + list(s.consumers):
                tensors[name].index_fill_(dim, torch.as_tensor(idxs, dtype=torch.long, device=tensors[name].device), 0)


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


def _drop_caches(model: nn.Module, structures: Structures) -> None:
    """Empty the tensor caches that ``forward`` fills (found by the analysis), so they are recomputed."""
    for mname, attr in structures._plan_data.get("caches", ()):
        setattr(model.get_submodule(mname), attr, {})


def _masked(model: nn.Module, structures: Structures, removed, plan: PruningPlan | None = None,
            inplace: bool = False, copy_fn=None) -> nn.Module:
    model = unwrap(model)
    if inplace:
        masked = model
    elif copy_fn is None:  # a deep copy, without the caches (they may hold tensors deepcopy refuses)
        memo = {id(getattr(model.get_submodule(m), a)): {} for m, a in structures._plan_data.get("caches", ())}
        masked = copy.deepcopy(model, memo)
    else:
        masked = copy_fn(model)
    _drop_caches(masked, structures)  # recomputed from the zeroed tensors
    if plan is not None:
        _apply_entry_masks(masked, plan)
    _zero_slices(masked, structures, removed)
    return masked


def apply_masks(model: nn.Module, plan: PruningPlan, structures: Structures | None = None) -> nn.Module:
    """A copy of ``model`` with the plan's structures zeroed (same shapes).

    Zeroing every slice that produces or reads a structure makes the copy compute
    exactly what the materialized model computes.
    """
    structures = structures_for_plan(model, plan, structures)
    masked = _masked(model, structures, plan.removed, plan)
    masked.prunekit_plan = plan
    return masked


# ------------------------------------------------------------------- slicing


def _slice_tensors(small: nn.Module, structures: Structures, removed) -> None:
    modules = dict(small.named_modules(remove_duplicate=False))
    owners = structures._plan_data["owners"]
    for name, keep in structures.keep_indices(removed).items():
        if all(k is None for k in keep):
            continue
        mname, attr = owners[name][0]
        old = getattr(modules[mname], attr)
        new = old.detach()
        for dim, idx in enumerate(keep):
            if idx is not None:
                new = new.index_select(dim, idx.to(new.device))
        new = new.clone()
        if isinstance(old, nn.Parameter):  # one object for every owner: tied weights stay tied
            new = nn.Parameter(new, requires_grad=old.requires_grad)
        for mname, attr in owners[name]:
            module = modules[mname]
            if isinstance(old, nn.Parameter):
                setattr(module, attr, new)
            else:
                module._buffers[attr] = new


def _replace_norms(small: nn.Module, structures: Structures, removed) -> None:
    """LayerNorms and GroupNorms whose width lost channels keep their statistics over the original width."""
    from .pruned_layers import make_full_width
    ext = structures._removed_ext(removed)
    done = set()  # a norm shared under two names is converted once
    for mname, closure in structures._plan_data["norms"].items():
        kept, norm = closure.kept_indices(ext), small.get_submodule(mname)
        if len(kept) < closure.n and id(norm) not in done:
            make_full_width(norm, closure.n, kept)
            done.add(id(norm))


def _replace_attention(small: nn.Module, structures: Structures, removed) -> None:
    """Every ``nn.MultiheadAttention`` that lost rows or columns becomes a PrunedMultiheadAttention.

    ``in_proj_weight`` ``[3E, E]`` (and ``in_proj_bias``) was sliced as one tensor: how many rows
    each of the q, k and v blocks kept is read off the plan (its kept row indices, cut at ``E``
    and ``2E``; the sliced shape alone cannot tell ``2·d_qk + d_v`` apart); the head count is
    ``num_heads``, which the plan already updated (the views pass it). The attention scale stays
    ``1/√head_dim`` of the unpruned module. Every parent holding the module gets the new one (a
    model that is itself the attention is converted in place).
    """
    from .pruned_attention import PrunedMultiheadAttention
    names: dict[int, list[str]] = {}
    for name, module in small.named_modules(remove_duplicate=False):
        if isinstance(module, nn.MultiheadAttention):
            names.setdefault(id(module), []).append(name)
    keep = structures.keep_indices(removed) if names else {}

    def kept(mnames, tensor):
        return next((keep[k] for k in (f"{m}.{tensor}" if m else tensor for m in mnames) if k in keep), None)

    for mnames in names.values():
        mha = small.get_submodule(mnames[0])
        dims = {t: kept(mnames, t) for t in ("in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight",
                                             "v_proj_weight", "out_proj.weight", "out_proj.bias")}
        if all(k is None for d in dims.values() if d for k in d):
            continue  # untouched: it keeps its own (fast) forward
        packed = dims["in_proj_weight"] or dims["in_proj_bias"]
        E = mha.embed_dim
        if packed is not None:
            rows = packed[0] if packed[0] is not None else torch.arange(3 * E)
            counts = [int(((rows >= i * E) & (rows < (i + 1) * E)).sum()) for i in range(3)]
        else:  # separate q/k/v weights and no bias: their shapes say it
            counts = [mha.q_proj_weight.shape[0], mha.k_proj_weight.shape[0], mha.v_proj_weight.shape[0]]
        new = PrunedMultiheadAttention.replacing(mha, num_heads=mha.num_heads, q_rows=counts[0],
                                                 k_rows=counts[1], v_rows=counts[2])
        if mnames[0] == "":
            mha.__dict__.clear()
            mha.__dict__.update(new.__dict__)
            mha.__class__ = PrunedMultiheadAttention
            continue
        for module in small.modules():
            for child_name, child in list(module.named_children()):
                if child is mha:
                    setattr(module, child_name, new)
    for module in small.modules():  # the nested-tensor fast path needs the packed nn.MultiheadAttention
        if isinstance(module, nn.TransformerEncoder) and any(
                isinstance(getattr(layer, "self_attn", None), PrunedMultiheadAttention) for layer in module.layers):
            module.use_nested_tensor = False


def _rescale_rms_norms(small: nn.Module, structures: Structures, removed) -> None:
    """RMS norms whose width lost channels keep their mean over the original width (hooks)."""
    from .pruned_layers import FullWidthRMS
    ext = structures._removed_ext(removed)
    for mname, closure in structures._plan_data.get("rms_norms", {}).items():
        kept = closure.kept(ext)
        if kept < closure.n:
            FullWidthRMS(kept, closure.n).attach(small.get_submodule(mname))


def _fix_attributes(small: nn.Module, structures: Structures, removed) -> None:
    modules = dict(small.named_modules(remove_duplicate=False))
    for key in structures._plan_data["attrs"]:
        mname, attr = key
        if mname in modules and hasattr(modules[mname], attr):
            setattr(modules[mname], attr, structures.kept_width(key, removed))
    for module in modules.values():
        _fix_known(module)


def _fix_known(m: nn.Module) -> None:
    """Width attributes of torch's own layers, read off their (sliced) parameters."""
    if isinstance(m, nn.Linear):
        m.out_features, m.in_features = m.weight.shape
    elif isinstance(m, nn.modules.conv._ConvNd):
        if m.transposed:
            m.in_channels, m.out_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
        else:
            m.out_channels, m.in_channels = m.weight.shape[0], m.weight.shape[1] * m.groups
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        ref = m.weight if m.weight is not None else m.running_mean
        if ref is not None:
            m.num_features = ref.shape[0]
    elif isinstance(m, nn.GroupNorm) and m.weight is not None:
        m.num_channels = m.weight.shape[0]
    elif isinstance(m, nn.LayerNorm) and m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)
    elif isinstance(m, nn.Embedding):
        m.num_embeddings, m.embedding_dim = m.weight.shape
    elif isinstance(m, nn.PReLU):
        m.num_parameters = m.weight.numel()
    elif isinstance(m, nn.RNNBase):
        m.input_size = m.weight_ih_l0.shape[1]
        m._init_flat_weights()
    elif type(m).__name__ == "Conv1D" and hasattr(m, "nf"):  # Hugging Face's transposed Linear
        m.nf = m.weight.shape[1]


def _materialize(model: nn.Module, structures: Structures, removed, plan: PruningPlan | None = None) -> nn.Module:
    small = _masked(model, structures, removed, plan)  # zeroed entries are exactly the ones sliced away
    _shrink(small, structures, removed)
    return small


def _shrink(small: nn.Module, structures: Structures, removed) -> None:
    """Slice ``small`` in place: tensors, width attributes, LayerNorms, attention, RMS norms, caches."""
    _slice_tensors(small, structures, removed)
    _fix_attributes(small, structures, removed)
    _replace_norms(small, structures, removed)
    _replace_attention(small, structures, removed)
    _rescale_rms_norms(small, structures, removed)
    _drop_caches(small, structures)


def output_error(reference, candidate) -> float:
    """Largest absolute difference between two outputs (nested), relative to the reference's scale."""
    ref, cand = flatten_tensors(reference), flatten_tensors(candidate)
    if len(ref) != len(cand):
        return float("inf")
    worst = 0.0
    for a, b in zip(ref, cand):
        if a.shape != b.shape:
            return float("inf")
        if not a.is_floating_point():
            worst = max(worst, 0.0 if torch.equal(a, b) else float("inf"))
            continue
        scale = a.abs().max().item() if a.numel() else 0.0
        diff = (a - b).abs().max().item() if a.numel() else 0.0
        if diff != diff:  # NaN
            return float("inf")
        worst = max(worst, diff / max(scale, 1e-12))
    return worst


def _run(model, inputs):
    from .measure import call_model
    with torch.no_grad():
        return call_model(model.eval(), inputs)


def _to_double(inputs):
    if isinstance(inputs, dict):
        return {k: _to_double(v) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_to_double(v) for v in inputs)
    return inputs.double() if torch.is_tensor(inputs) and inputs.is_floating_point() else inputs


def _describe(structures: Structures, removed) -> str:
    groups = sorted({structures[s].group for s in removed})
    names = [f"{structures.groups[g].root or '<model>'}:{structures.groups[g].kind}" for g in groups]
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more groups" if len(names) > 8 else "")


def _materialize_checked(model, structures, removed, example_inputs, plan=None, check=True,
                         tolerance: float = TOLERANCE, inplace: bool = False, copy_fn=None) -> nn.Module:
    """Materialize, then compare with the masked model on ``example_inputs``.

    The masked copy runs first and is then sliced in place into the small model (one
    copy of the model, not two; none with ``inplace``, which consumes ``model``); a
    difference above ``tolerance`` in float32 is decided again in float64, so float noise
    never raises.
    """
    if not check:
        try:
            return _materialize(model, structures, removed, plan)
        except Exception as error:
            raise MaterializeError(f"materialize failed removing structures of {_describe(structures, removed)}: "
                                   f"{type(error).__name__}: {error}") from error
    small = _masked(model, structures, removed, plan, inplace=inplace, copy_fn=copy_fn)
    try:
        reference = _run(small, example_inputs)
    except Exception as error:
        raise MaterializeError(f"the masked model does not run: {type(error).__name__}: {error}") from error
    try:
        _shrink(small, structures, removed)
    except Exception as error:
        raise MaterializeError(f"materialize failed removing structures of {_describe(structures, removed)}: "
                               f"{type(error).__name__}: {error}") from error
    try:
        err = output_error(reference, _run(small, example_inputs))
        if err > tolerance and not inplace:  # float32 noise or a real difference: decide in float64
            masked64 = _masked(model, structures, removed, plan).double()
            err = output_error(_run(masked64, _to_double(example_inputs)),
                               _run(copy.deepcopy(small).double(), _to_double(example_inputs)))
    except Exception as error:
        raise MaterializeError(f"the materialized model does not run after removing structures of "
                               f"{_describe(structures, removed)}: {type(error).__name__}: {error}") from error
    if err > tolerance:
        raise MaterializeError(f"the materialized model differs from the masked model (relative error {err:.2e}) "
                               f"after removing structures of {_describe(structures, removed)}")
    return small


def materialize(model: nn.Module, plan: PruningPlan, structures: Structures | None = None, *,
                example_inputs=None, check: bool = True) -> nn.Module:
    """A physically smaller copy of ``model`` with the plan's structures removed.

    Entry-wise masks stay as zeros in the kept weights. The result is checked
    against the masked model on ``example_inputs`` (default: rebuilt from the plan's
    input spec); ``check=False`` skips it. A ``torch.compile``d model is
    materialized through its original module (compile the result again).
    Raises ``ValueError`` if the plan was made for a different model and
    :class:`MaterializeError` if the check fails.
    """
    structures = structures_for_plan(model, plan, structures)
    inputs = example_inputs if example_inputs is not None else inputs_from_spec(plan.input_spec, unwrap(model))
    small = _materialize_checked(model, structures, plan.removed, inputs, plan, check)
    small.prunekit_plan = plan
    return small
