"""Graph convolutional networks for skeleton sequences ``[N, C, T, V]``.

Both networks share one layout (ST-GCN, Yan et al. 2018)::

    BatchNorm2d(C_in) → block × L → global average pool over (T, V) → Linear

    block(x) = relu( BN(tconv(relu(BN(spatial(x))))) + residual(x) )

where ``spatial`` is a :class:`~prunekit.models.layers.GraphConv` (``stgcn``) or a
:class:`~prunekit.models.layers.MultiHeadGraphAttention` (``attention_gcn``), ``tconv``
a ``(9, 1)`` temporal convolution with stride ``(s, 1)``, and ``residual`` the
identity, or a 1×1 conv (stride ``(s, 1)``) + BatchNorm when the shape changes. The
spatial modules are :class:`~prunekit.core.blocks.PrunableBlock` s: they are the
only modules that reshape channels.

Example:
    >>> import torch
    >>> net = SkeletonGCN(in_channels=3, num_classes=8, graph="sbu", channels=(16, 32))
    >>> net(torch.randn(2, 3, 20, 30)).shape
    torch.Size([2, 8])
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..data.graphs import Graph, get_graph
from ..core.blocks import PrunableBlock
from .layers import GraphConv, MultiHeadGraphAttention
from .registry import check_positive, init_weights, register, scaled

__all__ = ["GCNBlock", "SkeletonGCN", "stgcn", "attention_gcn", "skeleton_shape", "default_strides"]

EXAMPLE_FRAMES = 32


def skeleton_shape(args: dict) -> tuple[int, ...]:
    """Example input shape of the skeleton models: ``(in_channels, 32 frames, joints of the graph)``.

    Example:
        >>> skeleton_shape({"in_channels": 3, "graph": "fpha"})
        (3, 32, 21)
    """
    return (args["in_channels"], EXAMPLE_FRAMES, get_graph(args["graph"]).num_joints)


def default_strides(channels: Sequence[int]) -> tuple[int, ...]:
    """Temporal strides when none are given: 2 where a block widens (not the first block), else 1.

    Example:
        >>> default_strides((32, 32, 64, 64, 128))
        (1, 1, 2, 1, 2)
    """
    return tuple(2 if i > 0 and c > channels[i - 1] else 1 for i, c in enumerate(channels))


class GCNBlock(nn.Module):
    """One spatio-temporal block around a spatial :class:`PrunableBlock`.

    ``relu(bn2(tcn(relu(bn1(spatial(x))))) + residual(x))``.

    Args:
        spatial: the graph layer mapping ``in_channels → out_channels`` per frame.
        stride: temporal stride of the temporal convolution (and of the residual).
        temporal_kernel: odd temporal kernel size (padding keeps ``T`` at stride 1).

    Example:
        >>> import torch
        >>> from prunekit.data.graphs import get_graph
        >>> block = GCNBlock(GraphConv(3, 8, get_graph("fpha").adjacency()), stride=2)
        >>> block(torch.randn(2, 3, 10, 21)).shape
        torch.Size([2, 8, 5, 21])
    """

    def __init__(self, spatial: PrunableBlock, stride: int = 1, temporal_kernel: int = 9):
        super().__init__()
        if temporal_kernel < 1 or temporal_kernel % 2 == 0:
            raise ValueError(f"GCNBlock: temporal_kernel must be odd and positive, got {temporal_kernel}")
        check_positive("GCNBlock", stride=stride)
        in_channels, out_channels = spatial.in_channels, spatial.out_channels
        self.gcn = spatial
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.tcn = nn.Conv2d(out_channels, out_channels, (temporal_kernel, 1), stride=(stride, 1),
                             padding=((temporal_kernel - 1) // 2, 0), bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.residual: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=(stride, 1), bias=False), nn.BatchNorm2d(out_channels))
        else:
            self.residual = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.gcn(x)))
        out = self.bn2(self.tcn(out))
        return self.relu2(out + self.residual(x))


class SkeletonGCN(nn.Module):
    """ST-GCN-style skeleton classifier; ``spatial`` picks the graph layer of every block.

    Args:
        in_channels: coordinates per joint (3 for x, y, z).
        num_classes: output logits.
        graph: a skeleton layout name (see :func:`prunekit.data.graphs.get_graph`) or a ``Graph``.
        channels: output channels of the blocks.
        strides: temporal strides of the blocks (default :func:`default_strides`).
        spatial: ``"graphconv"`` (:class:`GraphConv`) or ``"attention"``
            (:class:`MultiHeadGraphAttention`).
        num_heads, key_dim: attention heads and their query/key width (``"attention"`` only).
        temporal_kernel: temporal kernel size of every block.

    Example:
        >>> import torch
        >>> net = SkeletonGCN(3, 45, graph="fpha", channels=(8, 16), spatial="attention", num_heads=2)
        >>> net(torch.randn(2, 3, 12, 21)).shape
        torch.Size([2, 45])
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 8, graph: str | Graph = "sbu",
                 channels: Sequence[int] = (32, 32, 64, 64), strides: Sequence[int] | None = None,
                 spatial: str = "graphconv", num_heads: int = 4, key_dim: int = 8, temporal_kernel: int = 9):
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if not channels:
            raise ValueError("SkeletonGCN: channels must name at least one block")
        strides = default_strides(channels) if strides is None else tuple(int(s) for s in strides)
        if len(strides) != len(channels):
            raise ValueError(f"SkeletonGCN: {len(strides)} strides for {len(channels)} blocks")
        if spatial not in ("graphconv", "attention"):
            raise ValueError(f"SkeletonGCN: spatial must be 'graphconv' or 'attention', got {spatial!r}")
        check_positive("SkeletonGCN", in_channels=in_channels, num_classes=num_classes, num_heads=num_heads,
                       key_dim=key_dim, **{f"channels[{i}]": c for i, c in enumerate(channels)},
                       **{f"strides[{i}]": s for i, s in enumerate(strides)})
        adjacency = get_graph(graph).adjacency()
        self.data_bn = nn.BatchNorm2d(in_channels)
        blocks = []
        previous = in_channels
        for out, stride in zip(channels, strides):
            if spatial == "graphconv":
                layer: PrunableBlock = GraphConv(previous, out, adjacency)
            else:
                layer = MultiHeadGraphAttention(previous, out, adjacency, num_heads=num_heads, key_dim=key_dim)
            blocks.append(GCNBlock(layer, stride=stride, temporal_kernel=temporal_kernel))
            previous = out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(previous, num_classes)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.data_bn(x))
        return self.fc(torch.flatten(self.pool(x), 1))


