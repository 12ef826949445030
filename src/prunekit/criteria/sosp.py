"""SOSP: second-order structured pruning saliencies (Nonnenmacher et al., ICLR 2022).

Removing a set M of structures (``δθ = −Σ_{s∈M} θ_s``) changes the loss by

.. math::  ΔL(M) ≈ −\\sum_{s∈M} θ_s^T g + ½ \\sum_{s,s'∈M} θ_s^T G θ_{s'}

with ``g = ∇L`` and the Gauss-Newton matrix ``G = (1/N) Σ_n J_nᵀ Λ_n J_n``,
``Λ_n = diag(p_n) − p_n p_nᵀ`` (softmax cross-entropy over ``[N, C]`` logits,
``p_n = softmax(f(x_n))``). In general ``G = (1/W) Σ_b J_bᵀ ∇²_f(W_b L_b) J_b`` with
``W_b`` the entries batch ``b``'s mean runs over (:mod:`prunekit.criteria.losses`:
token / pixel cross-entropy, MSE, a user ``loss_fn``).
Everything is computed as derivatives w.r.t. the per-structure scale ``α``
(:mod:`prunekit.criteria.scaling`): ``∂f_n/∂α_s = J_n θ_s``.

* **SOSP-H** (:func:`sosp_h`): ``λ^H_s = |−θ_sᵀ g + ½ θ_sᵀ (G θ_P)|``, ``θ_P = Σ_s θ_s``
  — one forward-mode JVP and one backward pass per batch.
* **SOSP-I** (:func:`sosp_i`): ``λ^I_s = |θ_sᵀ g| + ½ Σ_{s'} |Q_{ss'}|``,
  ``Q_{ss'} = (1/N) Σ_n φ_s(x_n)ᵀ Λ_n φ_{s'}(x_n) = θ_sᵀ G θ_{s'}`` — per-sample
  Jacobians of the logits w.r.t. α and ``|S|²`` memory.

The model runs in eval mode (frozen BatchNorm statistics); sums are accumulated over
batches and normalised by the total count ``W`` (the number of samples ``N`` for
``[N, C]`` cross-entropy and for a user ``loss_fn``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunekit.core.structure_types import Structure
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    >>> units = [Structure(i, "0", "unit", [("0.weight", 0, [i]), ("0.bias", 0, [i])]) for i in range(5)]
    >>> data = [(torch.randn(6, 4), torch.randint(0, 3, (6,)))]
    >>> h, i = sosp_h(model, units, data), sosp_i(model, units, data)
    >>> h.shape, i.shape
    (torch.Size([5]), torch.Size([5]))
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
from torch import nn
from torch.func import jacrev, jvp, vmap

from prunekit.core.structure_types import Structure

from ._common import Batches, ModelCall, evaluation_mode, reference_kernels
from .losses import LossSpec, OutputSpec, resolve_loss
from .registry import register_criterion
from .scaling import StructureScaling
from .distributed import local_num_samples, reduce_sums, resolve_group
from .taylor_obd import _nonzero_samples, _nonzero_total

__all__ = ["sosp_h", "sosp_h_terms", "sosp_i", "sosp_i_pairwise", "SOSPIPairwise", "SaliencyMemoryError",
           "DEFAULT_MAX_MEMORY_BYTES", "available_memory_bytes", "RAM_FRACTION"]

DEFAULT_MAX_MEMORY_BYTES = 2 * 2**30  # 2 GiB for SOSP-I's |S|×|S| matrix
RAM_FRACTION = 0.5  # of the machine's available RAM that SOSP-I's Q may take (shared by the ranks on it)

_CURVATURES = ("gauss-newton", "hessian")


class SaliencyMemoryError(MemoryError):
    """A criterion's statistics would exceed the configured memory limit."""


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if nbytes < 1024 or unit == "TiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    raise AssertionError


# what torch says when an op or an autograd.Function has no forward-mode derivative
_NO_FORWARD_AD = ("forward AD", "forward-mode", "setup_context", "jvp")


