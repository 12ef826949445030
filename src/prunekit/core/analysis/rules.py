"""One rule per ATen op: how the atoms of its inputs' dims map to its outputs' dims.

A rule reads the input labels (:class:`~prunekit.core.analysis.trace.TensorInfo`), unifies
aligned dims, splits/merges reshaped ones, freezes what it cannot follow, writes the
output labels, and records MAC terms and size arguments. Ops without a rule freeze
every labelled input (``Tracer.unknown``); element-wise ops are recognised by the
``pointwise`` tag ATen puts on them.

``dirty`` marks dims whose removed indices may hold non-zero values in the masked
model (after a sigmoid, a shift, a normalisation). Contracting two dirty dims, or
summing one, would make the masked and the materialized model differ, so those
atoms are frozen; contracting with a parameter is always exact (its slice is zeroed).

Example:
    >>> import torch
    >>> from prunekit.core.analysis.trace import trace
    >>> conv = torch.nn.Conv2d(8, 8, 3, groups=4)
    >>> t = trace(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), conv, torch.nn.Conv2d(8, 2, 1)), torch.randn(1, 3, 5, 5))
    >>> [r for m, a, r in t.attrs if (m, a) == ("1", "groups")][0].shape
    (4,)
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .trace import SizeRecord, TensorInfo, flatten_tensors

__all__ = ["apply", "RULES"]

RULES: dict = {}


def rule(*names):
    def register(fn):
        for n in names:
            RULES[n] = fn
        return fn
    return register


def _zeros(n: int) -> np.ndarray:
    return np.zeros(n, dtype=np.int64)


def _labelled(tr, arr) -> bool:
    return bool(tr.t.atoms.roots(arr).any())


def _set(tr, y, dims, dirty, zero=False, src=None):
    if len(dims) != y.dim() or any(len(d) != n for d, n in zip(dims, y.shape)):
        raise ValueError(f"labels {[len(d) for d in dims]} do not fit shape {tuple(y.shape)}")  # -> no rule
    tr.set(y, TensorInfo([tr.t.atoms.roots(d) for d in dims], list(dirty), zero, src))


def _contract(tr, xi, dx, yi, dy, reason):
    """Unify a contracted dim of two operands; freeze it when both may hold non-zero removed values."""
    A = tr.t.atoms
    A.unify_arrays(xi.dims[dx], yi.dims[dy])
    if xi.dirty[dx] and yi.dirty[dy]:
        A.freeze_array(xi.dims[dx], reason)
    for info, d in ((xi, dx), (yi, dy)):
        if info.src[d] is not None:
            tr.t.contracted.add(info.src[d])


def _size_record(tr, position, labels, op):
    """Remember that the ``position``-th size argument of the current view/expand/split call, if it
    was read from a module attribute, must follow the kept count of ``labels``."""
    tags = tr.chunk.tags if tr.chunk.explicit else []
    tag = tags[position] if position is not None and 0 <= position < len(tags) else None
    if tag is not None and _labelled(tr, labels):
        tr.t.sizes.append(SizeRecord(tag, len(labels), labels.copy(), op))


def _dims_arg(arg, ndim):
    if arg is None:
        return list(range(ndim))
    if isinstance(arg, int):
        arg = [arg]
    dims = [d % ndim for d in arg] if ndim else []
    return dims or list(range(ndim))


def apply(tr, func, args, kwargs, out) -> None:
    name = func._overloadpacket.__name__
    fn = RULES.get(name)
    if fn is None and (torch.Tag.pointwise in func.tags or name in EXTRA_POINTWISE):
        fn = pointwise
    if fn is None:
        tr.unknown(func, args, kwargs, out)
        return
    fn(tr, func, args, kwargs, out)


# ------------------------------------------------------------------- element-wise

ZERO_PRESERVING = {
    "relu", "relu_", "gelu", "gelu_", "silu", "silu_", "tanh", "tanh_", "neg", "abs", "hardtanh", "hardtanh_",
    "leaky_relu", "leaky_relu_", "elu", "elu_", "mish", "erf", "sin", "sqrt", "sign", "hardswish", "hardswish_",
    "clone", "_to_copy", "square", "celu", "selu", "softshrink", "hardshrink", "tan", "sinh", "atan", "asin",
    "expm1", "log1p", "trunc", "round", "floor", "ceil", "alias", "detach", "relu6", "positive", "conj",
}
MUL_LIKE = {"mul", "mul_", "logical_and", "bitwise_and", "_prelu_kernel"}
ADD_LIKE = {"add", "add_", "sub", "sub_", "rsub", "copy_", "where", "lerp", "addcmul", "addcdiv"}
EXTRA_POINTWISE = {"masked_fill", "masked_fill_", "where", "copy_", "hardswish", "hardswish_", "_to_copy",
                   "clamp", "clamp_", "clamp_min", "clamp_max", "relu6", "lift_fresh", "lift_fresh_copy"}


def _zero_preserving(name, args) -> bool:
    if name in ZERO_PRESERVING:
        return True
    if name in ("clamp", "clamp_") and len(args) > 1:
        lo = args[1]
        hi = args[2] if len(args) > 2 else None
        return (lo is None or (not isinstance(lo, torch.Tensor) and lo <= 0)) and \
               (hi is None or (not isinstance(hi, torch.Tensor) and hi >= 0))
    if name in ("pow",) and len(args) > 1 and not isinstance(args[1], torch.Tensor):
        return args[1] > 0
    if name in ("mul", "mul_", "div", "div_") and len(args) > 1 and not isinstance(args[1], torch.Tensor):
        return True
    return False


def _adds_nonzero_scalar(name, args) -> bool:
    """Does a non-zero Python scalar argument shift the values (``x + 1``), as opposed to scaling them?"""
    return any(not isinstance(a, torch.Tensor) and isinstance(a, (int, float)) and a != 0 and a is not True
               for a in args[1:]) and name not in MUL_LIKE and name not in ("div", "div_", "pow")


def _aligned(tr, inputs, infos, y, k):
    """The inputs' dims that line up with output dim ``k`` (same size > 1, not broadcast).

    Returns their labels and dirty flags (all-zero inputs left out), the first input's flag
    (``None`` if it does not line up), whether a broadcast input may add non-zero values, and the
    labels of all-zero inputs' aligned dims (they add nothing, but a width they were sized by must
    follow the others)."""
    nd = y.dim()
    arrs, flags, first = [], [], None
    broadcast_nonzero, sized = False, []
    for i, (x, info) in enumerate(zip(inputs, infos)):
        off = x.dim() - (nd - k)
        if off < 0:
            if x.dim() == 0 and not info.zero and x.numel() == 1 and i > 0:
                broadcast_nonzero = broadcast_nonzero or bool(x.detach().ne(0).any())
            continue
        if x.shape[off] == y.shape[k] and y.shape[k] > 1:
            if info.zero:
                if _labelled(tr, info.dims[off]):
                    sized.append(info.dims[off])
                continue
            arrs.append(info.dims[off])
            flags.append(info.dirty[off])
            if i == 0:
                first = info.dirty[off]
        elif not info.zero:
            broadcast_nonzero = True
    return arrs, flags, first, broadcast_nonzero, sized


def _pointwise_dirty(name, args, flags, first, *, single, broadcast_nonzero, scalar_nonzero) -> bool:
    """May an output dim hold non-zero values at removed indices, given its aligned inputs' ``flags``?"""
    if not flags:
        return True
    if name in MUL_LIKE:
        return all(flags)
    if name in ("div", "div_"):
        return first if first is not None else True
    if single or (len(flags) == 1 and name not in ADD_LIKE):
        return flags[0] or not _zero_preserving(name, args)
    if name in ADD_LIKE:
        return any(flags) or broadcast_nonzero or scalar_nonzero
    return True