@register("stgcn", skeleton_shape)
def stgcn(in_channels: int = 3, num_classes: int = 8, graph: str = "sbu",
          channels: Sequence[int] = (32, 32, 64, 64), strides: Sequence[int] | None = None,
          width: float = 1.0, temporal_kernel: int = 9) -> SkeletonGCN:
    """ST-GCN-style network with :class:`GraphConv` spatial layers (3 adjacency subsets).

    ``width`` multiplies ``channels``; ``strides`` default to 2 where a block widens.

    Example:
        >>> import torch
        >>> stgcn(num_classes=45, graph="fpha")(torch.randn(2, 3, 32, 21)).shape
        torch.Size([2, 45])
    """
    check_positive("stgcn", width=width)
    strides = default_strides(channels) if strides is None else strides  # from the unscaled widths
    return SkeletonGCN(in_channels, num_classes, graph, [scaled(c, width) for c in channels], strides,
                       spatial="graphconv", temporal_kernel=temporal_kernel)


@register("attention_gcn", skeleton_shape)
def attention_gcn(in_channels: int = 3, num_classes: int = 8, graph: str = "sbu",
                  channels: Sequence[int] = (32, 32, 64, 64), strides: Sequence[int] | None = None,
                  num_heads: int = 4, key_dim: int = 8, width: float = 1.0,
                  temporal_kernel: int = 9) -> SkeletonGCN:
    """The multi-head attention GCN: :class:`MultiHeadGraphAttention` spatial layers.

    Example:
        >>> import torch
        >>> net = attention_gcn(num_heads=2)
        >>> net(torch.randn(2, 3, 32, 30)).shape
        torch.Size([2, 8])
    """
    check_positive("attention_gcn", width=width)
    strides = default_strides(channels) if strides is None else strides  # from the unscaled widths
    return SkeletonGCN(in_channels, num_classes, graph, [scaled(c, width) for c in channels], strides,
                       spatial="attention", num_heads=num_heads, key_dim=key_dim, temporal_kernel=temporal_kernel)


def widen_skeleton_gcn(kwargs: dict, block_factors: dict[int, float]) -> dict:
    """Arguments of the same skeleton GCN with block ``i``'s width multiplied by ``block_factors[i]``.

    Used by bottleneck expansion: the architecture, not the method, knows which
    argument sets a block's width. Blocks whose width changes get a 1×1 residual.

    Example:
        >>> widen_skeleton_gcn({"channels": [32, 32, 64]}, {1: 2.0})["channels"]
        [32, 64, 64]
    """
    widened = dict(kwargs)
    channels = list(kwargs.get("channels", (32, 32, 64, 64)))
    width = float(kwargs.get("width", 1.0))
    widened["channels"] = [max(1, round(c * width * block_factors.get(i, 1.0))) for i, c in enumerate(channels)]
    widened["width"] = 1.0
    if kwargs.get("strides") is None:
        widened["strides"] = list(default_strides(channels))  # keep the original temporal strides
    return widened


def skeleton_gcn_block_of(layer: str) -> int | None:
    """Index of the block a layer name belongs to (``"blocks.2.gcn"`` → 2), else None."""
    parts = layer.split(".")
    return int(parts[1]) if len(parts) > 1 and parts[0] == "blocks" and parts[1].isdigit() else None
