"""Sparse inference for entry-wise pruned layers (CTF's unstructured part).

After :meth:`prunekit.CTF.finalize` and :func:`prunekit.core.materialize`, the entry masks
leave exact zeros inside the kept ``Conv2d`` / ``Linear`` weights. :func:`sparsify`
stores such weights as a torch sparse matrix (COO by default, or CSR) and computes
the layer with a sparse × dense product (``torch.sparse.mm``):

.. math::

    \\text{Linear:}\\quad Y^\\top = W_{sp}\\, X^\\top + b, \\qquad
    \\text{Conv2d:}\\quad Y_{n\\,[C_o,\\, H' W']} = W_{sp\\,[C_o,\\, C_i k_h k_w]}\\;
    \\operatorname{im2col}(X_n)_{[C_i k_h k_w,\\, H' W']} + b \\quad (n = 1 \\dots N)

The product runs once per sample, straight into the output's layout. For a 1×1
convolution ``im2col`` is only a (strided) view of the sample over the channel dim;
for a ``k×t`` kernel (e.g. the ``(9, 1)`` temporal convolution of the skeleton
GCNs) it is built with ``Tensor.unfold`` after zero padding, honouring stride,
padding (ints, ``"same"``, ``"valid"``) and dilation. The product costs
``nnz(W) · N H' W'`` multiply-adds instead of ``C_o C_i k_h k_w · N H' W'``, but a
sparse kernel runs far below a dense GEMM's speed per multiply-add, so it only wins
at high sparsity, and only on some shapes: :func:`sparsify` therefore times every
eligible layer on its real input and converts it only where the sparse version is
faster (``measure=True``).

Not converted (left dense): grouped / depthwise convolutions (``groups > 1``),
non-zero ``padding_mode`` (reflect, replicate, circular), and layers whose weight
sparsity is below ``min_sparsity``.

**Inference only.** The sparse layers hold their weight and bias as buffers (no
``nn.Parameter``), run in eval mode under ``torch.no_grad()``, and do not support
training or back-propagation through the weights; ``count_params`` no longer counts
them. Outputs equal the dense layer's up to float rounding (the sums run in a
different order: relative differences ~1e-6 in float32).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunekit.core.sparse import sparsify
    >>> _ = torch.manual_seed(0)
    >>> model = nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU(), nn.Conv2d(32, 32, (9, 1), padding=(4, 0)))
    >>> with torch.no_grad():                       # 95 % of the entries are zero
    ...     for conv in (model[0], model[2]):
    ...         _ = conv.weight.mul_(torch.rand_like(conv.weight) > 0.95)
    >>> x = torch.randn(1, 16, 32, 25)
    >>> fast, report = sparsify(model, min_sparsity=0.9, measure=False)   # force every eligible layer
    >>> [(r["name"], r["converted"]) for r in report]
    [('0', True), ('2', True)]
    >>> type(fast[0]).__name__, type(model[0]).__name__     # the input model is left alone
    ('SparseConv2d', 'Conv2d')
    >>> with torch.no_grad():
    ...     torch.testing.assert_close(fast.eval()(x), model.eval()(x), rtol=1e-5, atol=1e-5)
    >>> timed, report = sparsify(model, min_sparsity=0.9, example_inputs=x)  # keep only what is faster
    >>> sorted(report[0])
    ['converted', 'dense_ms', 'name', 'reason', 'sparse_ms', 'sparsity', 'type']
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .measure import call_model

__all__ = ["SparseLinear", "SparseConv2d", "sparsify", "to_sparse", "weight_sparsity", "LAYOUTS", "DEFAULT_LAYOUT"]

#: Sparse layouts a layer can hold its weight in.
LAYOUTS = ("csr", "coo")

#: The default layout. COO, because ``torch.sparse.mm`` with a COO weight measured
#: faster than with a CSR one on every layer shape and sparsity (50-99 %) of
#: ``benchmarks/bench_sparse.py`` (torch 2.13, CPU with MKL, 1 thread), by ~10-50 %.
DEFAULT_LAYOUT = "coo"


def weight_sparsity(weight: torch.Tensor) -> float:
    """Fraction of exact zeros in ``weight``.

    Example:
        >>> weight_sparsity(torch.tensor([[0.0, 1.0], [0.0, 0.0]]))
        0.75
    """
    return 1.0 - int(torch.count_nonzero(weight)) / max(weight.numel(), 1)


def _to_layout(matrix: torch.Tensor, layout: str) -> torch.Tensor:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    matrix = matrix.detach().contiguous()
    if layout == "csr":
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return matrix.to_sparse_csr()
    return matrix.to_sparse().coalesce()


class SparseLinear(nn.Module):
    """``nn.Linear`` with a sparse weight: ``y = x Wᵀ + b`` computed as ``(W_sp xᵀ)ᵀ + b``.

    Inference only (weight and bias are buffers). Build one with :meth:`from_dense`.

    Example:
        >>> lin = nn.Linear(8, 4)
        >>> with torch.no_grad():
        ...     lin.weight[:, 2:] = 0
        >>> sp = SparseLinear.from_dense(lin)
        >>> sp.weight.layout, sp.nnz
        (torch.sparse_coo, 8)
        >>> x = torch.randn(3, 5, 8)
        >>> torch.testing.assert_close(sp(x), lin(x).detach())
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, layout: str = DEFAULT_LAYOUT):
        super().__init__()
        if weight.dim() != 2:
            raise ValueError(f"SparseLinear: weight must be [out, in], got {tuple(weight.shape)}")
        self.out_features, self.in_features = weight.shape
        self.layout = layout
        self.register_buffer("weight", _to_layout(weight, layout))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_dense(cls, linear: nn.Linear, layout: str = DEFAULT_LAYOUT) -> "SparseLinear":
        return cls(linear.weight, linear.bias, layout=layout)

    @property
    def nnz(self) -> int:
        return int(self.weight._nnz())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        y = torch.sparse.mm(self.weight, flat.t().contiguous()).t()  # CSR or COO
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, layout={self.layout}, nnz={self.nnz}")


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(int(a) for a in v)  # type: ignore[return-value]