def pointwise(tr, func, args, kwargs, out):
    """Element-wise ops: aligned dims of the inputs unify; each output dim is dirty unless the op
    keeps zeros at removed indices zero."""
    name = func._overloadpacket.__name__
    y = out if isinstance(out, torch.Tensor) else flatten_tensors(out)[0]
    A = tr.t.atoms
    inputs = [x for x in flatten_tensors((args, kwargs)) if isinstance(x, torch.Tensor)]
    infos = [tr.get(x) for x in inputs]
    nd = y.dim()
    scalar_nonzero = _adds_nonzero_scalar(name, args)
    dims, dirty, srcs = [], [], []
    single = len(inputs) == 1
    for k in range(nd):
        arrs, flags, first, broadcast_nonzero, sized = _aligned(tr, inputs, infos, y, k)
        for a in arrs[1:] + (sized if arrs else sized[1:]):
            A.unify_arrays(arrs[0] if arrs else sized[0], a)
        dims.append(A.roots(arrs[0]) if arrs else (A.roots(sized[0]) if sized else _zeros(y.shape[k])))
        dirty.append(_pointwise_dirty(name, args, flags, first, single=single, broadcast_nonzero=broadcast_nonzero,
                                      scalar_nonzero=scalar_nonzero))
        srcs.append(infos[0].src[k - (nd - inputs[0].dim())] if single and inputs[0].dim() == nd else None)
    zero = bool(infos) and name in MUL_LIKE and any(i.zero for i in infos)
    _set(tr, y, dims, dirty, zero, srcs)


@rule("_to_copy", "clone", "alias", "detach", "lift_fresh", "lift_fresh_copy", "contiguous", "resolve_conj",
      "resolve_neg", "_conj", "native_dropout", "dropout")
def identity(tr, func, args, kwargs, out):
    y = out if isinstance(out, torch.Tensor) else flatten_tensors(out)[0]
    xi = tr.get(args[0])
    _set(tr, y, xi.dims, xi.dirty, xi.zero, xi.src)
    if not isinstance(out, torch.Tensor):
        tr.none_out(flatten_tensors(out)[1:])


@rule("as_strided", "as_strided_")
def as_strided(tr, func, args, kwargs, out):
    """Only the restride that keeps every entry where it is (strides of size-1 dims; reductions on
    non-contiguous inputs emit it): identity. Any other ``as_strided`` has no rule."""
    x, size, stride = args[0], list(args[1]), list(args[2])
    offset = args[3] if len(args) > 3 else kwargs.get("storage_offset")
    shape, x_stride, x_offset = (tr.layout_before if func._overloadpacket.__name__ == "as_strided_"
                                 else (tuple(x.shape), x.stride(), x.storage_offset()))
    same = (list(shape) == size and (offset is None or offset == x_offset)
            and all(n == 1 or st == xs for n, st, xs in zip(size, stride, x_stride)))
    if not same:
        raise NotImplementedError("as_strided that moves entries")
    xi = tr.get(x)
    _set(tr, out, xi.dims, xi.dirty, xi.zero, xi.src)


@rule("fill_")
def fill_(tr, func, args, kwargs, out):
    xi = tr.get(args[0])
    value = args[1]
    zero = not isinstance(value, torch.Tensor) and value == 0
    _set(tr, out, xi.dims, [not zero] * len(xi.dims), zero, xi.src)


@rule("zeros", "ones", "full", "empty", "arange", "scalar_tensor", "randn", "rand", "randint", "eye", "linspace",
      "new_zeros", "new_ones", "new_empty", "new_full", "empty_strided", "randperm", "normal", "tensor")
def factory(tr, func, args, kwargs, out):
    """A new tensor. A dim sized by a module attribute (``torch.zeros(1, self.n_heads, L, S)``) gets
    its own atoms, tied to every other width that attribute sizes."""
    name = func._overloadpacket.__name__
    zero = name in ("zeros", "new_zeros") or (name in ("full", "new_full") and args[-1] == 0)
    tags = tr.chunk.tags if tr.chunk.explicit else []
    for y in flatten_tensors(out):
        dims = [_zeros(n) for n in y.shape]
        if len(tags) == y.dim():
            for j, tag in enumerate(tags):
                if tag is not None and y.shape[j] > 1:
                    dims[j] = tr.t.atoms.fresh(y.shape[j], "channel")
                    tr.t.sizes.append(SizeRecord(tag, y.shape[j], dims[j].copy(), name))
        _set(tr, y, dims, [False] * y.dim(), zero)


