"""SOSP: second-order structured pruning saliencies (Nonnenmacher et al., ICLR 2022).

Removing a set M of structures (``δθ = −Σ_{s∈M} θ_s``) changes the loss by

.. math::  ΔL(M) ≈ −\\sum_{s∈M} θ_s^T g + ½ \\sum_{s,s'∈M} θ_s^T G θ_{s'}

with ``g = ∇L`` and the Gauss-Newton matrix ``G = (1/N) Σ_n J_nᵀ Λ_n J_n``,
``Λ_n = diag(p_n) − p_n p_nᵀ`` (softmax cross-entropy, ``p_n = softmax(f(x_n))``).
Everything is computed as derivatives w.r.t. the per-structure scale ``α``
(:mod:`prunekit.criteria.scaling`): ``∂f_n/∂α_s = J_n θ_s``.

* **SOSP-H** (:func:`sosp_h`): ``λ^H_s = |−θ_sᵀ g + ½ θ_sᵀ (G θ_P)|``, ``θ_P = Σ_s θ_s``
  — one forward-mode JVP and one backward pass per batch.
* **SOSP-I** (:func:`sosp_i`): ``λ^I_s = |θ_sᵀ g| + ½ Σ_{s'} |Q_{ss'}|``,
  ``Q_{ss'} = (1/N) Σ_n φ_s(x_n)ᵀ Λ_n φ_{s'}(x_n) = θ_sᵀ G θ_{s'}`` — per-sample
  Jacobians of the logits w.r.t. α and ``|S|²`` memory.

The model runs in eval mode (frozen BatchNorm statistics); sums are accumulated over
batches and normalised by the total number of samples ``N``.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunekit.structure_types import Structure
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    >>> units = [Structure(i, "0", "unit", [("0.weight", 0, [i]), ("0.bias", 0, [i])]) for i in range(5)]
    >>> data = [(torch.randn(6, 4), torch.randint(0, 3, (6,)))]
    >>> h, i = sosp_h(model, units, data), sosp_i(model, units, data)
    >>> h.shape, i.shape
    (torch.Size([5]), torch.Size([5]))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, jvp, vmap

from prunekit.structure_types import Structure

from ._common import Batches, check_logits, evaluation_mode, resolve_loss, softmax_ce_curvature
from .registry import register_criterion
from .scaling import StructureScaling

__all__ = ["sosp_h", "sosp_h_terms", "sosp_i", "sosp_i_pairwise", "SOSPIPairwise", "SaliencyMemoryError",
           "DEFAULT_MAX_MEMORY_BYTES"]

DEFAULT_MAX_MEMORY_BYTES = 2 * 2**30  # 2 GiB for SOSP-I's |S|×|S| matrix

_CURVATURES = ("gauss-newton", "hessian")


class SaliencyMemoryError(MemoryError):
    """A criterion's statistics would exceed the configured memory limit."""


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    raise AssertionError


