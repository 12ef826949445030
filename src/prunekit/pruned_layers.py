"""Layers and hooks that materialize adds where a pruned width must keep its original statistics.

:class:`FullWidthRMS` is a pair of forward hooks for an RMS norm
``y = g(x / √(mean(x²) + ε))`` (``g`` multiplies by the weight, as in Llama's, T5's, Gemma's
norms) whose width lost ``r`` zero channels: scaling the input by ``s = √(D'/D)`` makes the
norm's own mean over ``D'`` entries equal the mean over ``D``, and dividing the output by
``s`` restores it — exactly, ``ε`` included, with the module's code unchanged.

:class:`PrunedLayerNorm` replaces an ``nn.LayerNorm`` whose normalised width lost ``r``
channels that were exactly zero in the masked model. The masked model normalises over
all ``D`` entries, zeros included; this layer computes the same statistics from the
``D − r`` kept entries::

    μ = Σ_kept x_i / D,    σ² = (Σ_kept (x_i − μ)² + r μ²) / D,    y = (x − μ)/√(σ² + ε) · γ + β

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

import torch
from torch import nn

__all__ = ["PrunedLayerNorm", "FullWidthRMS"]


class PrunedLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the kept channels of a width of ``full_features`` (the removed ones were zeros)."""

    def __init__(self, features: int, full_features: int, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, device=None, dtype=None):
        super().__init__(features, eps=eps, elementwise_affine=elementwise_affine, bias=bias, device=device,
                         dtype=dtype)
        self.full_features = int(full_features)

    @classmethod
    def replacing(cls, norm: nn.LayerNorm, full_features: int) -> "PrunedLayerNorm":
        """A PrunedLayerNorm holding ``norm``'s (already sliced) parameters."""
        new = cls.__new__(cls)
        new.__dict__.update(norm.__dict__)
        new.full_features = int(full_features)
        new.normalized_shape = tuple(norm.weight.shape) if norm.weight is not None else norm.normalized_shape
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        removed = self.full_features - x.shape[-1]
        mean = x.sum(-1, keepdim=True) / self.full_features
        var = ((x - mean).pow(2).sum(-1, keepdim=True) + removed * mean.pow(2)) / self.full_features
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return super().extra_repr() + f", full_features={self.full_features}"


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
