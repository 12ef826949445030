"""The data types every method shares: a prunable :class:`Structure` and its slices.

A structure is a set of parameter slices removed as one unit because removing it
zeroes one output unit (a conv/linear output channel with its bias and BatchNorm,
a graph-convolution output unit, an attention head). Channels coupled by residual
adds or concatenations form one structure.

``slices`` lists ``(parameter_name, dim, indices)`` where ``parameter_name`` is a
full dotted name of ``model.named_parameters()``: the slices that *produce* the
structure (zeroing them zeroes its output); ``θ_s`` in the criteria is θ restricted
to them. ``consumers`` lists the slices that *read* it (the next layer's input
columns, a running statistic): they are removed with it.

Example:
    >>> s = Structure(id=0, layer="conv1", kind="channel", slices=[("conv1.weight", 0, [3])])
    >>> s.num_slice_elements({"conv1.weight": (8, 3, 3, 3)})
    27
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Structure", "SliceSpec"]

SliceSpec = tuple[str, int, list[int]]


@dataclass
class Structure:
    """One prunable unit. ``params`` and ``macs`` are what removing it alone saves."""

    id: int
    layer: str
    kind: str  # "channel" | "unit" | "head" | ...
    slices: list[SliceSpec]
    group: int = 0  # index of the coupled group (layer-collapse guard works per group)
    consumers: list[SliceSpec] = field(default_factory=list)  # slices that read it (removed with it)
    params: int = 0
    macs: int = 0
    meta: dict = field(default_factory=dict)

    def num_slice_elements(self, shapes: dict) -> int:
        """Number of parameter entries in the slices, given ``{name: shape}``."""
        total = 0
        for name, dim, idxs in self.slices:
            shape = shapes[name]
            total += len(idxs) * math.prod(shape[:dim] + shape[dim + 1:])
        return total