def _sosp_h_accumulate(model, structures, data, loss_fn, num_samples, curvature, first_order, separate):
    """Per-batch SOSP-H sums. Returns ``(combined, gradient, curvature, N)``, float64.

    ``combined = Σ_b (−n_b θ_sᵀ g_b + ½ θ_sᵀ C_b θ_P)`` (C_b: the batch's *summed* curvature),
    ``gradient = Σ_b n_b θ_sᵀ g_b`` and ``curvature = Σ_b θ_sᵀ C_b θ_P`` (only when ``separate``).
    """
    if curvature not in _CURVATURES:
        raise ValueError(f"curvature must be one of {_CURVATURES}, got {curvature!r}")
    loss_fn = resolve_loss(loss_fn)
    scaling = StructureScaling(model, structures)
    num = len(structures)
    zeros = lambda: torch.zeros(num, dtype=torch.float64, device=scaling.device)  # noqa: E731
    combined, grad_sum, curv_sum = zeros(), zeros(), zeros()
    ones = scaling.ones()
    batches = Batches(data, num_samples, scaling.device)

    def logits_of(alpha, inputs):
        return check_logits(functional_call(model, scaling.all_parameters(alpha), (inputs,)))

    with evaluation_mode(model):
        for inputs, targets, n in batches:
            alpha = ones.clone().requires_grad_()
            if curvature == "gauss-newton":
                # u = J θ_P: forward-mode JVP along α = 1; logits stay on the reverse-mode tape.
                logits, u = jvp(lambda a: logits_of(a, inputs), (alpha,), (ones,))
                with torch.no_grad():
                    v = softmax_ce_curvature(torch.softmax(logits.detach(), dim=1), u.detach())  # Σ_n-scaled Λ u
                curv_obj = (v * logits).sum()  # ∂/∂α_s = Σ_n φ_s(x_n)ᵀ Λ_n u_n = n_b θ_sᵀ G_b θ_P
                if separate:
                    loss = loss_fn(logits, targets)
                    (g,) = torch.autograd.grad(loss, alpha, retain_graph=True, allow_unused=True,
                                               materialize_grads=True)
                    (c,) = torch.autograd.grad(curv_obj, alpha, allow_unused=True, materialize_grads=True)
                    grad_sum += n * g.double()
                    curv_sum += c.double()
                    combined += (-n * g.double() if first_order else 0) + 0.5 * c.double()
                else:  # one fused backward: ∂/∂α of (−n_b L_b + ½ ⟨v, f⟩)
                    objective = 0.5 * curv_obj
                    if first_order:
                        objective = objective - n * loss_fn(logits, targets)
                    if objective.requires_grad:  # False only if no structure reaches the logits
                        (d,) = torch.autograd.grad(objective, alpha, allow_unused=True, materialize_grads=True)
                        combined += d.double()
            else:  # exact Hessian of the mean loss: double backward w.r.t. α
                loss = loss_fn(logits_of(alpha, inputs), targets)
                (g,) = torch.autograd.grad(loss, alpha, create_graph=True, allow_unused=True, materialize_grads=True)
                if g.requires_grad:  # ∂/∂α ⟨∂L/∂α, 1⟩ = Θᵀ H θ_P (θ(α) is linear in α)
                    (c,) = torch.autograd.grad(g.sum(), alpha, allow_unused=True, materialize_grads=True)
                else:
                    c = torch.zeros_like(g)
                g, c = n * g.detach().double(), n * c.double()
                grad_sum += g
                curv_sum += c
                combined += (-g if first_order else 0) + 0.5 * c
    return combined, grad_sum, curv_sum, batches.total


def sosp_h_terms(model: nn.Module, structures: Sequence[Structure], data: Iterable, *,
                 loss_fn: Optional[Callable] = None, num_samples: Optional[int] = None,
                 curvature: str = "gauss-newton") -> dict[str, torch.Tensor]:
    """The signed terms of SOSP-H, for inspection (float64, each ``[|S|]``).

    Returns ``{"gradient": θ_sᵀ g, "curvature": θ_sᵀ C θ_P, "delta_loss": −θ_sᵀ g + ½ θ_sᵀ C θ_P}``
    with ``C = G`` (``curvature="gauss-newton"``) or ``H`` (``"hessian"``). For a single
    structure ``S = {s}``, ``delta_loss`` is the second-order estimate of
    ``L(θ − θ_s) − L(θ)``. Costs one more backward per batch than :func:`sosp_h`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.structure_types import Structure
        >>> lin = nn.Linear(2, 2)
        >>> s = [Structure(0, "lin", "unit", [("weight", 0, [0]), ("bias", 0, [0])])]
        >>> sorted(sosp_h_terms(lin, s, (torch.randn(3, 2), torch.tensor([0, 1, 1]))))
        ['curvature', 'delta_loss', 'gradient']
    """
    _, g, c, total = _sosp_h_accumulate(model, structures, data, loss_fn, num_samples, curvature, True, True)
    g, c = g / total, c / total
    return {"gradient": g, "curvature": c, "delta_loss": -g + 0.5 * c}


