"""Saliency criteria: one score per prunable structure, lower = less important.

Every method has the same signature and is reached through :func:`saliency`::

    saliency(model, structures, data, method, loss_fn=None, num_samples=None, *, loss=None, output=None, progress=None, **options)

==========  ==========================================================  =============
method      score of structure s                                        options
==========  ==========================================================  =============
``random``  ``U[0, 1)``                                                 ``seed``
``l1``      ``Σ_{i∈s} |θ_i|``
``l2``      ``‖θ_s‖₂``
``taylor``  ``|θ_sᵀ g|``
``obd``     ``½ Σ_{i∈s} θ_i² F_ii`` (empirical Fisher diagonal)          ``chunk_size``
``sosp-h``  ``|−θ_sᵀ g + ½ θ_sᵀ G θ_P|``, ``θ_P = Σ_s θ_s``             ``curvature``, ``first_order``
``sosp-i``  ``|θ_sᵀ g| + ½ Σ_{s'} |θ_sᵀ G θ_{s'}|``                     ``max_memory_bytes``, ``chunk_size``, ``max_q_bytes``
==========  ==========================================================  =============

θ_s is θ restricted to the slices of s, g the gradient of the mean loss over the
samples used, G the Gauss-Newton matrix of that loss. Inputs may be a tensor, a
tuple/list or a mapping; ``output=`` picks the tensor of a tuple/dict/dataclass output;
``loss=`` is ``"cross_entropy"`` (logits ``[N, ..., C]``, ``ignore_index=-100``),
``"mse"`` or a callable (:mod:`.losses`). All data-driven methods are derivatives
w.r.t. a per-structure scale α (:mod:`.scaling`), so they see structures only, never
layer names. New methods register with :func:`register_criterion`.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunekit.core.structure_types import Structure
    >>> from prunekit.criteria import saliency
    >>> model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    >>> units = [Structure(i, "0", "unit", [("0.weight", 0, [i]), ("0.bias", 0, [i])]) for i in range(6)]
    >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
    >>> scores = saliency(model, units, data, "sosp-h", num_samples=8)
    >>> scores.shape, scores.dtype
    (torch.Size([6]), torch.float64)
"""
from .registry import CRITERIA, Criterion, available_methods, needs_data, register_criterion, saliency
from .losses import MSE, CallableLoss, CrossEntropy, Loss, resolve_loss, select_output
from .scaling import StructureScaling, scaled_parameters
from .magnitude import l1, l2, random_scores
from .taylor_obd import fisher_diagonal, gradient_terms, obd, taylor
from .sosp import (DEFAULT_MAX_MEMORY_BYTES, SaliencyMemoryError, SOSPIPairwise, sosp_h, sosp_h_terms, sosp_i,
                   sosp_i_pairwise)

__all__ = [
    "saliency", "available_methods", "needs_data", "register_criterion", "CRITERIA", "Criterion",
    "Loss", "CrossEntropy", "MSE", "CallableLoss", "resolve_loss", "select_output",
    "StructureScaling", "scaled_parameters",
    "l1", "l2", "random_scores", "taylor", "gradient_terms", "obd", "fisher_diagonal",
    "sosp_h", "sosp_h_terms", "sosp_i", "sosp_i_pairwise", "SOSPIPairwise", "SaliencyMemoryError",
    "DEFAULT_MAX_MEMORY_BYTES",
]
