"""Layers and hooks that materialize adds where a pruned width must keep its original statistics.

The masked model removes a channel by zeroing it; a norm then still averages over the
original width, zeros included. After the channel is sliced away the norm must do the same.

:class:`FullWidthRMS` is a pair of forward hooks for an RMS norm
``y = g(x / √(mean(x²) + ε))`` (``g`` multiplies by the weight, as in Llama's, T5's, Gemma's
norms) whose width lost ``r`` zero channels: scaling the input by ``s = √(D'/D)`` makes the
norm's own mean over ``D'`` entries equal the mean over ``D``, and dividing the output by
``s`` restores it — exactly, ``ε`` included, with the module's code unchanged.

:class:`PrunedLayerNorm` replaces an ``nn.LayerNorm`` whose normalised width lost ``r``
channels that were exactly zero in the masked model; it computes the full-width statistics
from the ``D − r`` kept entries::

    μ = Σ_kept x_i / D,    σ² = (Σ_kept (x_i − μ)² + r μ²) / D,    y = (x − μ)/√(σ² + ε) · γ + β

A *subclass* of ``nn.LayerNorm`` (Hugging Face's ConvNeXt norm permutes channels-first
inputs, then calls ``super().forward``) keeps its own class and code:
:func:`pruned_norm_class` puts the full-width computation between it and ``nn.LayerNorm`` in
the method resolution order, so its ``super().forward`` reaches the full-width statistics.

:class:`PrunedGroupNorm` does the same for ``nn.GroupNorm``: group ``g`` had ``C/G`` channels,
``n_g`` of which are kept, over ``S`` spatial entries each::

    μ_g = Σ_{c∈g kept} Σ_s x_cs / (S·C/G),
    σ²_g = (Σ_{c∈g kept} Σ_s (x_cs − μ_g)² + S (C/G − n_g) μ_g²) / (S·C/G)

Example:
    >>> import torch
    >>> full = torch.nn.LayerNorm(4).eval()
    >>> x = torch.randn(2, 4); x[:, 1] = 0
    >>> small = PrunedLayerNorm(3, full_features=4)
    >>> with torch.no_grad():
    ...     _ = small.weight.copy_(full.weight[[0, 2, 3]]), small.bias.copy_(full.bias[[0, 2, 3]])
    >>> torch.allclose(small(x[:, [0, 2, 3]]), full(x)[:, [0, 2, 3]], atol=1e-6)
    True
"""
from __future__ import annotations

import functools

import torch
from torch import nn

__all__ = ["PrunedLayerNorm", "PrunedGroupNorm", "FullWidthRMS", "make_full_width", "pruned_norm_class"]