@rule("zeros_like", "ones_like", "full_like", "empty_like", "rand_like", "randn_like", "randint_like")
def factory_like(tr, func, args, kwargs, out):
    name = func._overloadpacket.__name__
    xi = tr.get(args[0])
    zero = name == "zeros_like" or (name == "full_like" and args[1] == 0)
    _set(tr, out, xi.dims, [not zero] * len(xi.dims), zero)


# ----------------------------------------------------------------- shape ops


@rule("t")
def t_(tr, func, args, kwargs, out):
    xi = tr.get(args[0])
    order = list(range(len(xi.dims)))[::-1]
    _set(tr, out, [xi.dims[i] for i in order], [xi.dirty[i] for i in order], xi.zero, [xi.src[i] for i in order])


@rule("transpose", "transpose_", "swapaxes", "swapdims")
def transpose(tr, func, args, kwargs, out):
    xi = tr.get(args[0])
    n = len(xi.dims)
    order = list(range(n))
    if n:
        a, b = args[1] % n, args[2] % n
        order[a], order[b] = order[b], order[a]
    _set(tr, out, [xi.dims[i] for i in order], [xi.dirty[i] for i in order], xi.zero, [xi.src[i] for i in order])


@rule("permute")
def permute(tr, func, args, kwargs, out):
    xi = tr.get(args[0])
    n = len(xi.dims)
    order = [d % n for d in args[1]]
    _set(tr, out, [xi.dims[i] for i in order], [xi.dirty[i] for i in order], xi.zero, [xi.src[i] for i in order])


@rule("unsqueeze", "unsqueeze_")
def unsqueeze(tr, func, args, kwargs, out):
    xi = tr.get(args[0])
    d = args[1] % out.dim()
    dims, dirty, src = list(xi.dims), list(xi.dirty), list(xi.src)
    dims.insert(d, _zeros(1))
    dirty.insert(d, False)
    src.insert(d, None)
    _set(tr, out, dims, dirty, xi.zero, src)


@rule("squeeze", "squeeze_")
def squeeze(tr, func, args, kwargs, out):
    x = args[0]
    xi = tr.get(x)
    n = x.dim()
    if len(args) > 1:
        ds = _dims_arg(args[1], n)
    else:
        ds = list(range(n))
    drop = {d for d in ds if x.shape[d] == 1}
    keep = [i for i in range(n) if i not in drop]
    _set(tr, out, [xi.dims[i] for i in keep], [xi.dirty[i] for i in keep], xi.zero, [xi.src[i] for i in keep])


@rule("expand")
def expand(tr, func, args, kwargs, out):
    x = args[0]
    xi = tr.get(x)
    lead = out.dim() - x.dim()
    dims = [_zeros(out.shape[k]) for k in range(lead)]
    dirty, src = [False] * lead, [None] * lead
    for i in range(x.dim()):
        k = lead + i
        if x.shape[i] == out.shape[k]:
            dims.append(xi.dims[i])
            _size_record(tr, k, xi.dims[i], "expand")
        else:
            dims.append(_zeros(out.shape[k]))
        dirty.append(xi.dirty[i])
        src.append(xi.src[i] if x.shape[i] == out.shape[k] else None)
    _set(tr, out, dims, dirty, xi.zero, src)


def _view_groups(ins, outs):
    """Groups ``([input dims], [output dims])`` whose sizes multiply to the same number."""
    groups, i, j = [], 0, 0
    while i < len(ins) or j < len(outs):
        if i < len(ins) and ins[i] == 1 and (j >= len(outs) or outs[j] != 1):
            groups.append(([i], []))
            i += 1
            continue
        if j < len(outs) and outs[j] == 1 and (i >= len(ins) or ins[i] != 1):
            groups.append(([], [j]))
            j += 1
            continue
        gi, gj, pi, pj = [i], [j], ins[i], outs[j]
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                gi.append(i)
                pi *= ins[i]
                i += 1
            else:
                gj.append(j)
                pj *= outs[j]
                j += 1
        groups.append((gi, gj))
    return groups


def _split_many(A, labels, sizes, kind):
    if len(sizes) == 1:
        return [labels]
    outer, inner = A.split(labels, sizes[0], math.prod(sizes[1:]), kind=kind)
    return [outer] + _split_many(A, inner, sizes[1:], kind)


def _merge_many(A, arrays):
    result = arrays[-1]
    for arr in reversed(arrays[:-1]):
        result = A.product(arr, result)
    return result


@rule("view", "_unsafe_view", "reshape", "_reshape_alias", "view_as", "reshape_as")
def view(tr, func, args, kwargs, out):
    x = args[0]
    xi = tr.get(x)
    A = tr.t.atoms
    ins, outs = list(x.shape), list(out.shape)
    sizes = list(args[1]) if len(args) > 1 and isinstance(args[1], (list, tuple)) else list(outs)
    dims = [None] * len(outs)
    dirty = [False] * len(outs)
    src = [None] * len(outs)
    if 0 in ins:
        _set(tr, out, [_zeros(n) for n in outs], [True] * len(outs))
        return
    for gi, gj in _view_groups(ins, outs):
        if len(gi) == 1 and len(gj) == 1:
            dims[gj[0]] = xi.dims[gi[0]]
            dirty[gj[0]] = xi.dirty[gi[0]]
            src[gj[0]] = xi.src[gi[0]]
            continue
        if not gj:
            continue
        merged = _merge_many(A, [xi.dims[i] for i in gi]) if gi else _zeros(1)
        parts = _split_many(A, merged, [outs[j] for j in gj], "head")
        flag = any(xi.dirty[i] for i in gi)
        first_src = next((xi.src[i] for i in gi if xi.src[i] is not None), None)
        for j, part in zip(gj, parts):
            dims[j], dirty[j], src[j] = part, flag, first_src
    if len(sizes) == len(outs):
        for j in range(len(outs)):
            _size_record(tr, j, dims[j], "view")
    _set(tr, out, dims, dirty, xi.zero, src)


@rule("flatten", "unflatten")
def flatten(tr, func, args, kwargs, out):  # only reached if not decomposed
    view(tr, func, (args[0], list(out.shape)), {}, out)


