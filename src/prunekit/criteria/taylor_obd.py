"""First-order Taylor and OBD (diagonal empirical Fisher) criteria.

Both average over every sample used (``num_samples``, streamed over batches): the
gradient is that of the mean loss over all samples, and the Fisher diagonal sums the
squared per-sample gradients of *every* sample of *every* batch (Torch-Pruning's
diagonal-Hessian importance keeps only the last sample; prunekit does not).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunekit.core.structure_types import Structure
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    >>> units = [Structure(i, "0", "unit", [("0.weight", 0, [i]), ("0.bias", 0, [i])]) for i in range(5)]
    >>> data = [(torch.randn(6, 4), torch.randint(0, 3, (6,)))]
    >>> taylor(model, units, data).shape, obd(model, units, data).shape
    (torch.Size([5]), torch.Size([5]))
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
from torch import nn
from torch.func import grad, vmap

from prunekit.core.structure_types import Structure

from ._common import Batches, ModelCall, evaluation_mode
from .distributed import local_num_samples, reduce_sums, resolve_group
from .losses import LossSpec, OutputSpec, resolve_loss
from .registry import register_criterion
from .scaling import StructureScaling

__all__ = ["gradient_terms", "taylor", "obd", "fisher_diagonal"]


def gradient_terms(model: nn.Module, structures: Sequence[Structure], data: Iterable, *,
                   loss_fn: LossSpec = None, num_samples: Optional[int] = None,
                   output: OutputSpec = None, group=None) -> torch.Tensor:
    """Signed first-order terms ``θ_sᵀ g = ∂L/∂α_s`` (float64, shape ``[|S|]``).

    ``g = ∇_θ L`` with ``L = (1/W) Σ_b W_b L_b`` the mean loss over every counted entry
    of the samples used (``W_b``: see :mod:`prunekit.criteria.losses`; the number of
    samples for ``[N, C]`` cross-entropy and for a user ``loss_fn``); per batch
    ``∂L_b/∂α`` is one backward pass, accumulated as ``Σ_b W_b ∂L_b/∂α / W``.

    Under ``torch.distributed`` (``group``: see :mod:`prunekit.criteria.distributed`) the
    signed sums ``Σ_b W_b ∂L_b/∂α`` and ``W`` are summed over the ranks before the division,
    and ``num_samples`` counts samples over all ranks.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.core.structure_types import Structure
        >>> lin = nn.Linear(2, 2)
        >>> s = [Structure(0, "lin", "unit", [("weight", 0, [0]), ("bias", 0, [0])])]
        >>> gradient_terms(lin, s, (torch.randn(3, 2), torch.tensor([0, 1, 1]))).shape
        torch.Size([1])
        >>> gradient_terms(lin, s, (torch.randn(3, 2), torch.randn(3, 2)), loss_fn="mse").shape
        torch.Size([1])
    """
    ctx = resolve_group(group)

    def local():
        loss = resolve_loss(loss_fn)
        forward = ModelCall(model, output)
        scaling = StructureScaling(model, structures)
        acc = torch.zeros(len(structures), dtype=torch.float64, device=scaling.device)
        total = 0
        batches = Batches(data, local_num_samples(num_samples, ctx), scaling.device, allow_empty=ctx is not None)
        with evaluation_mode(model):
            for batch in batches:
                targets = batch.targets.obj
                alpha = scaling.ones().requires_grad_()
                out = forward(scaling.all_parameters(alpha), batch.inputs.obj)
                loss.check(out.shape, targets)
                weight = loss.weight(out, targets, batch.n)
                if weight == 0:  # every target of the batch ignored
                    continue
                (g_alpha,) = torch.autograd.grad(loss.mean(out, targets), alpha, allow_unused=True,
                                                 materialize_grads=True)
                acc += weight * g_alpha.to(torch.float64)
                total += weight
        return acc, total, batches.total

    acc, total, samples = reduce_sums(ctx, local, "taylor / gradient_terms")
    _nonzero_samples(samples)
    return acc / _nonzero_total(total)


def _nonzero_total(total) -> float:
    if total == 0:
        raise ValueError("saliency: no target was counted (every target equals the loss's ignore_index)")
    return total


def _nonzero_samples(samples) -> None:
    """After a reduction over ranks (a single process raises in :class:`Batches` already)."""
    if samples == 0:
        raise ValueError("saliency: the data yielded no samples on any rank")


@register_criterion("taylor", needs_data=True, distributed=True,
                    summary="|θ_sᵀ g| (first-order Taylor)")
def taylor(model: nn.Module, structures: Sequence[Structure], data: Iterable, *,
           loss_fn: LossSpec = None, num_samples: Optional[int] = None, output: OutputSpec = None,
           group=None) -> torch.Tensor:
    """First-order Taylor saliency ``|θ_sᵀ g|``, ``g`` the gradient of the mean loss.

    Works with any loss, built-in or a user ``loss_fn`` (see :func:`gradient_terms`).

    ``θ_sᵀ g`` is the first-order loss change of scaling ``s`` (``∂L/∂α_s``): removing
    ``s`` changes the loss by ``≈ −θ_sᵀ g``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.core.structure_types import Structure
        >>> lin = nn.Linear(2, 2)
        >>> s = [Structure(i, "lin", "unit", [("weight", 0, [i]), ("bias", 0, [i])]) for i in range(2)]
        >>> bool((taylor(lin, s, (torch.randn(3, 2), torch.tensor([0, 1, 1]))) >= 0).all())
        True
    """
    return gradient_terms(model, structures, data, loss_fn=loss_fn, num_samples=num_samples, output=output,
                          group=group).abs()


VMAP_FALLBACK = """Models ``torch.func.vmap`` cannot run: Python control flow on a tensor's value
(``.item()``, ``if mask.all():`` in Hugging Face text models), in-place updates of unbatched
tensors by batched ones (Mamba, a GRU with a stored initial state), ``autograd.Function`` s
without ``setup_context`` (Bloom's GeLU). The per-sample quantities are then computed one
sample at a time by plain reverse mode: the same values, slower. Once ``vmap`` fails, the
loop serves the rest of the data; an error of the model itself is raised again by the loop."""


def _per_sample_budget_chunk(numel: int, itemsize: int, budget: int = 256 * 2**20) -> int:
    return max(1, budget // max(1, numel * itemsize))


def fisher_diagonal(model: nn.Module, structures: Sequence[Structure], data: Iterable, *,
                    loss_fn: LossSpec = None, num_samples: Optional[int] = None,
                    chunk_size: Optional[int] = None, output: OutputSpec = None,
                    group=None) -> dict[str, torch.Tensor]:
    """Empirical Fisher diagonal ``F_ii = Σ_n (c_n/W) (∂ℓ_n/∂θ_i)²`` of the parameters structures touch.

    ``ℓ_n`` is the loss of sample ``n`` alone (its mean over its own ``c_n`` counted
    entries), weighted by its share ``c_n/W`` of the mean loss ``L = Σ_n (c_n/W) ℓ_n``,
    ``W = Σ_n c_n``. ``c_n = 1`` for ``[N, C]`` cross-entropy and for a user ``loss_fn``
    (``ℓ_n = loss_fn(f(x_n)[None], y_n[None])``), so ``F_ii = (1/N) Σ_n (∂ℓ_n/∂θ_i)²``;
    ``c_n`` = the sample's counted positions (token / pixel cross-entropy; a sample
    whose targets are all ``ignore_index`` contributes nothing) or its number of
    output entries (MSE). Per-sample gradients come from
    ``torch.func.vmap(torch.func.grad(...))`` of ``c_n ℓ_n`` (divided by ``c_n`` after
    squaring) with the model in eval mode, ``chunk_size`` samples at a time (default:
    as many as fit in 256 MiB of per-sample gradients); for models ``vmap`` cannot run
    (:data:`VMAP_FALLBACK`) one backward pass per sample instead. Returns ``{name: F}`` in float64.

    Under ``torch.distributed`` (``group``: :mod:`prunekit.criteria.distributed`) the sums
    of per-sample squares ``Σ_n c_n (∂ℓ_n/∂θ_i)²`` and ``W = Σ_n c_n`` are summed over the
    ranks (squares of per-sample gradients add across ranks as they do across batches).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.core.structure_types import Structure
        >>> lin = nn.Linear(2, 2)
        >>> s = [Structure(0, "lin", "unit", [("weight", 0, [0])])]
        >>> sorted(fisher_diagonal(lin, s, (torch.randn(3, 2), torch.tensor([0, 1, 1]))))
        ['weight']
    """
    ctx = resolve_group(group)
    names: list[str] = []

    def local():
        loss = resolve_loss(loss_fn)
        forward = ModelCall(model, output)
        scaling = StructureScaling(model, structures)
        theta = scaling.theta()
        others = scaling.all_parameters(scaling.ones())
        for name in theta:
            others.pop(name)
        numel = sum(t.numel() for t in theta.values())
        itemsize = max((t.element_size() for t in theta.values()), default=4)
        chunk = chunk_size or _per_sample_budget_chunk(numel, itemsize)
        fisher = {n: torch.zeros(t.shape, dtype=torch.float64, device=t.device) for n, t in theta.items()}
        total = 0.0
        vmap_works = True
        batches = Batches(data, local_num_samples(num_samples, ctx), scaling.device, allow_empty=ctx is not None)
        with evaluation_mode(model):
            for batch in batches:
                inputs, targets = batch.inputs, batch.targets
                with torch.no_grad():  # one sample through the model: the output shape, to check the targets
                    first = forward.plain(inputs.take(0, 1).obj)
                out_shape = (batch.n,) + tuple(first.shape[1:])
                loss.check(out_shape, targets.obj)
                counts = loss.sample_counts(targets.obj, batch.n, out_shape).to(device=scaling.device)

                def sample_loss(params, x, y):  # c_n ℓ_n of one sample
                    out = forward({**others, **params}, inputs.one_sample(x))
                    return loss.sample_sum(out, targets.one_sample(y))

                def looped_grads(start, stop):  # the same per-sample gradients, one sample at a time
                    leaves = {name: t.detach().requires_grad_() for name, t in theta.items()}
                    rows = []
                    for i in range(start, min(stop, batch.n)):
                        value = loss.sample_sum(forward({**others, **leaves}, inputs.take(i, i + 1).obj),
                                                targets.take(i, i + 1).obj)
                        rows.append(torch.autograd.grad(value, list(leaves.values()), allow_unused=True,
                                                        materialize_grads=True) if value.requires_grad
                                    else [torch.zeros_like(t) for t in leaves.values()])
                    return {name: torch.stack([r[k] for r in rows]) for k, name in enumerate(leaves)}

                per_sample_grads = vmap(grad(sample_loss), in_dims=(None, 0, 0))
                for start in range(0, batch.n, chunk):
                    stop = start + chunk
                    c = counts[start:stop]
                    inv = torch.where(c > 0, 1 / c.clamp(min=1e-300), torch.zeros_like(c))
                    grads = None
                    if vmap_works:
                        try:
                            grads = per_sample_grads(theta, inputs.batched_values(start, stop),
                                                     targets.batched_values(start, stop))
                        except RuntimeError:  # see VMAP_FALLBACK; a genuine error is raised again below
                            vmap_works = False
                    if grads is None:
                        grads = looped_grads(start, stop)
                    for name, g in grads.items():
                        sq = g.square()
                        if bool((c != 1).any()):  # (∂(c_n ℓ_n))² / c_n = c_n (∂ℓ_n)²
                            sq = sq.double() * inv.view(-1, *([1] * (g.dim() - 1)))
                        fisher[name] += sq.sum(0, dtype=torch.float64)
                total += float(counts.sum())
        names.extend(fisher)
        return [*fisher.values(), total, batches.total]

    sums = reduce_sums(ctx, local, "obd / fisher_diagonal")
    fisher = dict(zip(names, sums[:-2]))
    total, samples = sums[-2], sums[-1]
    _nonzero_samples(samples)
    total = _nonzero_total(total)
    return {name: f / total for name, f in fisher.items()}


@register_criterion("obd", needs_data=True, distributed=True,
                    summary="½ Σ_{i∈s} θ_i² F_ii (diagonal empirical Fisher)")
def obd(model: nn.Module, structures: Sequence[Structure], data: Iterable, *,
        loss_fn: LossSpec = None, num_samples: Optional[int] = None,
        chunk_size: Optional[int] = None, output: OutputSpec = None, group=None) -> torch.Tensor:
    """Optimal Brain Damage with the empirical Fisher: ``½ Σ_{i∈s} θ_i² F_ii``.

    ``F_ii = Σ_n (c_n/W) (∂ℓ_n/∂θ_i)²`` over every sample used (``(1/N) Σ_n`` for
    ``[N, C]`` cross-entropy; see :func:`fisher_diagonal` for token / pixel losses and
    MSE); each entry of ``s`` counted once. No output curvature is involved, so every
    loss works, a user ``loss_fn`` included. prunekit's formulation:
    the diagonal curvature is the empirical Fisher (squared per-sample gradients),
    as in Torch-Pruning's "Hessian" importance but accumulated over all samples.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.core.structure_types import Structure
        >>> lin = nn.Linear(2, 2)
        >>> s = [Structure(i, "lin", "unit", [("weight", 0, [i]), ("bias", 0, [i])]) for i in range(2)]
        >>> obd(lin, s, (torch.randn(3, 2), torch.tensor([0, 1, 1]))).shape
        torch.Size([2])
    """
    scaling = StructureScaling(model, structures)
    fisher = fisher_diagonal(model, structures, data, loss_fn=loss_fn, num_samples=num_samples,
                             chunk_size=chunk_size, output=output, group=group)
    theta = scaling.theta()
    return 0.5 * scaling.reduce({n: theta[n].double().square() * f for n, f in fisher.items()})
