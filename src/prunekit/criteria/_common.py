"""Plumbing shared by the data-driven criteria: batches of any structure, eval mode, the model call."""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from prunekit.core.measure import call_model
from prunekit.core.structures import _bar_disabled

from .losses import OutputSpec, check_output_spec, select_output


@contextlib.contextmanager
def evaluation_mode(model: nn.Module):
    """Put every module in eval mode; restore each module's own training flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def reference_kernels():
    """Switch off the fused kernels that have neither a forward-mode derivative nor a double
    backward, so the model runs through ops that have both: the ``nn.MultiheadAttention`` /
    ``TransformerEncoderLayer`` fast path, the oneDNN and cuDNN RNN kernels (and with them
    oneDNN / cuDNN convolutions: slower, so this is a fallback only) and the fused
    scaled-dot-product attention kernels (math backend). Every flag is restored on exit.

    Example:
        >>> import torch
        >>> before = torch.backends.cudnn.enabled
        >>> with reference_kernels():
        ...     torch.backends.cudnn.enabled
        False
        >>> torch.backends.cudnn.enabled == before
        True
    """
    with contextlib.ExitStack() as stack:
        mha = getattr(torch.backends, "mha", None)
        if mha is not None:
            old_fastpath = mha.get_fastpath_enabled()
            mha.set_fastpath_enabled(False)
            stack.callback(mha.set_fastpath_enabled, old_fastpath)
        if hasattr(torch._C, "_get_mkldnn_enabled"):  # (torch.backends.mkldnn.flags also resets tf32 flags)
            old_mkldnn = torch._C._get_mkldnn_enabled()
            torch._C._set_mkldnn_enabled(False)
            stack.callback(torch._C._set_mkldnn_enabled, old_mkldnn)
        old_cudnn = torch.backends.cudnn.enabled
        torch.backends.cudnn.enabled = False
        stack.callback(setattr, torch.backends.cudnn, "enabled", old_cudnn)
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel
        except ImportError:  # older torch: the fused kernels stay selectable
            pass
        else:
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        yield


# ---------------------------------------------------------------------------- progress

#: ``(progress, label)`` for the bars of :class:`Batches`; set by :func:`saliency` through :func:`progress_of`
_PROGRESS: contextvars.ContextVar[tuple[Optional[bool], str]] = contextvars.ContextVar(
    "prunekit_saliency_progress", default=(None, "saliency"))


@contextlib.contextmanager
def progress_of(progress: Optional[bool], label: str = "saliency"):
    """Bars of the batch passes inside: ``True`` shown, ``False`` hidden, ``None`` shown when stderr is a terminal."""
    _bar_disabled(progress)  # validates
    token = _PROGRESS.set((progress, label))
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def _sample_total(data, num_samples: Optional[int]) -> Optional[int]:
    """How many samples the pass will see, where that is cheap to know (else ``None``)."""
    if num_samples is not None:
        return num_samples
    dataset = getattr(data, "dataset", None)  # a DataLoader
    if dataset is not None and hasattr(dataset, "__len__"):
        return len(dataset)
    if isinstance(data, (list, tuple)):
        try:
            return sum(int(_first_tensor(batch[0]).shape[0]) for batch in data)
        except (TypeError, IndexError, KeyError, AttributeError):  # malformed: __iter__ says why
            return None
    return None


# ---------------------------------------------------------------------------- pytrees of a batch

def _flatten(obj, leaves: list):
    """Append the leaves of ``obj`` (tensors and anything not a tuple/list/mapping) to ``leaves``;
    return the spec :func:`_unflatten` rebuilds it from (mappings come back as ``dict``)."""
    if isinstance(obj, Mapping):
        keys = list(obj.keys())
        return ("map", keys, [_flatten(obj[k], leaves) for k in keys])
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return ("namedtuple", type(obj), [_flatten(v, leaves) for v in obj])
    if isinstance(obj, (tuple, list)):
        return ("list" if isinstance(obj, list) else "tuple", None, [_flatten(v, leaves) for v in obj])
    leaves.append(obj)
    return None


def _unflatten(spec, it: Iterator):
    if spec is None:
        return next(it)
    kind, meta, children = spec
    values = [_unflatten(c, it) for c in children]
    if kind == "map":
        return dict(zip(meta, values))
    if kind == "namedtuple":
        return meta(*values)
    return values if kind == "list" else tuple(values)


class SampleTree:
    """A tensor, a tuple/list or a mapping (nested) whose tensors of leading size ``n`` are per-sample.

    ``batched`` lists the leaves that are tensors with leading dimension ``n``; every
    other leaf (a tensor of another leading size, a number, ``None``) is shared by all
    samples and passed unchanged.

    Example:
        >>> import torch
        >>> tree = SampleTree({"x": torch.zeros(4, 2), "scale": torch.ones(3), "flag": True}, 4)
        >>> [tuple(t.shape) for t in tree.batched_values()]
        [(4, 2)]
        >>> part = tree.take(1, 3).obj
        >>> part["x"].shape, part["scale"].shape, part["flag"]
        (torch.Size([2, 2]), torch.Size([3]), True)
    """

    def __init__(self, obj: Any, n: int):
        leaves: list = []
        self._spec = _flatten(obj, leaves)
        self.leaves, self.n = leaves, n
        self.batched = [i for i, t in enumerate(leaves) if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == n]
        self.obj = _unflatten(self._spec, iter(leaves))

    def _with(self, leaves: list, n: int) -> "SampleTree":
        tree = SampleTree.__new__(SampleTree)
        tree._spec, tree.leaves, tree.batched, tree.n = self._spec, leaves, self.batched, n
        tree.obj = _unflatten(self._spec, iter(leaves))
        return tree

    def take(self, start: int, stop: int) -> "SampleTree":
        """Samples ``start:stop`` (every batched leaf sliced, the others shared)."""
        leaves = list(self.leaves)
        for i in self.batched:
            leaves[i] = leaves[i][start:stop]
        return self._with(leaves, max(0, min(stop, self.n) - start))

    def to(self, device) -> "SampleTree":
        return self._with([t.to(device) if isinstance(t, torch.Tensor) else t for t in self.leaves], self.n)

    def batched_values(self, start: Optional[int] = None, stop: Optional[int] = None) -> list[torch.Tensor]:
        """The batched leaves (optionally samples ``start:stop``): what ``vmap`` maps over."""
        return [self.leaves[i][start:stop] for i in self.batched]

    def one_sample(self, values: Sequence[torch.Tensor]):
        """The object for one sample: ``values`` (one per batched leaf, without the batch
        dimension, e.g. inside ``vmap``) get a leading dimension 1; other leaves are shared."""
        leaves = list(self.leaves)
        for i, v in zip(self.batched, values):
            leaves[i] = v.unsqueeze(0)
        return _unflatten(self._spec, iter(leaves))


def _first_tensor(obj) -> Optional[torch.Tensor]:
    leaves: list = []
    _flatten(obj, leaves)
    return next((t for t in leaves if isinstance(t, torch.Tensor)), None)


@dataclass
class Batch:
    """One batch: ``inputs`` and ``targets`` as :class:`SampleTree`, ``n`` samples."""

    inputs: SampleTree
    targets: SampleTree
    n: int

    def take(self, start: int, stop: int) -> "Batch":
        return Batch(self.inputs.take(start, stop), self.targets.take(start, stop), max(0, min(stop, self.n) - start))


def _is_single_batch(data) -> bool:
    """``data`` is one ``(inputs, targets)`` pair rather than a list of batches."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        return False
    first, second = data
    if isinstance(first, (torch.Tensor, Mapping)) or isinstance(second, torch.Tensor):
        return True
    return isinstance(first, (tuple, list)) and len(first) > 0 and all(isinstance(t, torch.Tensor) for t in first) \
        and not isinstance(second, (tuple, list))