@register_criterion("sosp-h", needs_data=True, summary="|−θ_sᵀ g + ½ θ_sᵀ G θ_P| (SOSP-H, Hessian-vector products)")
def sosp_h(model: nn.Module, structures: Sequence[Structure], data: Iterable, *,
           loss_fn: Optional[Callable] = None, num_samples: Optional[int] = None,
           curvature: str = "gauss-newton", first_order: bool = True) -> torch.Tensor:
    """SOSP-H saliency ``λ^H_s = |−θ_sᵀ g + ½ θ_sᵀ (C θ_P)|``, ``θ_P = Σ_s θ_s``.

    prunekit's formulation: the pairwise sum of ``ΔL(M)`` over the removed set is
    replaced by the sum over *all* structures, so one product ``C θ_P`` serves every
    structure; the absolute value of the signed second-order loss change is the score.

    Args:
        curvature: ``"gauss-newton"`` (default): ``C = G = (1/N) Σ_n J_nᵀ Λ_n J_n``
            (``Λ`` is the softmax cross-entropy curvature of the logits, whatever
            ``loss_fn`` is). ``"hessian"``: ``C = H = ∇²L`` of the mean loss, by double
            backward (valid for any twice-differentiable ``loss_fn``; costlier).
        first_order: ``True`` (default) keeps the gradient term ``−θ_sᵀ g``; ``False``
            drops it: ``λ^H_s = |½ θ_sᵀ C θ_P|`` (for converged models where ``g ≈ 0``).

    Cost (Gauss-Newton), per batch: ``u = J θ_P`` by one forward-mode JVP along
    ``α = 1`` (``torch.func.jvp``; it also yields the logits), ``v = Λ u`` in closed
    form, then one backward of ``−n_b L_b + ½ ⟨v, f(α)⟩`` w.r.t. α, which gives
    ``−n_b θ_sᵀ g_b + ½ Σ_n φ_s(x_n)ᵀ Λ_n u_n`` for every s at once. Sums over batches are
    divided by the total ``N``. About two gradient passes in all (first-order scaling).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.structure_types import Structure
        >>> model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
        >>> units = [Structure(i, "0", "unit", [("0.weight", 0, [i]), ("0.bias", 0, [i])]) for i in range(5)]
        >>> data = [(torch.randn(6, 4), torch.randint(0, 3, (6,)))]
        >>> sosp_h(model, units, data, curvature="hessian", first_order=False).shape
        torch.Size([5])
    """
    combined, _, _, total = _sosp_h_accumulate(model, structures, data, loss_fn, num_samples, curvature,
                                               bool(first_order), False)
    return (combined / total).abs()


@dataclass
class SOSPIPairwise:
    """SOSP-I statistics: ``Q`` (``[|S|, |S|]``, ``Q_{ss'} = θ_sᵀ G θ_{s'}``), the signed
    ``gradient`` terms ``θ_sᵀ g`` (``[|S|]``) and the number of samples used."""

    Q: torch.Tensor
    gradient: torch.Tensor
    num_samples: int

    def saliency(self) -> torch.Tensor:
        """``λ^I_s = |θ_sᵀ g| + ½ Σ_{s'} |Q_{ss'}|``."""
        return self.gradient.abs() + 0.5 * self.Q.abs().sum(1)


def sosp_i_pairwise(model: nn.Module, structures: Sequence[Structure], data: Iterable, *,
                    loss_fn: Optional[Callable] = None, num_samples: Optional[int] = None,
                    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
                    chunk_size: Optional[int] = None) -> SOSPIPairwise:
    """The full pairwise matrix ``Q`` of SOSP-I and the gradient terms.

    .. math::  Q_{ss'} = \\frac1N \\sum_n φ_s(x_n)^T Λ_n φ_{s'}(x_n), \\qquad
               φ_s(x_n) = J_n θ_s = ∂f(x_n)/∂α_s ∈ R^C

    Per batch, the per-sample Jacobians ``Φ_n = ∂f_n/∂α ∈ R^{C×|S|}`` come from
    ``vmap`` (over samples) of ``jacrev`` (C vector-Jacobian products, one per class),
    ``chunk_size`` samples at a time (default: :func:`auto_chunk_size`, as many as fit in
    what ``max_memory_bytes`` leaves beside ``Q``); then
    ``Q += Σ_n Φ_nᵀ Λ_n Φ_n`` and ``Σ_n n_b Φ_nᵀ ∂L_b/∂f_n`` gives ``θ_sᵀ g`` with no extra
    model pass. Streams over batches; only ``Q`` (float64, updated in place) grows
    with ``|S|²``; the per-chunk Jacobians take ``chunk × C × |S|`` entries (plus the
    per-sample parameter gradients ``vmap`` forms inside ``jacrev``): lower
    ``chunk_size`` when a batch does not fit.

    Raises:
        SaliencyMemoryError: before allocating, when ``|S|² × 8`` bytes exceed
            ``max_memory_bytes`` (default 2 GiB).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.structure_types import Structure
        >>> lin = nn.Linear(2, 3)
        >>> s = [Structure(i, "lin", "unit", [("weight", 0, [i]), ("bias", 0, [i])]) for i in range(3)]
        >>> stats = sosp_i_pairwise(lin, s, (torch.randn(4, 2), torch.tensor([0, 1, 2, 1])))
        >>> stats.Q.shape, bool(torch.allclose(stats.Q, stats.Q.T))
        (torch.Size([3, 3]), True)
    """
    loss_fn = resolve_loss(loss_fn)
    num = len(structures)
    needed = num * num * torch.finfo(torch.float64).bits // 8
    if needed > max_memory_bytes:
        raise SaliencyMemoryError(
            f"sosp-i needs a {num}×{num} pairwise matrix Q for {num} structures: {needed} bytes "
            f"({_human(needed)}) exceed max_memory_bytes={max_memory_bytes} ({_human(max_memory_bytes)}). "
            f"Use method='sosp-h' (memory linear in the number of structures, same cost as ~2 gradient "
            f"passes), score fewer structures at once, or raise max_memory_bytes.")
    scaling = StructureScaling(model, structures)
    Q = torch.zeros(num, num, dtype=torch.float64, device=scaling.device)
    grad_sum = torch.zeros(num, dtype=torch.float64, device=scaling.device)
    ones = scaling.ones()

    def logits_one(alpha, x):
        out = check_logits(functional_call(model, scaling.all_parameters(alpha), (x.unsqueeze(0),)))[0]
        return out, out

    jacobian = vmap(jacrev(logits_one, argnums=0, has_aux=True), in_dims=(None, 0))
    batches = Batches(data, num_samples, scaling.device)
    num_params = sum(p.numel() for p in model.parameters())
    with evaluation_mode(model):
        for inputs, targets, n in batches:
            if chunk_size is None:  # C × (parameters) per sample inside jacrev: keep a chunk within the budget
                with torch.no_grad():
                    classes = check_logits(model(inputs[:1])).shape[-1]
                chunk_size = auto_chunk_size(classes, num_params, max_memory_bytes - needed)
            step = min(chunk_size, n)
            phis, logits = [], []
            for start in range(0, n, step):
                phi, out = jacobian(ones, inputs[start:start + step])  # [b, C, |S|], [b, C]
                lam_phi = softmax_ce_curvature(torch.softmax(out, dim=1), phi)
                # Q += Σ_n Φ_nᵀ Λ_n Φ_n, in place in float64 (no second |S|×|S| buffer)
                Q.addmm_(phi.flatten(0, 1).T.double(), lam_phi.flatten(0, 1).double())
                phis.append(phi)
                logits.append(out)
            logits = torch.cat(logits).detach().requires_grad_()
            (dl_df,) = torch.autograd.grad(loss_fn(logits, targets), logits)  # ∂L_b/∂f_n
            for phi, d in zip(phis, dl_df.split(step)):
                grad_sum += n * torch.einsum("ncs,nc->s", phi, d).double()
    Q /= batches.total
    return SOSPIPairwise(Q=Q, gradient=grad_sum / batches.total, num_samples=batches.total)


