"""Dimension-flow analysis: which indices of which parameters must be removed together.

:func:`trace` follows every width through the ATen ops of one forward pass
(:mod:`.trace`, rules per op in :mod:`.rules`, atoms in :mod:`.atoms`);
:func:`prunekit.find_structures` turns the result into structures.
"""
from .atoms import NONE, Atoms
from .trace import Trace, flatten_tensors, trace

__all__ = ["Atoms", "NONE", "Trace", "trace", "flatten_tensors"]