class Batches:
    """Iterate :class:`Batch` es over ``data``, stopping after ``num_samples`` samples.

    ``data`` is any iterable of ``(inputs, targets)`` batches (a DataLoader, a list of
    tuples) or one ``(inputs, targets)`` pair. ``inputs`` is a tensor, a tuple/list of
    tensors (positional arguments) or a mapping (keyword arguments), nested freely; the
    batch size is the leading size of its first tensor. ``targets`` is a tensor or any
    such structure. The last batch is truncated so that exactly
    ``min(num_samples, len(data))`` samples are used: every tensor of inputs and targets
    whose leading size is the batch size is cut, the others are passed unchanged. After
    iterating, ``self.total`` holds the number of samples used.

    Example:
        >>> import torch
        >>> data = [((torch.zeros(3, 2), torch.ones(2)), torch.zeros(3)), ((torch.zeros(3, 2), torch.ones(2)), torch.zeros(3))]
        >>> [(b.n, tuple(b.inputs.obj[0].shape), tuple(b.inputs.obj[1].shape)) for b in Batches(data, 4, "cpu")]
        [(3, (3, 2), (2,)), (1, (1, 2), (2,))]
    """

    def __init__(self, data: Iterable, num_samples: Optional[int], device: torch.device, *,
                 allow_empty: bool = False):
        if data is None:
            raise ValueError("this saliency method needs data: an iterable of (inputs, targets) batches")
        if num_samples is not None and (not isinstance(num_samples, int)
                                        or num_samples < (0 if allow_empty else 1)):
            raise ValueError(f"num_samples must be a positive int or None, got {num_samples!r}")
        if _is_single_batch(data):
            data = [tuple(data)]
        self.data, self.num_samples, self.device = data, num_samples, device
        self.allow_empty = allow_empty  # one rank of several may see no sample (checked after the reduction)
        self.total = 0

    def __iter__(self) -> Iterator[Batch]:
        self.total = 0
        if self.num_samples == 0:  # a rank whose share of num_samples is 0 (allow_empty only)
            return
        progress, label = _PROGRESS.get()
        with tqdm(total=_sample_total(self.data, self.num_samples), desc=label, unit="sample", leave=False,
                  disable=_bar_disabled(progress), dynamic_ncols=True) as bar:
            for item in self._items():
                bar.update(item.n)
                yield item
        if self.total == 0 and not self.allow_empty:
            raise ValueError("saliency: the data yielded no samples")

    def _items(self) -> Iterator[Batch]:
        for batch in self.data:
            if self.num_samples is not None and self.total >= self.num_samples:
                break
            if isinstance(batch, (torch.Tensor, Mapping, str)) or not hasattr(batch, "__getitem__"):
                raise ValueError(f"each batch must be (inputs, targets), got {type(batch).__name__}")
            try:
                inputs, targets = batch[0], batch[1]
            except (TypeError, IndexError, KeyError):
                raise ValueError(f"each batch must be (inputs, targets), got {type(batch).__name__}") from None
            first = _first_tensor(inputs)
            if first is None or first.dim() == 0:
                raise ValueError(f"batch inputs must be a tensor, a tuple/list or a mapping holding tensors with a "
                                 f"batch dimension; got {type(inputs).__name__}")
            n = int(first.shape[0])
            item = Batch(SampleTree(inputs, n), SampleTree(targets, n), n)
            if self.num_samples is not None and self.total + n > self.num_samples:
                item = item.take(0, self.num_samples - self.total)
            if item.n == 0:
                continue
            self.total += item.n
            yield Batch(item.inputs.to(self.device), item.targets.to(self.device), item.n)