def auto_chunk_size(classes: int, num_params: int, budget_bytes: int, element_bytes: int = 4) -> int:
    """Samples per ``vmap(jacrev)`` call: ``jacrev`` back-propagates ``classes`` cotangents per
    sample and forms a gradient for every parameter, ``classes × num_params`` floats per sample
    (twice: the scaled parameters' gradients and their sum into ``α``). At least 1.

    Example:
        >>> auto_chunk_size(10, 14_700_000, 2 * 2**30)   # VGG-16: one sample at a time
        1
        >>> auto_chunk_size(10, 270_000, 2 * 2**30)      # ResNet-20: 99 samples
        99
    """
    per_sample = 2 * classes * num_params * element_bytes
    return max(1, int(budget_bytes // per_sample))


@register_criterion("sosp-i", needs_data=True, summary="|θ_sᵀ g| + ½ Σ_s' |θ_sᵀ G θ_s'| (SOSP-I, pairwise)")
def sosp_i(model: nn.Module, structures: Sequence[Structure], data: Iterable, *,
           loss_fn: Optional[Callable] = None, num_samples: Optional[int] = None,
           max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES, chunk_size: Optional[int] = None) -> torch.Tensor:
    """SOSP-I saliency ``λ^I_s = |θ_sᵀ g| + ½ Σ_{s'∈S} |Q_{ss'}|``, ``Q_{ss'} = θ_sᵀ G θ_{s'}``.

    prunekit's formulation: the upper bound of ``|ΔL(M)|`` that decouples the
    selection (every pairwise term bounded by its absolute value and charged to
    both structures). Cost: about C backward passes per batch and ``|S|²`` memory;
    see :func:`sosp_i_pairwise` for the options, the memory check and the raw ``Q``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.structure_types import Structure
        >>> lin = nn.Linear(2, 3)
        >>> s = [Structure(i, "lin", "unit", [("weight", 0, [i]), ("bias", 0, [i])]) for i in range(3)]
        >>> sosp_i(lin, s, (torch.randn(4, 2), torch.tensor([0, 1, 2, 1]))).shape
        torch.Size([3])
    """
    return sosp_i_pairwise(model, structures, data, loss_fn=loss_fn, num_samples=num_samples,
                           max_memory_bytes=max_memory_bytes, chunk_size=chunk_size).saliency()