def _output_and_jvp(fn, alpha: torch.Tensor, tangent: torch.Tensor):
    """``(fn(alpha), J tangent)`` with ``J = ∂fn/∂alpha``; the output stays on the reverse-mode tape.

    One forward-mode JVP (``torch.func.jvp``). Some models cannot run in forward mode: fused
    kernels without a forward derivative (oneDNN LSTM/GRU, CPU flash attention, the
    ``TransformerEncoderLayer`` fast path) or an ``autograd.Function`` without ``setup_context``
    / ``jvp`` (Bloom's GeLU). For these the JVP is computed by double backward instead,
    ``J t = ∂/∂w ⟨Jᵀ w, t⟩`` at ``w = 0``, with the fused kernels switched off
    (:func:`reference_kernels`): same value, about one more backward pass.
    """
    try:
        return jvp(fn, (alpha,), (tangent,))
    except (RuntimeError, NotImplementedError) as err:
        if not any(key in str(err) for key in _NO_FORWARD_AD):
            raise
    with reference_kernels():
        out = fn(alpha)
        if not out.requires_grad:  # no structure reaches the output
            return out, torch.zeros_like(out)
        dummy = torch.zeros_like(out, requires_grad=True)
        (vjp,) = torch.autograd.grad(out, alpha, dummy, create_graph=True, allow_unused=True, materialize_grads=True)
        if not vjp.requires_grad:
            return out, torch.zeros_like(out)
        (u,) = torch.autograd.grad(vjp, dummy, tangent, allow_unused=True, materialize_grads=True)
    return out, u


def _sosp_h_accumulate(model, structures, data, loss_fn, num_samples, curvature, first_order, separate, output,
                       group=None):
    """Per-batch SOSP-H sums. Returns ``(combined, gradient, curvature, W)``, float64.

    ``combined = Σ_b (−W_b θ_sᵀ g_b + ½ θ_sᵀ C_b θ_P)`` (C_b: the curvature of the batch *sum*
    ``W_b L_b``), ``gradient = Σ_b W_b θ_sᵀ g_b`` and ``curvature = Σ_b θ_sᵀ C_b θ_P`` (only
    when ``separate``); ``W = Σ_b W_b`` (see :mod:`prunekit.criteria.losses`). Under
    ``torch.distributed`` every one of these sums (signed, before any ``|·|``) and ``W`` are
    summed over the ranks of ``group`` (:mod:`prunekit.criteria.distributed`).
    """
    ctx = resolve_group(group)

    def local():
        if curvature not in _CURVATURES:
            raise ValueError(f"curvature must be one of {_CURVATURES}, got {curvature!r}")
        loss = resolve_loss(loss_fn)
        forward = ModelCall(model, output)
        scaling = StructureScaling(model, structures)
        num = len(structures)
        zeros = lambda: torch.zeros(num, dtype=torch.float64, device=scaling.device)  # noqa: E731
        combined, grad_sum, curv_sum = zeros(), zeros(), zeros()
        ones = scaling.ones()
        total = 0
        batches = Batches(data, local_num_samples(num_samples, ctx), scaling.device, allow_empty=ctx is not None)

        def logits_of(alpha, inputs):
            return forward(scaling.all_parameters(alpha), inputs)

        with evaluation_mode(model):
            for batch in batches:
                inputs, targets, n = batch.inputs.obj, batch.targets.obj, batch.n
                alpha = ones.clone().requires_grad_()
                if curvature == "gauss-newton":
                    # u = J θ_P: forward-mode JVP along α = 1; the output stays on the reverse-mode tape.
                    logits, u = _output_and_jvp(lambda a: logits_of(a, inputs), alpha, ones)
                    loss.check(logits.shape, targets)
                    weight = loss.weight(logits, targets, n)
                    if weight == 0:
                        continue
                    v = loss.curvature(logits.detach(), targets, u.detach(), n).detach()  # ∇²_f(W_b L_b) u
                    curv_obj = (v * logits).sum()  # ∂/∂α_s = Σ φ_sᵀ Λ u = W_b θ_sᵀ G_b θ_P
                    if separate:
                        (g,) = torch.autograd.grad(loss.mean(logits, targets), alpha, retain_graph=True,
                                                   allow_unused=True, materialize_grads=True)
                        (c,) = torch.autograd.grad(curv_obj, alpha, allow_unused=True, materialize_grads=True)
                        grad_sum += weight * g.double()
                        curv_sum += c.double()
                        combined += (-weight * g.double() if first_order else 0) + 0.5 * c.double()
                    else:  # one fused backward: ∂/∂α of (−W_b L_b + ½ ⟨v, f⟩)
                        objective = 0.5 * curv_obj
                        if first_order:
                            objective = objective - weight * loss.mean(logits, targets)
                        if objective.requires_grad:  # False only if no structure reaches the output
                            (d,) = torch.autograd.grad(objective, alpha, allow_unused=True, materialize_grads=True)
                            combined += d.double()
                else:  # exact Hessian of the mean loss: double backward w.r.t. α
                    logits = logits_of(alpha, inputs)
                    loss.check(logits.shape, targets)
                    weight = loss.weight(logits, targets, n)
                    if weight == 0:
                        continue
                    (g,) = torch.autograd.grad(loss.mean(logits, targets), alpha, create_graph=True, allow_unused=True,
                                               materialize_grads=True)
                    if g.requires_grad:  # ∂/∂α ⟨∂L/∂α, 1⟩ = Θᵀ H θ_P (θ(α) is linear in α)
                        (c,) = torch.autograd.grad(g.sum(), alpha, allow_unused=True, materialize_grads=True)
                    else:
                        c = torch.zeros_like(g)
                    g, c = weight * g.detach().double(), weight * c.double()
                    grad_sum += g
                    curv_sum += c
                    combined += (-g if first_order else 0) + 0.5 * c
                total += weight
        return combined, grad_sum, curv_sum, total, batches.total

    combined, grad_sum, curv_sum, total, samples = reduce_sums(ctx, local, "sosp-h")
    _nonzero_samples(samples)
    return combined, grad_sum, curv_sum, _nonzero_total(total)