@rule("repeat")
def repeat(tr, func, args, kwargs, out):
    x, reps = args[0], list(args[1])
    xi = tr.get(x)
    A = tr.t.atoms
    lead = len(reps) - x.dim()
    dims = [_zeros(out.shape[k]) for k in range(lead)]
    for i in range(x.dim()):
        r = reps[lead + i]
        dims.append(xi.dims[i] if r == 1 else A.product(_zeros(r), xi.dims[i]))
    _set(tr, out, dims, [False] * lead + list(xi.dirty), xi.zero)


@rule("cat", "concat", "concatenate")
def cat(tr, func, args, kwargs, out):
    tensors = [x for x in args[0] if not (x.dim() == 1 and x.shape[0] == 0)]
    dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
    A = tr.t.atoms
    infos = [tr.get(x) for x in tensors]
    dims, dirty = [], []
    for k in range(out.dim()):
        if k == dim:
            dims.append(np.concatenate([i.dims[k] for i in infos]))
            dirty.append(any(i.dirty[k] for i in infos))
        else:
            arrs = [i.dims[k] for i in infos if len(i.dims[k]) > 1]
            for a in arrs[1:]:
                A.unify_arrays(arrs[0], a)
            dims.append(arrs[0] if arrs else _zeros(out.shape[k]))
            dirty.append(any(i.dirty[k] for i in infos))
    _set(tr, out, dims, dirty, all(i.zero for i in infos))


@rule("stack")
def stack(tr, func, args, kwargs, out):
    tensors = list(args[0])
    dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim()
    A = tr.t.atoms
    infos = [tr.get(x) for x in tensors]
    dims, dirty = [], []
    for k in range(tensors[0].dim()):
        arrs = [i.dims[k] for i in infos if len(i.dims[k]) > 1]
        for a in arrs[1:]:
            A.unify_arrays(arrs[0], a)
        dims.append(arrs[0] if arrs else _zeros(tensors[0].shape[k]))
        dirty.append(any(i.dirty[k] for i in infos))
    dims.insert(dim, _zeros(len(tensors)))
    dirty.insert(dim, False)
    _set(tr, out, dims, dirty, all(i.zero for i in infos))


@rule("split", "split_with_sizes", "unsafe_split", "unsafe_split_with_sizes", "tensor_split")
def split(tr, func, args, kwargs, out):
    x = args[0]
    pieces = list(out)
    name = func._overloadpacket.__name__
    dim = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % x.dim()
    xi = tr.get(x)
    A = tr.t.atoms
    labels = xi.dims[dim]
    sizes = [p.shape[dim] for p in pieces]
    if len(pieces) > 1 and _labelled(tr, labels):
        if len(set(sizes)) == 1 and name in ("split", "unsafe_split", "split_with_sizes", "unsafe_split_with_sizes"):
            n = sizes[0]
            for p in range(1, len(pieces)):  # equal pieces stay equal: tie them position by position
                A.unify_arrays(labels[:n], labels[p * n:(p + 1) * n])
            _size_record(tr, 0, labels[:n], "split")
        else:
            A.freeze_array(labels, f"split into unequal pieces in module {tr.module() or '<model>'}")
    offset = 0
    for p, y in enumerate(pieces):
        dims = list(xi.dims)
        dims[dim] = A.roots(labels[offset:offset + sizes[p]])
        offset += sizes[p]
        _set(tr, y, dims, xi.dirty, xi.zero)


@rule("unbind")
def unbind(tr, func, args, kwargs, out):
    x = args[0]
    dim = (args[1] if len(args) > 1 else 0) % x.dim()
    xi = tr.get(x)
    tr.t.atoms.freeze_array(xi.dims[dim], f"indexed (unbind) in module {tr.module() or '<model>'}")
    for y in out:
        keep = [i for i in range(x.dim()) if i != dim]
        _set(tr, y, [xi.dims[i] for i in keep], [xi.dirty[i] for i in keep], xi.zero)


@rule("select")
def select(tr, func, args, kwargs, out):
    x, dim = args[0], args[1] % args[0].dim()
    xi = tr.get(x)
    tr.t.atoms.freeze_array(xi.dims[dim], f"indexed (select) in module {tr.module() or '<model>'}")
    keep = [i for i in range(x.dim()) if i != dim]
    _set(tr, out, [xi.dims[i] for i in keep], [xi.dirty[i] for i in keep], xi.zero, [xi.src[i] for i in keep])


@rule("slice")
def slice_(tr, func, args, kwargs, out):
    x = args[0]
    dim = (args[1] if len(args) > 1 else 0) % x.dim()
    xi = tr.get(x)
    dims = list(xi.dims)
    if out.shape[dim] != x.shape[dim]:
        tr.t.atoms.freeze_array(xi.dims[dim], f"sliced in module {tr.module() or '<model>'}")
        start = args[2] if len(args) > 2 and args[2] is not None else 0
        end = args[3] if len(args) > 3 and args[3] is not None else x.shape[dim]
        step = args[4] if len(args) > 4 else 1
        dims[dim] = xi.dims[dim][slice(start, min(end, x.shape[dim]), step)][:out.shape[dim]]
        if len(dims[dim]) != out.shape[dim]:
            dims[dim] = _zeros(out.shape[dim])
    _set(tr, out, dims, xi.dirty, xi.zero, xi.src)


@rule("index")
def index(tr, func, args, kwargs, out):
    x, indices = args[0], list(args[1])
    xi = tr.get(x)
    A = tr.t.atoms
    indexed = [i for i, ix in enumerate(indices) if ix is not None]
    for i in indexed:
        A.freeze_array(xi.dims[i], f"indexed (advanced) in module {tr.module() or '<model>'}")
    rest = [i for i in range(x.dim()) if i not in indexed]
    n_new = out.dim() - len(rest)
    contiguous = indexed == list(range(indexed[0], indexed[-1] + 1)) if indexed else True
    if contiguous and indexed:
        before = [i for i in rest if i < indexed[0]]
        after = [i for i in rest if i > indexed[-1]]
        order = before + [None] * n_new + after
    else:
        order = [None] * n_new + rest
    dims = [xi.dims[i] if i is not None else _zeros(out.shape[k]) for k, i in enumerate(order)]
    _set(tr, out, dims, [True] * out.dim())


