"""Measure what pruning buys: parameters, MACs, latency, throughput and peak memory.

MACs are counted at the **aten level** with a :class:`~torch.utils._python_dispatch.TorchDispatchMode`,
not with module hooks, so every multiply-accumulate that reaches a kernel is counted
whatever module (or no module) issued it: ``einsum``, ``matmul``, ``bmm``, ``baddbmm``,
``addmm``, ``mm``, ``mv``, ``dot``, convolutions (grouped, depthwise, dilated,
transposed), ``linear`` and ``scaled_dot_product_attention``. Module-hook counters
(Torch-Pruning's ``count_ops_and_params``, thop, ptflops) miss the adjacency
aggregation of a graph convolution, which is an einsum inside the module's
``forward``; here it is counted.

Conventions (the ones papers use):

* one MAC = one multiply plus one add; ``flops = 2 · macs``;
* only products of two operands count (matrix products and convolutions);
  bias additions, activations, normalisation, softmax and element-wise ops count 0;
* a convolution counts every output position with the whole kernel, padding
  included; a causal attention counts the full ``L × S`` score matrix.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunekit.core.measure import count
    >>> stats = count(nn.Linear(4, 3), torch.randn(2, 4))
    >>> stats["params"], stats["macs"]
    (15, 24)
"""
from __future__ import annotations

import math
import resource
import statistics
import sys
import time
import warnings
import weakref
from collections import defaultdict
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from . import allocator

__all__ = ["count", "count_params", "measure_latency", "time_in_rounds", "time_paired", "peak_memory", "compare", "with_batch",
           "MAC_FORMULAS"]

aten = torch.ops.aten

# --------------------------------------------------------------------------------------
# MAC formulas, one per aten op (an OpOverloadPacket), in MACs. Arguments are the op's
# own positional arguments (tensors, not shapes) and its output.
# --------------------------------------------------------------------------------------


def _mm(a, b, *_, **__) -> int:
    # [m, k] @ [k, n] -> m·k·n
    m, k = a.shape
    return m * k * b.shape[-1]


def _addmm(bias, a, b, *_, **__) -> int:
    return _mm(a, b)


def _bmm(a, b, *_, **__) -> int:
    # [B, m, k] @ [B, k, n] -> B·m·k·n
    bsz, m, k = a.shape
    return bsz * m * k * b.shape[-1]


def _baddbmm(bias, a, b, *_, **__) -> int:
    return _bmm(a, b)


def _mv(mat, vec, *_, **__) -> int:
    # [m, k] @ [k] -> m·k
    return mat.shape[0] * mat.shape[1]


def _addmv(bias, mat, vec, *_, **__) -> int:
    return _mv(mat, vec)


def _dot(a, b, *_, **__) -> int:
    return a.numel()


def _addr(bias, u, v, *_, **__) -> int:
    # outer product: one multiply (and one add of the bias) per entry
    return u.numel() * v.numel()


def _linear(x, weight, *_, **__) -> int:
    # x [..., in] · Wᵀ [in, out] -> prod(x.shape[:-1]) · in · out
    return math.prod(x.shape[:-1]) * weight.numel()


def _convolution(x, weight, bias, stride, padding, dilation, transposed, *_, out=None, **__) -> int:
    """N · prod(spatial) · prod(weight.shape).

    A convolution's weight is ``[C_out, C_in/groups, *k]``: every output position of
    every sample costs ``C_out · C_in/groups · prod(k)`` MACs. A transposed one's weight
    is ``[C_in, C_out/groups, *k]`` and every *input* position is scattered into
    ``C_out/groups · prod(k)`` outputs per input channel.
    """
    batched = x.dim() == weight.dim()
    n = x.shape[0] if batched else 1
    spatial = (x if transposed else out).shape[(2 if batched else 1):]
    return n * math.prod(spatial) * weight.numel()


def _sdpa(q, k, v, *_, **__) -> int:
    """q [..., L, E], k [..., S, E], v [..., S, Ev] -> prod(q.shape[:-1]) · S · (E + Ev).

    ``Q Kᵀ`` costs ``L·S·E`` and ``softmax(·) V`` costs ``L·S·Ev`` per batch·head; the
    query's head count is used, so grouped-query attention is counted as executed.
    """
    return math.prod(q.shape[:-1]) * k.shape[-2] * (q.shape[-1] + v.shape[-1])


def _grouped_mm(a, b, *_, out=None, **__) -> int:
    # (T, K) x (G, K, N) with offsets: every row meets one group's matrix -> T·K·N; (G, M, K) x (G, K, N) -> G·M·K·N
    if a.dim() == 2 and b.dim() == 3:
        return a.shape[0] * a.shape[1] * b.shape[2]
    if a.dim() == 3 and b.dim() == 3:
        return a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
    return 0


def _packets(*names: str) -> list:
    return [getattr(aten, n) for n in names if hasattr(aten, n)]