def sosp_h_terms(model: nn.Module, structures: Sequence[Structure], data: Iterable, *,
                 loss_fn: LossSpec = None, num_samples: Optional[int] = None,
                 curvature: str = "gauss-newton", output: OutputSpec = None, group=None) -> dict[str, torch.Tensor]:
    """The signed terms of SOSP-H, for inspection (float64, each ``[|S|]``).

    Returns ``{"gradient": θ_sᵀ g, "curvature": θ_sᵀ C θ_P, "delta_loss": −θ_sᵀ g + ½ θ_sᵀ C θ_P}``
    with ``C = G`` (``curvature="gauss-newton"``) or ``H`` (``"hessian"``). For a single
    structure ``S = {s}``, ``delta_loss`` is the second-order estimate of
    ``L(θ − θ_s) − L(θ)``. Costs one more backward per batch than :func:`sosp_h`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.core.structure_types import Structure
        >>> lin = nn.Linear(2, 2)
        >>> s = [Structure(0, "lin", "unit", [("weight", 0, [0]), ("bias", 0, [0])])]
        >>> sorted(sosp_h_terms(lin, s, (torch.randn(3, 2), torch.tensor([0, 1, 1]))))
        ['curvature', 'delta_loss', 'gradient']
    """
    _, g, c, total = _sosp_h_accumulate(model, structures, data, loss_fn, num_samples, curvature, True, True,
                                        output, group)
    g, c = g / total, c / total
    return {"gradient": g, "curvature": c, "delta_loss": -g + 0.5 * c}


@register_criterion("sosp-h", needs_data=True, distributed=True,
                    summary="|−θ_sᵀ g + ½ θ_sᵀ G θ_P| (SOSP-H, Hessian-vector products)")