def full_width_layer_norm(x, full: int, weight, bias, eps: float) -> torch.Tensor:
    """Layer norm over the last dim of ``x`` as if it had ``full`` entries, the missing ones zero."""
    removed = full - x.shape[-1]
    mean = x.sum(-1, keepdim=True) / full
    var = ((x - mean).pow(2).sum(-1, keepdim=True) + removed * mean.pow(2)) / full
    y = (x - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


class _FullWidthLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm.forward`` with the statistics over ``full_features`` entries."""

    full_features: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return full_width_layer_norm(x, self.full_features, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", full_features={self.full_features}"


class PrunedLayerNorm(_FullWidthLayerNorm):
    """``nn.LayerNorm`` over the kept channels of a width of ``full_features`` (the removed ones were zeros)."""

    def __init__(self, features: int, full_features: int, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device=None, dtype=None):
        super().__init__(features, eps=eps, elementwise_affine=elementwise_affine, bias=bias, device=device,
                         dtype=dtype)
        self.full_features = int(full_features)


class _FullWidthGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm.forward`` with each group's statistics over its original ``full_group_size`` channels."""

    full_group_size: int
    group_index: torch.Tensor   # group of each kept channel (non-persistent buffer)
    missing: torch.Tensor       # removed channels per group, as x's dtype at use

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[0], x.shape[1]
        xs = x.reshape(n, c, -1)
        count = self.full_group_size * xs.shape[-1]
        zeros = xs.new_zeros(n, self.num_groups)
        mean = zeros.index_add(1, self.group_index, xs.sum(-1)) / count
        centred = xs - mean[:, self.group_index, None]
        sq = zeros.index_add(1, self.group_index, centred.pow(2).sum(-1))
        var = (sq + self.missing.to(x.dtype) * xs.shape[-1] * mean.pow(2)) / count
        y = (centred * torch.rsqrt(var[:, self.group_index, None] + self.eps)).reshape(x.shape)
        shape = (1, c) + (1,) * (x.dim() - 2)
        if self.weight is not None:
            y = y * self.weight.reshape(shape)
        if self.bias is not None:
            y = y + self.bias.reshape(shape)
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", full_group_size={self.full_group_size}"


class PrunedGroupNorm(_FullWidthGroupNorm):
    """``nn.GroupNorm`` over kept channels ``kept`` (indices into the original ``num_channels``).

    Example:
        >>> import torch
        >>> full = torch.nn.GroupNorm(2, 4).double()
        >>> x = torch.randn(3, 4, 5, dtype=torch.float64); x[:, 1] = 0
        >>> small = PrunedGroupNorm(2, 4, kept=[0, 2, 3]).double()
        >>> torch.allclose(small(x[:, [0, 2, 3]]), full(x)[:, [0, 2, 3]])
        True
    """

    def __init__(self, num_groups: int, num_channels: int, kept, eps: float = 1e-5, affine: bool = True,
                 device=None, dtype=None):
        super().__init__(num_groups, num_channels, eps=eps, affine=affine, device=device, dtype=dtype)
        kept = torch.as_tensor(kept, dtype=torch.long)
        if affine:
            self.weight = nn.Parameter(self.weight.detach()[kept])
            self.bias = nn.Parameter(self.bias.detach()[kept])
        size = num_channels // num_groups
        _set_groups(self, size, kept // size)


def _set_groups(norm: nn.GroupNorm, size: int, group: torch.Tensor) -> None:
    norm.full_group_size = int(size)
    norm.num_channels = len(group)
    norm.register_buffer("group_index", group, persistent=False)
    norm.register_buffer("missing", size - torch.bincount(group, minlength=norm.num_groups), persistent=False)


def make_full_width(norm: nn.Module, full: int, kept) -> None:
    """Turn ``norm``, an ``nn.LayerNorm``/``nn.GroupNorm`` (or subclass) whose parameters are already
    sliced to ``kept`` (indices into its current width of ``full``), into its full-width class, in place.

    A norm pruned before keeps its original width: the statistics always cover the dense model's.
    """
    kept = torch.as_tensor(kept, dtype=torch.long)
    if isinstance(norm, nn.GroupNorm):
        if isinstance(norm, _FullWidthGroupNorm):
            _set_groups(norm, norm.full_group_size, norm.group_index[kept])
        else:
            _set_groups(norm, full // norm.num_groups, kept // (full // norm.num_groups))
    elif isinstance(norm, nn.LayerNorm):
        norm.full_features = int(getattr(norm, "full_features", full))
        norm.normalized_shape = (len(kept),)
    else:
        raise TypeError(f"{type(norm).__name__} is neither an nn.LayerNorm nor an nn.GroupNorm")
    norm.__class__ = pruned_norm_class(type(norm))


def _rebuild(base: type, state: dict) -> nn.Module:
    cls = pruned_norm_class(base)
    obj = cls.__new__(cls)
    obj.__setstate__(state)
    return obj


@functools.cache
def pruned_norm_class(base: type) -> type:
    """The full-width class for a norm of class ``base`` (``nn.LayerNorm``/``nn.GroupNorm`` or a subclass).

    ``base`` itself → :class:`PrunedLayerNorm` / :class:`PrunedGroupNorm`; a subclass → a class
    deriving from it whose ``super().forward`` lands on the full-width statistics. Instances
    pickle and deep-copy (they rebuild their class from ``base``).
    """
    if base is nn.LayerNorm or issubclass(base, _FullWidthLayerNorm):
        return base if base is not nn.LayerNorm else PrunedLayerNorm
    if base is nn.GroupNorm or issubclass(base, _FullWidthGroupNorm):
        return base if base is not nn.GroupNorm else PrunedGroupNorm
    mixin = _FullWidthLayerNorm if issubclass(base, nn.LayerNorm) else _FullWidthGroupNorm
    if not issubclass(base, (nn.LayerNorm, nn.GroupNorm)):
        raise TypeError(f"{base.__name__} is neither an nn.LayerNorm nor an nn.GroupNorm")

    def __reduce_ex__(self, protocol):
        return _rebuild, (base, self.__getstate__())

    return type(f"Pruned{base.__name__}", (base, mixin),
                {"__module__": __name__, "__reduce_ex__": __reduce_ex__, "__qualname__": f"Pruned{base.__name__}"})


class FullWidthRMS:
    """Forward pre-hook and hook (one object) keeping an RMS norm's mean over ``full`` channels."""

    def __init__(self, kept: int, full: int):
        self.kept, self.full = int(kept), int(full)
        self.scale = (self.kept / self.full) ** 0.5

    def pre(self, module, args, kwargs):
        return (args[0] * self.scale,) + tuple(args[1:]), kwargs

    def post(self, module, args, kwargs, output):
        return output / self.scale

    def attach(self, module: nn.Module) -> None:
        module.register_forward_pre_hook(self.pre, with_kwargs=True)
        module.register_forward_hook(self.post, with_kwargs=True)
        module.prunekit_full_width = self.full