@rule("index_select")
def index_select(tr, func, args, kwargs, out):
    x, dim = args[0], args[1] % args[0].dim()
    xi = tr.get(x)
    tr.t.atoms.freeze_array(xi.dims[dim], f"indexed (index_select) in module {tr.module() or '<model>'}")
    dims = list(xi.dims)
    dims[dim] = _zeros(out.shape[dim])
    _set(tr, out, dims, xi.dirty, xi.zero)


def _rms_norm(tr, x) -> bool:
    """Is the running module an RMS norm (``x / sqrt(mean(x²) + ε)`` times a weight) over ``x``'s last dim?"""
    module = tr.t.modules.get(tr.module())
    if module is None:
        return False
    name = type(module).__name__
    weight = getattr(module, "weight", None)
    return ((name.endswith("RMSNorm") or name == "T5LayerNorm" or isinstance(module, torch.nn.RMSNorm))
            and isinstance(weight, torch.Tensor) and weight.dim() == 1 and weight.shape[0] == x.shape[-1])


def _passthrough_with_frozen(tr, x, out, frozen_dims, reason, dirty=None):
    xi = tr.get(x)
    for d in frozen_dims:
        tr.t.atoms.freeze_array(xi.dims[d], reason)
    dims = [xi.dims[d] if d not in frozen_dims else _zeros(out.shape[d]) for d in range(out.dim())]
    _set(tr, out, dims, dirty if dirty is not None else xi.dirty, xi.zero)


@rule("roll", "flip")
def roll(tr, func, args, kwargs, out):
    x = args[0]
    name = func._overloadpacket.__name__
    dims_arg = args[2] if name == "roll" and len(args) > 2 else (args[1] if name == "flip" else [])
    ds = _dims_arg(dims_arg, x.dim()) if (dims_arg is not None and dims_arg != []) else list(range(x.dim()))
    _passthrough_with_frozen(tr, x, out, ds, f"{name} in module {tr.module() or '<model>'}")


@rule("tril", "triu")
def tril(tr, func, args, kwargs, out):
    x = args[0]
    _passthrough_with_frozen(tr, x, out, [x.dim() - 2, x.dim() - 1], f"tril/triu in module {tr.module()}")


@rule("constant_pad_nd")
def constant_pad(tr, func, args, kwargs, out):
    x, pad = args[0], list(args[1])
    value = args[2] if len(args) > 2 else 0
    padded = [x.dim() - 1 - i // 2 for i in range(0, len(pad), 2) if pad[i] or pad[i + 1]]
    xi = tr.get(x)
    dirty = [d or (value != 0 and k in padded) for k, d in enumerate(xi.dirty)]
    _passthrough_with_frozen(tr, x, out, padded, f"padded in module {tr.module() or '<model>'}", dirty)


SPATIAL = {}
for _n, _k in (("avg_pool1d", 1), ("avg_pool2d", 2), ("avg_pool3d", 3), ("max_pool1d", 1), ("max_pool2d", 2),
               ("max_pool3d", 3), ("max_pool2d_with_indices", 2), ("max_pool3d_with_indices", 3),
               ("max_pool1d_with_indices", 1), ("_adaptive_avg_pool2d", 2), ("_adaptive_avg_pool3d", 3),
               ("adaptive_avg_pool1d", 1), ("adaptive_max_pool1d", 1), ("adaptive_max_pool2d", 2),
               ("adaptive_max_pool3d", 3), ("upsample_nearest1d", 1), ("upsample_nearest2d", 2),
               ("upsample_nearest3d", 3), ("upsample_bilinear2d", 2), ("upsample_bicubic2d", 2),
               ("upsample_linear1d", 1), ("upsample_trilinear3d", 3), ("_upsample_nearest_exact1d", 1),
               ("_upsample_nearest_exact2d", 2), ("_upsample_nearest_exact3d", 3), ("_upsample_bilinear2d_aa", 2),
               ("reflection_pad1d", 1), ("reflection_pad2d", 2), ("reflection_pad3d", 3),
               ("replication_pad1d", 1), ("replication_pad2d", 2), ("replication_pad3d", 3), ("im2col", 0)):
    SPATIAL[_n] = _k


@rule(*SPATIAL)
def spatial(tr, func, args, kwargs, out):
    """Per-channel spatial ops (pooling, upsampling, padding): leading dims pass, spatial dims are new."""
    x = args[0]
    xi = tr.get(x)
    k = SPATIAL[func._overloadpacket.__name__]
    for y in flatten_tensors(out):
        lead = y.dim() - k
        if lead > x.dim() or k == 0:
            tr.unknown(func, args, kwargs, out)
            return
        dims = list(xi.dims[:lead]) + [_zeros(n) for n in y.shape[lead:]]
        _set(tr, y, dims, list(xi.dirty[:lead]) + [False] * k, xi.zero)


# ------------------------------------------------------------------ reductions

REDUCE_ARGS = {"sum": (1, 2), "mean": (1, 2), "amax": (1, 2), "amin": (1, 2), "max": (1, 2), "min": (1, 2),
               "argmax": (1, 2), "argmin": (1, 2), "logsumexp": (1, 2), "prod": (1, 2), "any": (1, 2),
               "all": (1, 2), "var": (1, None), "std": (1, None), "var_mean": (1, None), "std_mean": (1, None),
               "linalg_vector_norm": (2, 3), "norm": (2, 3), "nansum": (1, 2), "count_nonzero": (1, None)}


def _norm_order(args, kwargs):
    p = args[1] if len(args) > 1 else kwargs.get("ord", kwargs.get("p", 2))
    return 2 if p is None else (float(p) if isinstance(p, (int, float)) else None)


@rule(*REDUCE_ARGS)
def reduce(tr, func, args, kwargs, out):
    name = func._overloadpacket.__name__
    x = args[0]
    xi = tr.get(x)
    di, ki = REDUCE_ARGS[name]
    dim_arg = args[di] if len(args) > di else kwargs.get("dim")
    if name in ("max", "min") and len(args) == 1:
        dim_arg = None
    keepdim = (args[ki] if ki is not None and len(args) > ki else kwargs.get("keepdim", False)) or False
    ds = _dims_arg(dim_arg, x.dim())
    A = tr.t.atoms
    for d in ds:
        if len(xi.dims[d]) > 1 and _labelled(tr, xi.dims[d]):
            if name in ("sum", "nansum") and not xi.dirty[d]:
                continue  # a sum over zeroed entries is exact
            if name in ("linalg_vector_norm", "norm") and not xi.dirty[d] and _norm_order(args, kwargs) in (1, 2, math.inf):
                continue  # so is a 1-, 2- or max-norm: zeros add nothing
            if name == "mean" and d == x.dim() - 1 and len(ds) == 1 and not xi.dirty[d] and _rms_norm(tr, x):
                tr.t.rms_norms.append((tr.module(), xi.dims[d].copy()))
                continue  # materialize rescales the norm's input to keep the mean over the full width
            A.freeze_array(xi.dims[d], f"reduced ({name}) in module {tr.module() or '<model>'}")
    for y in flatten_tensors(out):
        if keepdim:
            dims = [xi.dims[i] if i not in ds else _zeros(1) for i in range(x.dim())]
            dirty = list(xi.dirty)
        else:
            keep = [i for i in range(x.dim()) if i not in ds]
            dims = [xi.dims[i] for i in keep]
            dirty = [xi.dirty[i] for i in keep]
        if len(dims) != y.dim():
            dims, dirty = [_zeros(n) for n in y.shape], [True] * y.dim()
        _set(tr, y, dims, dirty if name in ("sum", "nansum", "mean", "amax", "max") else [True] * y.dim())


@rule("_softmax", "_log_softmax", "softmax", "log_softmax", "_safe_softmax", "cumsum", "cumprod", "sort", "topk", "logcumsumexp")
def along_dim(tr, func, args, kwargs, out):
    """Ops that mix the entries along one dim: that dim's atoms are frozen, the others pass."""
    name = func._overloadpacket.__name__
    x = args[0]
    dim = args[2] if name == "topk" and len(args) > 2 else (args[1] if len(args) > 1 else -1)
    dim = (dim if isinstance(dim, int) else -1) % max(x.dim(), 1)
    for y in flatten_tensors(out):
        _passthrough_with_frozen(tr, x, y, [dim] if y.shape == x.shape else list(range(x.dim())),
                                 f"{name} in module {tr.module() or '<model>'}", [True] * y.dim())
        if y.shape != x.shape:
            _set(tr, y, [_zeros(n) for n in y.shape], [True] * y.dim())


# --------------------------------------------------------------- normalisation


@rule("native_layer_norm")
def layer_norm(tr, func, args, kwargs, out):
    """LayerNorm over the last dims. Their atoms stay prunable only for an ``nn.LayerNorm`` (or
    subclass) over one dim whose removed entries are exactly zero in the masked model:
    materialize then gives it its full-width class (:class:`prunekit.core.pruned_layers.PrunedLayerNorm`),
    which keeps the statistics over the original width. Otherwise the normalised width is frozen."""
    x, shape, w, b = args[0], list(args[1]), args[2], args[3]
    xi = tr.get(x)
    A = tr.t.atoms
    k = len(shape)
    module = tr.module()
    owner = tr.t.modules.get(module)
    exact = (k == 1 and isinstance(owner, torch.nn.LayerNorm) and not xi.dirty[-1]
             and isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor))
    reason = f"normalised by LayerNorm in module {module or '<model>'}"
    for j in range(k):
        d = x.dim() - k + j
        for p in (w, b):
            if p is not None:
                A.unify_arrays(tr.get(p).dims[j], xi.dims[d])
        if not exact:
            A.freeze_array(xi.dims[d], reason)
    if exact and _labelled(tr, xi.dims[-1]):
        tr.t.norms.append((module, xi.dims[-1].copy()))
    dirty = [True] * x.dim()
    if exact:
        dirty[-1] = False  # removed entries: (0 - μ)/σ · γ + β with γ, β zeroed
    _set(tr, out[0], xi.dims, dirty)
    tr.none_out(out[1:])