def sosp_h(model: nn.Module, structures: Sequence[Structure], data: Iterable, *,
           loss_fn: LossSpec = None, num_samples: Optional[int] = None,
           curvature: str = "gauss-newton", first_order: bool = True, output: OutputSpec = None,
           group=None) -> torch.Tensor:
    """SOSP-H saliency ``λ^H_s = |−θ_sᵀ g + ½ θ_sᵀ (C θ_P)|``, ``θ_P = Σ_s θ_s``.

    prunekit's formulation: the pairwise sum of ``ΔL(M)`` over the removed set is
    replaced by the sum over *all* structures, so one product ``C θ_P`` serves every
    structure; the absolute value of the signed second-order loss change is the score.

    Args:
        curvature: ``"gauss-newton"`` (default): ``C = G = (1/W) Σ_b J_bᵀ Λ_b J_b`` with
            ``Λ_b = ∇²_f (W_b L_b)`` the loss's output curvature (:mod:`.losses`: per-position
            softmax ``diag(p) − p pᵀ`` for cross-entropy, ``2 I`` for MSE, and for a user
            ``loss_fn`` computed generically by a Hessian-vector product through
            ``loss_fn``). ``"hessian"``: ``C = H = ∇²L`` of the mean loss, by double
            backward (valid for any twice-differentiable loss; costlier).
        first_order: ``True`` (default) keeps the gradient term ``−θ_sᵀ g``; ``False``
            drops it: ``λ^H_s = |½ θ_sᵀ C θ_P|`` (for converged models where ``g ≈ 0``).

    Cost (Gauss-Newton), per batch: ``u = J θ_P`` by one forward-mode JVP along
    ``α = 1`` (``torch.func.jvp``; it also yields the logits), ``v = Λ u`` in closed
    form (one double backward through the loss alone for a user ``loss_fn``), then one
    backward of ``−W_b L_b + ½ ⟨v, f(α)⟩`` w.r.t. α, which gives
    ``−W_b θ_sᵀ g_b + ½ Σ_n φ_s(x_n)ᵀ Λ_n u_n`` for every s at once. Sums over batches are
    divided by the total ``W``. About two gradient passes in all (first-order scaling).
    Under ``torch.distributed`` (``group``, see :func:`prunekit.criteria.saliency`) the signed
    sums and ``W`` are summed over the ranks before the division and the ``|·|``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.core.structure_types import Structure
        >>> model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
        >>> units = [Structure(i, "0", "unit", [("0.weight", 0, [i]), ("0.bias", 0, [i])]) for i in range(5)]
        >>> data = [(torch.randn(6, 4), torch.randint(0, 3, (6,)))]
        >>> sosp_h(model, units, data, curvature="hessian", first_order=False).shape
        torch.Size([5])
    """
    combined, _, _, total = _sosp_h_accumulate(model, structures, data, loss_fn, num_samples, curvature,
                                               bool(first_order), False, output, group)
    return (combined / total).abs()