#: aten op packet -> ``f(*args, out=output) -> MACs``. Add an entry to count a custom op.
MAC_FORMULAS: dict[Any, Callable[..., int]] = {}
for _ops, _f in (
    (("mm", "_int_mm", "_scaled_mm"), _mm),
    (("addmm", "_addmm_activation"), _addmm),
    (("bmm",), _bmm),
    (("_grouped_mm",), _grouped_mm),
    (("baddbmm", "addbmm"), _baddbmm),
    (("mv",), _mv),
    (("addmv",), _addmv),
    (("dot", "vdot"), _dot),
    (("addr",), _addr),
    (("linear",), _linear),
    (("convolution", "_convolution", "convolution_overrideable"), _convolution),
    (("_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
      "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
      "_scaled_dot_product_fused_attention_overrideable"), _sdpa),
):
    for _p in _packets(*_ops):
        MAC_FORMULAS[_p] = _f

# Ops that carry MACs but that we cannot split into counted ops: a warning names them.
_SUSPECT_WORDS = ("mm", "conv", "attention", "linear", "matmul", "einsum", "lstm", "gru", "rnn", "dot", "mv")
_NOT_SUSPECT = {"_to_copy", "copy_", "mvlgamma", "mvlgamma_"}


def _output_of(out):
    """The first tensor of an op's output (convolution's shape is needed)."""
    flat, _ = tree_flatten(out)
    return next((t for t in flat if isinstance(t, torch.Tensor)), None)


class _MacCounter(TorchDispatchMode):
    """Dispatch mode that sums MACs per aten op and per innermost running module."""

    def __init__(self, formulas: Mapping[Any, Callable[..., int]]):
        super().__init__()
        self.formulas = formulas
        self.total = 0
        self.by_op: dict[str, int] = defaultdict(int)
        self.by_module: dict[str, int] = defaultdict(int)
        self.uncounted: dict[str, int] = defaultdict(int)
        self.module_stack: list[str] = [""]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func._overloadpacket
        if packet not in self.formulas:
            # A composite op that reached us (rare): count its decomposition instead.
            with self:
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
        out = func(*args, **kwargs)
        formula = self.formulas.get(packet)
        if formula is not None:
            macs = int(formula(*args, out=_output_of(out), **kwargs))
            self.total += macs
            self.by_op[str(packet).split(".")[-1]] += macs
            self.by_module[self.module_stack[-1]] += macs
        else:
            name = packet.__name__
            if any(w in name for w in _SUSPECT_WORDS) and name not in _NOT_SUSPECT:
                self.uncounted[str(packet)] += 1
        return out


def call_model(model: nn.Module, inputs):
    """``model(inputs)``, ``model(*inputs)`` for a tuple/list, ``model(**inputs)`` for a mapping.

    Example:
        >>> call_model(lambda a, b: a + b, (1, 2))
        3
    """
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