@rule("native_group_norm")
def group_norm(tr, func, args, kwargs, out):
    """GroupNorm over channels (dim 1). Prunable channel by channel for an ``nn.GroupNorm`` whose
    input has exact zeros at removed channels: materialize turns it into its full-width class
    (:class:`prunekit.core.pruned_layers.PrunedGroupNorm`), whose group statistics still cover every
    original channel. Otherwise the channels are frozen."""
    x, w, b = args[0], args[1], args[2]
    xi = tr.get(x)
    A = tr.t.atoms
    module = tr.module()
    exact = isinstance(tr.t.modules.get(module), torch.nn.GroupNorm) and not xi.dirty[1]
    for p in (w, b):
        if p is not None:
            A.unify_arrays(tr.get(p).dims[0], xi.dims[1])
    if not exact:
        A.freeze_array(xi.dims[1], f"normalised by GroupNorm in module {module or '<model>'}")
    elif _labelled(tr, xi.dims[1]):
        tr.t.norms.append((module, xi.dims[1].copy()))
    dirty = [True] * x.dim()
    dirty[1] = not (exact and isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor))
    _set(tr, out[0], xi.dims, dirty)
    tr.none_out(out[1:])


@rule("native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
      "_native_batch_norm_legit_functional", "batch_norm", "cudnn_batch_norm", "miopen_batch_norm")
def batch_norm(tr, func, args, kwargs, out):
    x = args[0]
    params = [a for a in args[1:5] if isinstance(a, torch.Tensor)]
    xi = tr.get(x)
    A = tr.t.atoms
    c = 1 if x.dim() > 1 else 0
    for p in params:
        if p.dim() == 1 and p.shape[0] == x.shape[c]:
            A.unify_arrays(tr.get(p).dims[0], xi.dims[c])
    w, b = args[1], args[2]
    clean = isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor)
    dirty = list(xi.dirty)
    dirty[c] = not clean
    y = out[0] if isinstance(out, (tuple, list)) else out
    _set(tr, y, xi.dims, dirty)
    if isinstance(out, (tuple, list)):
        tr.none_out(out[1:])