@dataclass
class SOSPIPairwise:
    """SOSP-I statistics: ``Q`` (``[|S|, |S|]``, ``Q_{ss'} = θ_sᵀ G θ_{s'}``), the signed
    ``gradient`` terms ``θ_sᵀ g`` (``[|S|]``) and the number of samples used."""

    Q: torch.Tensor
    gradient: torch.Tensor
    num_samples: int

    def saliency(self) -> torch.Tensor:
        """``λ^I_s = |θ_sᵀ g| + ½ Σ_{s'} |Q_{ss'}|`` (``|Q|`` a block of rows at a time: no second ``|S|²`` buffer)."""
        rows = max(1, (1 << 24) // max(1, self.Q.shape[-1]))  # 128 MiB of float64 per block
        row_sums = torch.cat([self.Q[i: i + rows].abs().sum(1) for i in range(0, self.Q.shape[0], rows)]) \
            if self.Q.shape[0] else self.Q.new_zeros(0)
        return self.gradient.abs() + 0.5 * row_sums


def sosp_i_pairwise(model: nn.Module, structures: Sequence[Structure], data: Iterable, *,
                    loss_fn: LossSpec = None, num_samples: Optional[int] = None,
                    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
                    chunk_size: Optional[int] = None, output: OutputSpec = None,
                    group=None, max_q_bytes: Optional[int] = None) -> SOSPIPairwise:
    """The full pairwise matrix ``Q`` of SOSP-I and the gradient terms.

    .. math::  Q_{ss'} = \\frac1W \\sum_n φ_s(x_n)^T Λ_n φ_{s'}(x_n), \\qquad
               φ_s(x_n) = J_n θ_s = ∂f(x_n)/∂α_s

    (``f(x_n)`` flattened: ``C`` logits, ``T × C`` token logits, ...; ``Λ_n`` the loss's
    output curvature and ``W`` its count, see :mod:`prunekit.criteria.losses`; for
    ``[N, C]`` cross-entropy ``W = N`` and ``Λ_n = diag(p_n) − p_n p_nᵀ``). Per batch, the
    per-sample Jacobians ``Φ_n = ∂f_n/∂α ∈ R^{D×|S|}`` come from ``vmap`` (over samples) of
    ``jacrev`` (D vector-Jacobian products, one per output entry), ``chunk_size``
    samples at a time (default: :func:`auto_chunk_size`, as many as fit in what
    ``max_memory_bytes`` leaves beside ``Q``); then ``Q += Σ_n Φ_nᵀ Λ_n Φ_n`` and
    ``Σ_n W_b Φ_nᵀ ∂L_b/∂f_n`` gives ``θ_sᵀ g`` with no extra model pass. Streams over
    batches; only ``Q`` (float64, updated in place) grows with ``|S|²``; the per-chunk
    Jacobians take ``chunk × D × |S|`` entries (plus the per-sample parameter gradients
    ``vmap`` forms inside ``jacrev``): lower ``chunk_size`` when a batch does not fit. Models
    ``vmap`` cannot run (``taylor_obd.VMAP_FALLBACK``) get the same Jacobians one sample and
    one output entry at a time.

    Under ``torch.distributed`` (``group``, see :func:`prunekit.criteria.saliency`) ``W·Q``
    (in place), ``Σ_b W_b θ_sᵀ g_b``, ``W`` and the sample count are summed over the ranks;
    ``num_samples`` (argument and result) counts samples over all ranks.

    A user ``loss_fn`` has no closed-form ``Λ``: ``ΛΦ`` is computed for the whole batch
    at once by Hessian-vector products through ``loss_fn`` (one per structure,
    vectorised with ``is_grads_batched``; no model pass).

    Raises:
        SaliencyMemoryError: before any pass (on every rank, if one rank's is short), when
            ``Q``'s ``|S|² × 8`` bytes exceed ``max_memory_bytes`` (default 2 GiB) or the
            memory this rank has (:func:`available_memory_bytes`: free CUDA memory, or
            :data:`RAM_FRACTION` of the available RAM shared by the ranks of the machine;
            ``max_q_bytes`` replaces that probe, e.g. in tests). The message gives both
            sizes and the ways out: fewer structures at once, or ``sosp-h``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.core.structure_types import Structure
        >>> lin = nn.Linear(2, 3)
        >>> s = [Structure(i, "lin", "unit", [("weight", 0, [i]), ("bias", 0, [i])]) for i in range(3)]
        >>> stats = sosp_i_pairwise(lin, s, (torch.randn(4, 2), torch.tensor([0, 1, 2, 1])))
        >>> stats.Q.shape, bool(torch.allclose(stats.Q, stats.Q.T))
        (torch.Size([3, 3]), True)
    """
    ctx = resolve_group(group)

    def local():
        loss = resolve_loss(loss_fn)
        forward = ModelCall(model, output)
        num = len(structures)
        scaling = StructureScaling(model, structures)
        needed = _q_bytes(num, max_memory_bytes, scaling.device, max_q_bytes)
        Q = torch.zeros(num, num, dtype=torch.float64, device=scaling.device)
        grad_sum = torch.zeros(num, dtype=torch.float64, device=scaling.device)
        ones = scaling.ones()
        num_params = sum(p.numel() for p in model.parameters())
        samples, total = 0, 0
        chunk = chunk_size
        vmap_works = True
        batches = Batches(data, local_num_samples(num_samples, ctx), scaling.device, allow_empty=ctx is not None)

        def accumulate(phi, lam_phi):  # Q += Σ_n Φ_nᵀ Λ_n Φ_n, in place in float64 (no second |S|×|S| buffer)
            Q.addmm_(phi.reshape(-1, num).T.double(), lam_phi.reshape(-1, num).double())

        with evaluation_mode(model):
            for batch in batches:
                inputs, targets, n = batch.inputs, batch.targets, batch.n
                samples += n
                with torch.no_grad():  # one sample: the output shape (targets check, chunk size)
                    first = forward.plain(inputs.take(0, 1).obj)
                loss.check((n,) + tuple(first.shape[1:]), targets.obj)
                if chunk is None:  # D × (parameters) per sample inside jacrev: keep a chunk within the budget
                    chunk = auto_chunk_size(max(1, first[0].numel()), num_params, max_memory_bytes - needed)
                step = min(chunk, n)

                def output_one(alpha, x):
                    out = forward(scaling.all_parameters(alpha), inputs.one_sample(x))[0]
                    return out, out

                jacobian = vmap(jacrev(output_one, argnums=0, has_aux=True), in_dims=(None, 0))
                phis, outs = [], []
                for start in range(0, n, step):
                    phi = None
                    if vmap_works:
                        try:
                            # [b, *f, |S|], [b, *f]
                            phi, out = jacobian(ones, inputs.batched_values(start, start + step))
                        except RuntimeError:  # see taylor_obd.VMAP_FALLBACK; a genuine error is raised again below
                            vmap_works = False
                    if phi is None:
                        phi, out = _looped_jacobians(forward, scaling, ones, inputs, start, start + step)
                    if loss.separable:
                        part = targets.take(start, start + step)
                        accumulate(phi, loss.curvature(out, part.obj, phi, part.n))
                    phis.append(phi)
                    outs.append(out)
                outs = torch.cat(outs).detach()
                weight = loss.weight(outs, targets.obj, n)
                if weight == 0:
                    continue
                if not loss.separable:
                    phi_all = torch.cat(phis)
                    accumulate(phi_all, loss.curvature(outs, targets.obj, phi_all, n))
                outs.requires_grad_()
                (dl_df,) = torch.autograd.grad(loss.mean(outs, targets.obj), outs)  # ∂L_b/∂f_n
                for phi, d in zip(phis, dl_df.split(step)):
                    grad_sum += weight * torch.einsum("nds,nd->s", phi.reshape(phi.shape[0], -1, num),
                                                      d.reshape(d.shape[0], -1)).double()
                total += weight
        return Q, grad_sum, total, samples

    Q, grad_sum, total, samples = reduce_sums(ctx, local, "sosp-i")
    _nonzero_samples(samples)
    total = _nonzero_total(total)
    Q /= total
    return SOSPIPairwise(Q=Q, gradient=grad_sum / total, num_samples=int(samples))


def available_memory_bytes(device) -> Optional[int]:
    """Bytes this process may still allocate on ``device`` for SOSP-I's ``Q``, or ``None`` when unknown.

    CUDA: the device's free memory (``torch.cuda.mem_get_info``). CPU: :data:`RAM_FRACTION` of
    ``MemAvailable`` in ``/proc/meminfo``, divided among the ranks of this machine
    (``LOCAL_WORLD_SIZE``, set by ``torchrun``), each of which holds its own ``Q``.

    Example:
        >>> available_memory_bytes("cpu") is None or available_memory_bytes("cpu") > 0
        True
    """
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            found = re.search(r"^MemAvailable:\s+(\d+)\s*kB", f.read(), re.MULTILINE)
    except (OSError, UnicodeDecodeError):
        return None
    if found is None:
        return None
    try:
        ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        ranks = 1
    return int(int(found.group(1)) * 1024 * RAM_FRACTION) // ranks


def _q_bytes(num: int, max_memory_bytes: int, device="cpu", max_q_bytes: Optional[int] = None) -> int:
    """Bytes of SOSP-I's float64 ``num × num`` matrix ``Q``; :class:`SaliencyMemoryError` when it does not fit."""
    needed = num * num * torch.finfo(torch.float64).bits // 8
    available = max_q_bytes if max_q_bytes is not None else available_memory_bytes(device)
    if available is not None and needed > available:
        source = "max_q_bytes" if max_q_bytes is not None else (
            "free CUDA memory" if torch.device(device).type == "cuda"
            else f"{RAM_FRACTION:g} of the available RAM / ranks on this machine")
        raise SaliencyMemoryError(
            f"sosp-i needs a {num}×{num} pairwise matrix Q for {num} structures: {needed} bytes "
            f"({_human(needed)}) on every rank, but only {available} bytes ({_human(available)}) are available "
            f"on {device} ({source}). Score fewer structures at once (Q grows with their square: half as many "
            f"take a quarter of the memory; find_structures(..., ignore=[...]) or scoring a subset), or use "
            f"method='sosp-h' (memory linear in the number of structures, about 2 gradient passes).")
    if needed > max_memory_bytes:
        raise SaliencyMemoryError(
            f"sosp-i needs a {num}×{num} pairwise matrix Q for {num} structures: {needed} bytes "
            f"({_human(needed)}) exceed max_memory_bytes={max_memory_bytes} ({_human(max_memory_bytes)}). "
            f"Use method='sosp-h' (memory linear in the number of structures, same cost as ~2 gradient "
            f"passes), score fewer structures at once, or raise max_memory_bytes.")
    return needed


def _looped_jacobians(forward, scaling, ones, inputs, start, stop):
    """``(Φ, f)`` of samples ``start:stop`` as ``vmap(jacrev)`` gives them (``[b, *f, |S|]``, ``[b, *f]``),
    one sample and one output entry at a time by plain reverse mode (``taylor_obd.VMAP_FALLBACK``)."""
    phis, outs = [], []
    for i in range(start, min(stop, inputs.n)):
        alpha = ones.clone().requires_grad_()
        out = forward(scaling.all_parameters(alpha), inputs.take(i, i + 1).obj)[0]
        flat = out.reshape(-1)
        if flat.requires_grad:
            rows = [torch.autograd.grad(flat[e], alpha, retain_graph=True, allow_unused=True,
                                        materialize_grads=True)[0] for e in range(flat.numel())]
            phi = torch.stack(rows).to(out.dtype) if rows else flat.new_zeros(0, ones.numel())
        else:  # no structure reaches the output
            phi = flat.new_zeros(flat.numel(), ones.numel())
        phis.append(phi.reshape(*out.shape, ones.numel()))
        outs.append(out.detach())
    return torch.stack(phis), torch.stack(outs)


def auto_chunk_size(classes: int, num_params: int, budget_bytes: int, element_bytes: int = 4) -> int:
    """Samples per ``vmap(jacrev)`` call: ``jacrev`` back-propagates ``classes`` cotangents per
    sample (one per output entry of a sample: the classes of ``[N, C]`` logits, ``T × C`` for
    token logits) and forms a gradient for every parameter, ``classes × num_params`` floats per sample
    (twice: the scaled parameters' gradients and their sum into ``α``). At least 1.

    Example:
        >>> auto_chunk_size(10, 14_700_000, 2 * 2**30)   # VGG-16: one sample at a time
        1
        >>> auto_chunk_size(10, 270_000, 2 * 2**30)      # ResNet-20: 99 samples
        99
    """
    per_sample = 2 * classes * num_params * element_bytes
    return max(1, int(budget_bytes // per_sample))


@register_criterion("sosp-i", needs_data=True, distributed=True,
                    summary="|θ_sᵀ g| + ½ Σ_s' |θ_sᵀ G θ_s'| (SOSP-I, pairwise)")
def sosp_i(model: nn.Module, structures: Sequence[Structure], data: Iterable, *,
           loss_fn: LossSpec = None, num_samples: Optional[int] = None,
           max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES, chunk_size: Optional[int] = None,
           output: OutputSpec = None, group=None, max_q_bytes: Optional[int] = None) -> torch.Tensor:
    """SOSP-I saliency ``λ^I_s = |θ_sᵀ g| + ½ Σ_{s'∈S} |Q_{ss'}|``, ``Q_{ss'} = θ_sᵀ G θ_{s'}``.

    prunekit's formulation: the upper bound of ``|ΔL(M)|`` that decouples the
    selection (every pairwise term bounded by its absolute value and charged to
    both structures). Cost: about D backward passes per batch (D output entries per
    sample: C for ``[N, C]`` logits) and ``|S|²`` memory;
    see :func:`sosp_i_pairwise` for the options, the memory check and the raw ``Q``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.core.structure_types import Structure
        >>> lin = nn.Linear(2, 3)
        >>> s = [Structure(i, "lin", "unit", [("weight", 0, [i]), ("bias", 0, [i])]) for i in range(3)]
        >>> sosp_i(lin, s, (torch.randn(4, 2), torch.tensor([0, 1, 2, 1]))).shape
        torch.Size([3])
    """
    return sosp_i_pairwise(model, structures, data, loss_fn=loss_fn, num_samples=num_samples,
                           max_memory_bytes=max_memory_bytes, chunk_size=chunk_size, output=output,
                           group=group, max_q_bytes=max_q_bytes).saliency()