class _EvalNoGrad:
    """Eval mode + no_grad, restoring every module's own training flag afterwards.

    With ``counting=True`` the fused kernels that hide their matrix products from a
    dispatch mode are switched off for the duration: the ``nn.MultiheadAttention`` /
    ``TransformerEncoderLayer`` fast path and the oneDNN / cuDNN RNN kernels (LSTM,
    GRU and RNN then run step by step through ``mm``/``addmm``).
    """

    def __init__(self, model: nn.Module, counting: bool = False):
        self.model, self.counting = model, counting
        self.restore: list[Callable[[], None]] = []

    def __enter__(self):
        self.flags = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        self.grad = torch.no_grad()
        self.grad.__enter__()
        if self.counting:
            mha = getattr(torch.backends, "mha", None)
            if mha is not None:
                old = mha.get_fastpath_enabled()
                mha.set_fastpath_enabled(False)
                self.restore.append(lambda: mha.set_fastpath_enabled(old))
            if hasattr(torch._C, "_get_mkldnn_enabled"):
                old_mkldnn = torch._C._get_mkldnn_enabled()
                torch._C._set_mkldnn_enabled(False)
                self.restore.append(lambda: torch._C._set_mkldnn_enabled(old_mkldnn))
            old_cudnn = torch.backends.cudnn.enabled
            torch.backends.cudnn.enabled = False
            self.restore.append(lambda: setattr(torch.backends.cudnn, "enabled", old_cudnn))
        return self

    def __exit__(self, *exc):
        while self.restore:
            self.restore.pop()()
        self.grad.__exit__(*exc)
        for m, flag in self.flags:
            m.training = flag
        return False


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter entries, each shared (tied) parameter counted once.

    .. math:: \\text{params} = \\sum_{p \\in \\text{unique}(\\text{parameters})} \\text{numel}(p)

    Buffers (BatchNorm statistics, fixed adjacencies) are not parameters and count 0.

    Example:
        >>> from torch import nn
        >>> lin = nn.Linear(4, 4, bias=False)
        >>> count_params(nn.Sequential(lin, lin))   # the same weight twice
        16
    """
    seen: set[int] = set()
    total = 0
    for p in model.parameters():  # already de-duplicated by identity
        key = id(p)
        if key in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(key)
        total += p.numel()
    return total


def count(model: nn.Module, example_inputs, formulas: Mapping[Any, Callable[..., int]] | None = None) -> dict:
    """Parameters and multiply-accumulates of one forward pass on ``example_inputs``.

    The forward runs once, in eval mode under ``torch.no_grad()`` (every module's
    training flag is restored afterwards), with PyTorch's fused
    ``nn.MultiheadAttention`` / ``TransformerEncoderLayer`` fast path and the oneDNN /
    cuDNN RNN kernels switched off so their products reach countable ops (what is
    counted is the math those kernels compute). MACs per op:

    * ``mm``/``addmm`` ``[m,k]@[k,n]``: ``m·k·n``; ``bmm``/``baddbmm``: ``B·m·k·n``;
      ``mv``: ``m·k``; ``dot``: ``k``; ``linear``: ``prod(x.shape[:-1])·in·out``;
    * ``einsum`` / ``matmul`` / ``tensordot`` decompose into the above (counted once);
    * convolution: ``N · prod(out spatial) · C_out · C_in/groups · prod(kernel)``;
      transposed: ``N · prod(in spatial) · C_in · C_out/groups · prod(kernel)``;
    * ``scaled_dot_product_attention``: ``B·H·L·S·(E + Ev)`` (fused kernels, or the
      two ``bmm`` of the math path).

    Args:
        model: any ``nn.Module``.
        example_inputs: a tensor (``model(x)``), a tuple/list (``model(*x)``) or a
            dict of keyword arguments (``model(**x)``), on the model's device.
        formulas: op packet → MAC formula; defaults to :data:`MAC_FORMULAS`.

    Returns:
        ``{"params", "trainable_params", "macs" (of the whole batch), "flops" (= 2·macs),
        "batch_size" (dim 0 of the first tensor input), "macs_per_sample" (= macs /
        batch_size, the figure papers and Torch-Pruning report), "by_module" (MACs of ops run while that module was the innermost one running,
        keyed by qualified name, ``""`` for the model itself), "by_op" (MACs per aten
        op), "uncounted_ops" (matrix-like ops that had no formula, with call counts),
        "predicted_latency"}``. ``count`` never times: ``predicted_latency`` is a copy of the latency
        prediction the model's plan records (``model.prunekit_plan.meta["latency"]``, set when
        :func:`prunekit.select` had a latency model: ``predicted_ms``, ``dense_ms``, ``batch_size``,
        ``threads``, ``device``), else ``None``; :func:`compare` measures against it.

    Example:
        >>> import torch
        >>> from prunekit.models.layers import GraphConv
        >>> a = torch.eye(5).repeat(3, 1, 1)                   # K=3 subsets, V=5 joints
        >>> stats = count(GraphConv(2, 4, a), torch.randn(1, 2, 6, 5))
        >>> stats["macs"] == 1*6*5*2*3*4 + 1*3*4*6*5*5       # 1×1 conv + einsum
        True
        >>> stats["by_module"]
        {'conv': 720, '': 1800}
    """
    names = {m: n for n, m in model.named_modules()}
    counter = _MacCounter(MAC_FORMULAS if formulas is None else formulas)
    handles = []

    def pre(mod, _args):
        counter.module_stack.append(names[mod])

    def post(mod, _args, _out):
        if len(counter.module_stack) > 1:
            counter.module_stack.pop()

    for mod in names:
        if mod is not model:
            handles.append(mod.register_forward_pre_hook(pre))
            handles.append(mod.register_forward_hook(post, always_call=True))
    try:
        with _EvalNoGrad(model, counting=True), counter:
            call_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    if counter.uncounted:
        warnings.warn(
            "prunekit.core.measure.count: no MAC formula for "
            + ", ".join(f"{k} (×{v})" for k, v in sorted(counter.uncounted.items()))
            + "; their MACs are not included (add one to prunekit.core.measure.MAC_FORMULAS)",
            stacklevel=2,
        )
    try:
        batch = _reference_batch(example_inputs)
    except ValueError:
        batch = None
    return {
        "params": count_params(model),
        "trainable_params": count_params(model, trainable_only=True),
        "macs": counter.total,
        "flops": 2 * counter.total,
        "batch_size": batch,
        "macs_per_sample": counter.total / batch if batch else None,
        "by_module": {k: v for k, v in counter.by_module.items() if v},
        "by_op": dict(counter.by_op),
        "uncounted_ops": dict(counter.uncounted),
        "predicted_latency": _plan_latency(getattr(model, "prunekit_plan", None)),
    }


def _plan_latency(plan) -> dict | None:
    """A copy of ``plan.meta["latency"]`` (the latency model's prediction; ``plan`` or its dict form), or ``None``."""
    meta = plan.get("meta") if isinstance(plan, Mapping) else getattr(plan, "meta", None)
    record = (meta or {}).get("latency") if isinstance(meta, Mapping) else None
    return dict(record) if isinstance(record, Mapping) and "predicted_ms" in record else None


# --------------------------------------------------------------------------------------
# Latency
# --------------------------------------------------------------------------------------


def _tensors(inputs) -> list[torch.Tensor]:
    flat, _ = tree_flatten(inputs)
    return [t for t in flat if isinstance(t, torch.Tensor)]


def _reference_batch(inputs) -> int:
    ts = [t for t in _tensors(inputs) if t.dim() > 0]
    if not ts:
        raise ValueError("measure: example_inputs hold no tensor with a batch dimension")
    return ts[0].shape[0]


def _map_tensors(inputs, fn):
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, Mapping):
        return {k: _map_tensors(v, fn) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(_map_tensors(v, fn) for v in inputs)
    return inputs


def with_batch(inputs, batch_size: int):
    """``inputs`` with batch dimension ``batch_size``: rows ``i mod B`` of every tensor
    whose dim 0 equals the reference batch ``B`` (dim 0 of the first tensor); other
    tensors and non-tensors pass unchanged.

    Example:
        >>> with_batch(torch.arange(3).view(3, 1), 5).view(-1).tolist()
        [0, 1, 2, 0, 1]
    """
    ref = _reference_batch(inputs)

    def resize(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0 or t.shape[0] != ref or batch_size == ref:
            return t
        idx = torch.arange(batch_size, device=t.device) % ref
        return t.index_select(0, idx).contiguous()

    return _map_tensors(inputs, resize)


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timing_device(device, model: nn.Module) -> torch.device:
    """Where to time: ``device``, else the model's; a bare ``"cuda"`` becomes the current CUDA device."""
    dev = torch.device(device) if device is not None else _model_device(model)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _steady_host(dev: torch.device) -> str:
    """Before timing on the CPU: glibc's malloc pinned to keep freed blocks (:func:`allocator.pin`),
    so passes do not page-fault their activations in again; the allocator regime in force."""
    return allocator.pin() if dev.type == "cpu" else "device"


def _timed_pass(model: nn.Module, x, dev: torch.device) -> float:
    """Seconds of one forward pass (bracketed by ``torch.cuda.synchronize`` on CUDA)."""
    _sync(dev)
    t0 = time.perf_counter()
    call_model(model, x)
    _sync(dev)
    return time.perf_counter() - t0


def _percentile(sorted_xs: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), ``q`` in [0, 100]."""
    if len(sorted_xs) == 1:
        return float(sorted_xs[0])
    pos = (len(sorted_xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return float(sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo))


def _summary(times_s: list[float], batch_size: int) -> dict:
    ms = sorted(t * 1e3 for t in times_s)
    median = statistics.median(ms)
    return {
        "batch_size": batch_size,
        "median_ms": median,
        "mean_ms": statistics.fmean(ms),
        "std_ms": statistics.stdev(ms) if len(ms) > 1 else 0.0,
        "min_ms": ms[0],
        "max_ms": ms[-1],
        "p10_ms": _percentile(ms, 10),
        "p25_ms": _percentile(ms, 25),
        "p75_ms": _percentile(ms, 75),
        "p90_ms": _percentile(ms, 90),
        "iqr_ms": _percentile(ms, 75) - _percentile(ms, 25),
        "throughput": batch_size / (median / 1e3) if median > 0 else float("inf"),
        "times_ms": [t * 1e3 for t in times_s],
    }


class _OnDevice:
    """Move the model to ``device`` for the duration, then back to where it was."""

    def __init__(self, model: nn.Module, device: torch.device):
        self.model, self.device = model, device

    def __enter__(self):
        self.home = _model_device(self.model)
        if self.home != self.device:
            self.model.to(self.device)
        return self

    def __exit__(self, *exc):
        if self.home != self.device:
            self.model.to(self.home)
        return False


def device_name(device: str | torch.device = "cpu") -> str:
    """What a latency was measured on: the GPU's name, or the CPU model (``/proc/cpuinfo``), else the platform.

    Example:
        >>> isinstance(device_name("cpu"), str) and len(device_name("cpu")) > 0
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return f"{platform.machine()} {platform.processor() or platform.system()}".strip()


def measure_latency(model: nn.Module, example_inputs, batch_sizes: Iterable[int] | None = None, warmup: int = 5,
                    repeats: int = 20, threads: int | None = None, device: str | torch.device | None = None) -> dict:
    """Wall-clock latency and throughput of ``model``'s forward pass, per batch size.

    For every batch size ``b`` the inputs are resized along dim 0 (see
    :func:`with_batch`), the model runs ``warmup`` untimed passes, then ``repeats``
    passes each timed with ``time.perf_counter`` (bracketed by
    ``torch.cuda.synchronize`` on CUDA), in eval mode under ``no_grad``:

    .. math:: \\text{throughput}_b = b \\,/\\, \\text{median}_b \\quad [\\text{samples/s}]

    Args:
        model: the model; its training flags are restored afterwards.
        example_inputs: tensor, tuple of tensors or dict of kwargs (as :func:`count`).
        batch_sizes: batch sizes to sweep; ``None`` keeps the example's own.
        warmup, repeats: untimed and timed passes per batch size.
        threads: ``torch.set_num_threads`` for the run (restored afterwards).
        device: run there (model moved for the run and moved back); default: the
            model's device.

    Returns:
        ``{"device", "threads", "torch", "warmup", "repeats", "allocator" (on the CPU, glibc's
        malloc is pinned first: :func:`prunekit.core.allocator.pin`), "batches": {b: {"batch_size",
        "median_ms", "mean_ms", "std_ms", "min_ms", "max_ms", "p10_ms", "p25_ms",
        "p75_ms", "p90_ms", "iqr_ms", "throughput", "times_ms"}}}``.

    Example:
        >>> lat = measure_latency(nn.Linear(8, 8), torch.randn(4, 8), batch_sizes=[1, 16], repeats=5)
        >>> sorted(lat["batches"]), lat["batches"][16]["throughput"] > 0
        ([1, 16], True)
    """
    if repeats < 1 or warmup < 0:
        raise ValueError("measure_latency: need repeats >= 1 and warmup >= 0")
    dev = _timing_device(device, model)
    inputs = _map_tensors(example_inputs, lambda t: t.to(dev))
    sizes = [_reference_batch(inputs)] if batch_sizes is None else [int(b) for b in batch_sizes]
    old_threads = torch.get_num_threads()
    result: dict[str, Any] = {"device": str(dev), "torch": torch.__version__, "warmup": warmup, "repeats": repeats,
                              "allocator": _steady_host(dev), "batches": {}}
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        result["threads"] = torch.get_num_threads()
        with _OnDevice(model, dev), _EvalNoGrad(model):
            for b in sizes:
                x = with_batch(inputs, b)
                for _ in range(warmup):
                    call_model(model, x)
                _sync(dev)
                times = [_timed_pass(model, x, dev) for _ in range(repeats)]
                result["batches"][b] = _summary(times, b)
    finally:
        torch.set_num_threads(old_threads)
    return result


def time_in_rounds(named_models: Mapping[str, nn.Module], example_inputs, batch_size: int | None = None,
                   rounds: int = 3, repeats: int = 10, warmup: int = 3, threads: int | None = None,
                   device: str | torch.device | None = None, statistic: str = "median_ms",
                   per_round: list | None = None, full: bool = False) -> dict:
    """Median latency (ms) of each model at one batch size, best of ``rounds`` rounds taken in alternation.

    Every round times every model once (:func:`measure_latency`: ``warmup`` untimed
    passes, median of ``repeats``), in turn; the best (lowest) median of the rounds is
    kept. Timing the models in alternation, rather than each at a different moment, keeps
    the comparison fair on a machine whose load changes (the one implementation of it:
    the demo, the latency model and the benchmarks use it).
    ``statistic="min_ms"`` keeps the fastest pass instead of the median (more stable on a
    machine shared with other jobs; any key of :func:`measure_latency`'s per-batch stats).
    ``per_round``: a list that receives each round's ``{name: ms}`` (to see how the times moved).
    ``full=True``: each model's whole stats dict of its best round (median, IQR, percentiles…)
    instead of the one number.

    Example:
        >>> ms = time_in_rounds({"a": nn.Linear(8, 8), "b": nn.Linear(8, 2)}, torch.randn(1, 8), repeats=2)
        >>> sorted(ms), all(v > 0 for v in ms.values())
        (['a', 'b'], True)
    """
    if rounds < 1:
        raise ValueError("time_in_rounds: need rounds >= 1")
    b = _reference_batch(example_inputs) if batch_size is None else int(batch_size)
    best: dict = {name: None for name in named_models}
    for _ in range(rounds):
        this_round = {}
        for name, model in named_models.items():
            stats = measure_latency(model, example_inputs, batch_sizes=[b], warmup=warmup, repeats=repeats,
                                    threads=threads, device=device)["batches"][b]
            this_round[name] = stats[statistic]
            if best[name] is None or stats[statistic] < best[name][statistic]:
                best[name] = stats
        if per_round is not None:
            per_round.append(this_round)
    return best if full else {name: stats[statistic] for name, stats in best.items()}


def time_paired(reference: nn.Module, candidate: nn.Module, example_inputs, batch_size: int | None = None,
                pairs: int = 15, warmup: int = 2, threads: int | None = None,
                device: str | torch.device | None = None) -> dict:
    """Speed of ``candidate`` relative to ``reference``, pass by pass: the median of per-pair ratios.

    The two models run in alternation, one pass each per pair (order swapped every pair:
    AB BA AB ...), and each pair gives the ratio of their times:

    .. math:: \\rho = \\operatorname{median}_i \\; t^{\\text{candidate}}_i \\,/\\, t^{\\text{reference}}_i

    Two passes a few milliseconds apart see the same machine, so a machine whose speed moves
    by tens of percent from second to second (a shared CPU) moves both times of a pair
    together and cancels in the ratio; the median ignores the pairs an interruption hit.
    Returns ``{"ratio", "reference_ms", "candidate_ms" (medians), "reference_min_ms",
    "candidate_min_ms" (fastest passes), "fastest_ratio" (``candidate_min_ms / reference_min_ms``:
    the fastest passes, both from the same stretch of time), "ratio_iqr" (spread of the pairs'
    ratios, p75 − p25), "pairs", "ratios" (sorted), "faults_per_pass" (minor page faults per
    pass, reference and candidate: 0 once the allocator is steady), "allocator" (the regime,
    :mod:`prunekit.core.allocator`)}``; ``1 - ratio`` is the saving. On the CPU, glibc's malloc
    is pinned first (:func:`prunekit.core.allocator.pin`).

    Example:
        >>> r = time_paired(nn.Linear(64, 64), nn.Linear(64, 8), torch.randn(1, 64), pairs=3)
        >>> r["pairs"], r["ratio"] > 0
        (3, True)
    """
    if pairs < 1 or warmup < 0:
        raise ValueError("time_paired: need pairs >= 1 and warmup >= 0")
    dev = _timing_device(device, reference)
    inputs = _map_tensors(example_inputs, lambda t: t.to(dev))
    x = with_batch(inputs, _reference_batch(inputs) if batch_size is None else int(batch_size))
    old_threads = torch.get_num_threads()
    regime = _steady_host(dev)
    times: dict[int, list[float]] = {0: [], 1: []}
    faults = [0, 0]
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        with _OnDevice(reference, dev), _OnDevice(candidate, dev), _EvalNoGrad(reference), _EvalNoGrad(candidate):
            models = (reference, candidate)
            for _ in range(warmup):
                for model in models:
                    call_model(model, x)
            for i in range(pairs):
                for k in ((0, 1) if i % 2 == 0 else (1, 0)):
                    before = allocator.minor_faults()
                    times[k].append(1e3 * _timed_pass(models[k], x, dev))
                    faults[k] += allocator.minor_faults() - before
    finally:
        torch.set_num_threads(old_threads)
    ratios = sorted(c / r for r, c in zip(times[0], times[1]))
    return {"ratio": statistics.median(ratios), "reference_ms": statistics.median(times[0]),
            "candidate_ms": statistics.median(times[1]), "reference_min_ms": min(times[0]),
            "candidate_min_ms": min(times[1]), "fastest_ratio": min(times[1]) / min(times[0]), "pairs": pairs,
            "ratio_iqr": _percentile(ratios, 75) - _percentile(ratios, 25), "ratios": ratios,
            "faults_per_pass": [f / pairs for f in faults], "allocator": regime}


# --------------------------------------------------------------------------------------
# Peak memory
# --------------------------------------------------------------------------------------


class _LiveBytes(TorchDispatchMode):
    """Tracks bytes of tensor storages created by ops and still referenced; keeps the peak."""

    def __init__(self, external: Iterable[torch.Tensor]):
        super().__init__()
        self.external = {t.untyped_storage().data_ptr() for t in external}
        self.live: dict[int, list[int]] = {}  # storage ptr -> [nbytes, tensors alive]
        self.seen: weakref.WeakSet = weakref.WeakSet()
        self.current = self.peak = 0

    def _release(self, key: int) -> None:
        entry = self.live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            self.current -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in _tensors(out):
            if t in self.seen:
                continue
            storage = t.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if nbytes == 0 or key in self.external:
                continue
            self.seen.add(t)
            if key not in self.live:
                self.live[key] = [nbytes, 0]
                self.current += nbytes
                self.peak = max(self.peak, self.current)
            self.live[key][1] += 1
            weakref.finalize(t, self._release, key)
        return out


def _rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def peak_memory(model: nn.Module, example_inputs, device: str | torch.device | None = None) -> dict:
    """Peak memory of one forward pass (eval mode, ``no_grad``).

    .. math:: \\text{peak} = \\text{baseline} + \\text{activation}

    * CUDA: ``baseline`` = ``torch.cuda.memory_allocated`` before the pass (weights,
      inputs, anything else alive), ``peak`` = ``torch.cuda.max_memory_allocated``
      during it (peak stats are reset first), both exact allocator figures.
    * CPU (no allocator statistics): ``baseline`` = bytes of the model's parameters,
      buffers and the input tensors; ``activation`` = the largest total of storages
      created by aten ops of the pass that were alive at the same time (tracked with a
      dispatch mode; workspace a kernel allocates and frees inside itself is not
      seen, so this is a lower bound). ``rss_delta_bytes`` is how much the process's
      high-water resident size (``ru_maxrss``) grew during the pass: 0 unless the pass
      set a new process-wide record, so only meaningful in a fresh process.

    Returns:
        ``{"device", "method", "baseline_bytes", "activation_bytes", "peak_bytes",
        "rss_delta_bytes" (CPU only, else None)}``.

    Example:
        >>> mem = peak_memory(nn.Linear(256, 256), torch.randn(8, 256))
        >>> mem["activation_bytes"]          # one [8, 256] float32 output
        8192
    """
    dev = _timing_device(device, model)
    inputs = _map_tensors(example_inputs, lambda t: t.to(dev))
    with _OnDevice(model, dev), _EvalNoGrad(model):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            out = call_model(model, inputs)
            torch.cuda.synchronize(dev)
            peak = torch.cuda.max_memory_allocated(dev)
            del out
            return {"device": str(dev), "method": "torch.cuda.max_memory_allocated", "baseline_bytes": base,
                    "activation_bytes": peak - base, "peak_bytes": peak, "rss_delta_bytes": None}
        held = list(model.parameters()) + list(model.buffers()) + _tensors(inputs)
        storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in held}
        base = sum(storages.values())
        rss0 = _rss_bytes()
        tracker = _LiveBytes(held)
        with tracker:
            out = call_model(model, inputs)
        del out
        rss_delta = _rss_bytes() - rss0
    return {"device": str(dev), "method": "live aten storages (dispatch mode)", "baseline_bytes": base,
            "activation_bytes": tracker.peak, "peak_bytes": base + tracker.peak, "rss_delta_bytes": rss_delta}


# --------------------------------------------------------------------------------------
# Dense vs pruned
# --------------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("inf")


def _same_device(a, b) -> bool:
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _prediction_spec(plan, predicted_ms, example_inputs, batch_sizes, threads, device) -> dict | None:
    """The prediction :func:`compare` measures against: its latency, batch, threads, device and statistic."""
    if plan is None and predicted_ms is None:
        return None
    if plan is not None and predicted_ms is not None:
        raise ValueError("compare: give plan= or predicted_ms=, not both")
    if plan is not None:
        record = _plan_latency(plan)
        if record is None:
            raise ValueError("compare: the plan records no latency prediction; select(..., latency=lat) with a "
                             "prunekit.LatencyModel records one in plan.meta['latency']")
        spec = {"predicted_ms": float(record["predicted_ms"]), "dense_predicted_ms": record.get("dense_ms"),
                "batch_size": record.get("batch_size"), "threads": record.get("threads"),
                "device": record.get("device"), "statistic": record.get("statistic", "min_ms")}
    else:
        sizes = None if batch_sizes is None else [int(b) for b in batch_sizes]
        if sizes is not None and len(sizes) != 1:
            raise ValueError(f"compare: predicted_ms= is for one batch size; give batch_sizes=[B] (the prediction's), "
                             f"not {sizes}, or plan=")
        spec = {"predicted_ms": float(predicted_ms), "dense_predicted_ms": None,
                "batch_size": sizes[0] if sizes else None, "threads": None, "device": None, "statistic": "min_ms"}
    if not math.isfinite(spec["predicted_ms"]) or spec["predicted_ms"] < 0:
        raise ValueError(f"compare: a predicted latency must be a finite number of ms >= 0, got {spec['predicted_ms']}")
    if spec["batch_size"] is None:
        spec["batch_size"] = _reference_batch(example_inputs)
    if threads is not None and spec["threads"] is not None and int(threads) != int(spec["threads"]):
        raise ValueError(f"compare: the prediction is for {spec['threads']} thread(s), not threads={threads}; "
                         "leave threads=None to time with the prediction's")
    if device is not None and spec["device"] is not None and not _same_device(device, spec["device"]):
        raise ValueError(f"compare: the prediction is for device {spec['device']}, not device={device}; "
                         "leave device=None to time there")
    return spec


def _prediction_result(spec: dict, result: dict) -> dict:
    """Predicted against measured at the prediction's batch size (see :func:`compare`)."""
    b, stat = spec["batch_size"], spec["statistic"]
    dense_lat, pruned_lat = result["dense"]["latency"], result["pruned"]["latency"]
    dense, measured = dense_lat["batches"][b][stat], pruned_lat["batches"][b][stat]
    predicted, dense_predicted = spec["predicted_ms"], spec["dense_predicted_ms"]
    out = {**spec, "threads": pruned_lat["threads"], "device": pruned_lat["device"],
           "measured_ms": measured, "measured_median_ms": pruned_lat["batches"][b]["median_ms"],
           "dense_measured_ms": dense, "measured_over_predicted": _ratio(measured, predicted),
           "error": _ratio(predicted, measured) - 1.0, "measured_fraction": 1.0 - _ratio(measured, dense),
           "predicted_fraction": None, "fraction_error": None}
    if dense_predicted:
        out["predicted_fraction"] = 1.0 - predicted / dense_predicted
        out["fraction_error"] = out["predicted_fraction"] - out["measured_fraction"]
    return out


def compare(dense_model: nn.Module, pruned_model: nn.Module, example_inputs, batch_sizes: Iterable[int] | None = None,
            warmup: int = 5, repeats: int = 20, threads: int | None = None, device: str | torch.device | None = None,
            latency: bool = True, *, plan=None, predicted_ms: float | None = None) -> dict:
    """Counts and latencies of a dense model and its pruned version, their ratios, and a prediction checked.

    .. math::

        \\text{param\\_reduction} = P_d / P_p, \\quad
        \\text{mac\\_reduction} = M_d / M_p, \\quad
        \\text{speedup}_b = \\text{median}_{d,b} / \\text{median}_{p,b}, \\quad
        \\text{efficiency}_b = \\text{speedup}_b / \\text{mac\\_reduction}

    ``efficiency`` 1.0 means the MAC reduction became wall-clock speed-up in full.
    For each batch size the dense and pruned models are timed one after the other
    (so slow drifts of the machine hit both alike).

    **Predicted latency.** With ``plan=`` (a :class:`~prunekit.core.plan.PruningPlan` made by
    :func:`prunekit.select` with a latency model, e.g. ``pruned.prunekit_plan``) or ``predicted_ms=``,
    the pruned model is also timed at the prediction's batch size, thread count and device (``threads``
    and ``device`` default to the plan's; a different value is refused), and
    ``result["prediction"]`` holds

    .. math::

        \\text{measured\\_over\\_predicted} = T_p / \\hat T_p, \\quad
        \\text{error} = \\hat T_p / T_p - 1, \\quad
        \\text{fraction\\_error} = (1 - \\hat T_p / \\hat T_d) - (1 - T_p / T_d)

    (``error`` and ``fraction_error`` as :meth:`prunekit.LatencyModel.check`), with ``T`` the fastest
    of the ``repeats`` passes (``statistic`` ``"min_ms"``, the statistic the latency model is fitted
    on by default; the median is ``measured_median_ms``). ``predicted_ms=`` alone applies to the
    example's batch, or to the one entry of ``batch_sizes``, and has no fraction.

    Args:
        dense_model, pruned_model: the two models, fed the same ``example_inputs``.
        batch_sizes, warmup, repeats, threads, device: as :func:`measure_latency`.
        latency: ``False`` skips timing (counts and their ratios only; refused with a prediction).
        plan: a plan whose ``meta["latency"]`` holds a prediction; or
        predicted_ms: a predicted latency of the pruned model, in ms.

    Returns:
        ``{"dense": {"count", "latency"}, "pruned": {"count", "latency"}, "ratios":
        {"param_reduction", "mac_reduction", "params_removed", "macs_removed",
        "speedup": {b: x}, "speedup_per_mac_reduction": {b: x}}, "prediction"}`` (``params_removed``
        and ``macs_removed`` are fractions of the dense figures; ``prediction`` is ``None`` without a
        prediction, else ``{"predicted_ms", "dense_predicted_ms", "measured_ms", "measured_median_ms",
        "dense_measured_ms", "measured_over_predicted", "error", "predicted_fraction",
        "measured_fraction", "fraction_error", "batch_size", "threads", "device", "statistic"}``).

    Example:
        >>> dense, pruned = nn.Linear(8, 8), nn.Linear(8, 4)
        >>> r = compare(dense, pruned, torch.randn(2, 8), repeats=3)["ratios"]
        >>> r["mac_reduction"], sorted(r["speedup"])
        (2.0, [2])
        >>> p = compare(dense, pruned, torch.randn(2, 8), repeats=3, predicted_ms=0.01)["prediction"]
        >>> p["measured_over_predicted"] == p["measured_ms"] / 0.01
        True
    """
    spec = _prediction_spec(plan, predicted_ms, example_inputs, batch_sizes, threads, device)
    if spec is not None and not latency:
        raise ValueError("compare: plan= / predicted_ms= are checked against measured latency; drop latency=False")
    dc, pc = count(dense_model, example_inputs), count(pruned_model, example_inputs)
    ratios: dict[str, Any] = {
        "param_reduction": _ratio(dc["params"], pc["params"]),
        "mac_reduction": _ratio(dc["macs"], pc["macs"]),
        "params_removed": 1.0 - _ratio(pc["params"], dc["params"]),
        "macs_removed": 1.0 - _ratio(pc["macs"], dc["macs"]),
        "speedup": {},
        "speedup_per_mac_reduction": {},
    }
    result = {"dense": {"count": dc, "latency": None}, "pruned": {"count": pc, "latency": None}, "ratios": ratios,
              "prediction": None}
    if not latency:
        return result
    sizes = [_reference_batch(example_inputs)] if batch_sizes is None else [int(b) for b in batch_sizes]
    if spec is not None:
        threads = spec["threads"] if threads is None else threads
        device = spec["device"] if device is None else device
        sizes += [] if spec["batch_size"] in sizes else [spec["batch_size"]]
    kw = dict(warmup=warmup, repeats=repeats, threads=threads, device=device)
    for b in sizes:
        for key, model in (("dense", dense_model), ("pruned", pruned_model)):
            lat = measure_latency(model, example_inputs, batch_sizes=[b], **kw)
            if result[key]["latency"] is None:
                result[key]["latency"] = lat
            else:
                result[key]["latency"]["batches"][b] = lat["batches"][b]
        speedup = _ratio(result["dense"]["latency"]["batches"][b]["median_ms"],
                         result["pruned"]["latency"]["batches"][b]["median_ms"])
        ratios["speedup"][b] = speedup
        ratios["speedup_per_mac_reduction"][b] = _ratio(speedup, ratios["mac_reduction"])
    if spec is not None:
        result["prediction"] = _prediction_result(spec, result)
    return result
