"""The criterion registry and :func:`saliency`, the one entry point every method shares.

A criterion is a function
``fn(model, structures, data, *, loss_fn=None, num_samples=None, **options) -> Tensor``
returning one score per structure (lower = less important). Register a new one with
:func:`register_criterion`; :func:`saliency` dispatches by name. ``loss_fn`` reaches it
as given (``None``, ``"cross_entropy"``, ``"mse"``, a :class:`~prunekit.criteria.losses.Loss`
or a callable; :func:`prunekit.criteria.losses.resolve_loss` turns it into a ``Loss``);
``output=`` reaches a data-driven criterion only when the caller sets it.

Example:
    >>> import torch
    >>> from torch import nn
    >>> from prunekit.core.structure_types import Structure
    >>> @register_criterion("zeros-demo", needs_data=False, summary="always zero")
    ... def _zeros(model, structures, data=None, *, loss_fn=None, num_samples=None):
    ...     return torch.zeros(len(structures), dtype=torch.float64)
    >>> lin = nn.Linear(3, 2)
    >>> saliency(lin, [Structure(0, "lin", "unit", [("weight", 0, [0])])], None, "zeros-demo")
    tensor([0.], dtype=torch.float64)
    >>> _ = CRITERIA.pop("zeros-demo")
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from prunekit.core.structure_types import Structure

from ._common import progress_of
from .distributed import resolve_group, same_scores, warn_local
from .losses import check_output_spec, resolve_loss

__all__ = ["Criterion", "CRITERIA", "register_criterion", "available_methods", "saliency"]


@dataclass(frozen=True)
class Criterion:
    """A registered saliency method."""

    name: str
    fn: Callable[..., torch.Tensor]
    needs_data: bool
    summary: str = ""
    distributed: bool = False


CRITERIA: dict[str, Criterion] = {}


def register_criterion(name: str, *, needs_data: bool, summary: str = "", overwrite: bool = False,
                       distributed: bool = False):
    """Decorator registering ``fn`` as saliency method ``name``.

    Args:
        name: the name :func:`saliency` accepts (case-insensitive).
        needs_data: whether the method needs ``data`` (``saliency`` then rejects ``None``).
        summary: one line for :func:`available_methods`.
        overwrite: allow replacing an existing method of the same name.
        distributed: ``fn`` takes ``group=`` and reduces its statistics across the ranks of
            that ``torch.distributed`` group itself (:mod:`prunekit.criteria.distributed`);
            :func:`saliency` then passes ``group`` to it. Without it, a data-driven method
            run on several ranks scores each rank's own data (with a warning).

    The function must have the signature
    ``fn(model, structures, data, *, loss_fn=None, num_samples=None, **options) -> Tensor[|S|]``.

    Example:
        >>> import torch
        >>> @register_criterion("count-slices-demo", needs_data=False, summary="number of slices")
        ... def _count(model, structures, data=None, *, loss_fn=None, num_samples=None):
        ...     return torch.tensor([float(len(s.slices)) for s in structures])
        >>> "count-slices-demo" in available_methods()
        True
        >>> _ = CRITERIA.pop("count-slices-demo")
    """
    key = name.lower()

    def decorate(fn):
        if key in CRITERIA and not overwrite:
            raise ValueError(f"saliency method {name!r} is already registered")
        CRITERIA[key] = Criterion(key, fn, needs_data, summary, distributed)
        return fn

    return decorate


def needs_data(method: str) -> bool:
    """Whether the registered criterion ``method`` scores the loss on data (``False`` for unknown names).

    Example:
        >>> needs_data("sosp-h"), needs_data("l1"), needs_data("ctf")
        (True, False, False)
    """
    criterion = CRITERIA.get(method.lower())
    return criterion is not None and criterion.needs_data


def available_methods() -> dict[str, str]:
    """``{name: summary}`` of every registered saliency method.

    Example:
        >>> sorted(available_methods())[:4]
        ['l1', 'l2', 'obd', 'random']
        >>> available_methods()["sosp-h"]
        '|−θ_sᵀ g + ½ θ_sᵀ G θ_P| (SOSP-H, Hessian-vector products)'
    """
    return {k: c.summary for k, c in sorted(CRITERIA.items())}


def saliency(model: nn.Module, structures: Sequence[Structure], data: Optional[Iterable], method: str,
             loss_fn: Optional[Callable] = None, num_samples: Optional[int] = None, *,
             loss=None, output=None, group=None, progress: Optional[bool] = None, **options) -> torch.Tensor:
    """One saliency score per structure; a lower score means less important.

    Args:
        model: any ``nn.Module``; called as ``model(x)``, ``model(*x)`` or ``model(**x)``
            for a tensor, tuple/list or mapping of inputs
            (:func:`prunekit.core.measure.call_model`). It is run in eval mode (BatchNorm
            statistics frozen); every module's training flag is restored afterwards;
            its parameters, buffers and ``.grad`` are not touched.
        structures: the prunable structures (:class:`prunekit.core.structure_types.Structure`);
            slices name parameters of ``model.named_parameters()``.
        data: iterable of ``(inputs, targets)`` batches, or one such pair; ``None`` is
            allowed for data-free methods (``"l1"``, ``"l2"``, ``"random"``). ``inputs``:
            a tensor, a tuple/list of tensors (positional arguments) or a mapping
            (keyword arguments); the batch size is the leading size of the first tensor,
            and ``num_samples`` truncates every tensor (of inputs and targets) with that
            leading size.
        method: one of :func:`available_methods` (``"random"``, ``"l1"``, ``"l2"``,
            ``"taylor"``, ``"obd"``, ``"sosp-h"``, ``"sosp-i"``, ...).
        loss_fn: the loss (same values as ``loss``; give one of the two).
        num_samples: use at most this many samples (the last batch is truncated).
        loss: ``"cross_entropy"`` (default): logits ``[N, ..., C]`` (classes last) with
            class indices ``[N, ...]``, entries equal to ``-100`` ignored, mean over the
            counted positions; ``"mse"``: mean of ``(f − y)²`` over all entries, targets
            of the outputs' shape; a :class:`~prunekit.criteria.losses.Loss`
            (e.g. ``CrossEntropy(ignore_index=0)``); or any callable
            ``loss_fn(output, targets) -> scalar`` returning the batch mean (batches are
            then weighted by their number of samples, and the Gauss-Newton curvature
            is its Hessian w.r.t. the output, by autograd).
        output: which tensor of the model's output the loss sees: a callable
            ``output(raw) -> tensor``, a key/attribute name (``"logits"``) or an int
            index; default: a tensor itself, else the ``logits`` entry if present, else
            the first tensor. Ignored by the data-free methods.
        group: ``torch.distributed`` reduction. ``None`` (default): when
            ``torch.distributed`` is initialized with more than one rank, the data-driven
            methods (``taylor``, ``obd``, ``sosp-h``, ``sosp-i``) sum their statistics over
            all ranks, each rank passing its own shard of the data, so every rank returns
            the same scores as one process over the union of the shards (each rank weighted
            by its count of samples / counted entries); ``num_samples`` then counts samples
            over all ranks (rank r uses its share, ``⌊N/k⌋`` or one more). Not initialized:
            nothing changes. A ``ProcessGroup``: reduce over that group. ``False``: this
            process alone. Data-free methods ignore it (same model, same scores).
            Every rank of the group must call ``saliency`` with the same method, structures
            and options; an error on one rank is raised on all of them
            (:mod:`prunekit.criteria.distributed`).
        progress: a tqdm bar over the samples of each data pass: ``None`` (default) shows it
            only when stderr is a terminal (never in logs or CI output), ``True`` always,
            ``False`` never; on rank 0 only. Scores do not depend on it.
        **options: method-specific options (``seed``, ``curvature``, ``first_order``,
            ``max_memory_bytes``, ``chunk_size``); see each method.

    Returns:
        float64 CPU tensor of shape ``[len(structures)]``.

    Equations (θ_s: θ restricted to s; g = ∇L; G: Gauss-Newton matrix; F: empirical Fisher):

    * ``l1``: ``Σ_{i∈s} |θ_i|``;  ``l2``: ``‖θ_s‖₂``;  ``random``: ``U[0, 1)``
    * ``taylor``: ``|θ_sᵀ g|``;  ``obd``: ``½ Σ_{i∈s} θ_i² F_ii``
    * ``sosp-h``: ``|−θ_sᵀ g + ½ θ_sᵀ G θ_P|``, ``θ_P = Σ_s θ_s``
    * ``sosp-i``: ``|θ_sᵀ g| + ½ Σ_{s'} |θ_sᵀ G θ_{s'}|``

    with ``L = (1/W) Σ_b W_b L_b`` the mean over every counted entry and
    ``G = (1/W) Σ_b J_bᵀ ∇²_f(W_b L_b) J_b`` (see :mod:`prunekit.criteria.losses`).

    Raises:
        ValueError: unknown method or loss, bad ``num_samples``, missing data, an
            ``output=`` that selects nothing or no tensor, targets whose shape does not
            fit the loss and the output.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from prunekit.core.structure_types import Structure
        >>> torch.manual_seed(0) and None
        >>> model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
        >>> units = [Structure(i, "0", "unit", [("0.weight", 0, [i]), ("0.bias", 0, [i])]) for i in range(6)]
        >>> data = [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]
        >>> saliency(model, units, data, "sosp-h").shape
        torch.Size([6])
        >>> saliency(model, units, None, "l2").dtype
        torch.float64
        >>> tokens = [(torch.randn(2, 5, 4), torch.randint(0, 3, (2, 5)))]   # [N, T, F] -> [N, T, C]
        >>> saliency(model, units, tokens, "sosp-i").shape
        torch.Size([6])
        >>> regression = [(torch.randn(8, 4), torch.randn(8, 3))]
        >>> saliency(model, units, regression, "taylor", loss="mse").shape
        torch.Size([6])
    """
    if not isinstance(method, str) or method.lower() not in CRITERIA:
        raise ValueError(f"unknown saliency method {method!r}; known methods: {', '.join(sorted(CRITERIA))}")
    criterion = CRITERIA[method.lower()]
    structures = list(structures)
    if criterion.needs_data and data is None:
        raise ValueError(f"saliency method {criterion.name!r} needs data: an iterable of (inputs, targets) batches")
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= 0):
        raise ValueError(f"num_samples must be a positive int or None, got {num_samples!r}")
    if loss is not None and loss_fn is not None:
        raise ValueError("give the loss once: loss= or loss_fn=, not both")
    if loss is not None:
        loss_fn = loss
    if loss_fn is not None:
        resolved = resolve_loss(loss_fn)  # validates; a name becomes a Loss (callable: the batch mean)
        loss_fn = resolved if isinstance(loss_fn, str) else loss_fn
    if criterion.needs_data and output is not None:
        check_output_spec(output)
        options["output"] = output
    ctx = resolve_group(group) if criterion.needs_data else None
    if ctx is not None and not criterion.distributed:
        if group is not None:
            raise ValueError(f"saliency method {criterion.name!r} does not reduce across ranks (registered without "
                             f"distributed=True); pass group=False to score each rank's own data")
        warn_local(criterion.name)
        ctx = None
    if not structures:
        return torch.zeros(0, dtype=torch.float64)
    if criterion.needs_data and criterion.distributed:  # False: this process alone (not initialized, or asked)
        options["group"] = group if ctx is not None else False
    with progress_of(progress, f"saliency {criterion.name}"):
        scores = criterion.fn(model, structures, data, loss_fn=loss_fn, num_samples=num_samples, **options)
    scores = scores.detach().to(device="cpu", dtype=torch.float64)
    scores = same_scores(ctx, scores)
    if scores.shape != (len(structures),):
        raise RuntimeError(f"saliency method {criterion.name!r} returned shape {tuple(scores.shape)}, "
                           f"expected ({len(structures)},)")
    return scores
