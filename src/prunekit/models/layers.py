"""Graph-convolution layers that prunekit knows how to prune (blocks of :mod:`prunekit.core.blocks`).

prunekit's analysis (``prunekit.core.analysis``) finds the output units, adjacency subsets
and heads of these layers by itself, like those of a user's own graph convolution;
their structures are named after the block (``kind="unit"``). The
:class:`~prunekit.core.blocks.PrunableBlock` methods remain for CTF's weight layouts and for pruning a
block by hand. A block declares

* ``in_channels`` / ``out_channels`` and how to remove them physically
  (``prune_in_channels`` / ``prune_out_channels``);
* ``out_channel_slices(c)``: the parameter slices that produce output unit ``c``
  (zeroing them zeroes that unit's output);
* optionally ``internal_structures()``: units that live inside the block (attention
  heads, adjacency subsets), each a list of slices whose zeroing zeroes the unit's
  contribution, removed with ``prune_internal(idxs)``.


Example:
    >>> import torch
    >>> from prunekit.data.graphs import get_graph
    >>> gc = GraphConv(3, 8, get_graph("fpha").adjacency())
    >>> gc(torch.randn(2, 3, 10, 21)).shape
    torch.Size([2, 8, 10, 21])
    >>> gc.prune_out_channels([0, 5]); gc.out_channels
    6
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..core.blocks import PrunableBlock

__all__ = ["GraphConv", "MultiHeadGraphAttention"]



def _keep(size: int, removed: Sequence[int]) -> torch.Tensor:
    removed_set = set(int(i) for i in removed)
    return torch.tensor([i for i in range(size) if i not in removed_set], dtype=torch.long)


def _shrink(module: nn.Module, name: str, dim: int, keep: torch.Tensor) -> None:
    """Replace parameter or buffer ``name`` of ``module`` by its slice ``keep`` along ``dim``."""
    old = getattr(module, name)
    if old is None:
        return
    new = torch.index_select(old.data, dim, keep.to(old.device)).clone()
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        setattr(module, name, new)


def _block_rows(block: int, width: int, units: Sequence[int]) -> list[int]:
    """Rows ``k·width + c`` of a weight stacked as ``block`` groups of ``width`` units."""
    return [k * width + int(c) for k in range(block) for c in units]


class GraphConv(PrunableBlock):
    """ST-GCN spatial graph convolution over ``K`` adjacency subsets.

    .. math::  Y_{c,t,w} = \\sum_k \\sum_v (W_k X)_{c,t,v}\\, (A_k \\odot M_k)_{v,w} + b

    with ``W`` a 1×1 convolution to ``K·C_out`` channels and ``M`` a learnable edge
    importance (``learn_edges=True``). Output unit ``c`` owns rows ``k·C_out + c``
    of the convolution for every ``k``.

    Args:
        in_channels, out_channels: feature widths.
        adjacency: ``[K, V, V]`` subsets (see :meth:`prunekit.data.graphs.Graph.adjacency`).
        learn_edges: learn a multiplicative edge importance per subset.
    """

    def __init__(self, in_channels: int, out_channels: int, adjacency: torch.Tensor, learn_edges: bool = True):
        super().__init__()
        if adjacency.dim() != 3 or adjacency.shape[1] != adjacency.shape[2]:
            raise ValueError(f"GraphConv: adjacency must be [K, V, V], got {tuple(adjacency.shape)}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_subsets = adjacency.shape[0]
        self.conv = nn.Conv2d(in_channels, self.num_subsets * out_channels, kernel_size=1)
        self.register_buffer("adjacency", adjacency.clone().float())
        self.edge_importance = nn.Parameter(torch.ones_like(self.adjacency)) if learn_edges else None

    def graph(self) -> torch.Tensor:
        return self.adjacency if self.edge_importance is None else self.adjacency * self.edge_importance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, v = x.shape
        y = self.conv(x).view(n, self.num_subsets, self.out_channels, t, v)
        return torch.einsum("nkctv,kvw->nctw", y, self.graph())

    def cost(self, in_kept, out_kept, internal_kept, input_shape):
        """params = K·C_out·C_in + K·C_out (+ K·V² edge weights);
        MACs = N·T·V·C_in·K·C_out (1×1 conv) + N·K·C_out·T·V² (aggregation)."""
        n, _, t, v = input_shape
        k = self.num_subsets
        params = k * out_kept * in_kept + k * out_kept + (self.edge_importance.numel() if self.edge_importance is not None else 0)
        macs = n * t * v * in_kept * k * out_kept + n * k * out_kept * t * v * v
        return params, macs

    def out_channel_slices(self, idxs):
        rows = _block_rows(self.num_subsets, self.out_channels, idxs)
        return [("conv.weight", 0, rows), ("conv.bias", 0, rows)]

    def prune_out_channels(self, idxs):
        keep_units = _keep(self.out_channels, idxs)
        rows = torch.tensor(_block_rows(self.num_subsets, self.out_channels, keep_units.tolist()), dtype=torch.long)
        _shrink(self.conv, "weight", 0, rows)
        _shrink(self.conv, "bias", 0, rows)
        self.out_channels = len(keep_units)
        self.conv.out_channels = len(rows)

    def prune_in_channels(self, idxs):
        keep = _keep(self.in_channels, idxs)
        _shrink(self.conv, "weight", 1, keep)
        self.in_channels = self.conv.in_channels = len(keep)


class MultiHeadGraphAttention(PrunableBlock):
    """Multi-head graph attention over skeleton joints (the attention GCN's layer).

    For head ``h``, queries and keys are 1×1 convolutions averaged over time; the
    head's graph is a softmax attention plus a learnable graph ``B_h`` initialised
    from the mean adjacency subset::

        S_h = softmax_w( q_h(X̄)ᵀ k_h(X̄) / √d ) + B_h,
        Y   = Σ_h (V_h X) S_h + b

    Output unit ``c`` owns rows ``h·C_out + c`` of the value convolution; head ``h``
    (an internal structure) owns its query, key and value rows and ``B_h``.
    """

    def __init__(self, in_channels: int, out_channels: int, adjacency: torch.Tensor, num_heads: int = 4, key_dim: int = 8):
        super().__init__()
        if adjacency.dim() != 3:
            raise ValueError(f"MultiHeadGraphAttention: adjacency must be [K, V, V], got {tuple(adjacency.shape)}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_heads, self.key_dim = num_heads, key_dim
        self.query = nn.Conv2d(in_channels, num_heads * key_dim, kernel_size=1)
        self.key = nn.Conv2d(in_channels, num_heads * key_dim, kernel_size=1)
        self.value = nn.Conv2d(in_channels, num_heads * out_channels, kernel_size=1)
        base = adjacency.float().sum(0)
        base = base / base.sum(1, keepdim=True).clamp(min=1e-6)
        self.graph_bias = nn.Parameter(base.unsqueeze(0).repeat(num_heads, 1, 1).contiguous())

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        n, _, _, v = x.shape
        pooled = x.mean(dim=2, keepdim=True)
        q = self.query(pooled).view(n, self.num_heads, self.key_dim, v)
        k = self.key(pooled).view(n, self.num_heads, self.key_dim, v)
        logits = torch.einsum("nhdv,nhdw->nhvw", q, k) / math.sqrt(self.key_dim)
        return torch.softmax(logits, dim=-1) + self.graph_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, t, v = x.shape
        values = self.value(x).view(n, self.num_heads, self.out_channels, t, v)
        return torch.einsum("nhctv,nhvw->nctw", values, self.attention(x))

    def cost(self, in_kept, out_kept, internal_kept, input_shape):
        """With H kept heads, d = key_dim: params = 2(H·d·C_in + H·d) + H·C_out·C_in + H·C_out + H·V²;
        MACs = 2·N·V·C_in·H·d (queries, keys) + N·T·V·C_in·H·C_out (values)
        + N·H·d·V² (logits) + N·H·C_out·T·V² (aggregation)."""
        n, _, t, v = input_shape
        h, d = internal_kept, self.key_dim
        params = 2 * (h * d * in_kept + h * d) + h * out_kept * in_kept + h * out_kept + h * v * v
        macs = 2 * n * v * in_kept * h * d + n * t * v * in_kept * h * out_kept + n * h * d * v * v + n * h * out_kept * t * v * v
        return params, macs

    def out_channel_slices(self, idxs):
        rows = _block_rows(self.num_heads, self.out_channels, idxs)
        return [("value.weight", 0, rows), ("value.bias", 0, rows)]

    def internal_structure_kind(self) -> str:
        return "head"

    def internal_structures(self):
        heads = []
        for h in range(self.num_heads):
            keys = list(range(h * self.key_dim, (h + 1) * self.key_dim))
            values = list(range(h * self.out_channels, (h + 1) * self.out_channels))
            heads.append([
                ("query.weight", 0, keys), ("query.bias", 0, keys),
                ("key.weight", 0, keys), ("key.bias", 0, keys),
                ("value.weight", 0, values), ("value.bias", 0, values),
                ("graph_bias", 0, [h]),
            ])
        return heads

    def prune_out_channels(self, idxs):
        keep_units = _keep(self.out_channels, idxs).tolist()
        rows = torch.tensor(_block_rows(self.num_heads, self.out_channels, keep_units), dtype=torch.long)
        _shrink(self.value, "weight", 0, rows)
        _shrink(self.value, "bias", 0, rows)
        self.out_channels = len(keep_units)
        self.value.out_channels = len(rows)

    def prune_in_channels(self, idxs):
        keep = _keep(self.in_channels, idxs)
        for conv in (self.query, self.key, self.value):
            _shrink(conv, "weight", 1, keep)
            conv.in_channels = len(keep)
        self.in_channels = len(keep)

    def prune_internal(self, idxs):
        if not idxs:
            return
        keep_heads = _keep(self.num_heads, idxs).tolist()
        if not keep_heads:
            raise ValueError("MultiHeadGraphAttention: cannot remove every head")
        key_rows = torch.tensor([h * self.key_dim + d for h in keep_heads for d in range(self.key_dim)], dtype=torch.long)
        value_rows = torch.tensor([h * self.out_channels + c for h in keep_heads for c in range(self.out_channels)],
                                  dtype=torch.long)
        for conv, rows in ((self.query, key_rows), (self.key, key_rows), (self.value, value_rows)):
            _shrink(conv, "weight", 0, rows)
            _shrink(conv, "bias", 0, rows)
            conv.out_channels = len(rows)
        _shrink(self, "graph_bias", 0, torch.tensor(keep_heads, dtype=torch.long))
        self.num_heads = len(keep_heads)