@rule("_weight_norm_interface", "_weight_norm")
def weight_norm(tr, func, args, kwargs, out):
    """``w = v · g / ‖v‖`` with the norm over every dim but ``dim``: zeroed entries of ``v`` add
    nothing to the norm, so every dim of ``v`` passes; ``g`` shares ``v``'s ``dim``."""
    v, g = args[0], args[1]
    dim = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % v.dim()
    vi = tr.get(v)
    if g.dim() == v.dim() and g.shape[dim] == v.shape[dim] > 1:
        tr.t.atoms.unify_arrays(tr.get(g).dims[dim], vi.dims[dim])
    w = out[0] if isinstance(out, (tuple, list)) else out
    _set(tr, w, vi.dims, vi.dirty, vi.zero)
    if isinstance(out, (tuple, list)):
        tr.none_out(out[1:])


@rule("embedding")
def embedding(tr, func, args, kwargs, out):
    w, idx = args[0], args[1]
    wi = tr.get(w)
    tr.t.atoms.freeze_array(wi.dims[0], "embedding rows (looked up by index)")
    _set(tr, out, [_zeros(n) for n in idx.shape] + [wi.dims[1]], [False] * out.dim())


@rule("_prelu_kernel", "prelu")
def prelu(tr, func, args, kwargs, out):
    x, w = args[0], args[1]
    xi, wi = tr.get(x), tr.get(w)
    c = 1 if x.dim() > 1 else 0
    if w.numel() > 1:
        tr.t.atoms.unify_arrays(wi.dims[0], xi.dims[c])
    _set(tr, out, xi.dims, xi.dirty, xi.zero)


# ------------------------------------------------------------------ contractions


def _mac(tr, const, arrays):
    tr.t.mac_terms.append((int(const), [np.asarray(a) for a in arrays]))


@rule("mm")
def mm(tr, func, args, kwargs, out, bias=None):
    a, b = args[0], args[1]
    ai, bi = tr.get(a), tr.get(b)
    _contract(tr, ai, 1, bi, 0, f"contracted between two activations in module {tr.module() or '<model>'}")
    dims = [ai.dims[0], bi.dims[1]]
    dirty = [ai.dirty[0], bi.dirty[1]]
    if bias is not None:
        _add_bias(tr, bias, dims, dirty)
    _mac(tr, 1, [ai.dims[0], ai.dims[1], bi.dims[1]])
    _set(tr, out, dims, dirty)


@rule("_grouped_mm")
def grouped_mm(tr, func, args, kwargs, out):
    """Mixture-of-experts GEMM: ``(T, K) × (G, K, N)`` with row offsets per group, or ``(G, M, K) × (G, K, N)``.
    ``K`` is contracted, ``N`` passes on; the group dim (experts) is not a width here."""
    a, b = args[0], args[1]
    ai, bi = tr.get(a), tr.get(b)
    if b.dim() != 3 or a.dim() not in (2, 3) or len(args) > 3 and args[3] is not None or kwargs.get("bias") is not None:
        raise NotImplementedError("grouped mm layout")
    tr.t.atoms.freeze_array(bi.dims[0], f"experts (a grouped matmul) in module {tr.module() or '<model>'}")
    if a.dim() == 3:
        tr.t.atoms.unify_arrays(ai.dims[0], bi.dims[0])
    _contract(tr, ai, a.dim() - 1, bi, 1, f"contracted between two activations in module {tr.module() or '<model>'}")
    dims = [ai.dims[d] for d in range(a.dim() - 1)] + [bi.dims[2]]
    dirty = [ai.dirty[d] for d in range(a.dim() - 1)] + [bi.dirty[2]]
    _mac(tr, 1, [ai.dims[d] for d in range(a.dim())] + [bi.dims[2]])
    _set(tr, out, dims, dirty)


def _add_bias(tr, bias, dims, dirty):
    bi = tr.get(bias)
    for j in range(bias.dim()):
        k = len(dims) - bias.dim() + j
        if bias.shape[j] == len(dims[k]) and bias.shape[j] > 1:
            tr.t.atoms.unify_arrays(bi.dims[j], dims[k])
            dirty[k] = dirty[k] or bi.dirty[j]
        elif bias.shape[j] == 1 and len(dims[k]) > 1:
            dirty[k] = True


@rule("addmm")
def addmm(tr, func, args, kwargs, out):
    mm(tr, func, (args[1], args[2]), kwargs, out, bias=args[0])


@rule("bmm")
def bmm(tr, func, args, kwargs, out, bias=None):
    a, b = args[0], args[1]
    ai, bi = tr.get(a), tr.get(b)
    A = tr.t.atoms
    A.unify_arrays(ai.dims[0], bi.dims[0])
    _contract(tr, ai, 2, bi, 1, f"contracted between two activations in module {tr.module() or '<model>'}")
    dims = [ai.dims[0], ai.dims[1], bi.dims[2]]
    dirty = [ai.dirty[0] and bi.dirty[0], ai.dirty[1], bi.dirty[2]]
    if bias is not None:
        _add_bias(tr, bias, dims, dirty)
    _mac(tr, 1, [ai.dims[0], ai.dims[1], ai.dims[2], bi.dims[2]])
    _set(tr, out, dims, dirty)


@rule("baddbmm")
def baddbmm(tr, func, args, kwargs, out):
    bmm(tr, func, (args[1], args[2]), kwargs, out, bias=args[0])


