"""The extension protocol: a block that names its own prunable units, subsets and heads.

prunekit's analysis finds a block's structures by following its ops; it does not need
this protocol. CTF reads ``out_channel_slices`` / ``internal_structures`` for its
channel-wise weight layouts, and a block can be pruned by hand through it. A block declares

* ``in_channels`` / ``out_channels`` and how to remove them physically
  (``prune_in_channels`` / ``prune_out_channels``);
* ``out_channel_slices(c)``: the parameter slices that produce output unit ``c``
  (zeroing them zeroes that unit's output);
* optionally ``internal_structures()``: units inside the block (attention heads,
  adjacency subsets), each a list of slices whose zeroing zeroes its contribution,
  removed with ``prune_internal(idxs)``;
* ``cost(in_kept, out_kept, internal_kept, input_shape)``: exact ``(params, macs)``.

Example:
    >>> from prunekit.models.layers import GraphConv
    >>> issubclass(GraphConv, PrunableBlock)
    True
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

__all__ = ["PrunableBlock", "Slice"]

Slice = tuple[str, int, list[int]]  # (parameter name relative to the block, dim, indices)


class PrunableBlock(nn.Module):
    """Base class of prunekit's graph layers: units, subsets and heads they can remove by hand.

    The analysis does not need these methods (it follows the block's ops); CTF reads
    ``internal_structures`` / ``out_channel_slices`` for its channel-wise layouts.
    """

    in_channels: int
    out_channels: int

    def prune_out_channels(self, idxs: Sequence[int]) -> None:
        raise NotImplementedError

    def prune_in_channels(self, idxs: Sequence[int]) -> None:
        raise NotImplementedError

    def out_channel_slices(self, idxs: Sequence[int]) -> list[Slice]:
        raise NotImplementedError

    def cost(self, in_kept: int, out_kept: int, internal_kept: int, input_shape) -> tuple[int, int]:
        """Exact ``(params, macs)`` with the given kept widths, for one forward on ``input_shape``."""
        raise NotImplementedError(f"{type(self).__name__} must implement cost() to be budgeted")

    def internal_structures(self) -> list[list[Slice]]:
        return []

    def internal_structure_kind(self) -> str:
        return "unit"

    def prune_internal(self, idxs: Sequence[int]) -> None:
        if idxs:
            raise NotImplementedError(f"{type(self).__name__} has no internal structures")
