"""First-order Taylor and OBD (diagonal empirical Fisher) criteria.

Both average over every sample used (``num_samples``, streamed over batches): the
gradient is that of the mean loss over all samples, and the Fisher diagonal sums the
squared per-sample gradients of *every* sample of *every* batch (Torch-Pruning's
diagonal-Hessian importance keeps only the last sample; prunekit does not).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunekit.structure_types import Structure
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    >>> units = [Structure(i, "0", "unit", [("0.weight", 0, [i]), ("0.bias", 0, [i])]) for i in range(5)]
    >>> data = [(torch.randn(6, 4), torch.randint(0, 3, (6,)))]
    >>> taylor(model, units, data).shape, obd(model, units, data).shape
    (torch.Size([5]), torch.Size([5]))
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from prunekit.structure_types import Structure

from ._common import Batches, evaluation_mode, resolve_loss
from .registry import register_criterion
from .scaling import StructureScaling

__all__ = ["gradient_terms", "taylor", "obd", "fisher_diagonal"]


def gradient_terms(model: nn.Module, structures: Sequence[Structure], data: Iterable, *,
                   loss_fn: Optional[Callable] = None, num_samples: Optional[int] = None) -> torch.Tensor:
    """Signed first-order terms ``θ_sᵀ g = ∂L/∂α_s`` (float64, shape ``[|S|]``).

    ``g = ∇_θ L`` with ``L`` the mean loss over the samples used; per batch
    ``∂L_b/∂α`` is one backward pass, accumulated as ``Σ_b n_b ∂L_b/∂α / N``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.structure_types import Structure
        >>> lin = nn.Linear(2, 2)
        >>> s = [Structure(0, "lin", "unit", [("weight", 0, [0]), ("bias", 0, [0])])]
        >>> gradient_terms(lin, s, (torch.randn(3, 2), torch.tensor([0, 1, 1]))).shape
        torch.Size([1])
    """
    loss_fn = resolve_loss(loss_fn)
    scaling = StructureScaling(model, structures)
    acc = torch.zeros(len(structures), dtype=torch.float64, device=scaling.device)
    batches = Batches(data, num_samples, scaling.device)
    with evaluation_mode(model):
        for inputs, targets, n in batches:
            alpha = scaling.ones().requires_grad_()
            loss = loss_fn(functional_call(model, scaling.all_parameters(alpha), (inputs,)), targets)
            (g_alpha,) = torch.autograd.grad(loss, alpha, allow_unused=True, materialize_grads=True)
            acc += n * g_alpha.to(torch.float64)
    return acc / batches.total


@register_criterion("taylor", needs_data=True, summary="|θ_sᵀ g| (first-order Taylor)")
def taylor(model: nn.Module, structures: Sequence[Structure], data: Iterable, *,
           loss_fn: Optional[Callable] = None, num_samples: Optional[int] = None) -> torch.Tensor:
    """First-order Taylor saliency ``|θ_sᵀ g|``, ``g`` the gradient of the mean loss.

    ``θ_sᵀ g`` is the first-order loss change of scaling ``s`` (``∂L/∂α_s``): removing
    ``s`` changes the loss by ``≈ −θ_sᵀ g``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.structure_types import Structure
        >>> lin = nn.Linear(2, 2)
        >>> s = [Structure(i, "lin", "unit", [("weight", 0, [i]), ("bias", 0, [i])]) for i in range(2)]
        >>> bool((taylor(lin, s, (torch.randn(3, 2), torch.tensor([0, 1, 1]))) >= 0).all())
        True
    """
    return gradient_terms(model, structures, data, loss_fn=loss_fn, num_samples=num_samples).abs()


def _per_sample_budget_chunk(numel: int, itemsize: int, budget: int = 256 * 2**20) -> int:
    return max(1, budget // max(1, numel * itemsize))


def fisher_diagonal(model: nn.Module, structures: Sequence[Structure], data: Iterable, *,
                    loss_fn: Optional[Callable] = None, num_samples: Optional[int] = None,
                    chunk_size: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal ``F_ii = (1/N) Σ_n (∂ℓ_n/∂θ_i)²`` of the parameters structures touch.

    ``ℓ_n = loss_fn(f(x_n)[None], y_n[None])`` is the loss of sample ``n`` alone;
    per-sample gradients come from ``torch.func.vmap(torch.func.grad(...))`` with the
    model in eval mode, ``chunk_size`` samples at a time (default: as many as fit in
    256 MiB of per-sample gradients). Returns ``{name: F}`` in float64.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.structure_types import Structure
        >>> lin = nn.Linear(2, 2)
        >>> s = [Structure(0, "lin", "unit", [("weight", 0, [0])])]
        >>> sorted(fisher_diagonal(lin, s, (torch.randn(3, 2), torch.tensor([0, 1, 1]))))
        ['weight']
    """
    loss_fn = resolve_loss(loss_fn)
    scaling = StructureScaling(model, structures)
    theta = scaling.theta()
    others = scaling.all_parameters(scaling.ones())
    for name in theta:
        others.pop(name)
    numel = sum(t.numel() for t in theta.values())
    itemsize = max((t.element_size() for t in theta.values()), default=4)
    chunk = chunk_size or _per_sample_budget_chunk(numel, itemsize)

    def sample_loss(params, x, y):
        out = functional_call(model, {**others, **params}, (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    per_sample_grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    fisher = {n: torch.zeros(t.shape, dtype=torch.float64, device=t.device) for n, t in theta.items()}
    batches = Batches(data, num_samples, scaling.device)
    with evaluation_mode(model):
        for inputs, targets, n in batches:
            for start in range(0, n, chunk):
                grads = per_sample_grads(theta, inputs[start:start + chunk], targets[start:start + chunk])
                for name, g in grads.items():
                    fisher[name] += g.square().sum(0, dtype=torch.float64)
    return {name: f / batches.total for name, f in fisher.items()}


@register_criterion("obd", needs_data=True, summary="½ Σ_{i∈s} θ_i² F_ii (diagonal empirical Fisher)")
def obd(model: nn.Module, structures: Sequence[Structure], data: Iterable, *,
        loss_fn: Optional[Callable] = None, num_samples: Optional[int] = None,
        chunk_size: Optional[int] = None) -> torch.Tensor:
    """Optimal Brain Damage with the empirical Fisher: ``½ Σ_{i∈s} θ_i² F_ii``.

    ``F_ii = (1/N) Σ_n (∂ℓ_n/∂θ_i)²`` over every sample used (see
    :func:`fisher_diagonal`); each entry of ``s`` counted once. prunekit's formulation:
    the diagonal curvature is the empirical Fisher (squared per-sample gradients),
    as in Torch-Pruning's "Hessian" importance but accumulated over all samples.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.structure_types import Structure
        >>> lin = nn.Linear(2, 2)
        >>> s = [Structure(i, "lin", "unit", [("weight", 0, [i]), ("bias", 0, [i])]) for i in range(2)]
        >>> obd(lin, s, (torch.randn(3, 2), torch.tensor([0, 1, 1]))).shape
        torch.Size([2])
    """
    scaling = StructureScaling(model, structures)
    fisher = fisher_diagonal(model, structures, data, loss_fn=loss_fn, num_samples=num_samples, chunk_size=chunk_size)
    theta = scaling.theta()
    return 0.5 * scaling.reduce({n: theta[n].double().square() * f for n, f in fisher.items()})