# ---------------------------------------------------------------------------- the model call

class _Call(nn.Module):
    """``call_model(model, inputs)`` as a module, so ``functional_call`` can swap its parameters."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, inputs):
        return call_model(self.model, inputs)


class ModelCall:
    """``forward(params, inputs) -> output tensor``: the model with parameters ``params``
    (``{name: tensor}`` of ``model.named_parameters()`` names), called on a tensor, tuple
    or mapping of inputs (:func:`prunekit.core.measure.call_model`), its output reduced to one
    tensor by ``output`` (:func:`prunekit.criteria.losses.select_output`).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Two(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.lin = nn.Linear(2, 3)
        ...     def forward(self, x, shift):
        ...         return {"hidden": x, "logits": self.lin(x) + shift}
        >>> m = Two()
        >>> call = ModelCall(m, "logits")
        >>> params = {k: torch.zeros_like(v) for k, v in m.named_parameters()}
        >>> call(params, {"x": torch.ones(4, 2), "shift": 1.0}).sum().item()
        12.0
    """

    def __init__(self, model: nn.Module, output: OutputSpec = None):
        check_output_spec(output)
        self.wrapper, self.output = _Call(model), output

    def __call__(self, params: dict, inputs) -> torch.Tensor:
        raw = functional_call(self.wrapper, {"model." + k: v for k, v in params.items()}, (inputs,))
        return select_output(raw, self.output)

    def plain(self, inputs) -> torch.Tensor:
        """The output with the model's own parameters."""
        return select_output(call_model(self.wrapper.model, inputs), self.output)
