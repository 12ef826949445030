"""Data-free criteria: magnitude (L1, L2) of θ_s and random scores.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunekit.core.structure_types import Structure
    >>> lin = nn.Linear(2, 2)
    >>> with torch.no_grad():
    ...     _ = lin.weight.copy_(torch.tensor([[3.0, -4.0], [1.0, 0.0]])); _ = lin.bias.zero_()
    >>> units = [Structure(i, "lin", "unit", [("weight", 0, [i]), ("bias", 0, [i])]) for i in range(2)]
    >>> l1(lin, units), l2(lin, units)
    (tensor([7., 1.], dtype=torch.float64), tensor([5., 1.], dtype=torch.float64))
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from prunekit.core.structure_types import Structure

from .registry import register_criterion
from .scaling import StructureScaling

__all__ = ["l1", "l2", "random_scores"]


@register_criterion("l1", needs_data=False, summary="Σ_{i∈s} |θ_i|")
def l1(model: nn.Module, structures: Sequence[Structure], data=None, *, loss_fn=None,
       num_samples: Optional[int] = None) -> torch.Tensor:
    """L1 magnitude ``Σ_{i∈s} |θ_i|`` of each structure (entries counted once per structure).

    ``data``, ``loss_fn`` and ``num_samples`` are ignored.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.core.structure_types import Structure
        >>> lin = nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad(): _ = lin.weight.fill_(-2.0)
        >>> l1(lin, [Structure(0, "lin", "unit", [("weight", 0, [0])])])
        tensor([4.], dtype=torch.float64)
    """
    scaling = StructureScaling(model, structures)
    return scaling.reduce({n: t.abs() for n, t in scaling.theta().items()})


@register_criterion("l2", needs_data=False, summary="‖θ_s‖₂")
def l2(model: nn.Module, structures: Sequence[Structure], data=None, *, loss_fn=None,
       num_samples: Optional[int] = None) -> torch.Tensor:
    """L2 magnitude ``sqrt(Σ_{i∈s} θ_i²)`` of each structure.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.core.structure_types import Structure
        >>> lin = nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad(): _ = lin.weight.copy_(torch.tensor([[3.0, 4.0]]))
        >>> l2(lin, [Structure(0, "lin", "unit", [("weight", 0, [0])])])
        tensor([5.], dtype=torch.float64)
    """
    scaling = StructureScaling(model, structures)
    return scaling.reduce({n: t.double().square() for n, t in scaling.theta().items()}).sqrt()


@register_criterion("random", needs_data=False, summary="uniform random scores from `seed`")
def random_scores(model: nn.Module, structures: Sequence[Structure], data=None, *, loss_fn=None,
                  num_samples: Optional[int] = None, seed: int = 0) -> torch.Tensor:
    """Uniform random scores in ``[0, 1)``, deterministic given ``seed`` (the random baseline).

    Uses its own ``torch.Generator``: the global RNG state is not touched.

    Example:
        >>> from torch import nn
        >>> from prunekit.core.structure_types import Structure
        >>> s = [Structure(i, "l", "unit", [("weight", 0, [i])]) for i in range(2)]
        >>> bool((random_scores(nn.Linear(2, 2), s, seed=3) == random_scores(nn.Linear(2, 2), s, seed=3)).all())
        True
    """
    generator = torch.Generator().manual_seed(int(seed))
    return torch.rand(len(structures), generator=generator, dtype=torch.float64)
