"""Per-structure scale vector α: every data-driven criterion is a derivative w.r.t. α.

Each structure ``s`` (see :class:`prunekit.core.structure_types.Structure`) owns one scalar
``α_s``. The parameters seen by the model are

.. math::  θ(α) = θ + \\sum_s (α_s - 1)\\, θ_s ,
           \\qquad θ_i(α) = θ_i \\bigl(1 + \\sum_{s \\ni i} (α_s - 1)\\bigr)

where ``θ_s`` is θ restricted to the slices of ``s`` (each entry counted once per
structure, however many of the structure's slices name it). At ``α = 1`` the model
is unchanged, and because θ(α) is *linear* in α

.. math::  ∂f/∂α_s = J θ_s, \\qquad ∂L/∂α_s = θ_s^T g, \\qquad
           ∂^2 L/∂α_s ∂α_{s'} = θ_s^T H θ_{s'}

hold exactly, also for structures that overlap (an attention head and an output unit
of the same layer share entries). Direction ``1`` (all ones) moves θ along
``θ_P = Σ_s θ_s``.

prunekit's formulation: docs/methods.md suggests "α multiplies every slice of its
structure". For structures that do not overlap this *is* slice-wise multiplication.
Where structures overlap, a product ``θ_i Π_{s∋i} α_s`` would add spurious
``θ_i g_i`` terms to the second derivatives; the additive form above keeps every
α-derivative equal to the θ-derivative contracted with the ``θ_s`` vectors.

Implementation: for every parameter and dimension, structures whose index sets are
disjoint share one index map ``dim position -> structure`` (a gather from
``[α - 1, 0]``), so building θ(α) costs one small gather and one broadcast multiply
per parameter. A structure that slices the same parameter along two dimensions falls
back to a dense mask.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunekit.core.structure_types import Structure
    >>> lin = nn.Linear(3, 2)
    >>> s = [Structure(0, "lin", "unit", [("weight", 0, [0]), ("bias", 0, [0])]),
    ...      Structure(1, "lin", "unit", [("weight", 0, [1]), ("bias", 0, [1])])]
    >>> params = scaled_parameters(lin, s, torch.tensor([0.0, 1.0]))
    >>> bool((params["weight"][0] == 0).all()), torch.equal(params["weight"][1], lin.weight[1])
    (True, True)
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from prunekit.core.structure_types import Structure

__all__ = ["StructureScaling", "scaled_parameters"]


class StructureScaling:
    """Precomputed map from structures to parameter entries of one model.

    Args:
        model: the model; parameter names are those of ``model.named_parameters()``.
        structures: the structures; ``α`` has one entry per structure, in this order.

    Attributes:
        num_structures: ``|S|``.
        dtype, device: of the first parameter a structure touches (α uses them).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.core.structure_types import Structure
        >>> lin = nn.Linear(3, 2)
        >>> sc = StructureScaling(lin, [Structure(0, "lin", "unit", [("weight", 0, [1]), ("bias", 0, [1])])])
        >>> p = sc.parameters(torch.tensor([2.0]))   # θ(α): row 1 doubled
        >>> torch.allclose(p["weight"][1], 2 * lin.weight[1])
        True
        >>> sc.reduce({"weight": torch.ones(2, 3), "bias": torch.ones(2)})   # Σ_{i∈s} x_i
        tensor([4.], dtype=torch.float64)
    """

    def __init__(self, model: nn.Module, structures: Sequence[Structure]):
        named = dict(model.named_parameters())
        self.num_structures = num = len(structures)
        maps: dict[tuple[str, int], list[list[int]]] = {}
        dense: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for k, structure in enumerate(structures):
            per_param: dict[str, dict[int, set[int]]] = {}
            for spec in structure.slices:
                try:
                    name, dim, idxs = spec
                except (TypeError, ValueError):
                    raise ValueError(
                        f"structure {structure.id}: slice {spec!r} is not (parameter_name, dim, indices)") from None
                if name not in named:
                    known = ", ".join(list(named)[:8])
                    raise ValueError(f"structure {structure.id}: no parameter named {name!r} in the model "
                                     f"(names come from model.named_parameters(), e.g. {known}, ...)")
                shape = named[name].shape
                if not isinstance(dim, int) or not 0 <= dim < len(shape):
                    raise ValueError(f"structure {structure.id}: dim {dim!r} out of range for {name} of shape {tuple(shape)}")
                idx_list = [int(i) for i in (idxs.tolist() if isinstance(idxs, torch.Tensor) else idxs)]
                bad = [i for i in idx_list if not 0 <= i < shape[dim]]
                if bad:
                    raise ValueError(f"structure {structure.id}: indices {bad[:5]} out of range for dim {dim} "
                                     f"of {name} (size {shape[dim]})")
                per_param.setdefault(name, {}).setdefault(dim, set()).update(idx_list)
            for name, dims in per_param.items():
                shape = named[name].shape
                if len(dims) == 1:
                    ((dim, idx_set),) = dims.items()
                    layers = maps.setdefault((name, dim), [])
                    for layer in layers:  # first index map where every position is still free
                        if all(layer[i] == num for i in idx_set):
                            break
                    else:
                        layer = [num] * shape[dim]
                        layers.append(layer)
                    for i in idx_set:
                        layer[i] = k
                else:  # the same parameter sliced along several dims: union as a dense mask
                    mask = torch.zeros(shape, dtype=torch.bool, device=named[name].device)
                    for dim, idx_set in dims.items():
                        index = [slice(None)] * len(shape)
                        index[dim] = torch.tensor(sorted(idx_set), dtype=torch.long, device=mask.device)
                        mask[tuple(index)] = True
                    dense.setdefault(name, []).append((k, mask))

        touched = [n for n in named if any(key[0] == n for key in maps) or n in dense]
        self._theta = {n: named[n].detach() for n in touched}
        self._others = {n: p.detach() for n, p in named.items() if n not in self._theta}
        self._maps: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for (name, dim), layers in maps.items():
            dev = named[name].device
            self._maps.setdefault(name, []).extend(
                (dim, torch.tensor(layer, dtype=torch.long, device=dev)) for layer in layers)
        self._dense = dense
        first = next(iter(self._theta.values()), None)
        if first is None:
            first = next(iter(named.values()), torch.zeros(()))
        self.dtype = first.dtype if first.is_floating_point() else torch.get_default_dtype()
        self.device = first.device

    @property
    def touched_names(self) -> list[str]:
        """Names of the parameters at least one structure slices."""
        return list(self._theta)

    def theta(self) -> dict[str, torch.Tensor]:
        """Detached values of the touched parameters, ``{name: θ}``."""
        return dict(self._theta)

    def ones(self) -> torch.Tensor:
        """``α = 1`` (the unchanged model), in the parameters' dtype and device."""
        return torch.ones(self.num_structures, dtype=self.dtype, device=self.device)

    def parameters(self, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        """θ(α) for the touched parameters: ``θ_i (1 + Σ_{s∋i} (α_s − 1))`` (differentiable in α)."""
        if alpha.shape != (self.num_structures,):
            raise ValueError(f"alpha must have shape ({self.num_structures},), got {tuple(alpha.shape)}")
        delta = torch.cat([alpha - 1, alpha.new_zeros(1)])
        out = {}
        for name, theta in self._theta.items():
            factor = None
            for dim, index in self._maps.get(name, ()):
                shape = [1] * theta.dim()
                shape[dim] = -1
                term = delta[index].to(theta.dtype).view(shape)
                factor = term if factor is None else factor + term
            for k, mask in self._dense.get(name, ()):
                term = delta[k].to(theta.dtype) * mask
                factor = term if factor is None else factor + term
            out[name] = theta * (1 + factor)
        return out

    def all_parameters(self, alpha: torch.Tensor) -> dict[str, torch.Tensor]:
        """θ(α) for every parameter (untouched ones detached): the dict for ``functional_call``."""
        return {**self._others, **self.parameters(alpha)}

    def reduce(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``r_s = Σ_{i∈s} x_i`` for per-entry values ``{name: x}`` (float64, shape ``[|S|]``).

        Parameters missing from ``values`` contribute zero.
        """
        out = torch.zeros(self.num_structures + 1, dtype=torch.float64, device=self.device)
        for name, entries in self._maps.items():
            if name not in values:
                continue
            x = values[name]
            for dim, index in entries:
                other = [d for d in range(x.dim()) if d != dim]
                r = x.sum(dim=other, dtype=torch.float64) if other else x.to(torch.float64)
                out.index_add_(0, index, r)
        for name, entries in self._dense.items():
            if name not in values:
                continue
            for k, mask in entries:
                out[k] += values[name][mask].sum(dtype=torch.float64)
        return out[: self.num_structures]


def scaled_parameters(model: nn.Module, structures: Sequence[Structure], alpha: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every parameter of ``model`` at scale ``α``: ``θ(α) = θ + Σ_s (α_s − 1) θ_s``.

    The result is meant for ``torch.func.functional_call(model, params, inputs)``;
    it is differentiable in ``alpha`` and never modifies the model. prunekit's
    formulation (additive where structures overlap; see the module docstring).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from torch.func import functional_call
        >>> from prunekit.core.structure_types import Structure
        >>> lin = nn.Linear(3, 2)
        >>> s = [Structure(0, "lin", "unit", [("weight", 0, [0]), ("bias", 0, [0])])]
        >>> y = functional_call(lin, scaled_parameters(lin, s, torch.zeros(1)), (torch.randn(4, 3),))
        >>> bool((y[:, 0] == 0).all())
        True
    """
    return StructureScaling(model, structures).all_parameters(alpha)