@rule("convolution", "_convolution")
def convolution(tr, func, args, kwargs, out):
    x, w, b = args[0], args[1], args[2]
    transposed, groups = args[6], args[8]
    xi, wi = tr.get(x), tr.get(w)
    A = tr.t.atoms
    batched = x.dim() == w.dim()
    c = 1 if batched else 0
    cin = x.shape[c]
    g_in, i_in = A.split(xi.dims[c], groups, cin // groups, kind="group")
    if not transposed:
        g_w, o = A.split(wi.dims[0], groups, w.shape[0] // groups, kind="group")
        A.unify_arrays(g_w, g_in)
        A.unify_arrays(wi.dims[1], i_in)
        if wi.src[1] is not None:
            tr.t.contracted.add(wi.src[1])
        out_labels = A.roots(wi.dims[0])
    else:
        g_w, i_w = A.split(wi.dims[0], groups, w.shape[0] // groups, kind="group")
        A.unify_arrays(g_w, g_in)
        A.unify_arrays(i_w, i_in)
        if wi.src[0] is not None:
            tr.t.contracted.add(wi.src[0])
        out_labels = A.product(g_in, wi.dims[1])
    for d in wi.dims[2:]:
        A.freeze_array(d, "convolution kernel positions")
    dirty_c = False
    if isinstance(b, torch.Tensor):
        A.unify_arrays(tr.get(b).dims[0], out_labels)
    spatial = (x if transposed else out).shape[(2 if batched else 1):]
    n = x.shape[0] if batched else 1
    _mac(tr, n * math.prod(spatial) * math.prod(w.shape[2:]), [wi.dims[0], wi.dims[1]])
    module = tr.module()
    tr.t.attrs.append((module, "groups", A.roots(g_in)))
    dims = [_zeros(s) for s in out.shape]
    dims[c] = out_labels
    dirty = [False] * out.dim()
    dirty[c] = dirty_c
    _set(tr, out, dims, dirty)


SDPA = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_fused_attention_overrideable", "scaled_dot_product_attention")


@rule(*SDPA)
def sdpa(tr, func, args, kwargs, out):
    q, k, v = args[0], args[1], args[2]
    qi, ki, vi = tr.get(q), tr.get(k), tr.get(v)
    A = tr.t.atoms
    where = tr.module() or "<model>"
    lead = q.dim() - 2
    for d in range(lead):
        nq, nk = q.shape[d], k.shape[d]
        if nq == nk:
            A.unify_arrays(ki.dims[d], qi.dims[d])
            A.unify_arrays(vi.dims[d], qi.dims[d])
        elif nk > 0 and nq % nk == 0:  # grouped-query attention: each kv head serves nq/nk query heads
            A.unify_arrays(np.repeat(ki.dims[d], nq // nk), qi.dims[d])
            A.unify_arrays(np.repeat(vi.dims[d], nq // nk), qi.dims[d])
        else:
            for info in (qi, ki, vi):
                A.freeze_array(info.dims[d], f"attention batch dims differ in module {where}")
    _contract(tr, qi, q.dim() - 1, ki, k.dim() - 1, f"query-key contraction in module {where}")
    if kwargs.get("scale") is None and (func._overloadpacket.__name__ != "scaled_dot_product_attention"
                                        or len(args) < 7):
        A.freeze_array(qi.dims[-1], f"default attention scale 1/sqrt(head_dim) in module {where}")
    mask = kwargs.get("attn_mask", args[3] if len(args) > 3 and isinstance(args[3], torch.Tensor) else None)
    if isinstance(mask, torch.Tensor):
        mi = tr.get(mask)
        for j in range(mask.dim()):
            d = q.dim() - mask.dim() + j
            if 0 <= d < lead and mask.shape[j] == q.shape[d] and mask.shape[j] > 1:
                A.unify_arrays(mi.dims[j], qi.dims[d])
            else:
                A.freeze_array(mi.dims[j], f"attention mask in module {where}")
    y = out[0] if isinstance(out, (tuple, list)) else out
    dims = [qi.dims[d] for d in range(lead)] + [_zeros(q.shape[-2]), vi.dims[-1]]
    dirty = [vi.dirty[d] for d in range(lead)] + [True, vi.dirty[-1]]
    lead_arrays = [qi.dims[d] for d in range(lead)]
    L, S = _zeros(q.shape[-2]), _zeros(k.shape[-2])
    _mac(tr, 1, lead_arrays + [L, S, qi.dims[-1]])
    _mac(tr, 1, lead_arrays + [L, S, vi.dims[-1]])
    _set(tr, y, dims, dirty)
    if isinstance(out, (tuple, list)):
        tr.none_out(out[1:])


# --------------------------------------------------------------- module rules


def rnn_module(tr, name, module, args, kwargs, output) -> None:
    """``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``: hidden unit ``j`` is one atom across every gate row,
    the recurrent columns, every layer and direction (they share ``hidden_size``)."""
    A = tr.t.atoms
    x = args[0] if args else kwargs.get("input")
    hx = args[1] if len(args) > 1 else kwargs.get("hx")
    outs = flatten_tensors(output)
    if not isinstance(x, torch.Tensor):
        for y in outs:
            _set(tr, y, [_zeros(n) for n in y.shape], [True] * y.dim())
        tr.t.unknown[("packed sequence", name)] += 1
        for p in module.parameters():
            for d in tr.get(p).dims:
                A.freeze_array(d, f"{name}: packed sequences are not followed")
        return
    gates = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
    H = module.hidden_size
    units = A.fresh(H, "unit")
    if getattr(module, "proj_size", 0) or hx is not None:
        A.freeze_array(units, f"{name}: an initial state or a projection fixes the hidden size")
    rows = A.product(_zeros(gates), units)
    layer_in = tr.get(x).dims[-1]
    dirs = 2 if module.bidirectional else 1
    for layer in range(module.num_layers):
        for direction in range(dirs):
            suffix = f"_l{layer}" + ("_reverse" if direction else "")
            w_ih, w_hh = getattr(module, "weight_ih" + suffix), getattr(module, "weight_hh" + suffix)
            wi, hi = tr.get(w_ih), tr.get(w_hh)
            A.unify_arrays(wi.dims[0], rows)
            A.unify_arrays(wi.dims[1], layer_in)
            A.unify_arrays(hi.dims[0], rows)
            A.unify_arrays(hi.dims[1], units)
            tr.t.contracted.update({wi.src[1], hi.src[1]})
            steps = x.numel() // x.shape[-1]  # time steps × batch: every step multiplies both matrices
            tr.t.mac_terms.append((steps, [rows, layer_in]))
            tr.t.mac_terms.append((steps, [rows, units]))
            for bname in ("bias_ih" + suffix, "bias_hh" + suffix):
                bias = getattr(module, bname, None)
                if bias is not None:
                    A.unify_arrays(tr.get(bias).dims[0], rows)
        layer_in = np.concatenate([units] * dirs)
    tr.t.attrs.append((name, "hidden_size", A.roots(units)))
    for y in outs:
        dims = [_zeros(n) for n in y.shape]
        if y.shape[-1] == H * dirs:
            dims[-1] = A.roots(layer_in)
        elif y.shape[-1] == H:
            dims[-1] = A.roots(units)
        _set(tr, y, dims, [True] * y.dim())
