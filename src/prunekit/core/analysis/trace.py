"""Follow every prunable width through one forward pass, op by op (ATen level).

:func:`trace` runs the model once under a :class:`~torch.utils._python_dispatch.TorchDispatchMode`.
Every tensor gets one label array per dimension (:mod:`prunekit.core.analysis.atoms`);
parameters and buffers get fresh atoms; each ATen op applies its rule from
:mod:`prunekit.core.analysis.rules`, which unifies, splits, merges or freezes atoms.
What the pass records:

* the label arrays of every parameter and buffer dimension (what to slice),
* the MAC terms of every counted op as products of label arrays (exact costs),
* the integer size arguments of views, expands, splits and factories together with
  the attributes of the calling module that hold them (what to update),
* why atoms were frozen (unknown ops are reported; model inputs/outputs are not).

Modules with their own rule (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) are followed at
module level; ``nn.MultiheadAttention`` runs the attention materialize puts in its place
(:mod:`prunekit.core.analysis.attention`; opaque if it uses ``bias_k``/``bias_v`` or
``add_zero_attn``); ignored modules are opaque (frozen).

Example:
    >>> import torch
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> t = trace(m, torch.randn(3, 4))
    >>> rows = t.atoms.roots(t.labels["0.weight"][0]); cols = t.atoms.roots(t.labels["2.weight"][1])
    >>> bool((rows == cols).all()), bool((t.atoms.roots(t.labels["2.weight"][0]) == 0).all())
    (True, True)
"""
from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from .atoms import Atoms

__all__ = ["trace", "Trace", "TensorInfo", "flatten_tensors"]

log = logging.getLogger(__name__)


@dataclass
class TensorInfo:
    """Labels of one tensor: an atom array per dim, whether removed indices may hold non-zero
    values (``dirty``), whether the whole tensor is zeros, and the parameter dim each dim comes from."""

    dims: list
    dirty: list
    zero: bool = False
    src: list = None

    def __post_init__(self):
        if self.src is None:
            self.src = [None] * len(self.dims)


@dataclass
class SizeRecord:
    """An integer size argument, read from attribute ``tag = (module, attr)``, that a width flows through."""

    tag: tuple
    value: int
    labels: np.ndarray
    op: str


@dataclass
class Trace:
    """Everything one pass learned (see the module docstring)."""

    atoms: Atoms
    labels: dict = field(default_factory=dict)          # param/buffer name -> [atom array per dim]
    shapes: dict = field(default_factory=dict)           # param/buffer name -> shape
    is_param: dict = field(default_factory=dict)         # name -> True for parameters
    contracted: set = field(default_factory=set)         # (name, dim): a consumer (input) dim
    mac_terms: list = field(default_factory=list)        # (constant, [atom arrays])
    mac_formula_total: int = 0
    sizes: list = field(default_factory=list)            # SizeRecord
    value_uses: set = field(default_factory=set)         # attribute tags used as numbers (a scale)
    caches: list = field(default_factory=list)           # (module name, dict attribute) refilled by forward
    attrs: list = field(default_factory=list)            # (module name, attribute, atom array)
    norms: list = field(default_factory=list)            # (LayerNorm/GroupNorm name, atoms of its width)
    rms_norms: list = field(default_factory=list)        # (RMS-norm module name, atoms of its width)
    unknown: dict = field(default_factory=lambda: defaultdict(int))  # (op, module) -> count
    modules: dict = field(default_factory=dict)          # name -> module
    owners: dict = field(default_factory=dict)           # param/buffer name -> [(module name, attr)]
    segments: dict = field(default_factory=dict)         # (name, dim) -> {(start, stop)}: packed blocks, each a layer