class SparseConv2d(nn.Module):
    """``nn.Conv2d`` (``groups=1``) with a sparse ``[C_out, C_in·k_h·k_w]`` weight.

    Per sample: 1×1 kernels view the input (strided, padded if asked) as
    ``[C_in, H·W]``; larger kernels zero pad and unfold it (im2col) into
    ``[C_in·k_h·k_w, H'·W']`` with ``Tensor.unfold`` (stride and dilation honoured);
    the sparse weight multiplies that into the sample's ``[C_out, H'·W']`` output. Inference only. Build one with
    :meth:`from_dense`.

    Example:
        >>> conv = nn.Conv2d(4, 6, (9, 1), stride=(2, 1), padding=(4, 0), dilation=(1, 1))
        >>> sp = SparseConv2d.from_dense(conv)
        >>> x = torch.randn(2, 4, 20, 5)
        >>> sp(x).shape
        torch.Size([2, 6, 10, 5])
        >>> torch.testing.assert_close(sp(x), conv(x).detach(), rtol=1e-5, atol=1e-5)
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, stride=1, padding: Any = 0,
                 dilation=1, layout: str = DEFAULT_LAYOUT):
        super().__init__()
        if weight.dim() != 4:
            raise ValueError(f"SparseConv2d: weight must be [C_out, C_in, k_h, k_w], got {tuple(weight.shape)}")
        self.out_channels, self.in_channels, kh, kw = weight.shape
        self.kernel_size = (kh, kw)
        self.stride, self.dilation = _pair(stride), _pair(dilation)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"SparseConv2d: padding must be ints, 'same' or 'valid', got {padding!r}")
            if padding == "same" and self.stride != (1, 1):
                raise ValueError("SparseConv2d: padding='same' needs stride 1 (as nn.Conv2d)")
        self.layout = layout
        # F.pad order: (left, right, top, bottom); 'same' puts the odd extra on the right/bottom like torch
        if self.padding == "valid":
            pads = (0, 0, 0, 0)
        elif self.padding == "same":
            tot = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            pads = (tot[1] // 2, tot[1] - tot[1] // 2, tot[0] // 2, tot[0] - tot[0] // 2)
        else:
            ph, pw = self.padding
            pads = (pw, pw, ph, ph)
        self._pads = pads
        self.register_buffer("weight", _to_layout(weight.reshape(self.out_channels, -1), layout))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_dense(cls, conv: nn.Conv2d, layout: str = DEFAULT_LAYOUT) -> "SparseConv2d":
        if conv.groups != 1:
            raise ValueError(f"SparseConv2d: groups={conv.groups} is not supported (grouped/depthwise stay dense)")
        if conv.padding_mode != "zeros":
            raise ValueError(f"SparseConv2d: padding_mode={conv.padding_mode!r} is not supported (only 'zeros')")
        return cls(conv.weight, conv.bias, stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                   layout=layout)

    @property
    def nnz(self) -> int:
        return int(self.weight._nnz())

    def _columns(self, x: torch.Tensor) -> torch.Tensor:
        """im2col of one sample ``[C_in, H, W]``: ``[C_in·k_h·k_w, H'·W']``, rows ordered like
        ``weight.reshape(C_out, -1)`` (a view, no copy, for an unpadded stride-1 1×1 conv)."""
        if any(self._pads):
            x = F.pad(x, self._pads)
        c = x.shape[0]
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        if kh == 1 and kw == 1:
            return x[:, ::sh, ::sw].reshape(c, -1)
        # windows of extent (k-1)·d+1 every `stride`, then every d-th tap (dilation)
        x = x.unfold(1, (kh - 1) * dh + 1, sh).unfold(2, (kw - 1) * dw + 1, sw)[..., ::dh, ::dw]  # [C, H', W', kh, kw]
        return x.permute(0, 3, 4, 1, 2).reshape(c * kh * kw, -1)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """Spatial output size for an ``h × w`` input (as ``nn.Conv2d``)."""
        pl, pr, pt, pb = self._pads
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        return (h + pt + pb - dh * (kh - 1) - 1) // sh + 1, (w + pl + pr - dw * (kw - 1) - 1) // sw + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One sparse × dense product per sample, written straight into the output's
        # [N, C_out, H', W'] layout (measured faster than one product over the whole
        # batch, which needs a transposed copy of input and output and leaves cache).
        batched = x.dim() == 4
        if not batched:
            x = x.unsqueeze(0)
        n = x.shape[0]
        h, w = self.output_size(x.shape[2], x.shape[3])
        if h < 1 or w < 1:
            raise RuntimeError(f"SparseConv2d: input {tuple(x.shape)} is smaller than the kernel")
        y = x.new_empty((n, self.out_channels, h, w))
        flat = y.view(n, self.out_channels, h * w)
        for i in range(n):
            torch.mm(self.weight, self._columns(x[i]), out=flat[i])
        if self.bias is not None:
            y += self.bias.view(1, -1, 1, 1)
        return y if batched else y.squeeze(0)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
                f"layout={self.layout}, nnz={self.nnz}")


def to_sparse(module: nn.Module, layout: str = DEFAULT_LAYOUT) -> nn.Module:
    """The sparse version of one ``nn.Linear`` or ``nn.Conv2d`` (``ValueError`` if it has none).

    Example:
        >>> to_sparse(nn.Linear(3, 2))
        SparseLinear(in_features=3, out_features=2, bias=True, layout=coo, nnz=6)
    """
    if isinstance(module, nn.Linear):
        return SparseLinear.from_dense(module, layout=layout)
    if isinstance(module, nn.Conv2d):
        return SparseConv2d.from_dense(module, layout=layout)
    raise ValueError(f"to_sparse: no sparse version of {type(module).__name__}")


def _why_not(module: nn.Module) -> str | None:
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            return f"groups={module.groups} (grouped/depthwise stay dense)"
        if module.padding_mode != "zeros":
            return f"padding_mode={module.padding_mode!r}"
    return None


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, new)


def _capture_inputs(model: nn.Module, names: list[str], example_inputs) -> dict[str, torch.Tensor]:
    """The first input tensor each named module receives in one eval / no_grad forward."""
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name):
        def hook(_mod, args):
            if name not in captured and args and isinstance(args[0], torch.Tensor):
                captured[name] = args[0].detach().clone()
        return hook

    for name in names:
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook_for(name)))
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            call_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.training = flag
    return captured


def sparsify(model: nn.Module, min_sparsity: float = 0.7, example_inputs=None, measure: bool = True, *,
             layout: str = DEFAULT_LAYOUT, min_speedup: float = 1.0, warmup: int = 3, repeats: int = 15,
             threads: int | None = None) -> tuple[nn.Module, list[dict]]:
    """A copy of ``model`` with its sparse ``Conv2d`` / ``Linear`` layers stored sparse where that is faster.

    A layer is *eligible* when its weight sparsity (fraction of exact zeros) is at
    least ``min_sparsity`` and it has a sparse version (``Linear``; ``Conv2d`` with
    ``groups=1`` and zero padding). With ``measure=True`` and ``example_inputs``, each
    eligible layer's real input is captured with a forward hook (one eval / no_grad
    pass of ``model``), the dense layer and its sparse version are timed on it with
    :func:`prunekit.measure_latency`, and the layer is converted only if

    .. math:: t_{dense} \\,/\\, t_{sparse} \\ge \\text{min\\_speedup} \\quad (\\text{medians})

    With ``measure=False`` every eligible layer is converted (no timing). With
    ``measure=True`` but no ``example_inputs`` there is nothing to time on: every
    eligible layer is converted and a warning says so.

    ``model`` itself is never modified (the copy is a ``copy.deepcopy``). The copy is
    for inference: run it in eval mode under ``torch.no_grad()``; training through the
    sparse layers is not supported.

    Args:
        model: any ``nn.Module``.
        min_sparsity: in ``[0, 1]``; layers with fewer zeros stay dense.
        example_inputs: tensor, tuple (``model(*x)``) or dict (``model(**x)``) for the timing.
        measure: time each eligible layer and keep the faster of dense / sparse.
        layout: ``"coo"`` (default, :data:`DEFAULT_LAYOUT`) or ``"csr"``: the sparse layout of
            converted weights.
        min_speedup: a converted layer must be at least this much faster (``>= 1``).
        warmup, repeats, threads: per-layer timing (as :func:`prunekit.measure_latency`).

    Returns:
        ``(copy, report)``; ``report`` has one dict per ``Linear`` / ``Conv2d`` in
        module order: ``{"name", "type", "sparsity", "dense_ms", "sparse_ms"`` (``None``
        when not timed), ``"converted"`` (bool), ``"reason"`` (why, in words)``}``.

    Raises:
        ValueError: ``min_sparsity`` outside ``[0, 1]``, ``min_speedup`` < 1 or a bad ``layout``.

    Example:
        >>> lin = nn.Linear(64, 64)
        >>> with torch.no_grad():
        ...     _ = lin.weight.mul_(torch.rand(64, 64) > 0.9)     # ~90 % zeros
        >>> fast, report = sparsify(nn.Sequential(lin), min_sparsity=0.8, example_inputs=torch.randn(16, 64))
        >>> report[0]["converted"] == (report[0]["dense_ms"] / report[0]["sparse_ms"] >= 1.0)
        True
        >>> sparsify(lin, min_sparsity=1.5)
        Traceback (most recent call last):
        ...
        ValueError: sparsify: min_sparsity must be a number in [0, 1], got 1.5
    """
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float)) or \
            not math.isfinite(min_sparsity) or not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"sparsify: min_sparsity must be a number in [0, 1], got {min_sparsity!r}")
    if not (isinstance(min_speedup, (int, float)) and min_speedup >= 1.0):
        raise ValueError(f"sparsify: min_speedup must be >= 1, got {min_speedup!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"sparsify: layout must be one of {LAYOUTS}, got {layout!r}")
    from .measure import measure_latency  # local: measure imports nothing from here, keep import light

    report: list[dict] = []
    eligible: list[str] = []
    for name, mod in model.named_modules():
        if not isinstance(mod, (nn.Linear, nn.Conv2d)):
            continue
        with torch.no_grad():
            sparsity = weight_sparsity(mod.weight)
        entry = {"name": name, "type": type(mod).__name__.replace("Parametrized", ""), "sparsity": sparsity,
                 "dense_ms": None, "sparse_ms": None, "converted": False, "reason": ""}
        why = _why_not(mod)
        if why is not None:
            entry["reason"] = f"not supported: {why}"
        elif sparsity < min_sparsity:
            entry["reason"] = f"sparsity {sparsity:.3f} < min_sparsity {min_sparsity}"
        else:
            eligible.append(name)
        report.append(entry)

    timing = measure and example_inputs is not None
    if measure and example_inputs is None and eligible:
        warnings.warn("sparsify: measure=True but no example_inputs; converting every eligible layer untimed",
                      stacklevel=2)
    inputs = _capture_inputs(model, eligible, example_inputs) if timing and eligible else {}

    out = copy.deepcopy(model)
    by_name = {e["name"]: e for e in report}
    for name in eligible:
        entry = by_name[name]
        dense = out.get_submodule(name)
        with torch.no_grad():
            sparse = to_sparse(dense, layout=layout)
        if timing:
            x = inputs.get(name)
            if x is None:
                entry["reason"] = "not run on example_inputs: left dense"
                continue
            kw = dict(warmup=warmup, repeats=repeats, threads=threads)
            entry["dense_ms"] = measure_latency(dense, x, **kw)["batches"][x.shape[0]]["median_ms"]
            entry["sparse_ms"] = measure_latency(sparse, x, **kw)["batches"][x.shape[0]]["median_ms"]
            speedup = entry["dense_ms"] / entry["sparse_ms"] if entry["sparse_ms"] > 0 else math.inf
            if speedup < min_speedup:
                entry["reason"] = f"sparse not faster ({speedup:.2f}x)"
                continue
            entry["reason"] = f"sparse faster ({speedup:.2f}x)"
        else:
            entry["reason"] = "eligible (not timed)"
        _set_submodule(out, name, sparse)
        entry["converted"] = True
    return out, report