def flatten_tensors(obj) -> list[torch.Tensor]:
    """Every tensor in a nested output: tensors, tuples, lists, dicts, dataclasses, HF ``ModelOutput``."""
    out, stack = [], [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            out.append(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (tuple, list)):
            stack.extend(item)
        elif dataclasses.is_dataclass(item) and not isinstance(item, type):
            stack.extend(getattr(item, f.name) for f in dataclasses.fields(item))
    return out


_DERIVED = (torch.chunk, torch.Tensor.chunk, torch.flatten, torch.Tensor.flatten)
_USER_SIZES = (torch.Tensor.view, torch.Tensor.reshape, torch.reshape, torch.Tensor.expand, torch.Tensor.split,
               torch.split, torch.Tensor.repeat)


class _Tagged(int):
    """An ``int`` module attribute that remembers where it lives, so a size passed to a view names it.

    Turned into a float (``math.sqrt(self.head_dim)``, ``self.head_dim ** -0.5``, ``d / self.n``)
    it is used as a number, not only as a size: its tag goes to ``_Tagged.value_uses``.
    """

    value_uses: set | None = None  # set by trace() while it runs

    def __new__(cls, value: int, tag: tuple):
        obj = super().__new__(cls, value)
        obj.tag = tag
        return obj

    def _used(self):
        if _Tagged.value_uses is not None:
            _Tagged.value_uses.add(self.tag)

    def __float__(self):
        self._used()
        return int(self).__float__()

    def __truediv__(self, other):
        self._used()
        return int(self) / other

    def __rtruediv__(self, other):
        self._used()
        return other / int(self)

    def __pow__(self, other, mod=None):
        result = pow(int(self), other, mod)
        if isinstance(result, float):
            self._used()
        return result


_FACTORIES = (torch.zeros, torch.ones, torch.empty, torch.full, torch.randn, torch.rand)
_NEW_FACTORIES = (torch.Tensor.new_zeros, torch.Tensor.new_ones, torch.Tensor.new_empty, torch.Tensor.new_full)


def _size_args(func, args) -> list:
    if func in _FACTORIES:  # torch.zeros(2, 3) / torch.zeros((2, 3)) / torch.full((2, 3), v)
        rest = list(args[:1]) if func is torch.full else list(args)
    elif func in _NEW_FACTORIES:
        rest = list(args[1:2]) if func is torch.Tensor.new_full else list(args[1:])
    else:
        rest = list(args[1:2]) if func in (torch.Tensor.split, torch.split) else list(args[1:])
    if len(rest) == 1 and isinstance(rest[0], (tuple, list, torch.Size)):
        rest = list(rest[0])
    return rest


def _tag_attributes(model: nn.Module) -> list:
    """Replace every int attribute of every module by a :class:`_Tagged` twin; returns what to restore."""
    restore = []
    for name, module in model.named_modules():
        for attr, value in list(vars(module).items()):
            if type(value) is int and value > 1 and not attr.startswith("_"):
                module.__dict__[attr] = _Tagged(value, (name, attr))
                restore.append((module, attr, value))
    return restore


def _empty_tensor_caches(model: nn.Module) -> list:
    """Non-empty dict attributes holding only tensors (caches that ``forward`` fills, LeViT's attention
    biases) are emptied for the pass, so that ``forward`` recomputes them where the analysis sees
    it; returns ``(module name, module, attribute, old dict)`` to restore."""
    emptied = []
    for name, module in model.named_modules():
        for attr, value in list(vars(module).items()):
            if (type(value) is dict and value and not attr.startswith("_")
                    and all(isinstance(v, torch.Tensor) for v in value.values())):
                module.__dict__[attr] = {}
                emptied.append((name, module, attr, value))
    return emptied


class _PythonCalls(TorchFunctionMode):
    """Which Python-level call issued an ATen op: sizes passed explicitly by the model's code to
    ``view``/``reshape``/``expand``/``split`` or to a factory (``torch.zeros``) may come from its attributes; sizes that ``chunk``,
    ``flatten`` or library code (einsum, matmul) compute are not."""

    def __init__(self):
        super().__init__()
        self.depth = 0   # inside chunk / flatten
        self.user = 0    # inside an explicit view / reshape / expand / split
        self.tags: list = []  # (module, attribute) of each size argument of that call, or None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _DERIVED:
            self.depth += 1
            try:
                return func(*args, **kwargs)
            finally:
                self.depth -= 1
        if func in _USER_SIZES or func in _FACTORIES or func in _NEW_FACTORIES:
            self.user += 1
            saved = self.tags
            self.tags = [getattr(v, "tag", None) for v in _size_args(func, args)]
            try:
                return func(*args, **kwargs)
            finally:
                self.user -= 1
                self.tags = saved
        return func(*args, **kwargs)

    @property
    def explicit(self) -> bool:
        return self.user > 0 and self.depth == 0


class Tracer(TorchDispatchMode):
    """The dispatch mode: applies a rule per op (see :mod:`prunekit.core.analysis.rules`)."""

    def __init__(self, model: nn.Module, ignored: set, chunk_flag: _PythonCalls):
        super().__init__()
        from . import rules
        self.rules = rules
        self.t = Trace(atoms=Atoms())
        self.info: dict[int, TensorInfo] = {}
        self.keep: list = []  # tensors kept alive so their ids stay unique during the pass
        self.stack: list[str] = [""]
        self.suppress = 0   # inside a module followed by a module-level rule
        self.opaque = 0     # inside an opaque module: everything frozen
        self.chunk = chunk_flag
        self.ignored = ignored
        self.layout_before = None  # (shape, stride, offset) of an in-place restride's input
        self.param_names: dict[int, str] = {}
        self.param_kind: dict[int, str] = {}
        self.followed: set[int] = set()  # ids of the nn.MultiheadAttention modules followed (analysis.attention)
        for mname, module in model.named_modules(remove_duplicate=False):
            self.t.modules.setdefault(mname, module)
            kind = _kind_of(module)
            for pname, p in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
                if p is None:
                    continue
                full = f"{mname}.{pname}" if mname else pname
                self.param_names.setdefault(id(p), full)
                self.param_kind.setdefault(id(p), kind)
                self.t.owners.setdefault(self.param_names[id(p)], []).append((mname, pname))
                self.t.is_param[self.param_names[id(p)]] = isinstance(p, nn.Parameter)
                self.keep.append(p)

    # ------------------------------------------------------------------ labels
    def get(self, x: torch.Tensor) -> TensorInfo:
        info = self.info.get(id(x))
        if info is not None and len(info.dims) == x.dim():
            return info
        name = self.param_names.get(id(x))
        if name is not None:
            kind = self.param_kind[id(x)]
            dims = [self.t.atoms.fresh(n, kind) for n in x.shape]
            if self.opaque or name.rsplit(".", 1)[0] in self.ignored:
                for d in dims:
                    self.t.atoms.freeze_array(d, f"{name} belongs to an ignored or opaque module")
            info = TensorInfo(dims, [False] * x.dim(), src=[(name, d) for d in range(x.dim())])
            self.t.labels[name] = [d.copy() for d in dims]
            self.t.shapes[name] = tuple(x.shape)
        else:
            info = TensorInfo([np.zeros(n, dtype=np.int64) for n in x.shape], [False] * x.dim())
        self.set(x, info)
        return info

    def set(self, x: torch.Tensor, info: TensorInfo) -> None:
        self.info[id(x)] = info
        self.keep.append(x)

    def module(self) -> str:
        return self.stack[-1]

    def freeze_tensor(self, x, reason: str) -> None:
        if isinstance(x, torch.Tensor):
            for d in self.get(x).dims:
                self.t.atoms.freeze_array(d, reason)

    def none_out(self, out) -> None:
        for y in flatten_tensors(out):
            self.set(y, TensorInfo([np.zeros(n, dtype=np.int64) for n in y.shape], [True] * y.dim()))

    def unknown(self, func, args, kwargs, out) -> None:
        """No rule: freeze every labelled input, outputs carry no labels."""
        reason = f"op {func._overloadpacket.__name__} (no rule) in module {self.module() or '<model>'}"
        labelled = False
        for x in flatten_tensors((args, kwargs)):
            info = self.get(x)
            if any(self.t.atoms.roots(d).any() for d in info.dims):
                labelled = True
                self.freeze_tensor(x, reason)
        if labelled:
            self.t.unknown[(func._overloadpacket.__name__, self.module())] += 1
        self.none_out(out)

    # ---------------------------------------------------------------- dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten.as_strided_.default:  # its rule needs the layout before the op
            self.layout_before = (tuple(args[0].shape), args[0].stride(), args[0].storage_offset())
        out = func(*args, **kwargs)
        from ..measure import MAC_FORMULAS, _output_of
        formula = MAC_FORMULAS.get(func._overloadpacket)
        macs = int(formula(*args, out=_output_of(out), **kwargs)) if formula is not None else 0
        self.t.mac_formula_total += macs
        if self.suppress or self.opaque:
            if macs and not self.suppress:  # a module rule (RNN) writes its own MAC terms
                self.t.mac_terms.append((macs, []))
            if self.opaque and not self.suppress:
                for x in flatten_tensors((args, kwargs)):
                    self.freeze_tensor(x, f"inside opaque module {self.module()}")
            self.none_out(out)
            return out
        n_terms = len(self.t.mac_terms)
        try:
            self.rules.apply(self, func, args, kwargs, out)
        except Exception as error:  # a rule that fails must never produce a wrong model
            log.debug("rule for %s failed: %r", func, error)
            del self.t.mac_terms[n_terms:]
            self.unknown(func, args, kwargs, out)
            if macs:
                self.t.mac_terms.append((macs, []))
        return out

    # ----------------------------------------------------------- module hooks
    def pre_hook(self, name: str, module: nn.Module, args, kwargs):
        self.stack.append(name)
        if self.suppress or self.opaque:
            if self.suppress:
                self.suppress += 1
            else:
                self.opaque += 1
            return
        if name in self.ignored or (isinstance(module, nn.MultiheadAttention) and id(module) not in self.followed):
            reason = (f"module {name} is ignored" if name in self.ignored
                      else f"{type(module).__name__} {name} uses bias_k/bias_v or add_zero_attn (no rule)")
            for x in flatten_tensors((args, kwargs)):
                self.freeze_tensor(x, reason)
            if name not in self.ignored:
                self.t.unknown[(type(module).__name__, name)] += 1
            self.opaque += 1
        elif isinstance(module, nn.RNNBase):
            self.suppress += 1

    def post_hook(self, name: str, module: nn.Module, args, kwargs, output):
        self.stack.pop()
        if self.opaque:
            self.opaque -= 1
            if self.opaque == 0:
                self.none_out(output)
            return
        if self.suppress:
            self.suppress -= 1
            if self.suppress == 0 and isinstance(module, nn.RNNBase):
                self.rules.rnn_module(self, name, module, args, kwargs, output)


def _kind_of(module: nn.Module) -> str:
    if isinstance(module, nn.modules.conv._ConvNd):
        return "channel"
    if isinstance(module, (nn.Linear, nn.MultiheadAttention)) or type(module).__name__ == "Conv1D":
        return "neuron"
    if isinstance(module, nn.Embedding):
        return "embedding"
    if isinstance(module, nn.RNNBase):
        return "unit"
    return "channel"


def trace(model: nn.Module, example_inputs, ignore: set | None = None) -> Trace:
    """One forward pass of ``model`` on ``example_inputs`` under the analysis (model in eval mode)."""
    from ..measure import call_model
    from .attention import follow
    ignored = set(ignore or ())
    flag = _PythonCalls()
    tracer = Tracer(model, ignored, flag)
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(
            lambda m, a, k, name=name: tracer.pre_hook(name, m, a, k), with_kwargs=True))
        handles.append(module.register_forward_hook(
            lambda m, a, k, o, name=name: tracer.post_hook(name, m, a, k, o), with_kwargs=True, always_call=True))
    # eval mode, every module's own flag restored; fused RNN kernels off (their products then reach
    # the counted ops, as in prunekit.count), only where there is an RNN: they slow convolutions down
    from ..measure import _EvalNoGrad
    mode = _EvalNoGrad(model, counting=any(isinstance(m, nn.RNNBase) for m in model.modules()))
    restore = _tag_attributes(model)
    emptied = _empty_tensor_caches(model)
    _Tagged.value_uses = tracer.t.value_uses
    try:
        with mode, flag, tracer, follow(tracer, model, ignored):
            output = call_model(model, example_inputs)
    finally:
        _Tagged.value_uses = None
        for module, attr, value in restore:
            module.__dict__[attr] = value
        for name, module, attr, value in emptied:
            if getattr(module, attr, None):  # refilled by forward: a cache, dropped when materializing
                tracer.t.caches.append((name, attr))
            module.__dict__[attr] = value
        for h in handles:
            h.remove()
    t = tracer.t
    for y in flatten_tensors(output):
        for d in tracer.get(y).dims:
            t.atoms.freeze_array(d, "reaches the model output")
    return t
