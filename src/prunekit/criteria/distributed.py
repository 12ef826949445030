"""Saliencies over several processes (``torch.distributed``): every statistic is a sum, reduced before use.

Every data-driven criterion accumulates *sums* over the samples it sees and divides by
the total count at the end (:mod:`prunekit.criteria`: ``L = (1/W) Σ_b W_b L_b``):

============  =====================================================================
criterion     sums reduced across ranks (SUM), then divided by the global ``W``
============  =====================================================================
``taylor``    ``Σ_b W_b ∂L_b/∂α`` (signed; ``|·|`` is taken after the reduction), ``W``
``obd``       ``Σ_n c_n (∂ℓ_n/∂θ)²`` (per-sample squares: sums reduce directly), ``W = Σ_n c_n``
``sosp-h``    ``Σ_b (−W_b θ_sᵀ g_b + ½ θ_sᵀ C_b θ_P)`` (and its two terms), ``W``
``sosp-i``    ``Q·W = Σ_n Φ_nᵀ Λ_n Φ_n`` (in place), ``Σ_b W_b θ_sᵀ g_b``, ``W``, samples
============  =====================================================================

so one process over the union of the shards and ``k`` processes over the shards give the
same scores up to the order of floating-point additions, each rank's data weighted by its
own count (samples, counted positions, output entries). Nothing is squared or
``abs``-ed before the reduction.

When ``torch.distributed`` is not initialized (or the group has one rank, or
``group=False``) nothing here runs: the criteria compute exactly what they computed before.

Protocol of one reduction (:func:`reduce_sums`): every rank first runs its local pass
(catching its own error), then all ranks exchange a 3-number status (failed?, buffer size)
with one ``MAX`` all-reduce, so that an error on one rank (bad targets, a memory limit)
is raised on *every* rank instead of leaving the others waiting in a collective, and ranks
that score different structures are told so. Then the sums are all-reduced (``SUM``): the
small ones packed in one float64 buffer, large float64 tensors (SOSP-I's ``Q``) in place
(no copy when the tensor already lives where the backend reduces: CPU for gloo, CUDA for
NCCL; a CUDA ``Q`` under gloo goes through one host copy).

The same protocol serves training (:func:`prunekit.pipeline.train.fit`):
:func:`call_together` runs a step that may fail on some ranks only (a folder lock, a
checkpoint) and raises on every rank, and :func:`average_gradients` averages the gradients
of tensors that ``DistributedDataParallel`` does not see (CTF's learnable thresholds).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

__all__ = ["DistContext", "resolve_group", "reduce_sums", "local_num_samples", "broadcast_tensor",
           "comm_device", "is_active", "call_together", "average_gradients", "RemoteRankError"]

_IN_PLACE_MIN_NUMEL = 1 << 16  # float64 tensors at least this large are all-reduced in place, not copied


def _dist():
    import torch.distributed as dist

    return dist


def is_active() -> bool:
    """``torch.distributed`` is available and initialized."""
    dist = _dist()
    return dist.is_available() and dist.is_initialized()


@dataclass(frozen=True)
class DistContext:
    """A process group with more than one rank that this process belongs to.

    ``group`` is what the ``torch.distributed`` collectives take (``None``: the default group).
    """

    group: Any
    rank: int
    world_size: int

    def src(self, group_rank: int = 0) -> int:
        """The global rank of ``group_rank`` (what ``torch.distributed.broadcast(src=)`` takes)."""
        if self.group is None:
            return group_rank
        return _dist().get_global_rank(self.group, group_rank)


def resolve_group(group: Any = None) -> Optional[DistContext]:
    """The group the statistics are reduced over, or ``None`` for this process alone.

    ``group=None``: the default (world) group when ``torch.distributed`` is initialized,
    else none. ``group=False``: this process alone, even when initialized. A
    ``ProcessGroup``: that group (``torch.distributed`` must be initialized and this
    process a member). A group of one rank is the same as none.

    Example:
        >>> resolve_group(None) is None   # torch.distributed not initialized
        True
        >>> resolve_group(False) is None
        True
    """
    if group is False:
        return None
    if group is True:
        raise ValueError("group= takes None (the default group if torch.distributed is initialized), False "
                         "(this process alone) or a torch.distributed ProcessGroup, not True")
    if not is_active():
        if group is None:
            return None
        raise ValueError("group= was given but torch.distributed is not initialized; call "
                         "torch.distributed.init_process_group first (torchrun does it for you) or leave group=None")
    dist = _dist()
    pg = None if group is None or group is dist.group.WORLD else group
    rank = dist.get_rank(pg)
    if rank < 0:
        raise ValueError("this process is not a member of the process group passed as group=")
    world = dist.get_world_size(pg)
    if world <= 1:
        return None
    return DistContext(pg, rank, world)


def local_num_samples(num_samples: Optional[int], ctx: Optional[DistContext]) -> Optional[int]:
    """This rank's share of a ``num_samples`` that counts samples over all ranks.

    Ranks take ``⌊N/k⌋`` samples each, the first ``N mod k`` ranks one more (as
    ``DistributedSampler`` splits a data set), so the shares add up to ``N``; a share may be 0.

    Example:
        >>> local_num_samples(7, DistContext(None, 0, 2)), local_num_samples(7, DistContext(None, 1, 2))
        (4, 3)
        >>> local_num_samples(None, DistContext(None, 1, 2)) is None
        True
    """
    if num_samples is None or ctx is None:
        return num_samples
    base, extra = divmod(int(num_samples), ctx.world_size)
    return base + (1 if ctx.rank < extra else 0)


def comm_device(ctx: DistContext, device: torch.device) -> torch.device:
    """Where a tensor on ``device`` must be for the group's backend (NCCL: CUDA; gloo/MPI: CPU)."""
    backend = str(_dist().get_backend(ctx.group)).lower()
    device = torch.device(device)
    if "nccl" in backend and device.type == "cuda":
        return device
    if "gloo" in backend or "mpi" in backend:
        return torch.device("cpu")
    if "nccl" in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _all_reduce(ctx: DistContext, tensor: torch.Tensor, op) -> torch.Tensor:
    """All-reduce ``tensor`` (moved to the backend's device and back if needed); returns the result."""
    dev = comm_device(ctx, tensor.device)
    work = tensor if tensor.device == dev else tensor.to(dev)
    _dist().all_reduce(work, op=op, group=ctx.group)
    if work is not tensor:
        tensor.copy_(work)
    return tensor


def broadcast_tensor(ctx: DistContext, tensor: torch.Tensor, src_group_rank: int = 0) -> torch.Tensor:
    """Broadcast ``tensor`` in place from the group's rank ``src_group_rank``; returns it."""
    dev = comm_device(ctx, tensor.device)
    work = tensor if tensor.device == dev else tensor.to(dev)
    _dist().broadcast(work, src=ctx.src(src_group_rank), group=ctx.group)
    if work is not tensor:
        tensor.copy_(work)
    return tensor


class RemoteRankError(RuntimeError):
    """Another rank of the process group failed during a collective saliency computation."""


def reduce_sums(ctx: Optional[DistContext], compute: Callable[[], Sequence[Any]], what: str) -> list:
    """Run ``compute()`` (this rank's pass: a sequence of tensors and numbers, all *sums*) and
    return the element-wise sums over the ranks of ``ctx``.

    ``ctx=None``: ``compute()`` as it is (no copy, no conversion). Otherwise tensors come back
    in float64 on their own device and numbers as Python floats (counts of samples and
    entries are integers, exact in float64). An exception raised by ``compute`` on any rank
    is raised on every rank: the failing rank raises its own, the others a
    :class:`RemoteRankError`; ranks whose sums have different sizes (different structures,
    a different method) get a ``ValueError``.
    """
    if ctx is None:
        return list(compute())
    dist = _dist()
    error: Optional[BaseException] = None
    values: list = []
    try:
        values = list(compute())
    except Exception as exc:  # reported to every rank below, then raised here
        error = exc
    small, large = [], []
    for i, v in enumerate(values):
        if isinstance(v, torch.Tensor):
            (large if v.dtype == torch.float64 and v.is_contiguous() and v.numel() >= _IN_PLACE_MIN_NUMEL
             else small).append(i)
        else:
            small.append(i)
    size = sum(values[i].numel() if isinstance(values[i], torch.Tensor) else 1 for i in small)
    size += sum(values[i].numel() for i in large)
    device = next((v.device for v in values if isinstance(v, torch.Tensor)), torch.device("cpu"))
    status = torch.tensor([1.0 if error is not None else 0.0, float(size), -float(size)], dtype=torch.float64,
                          device=device)
    _all_reduce(ctx, status, dist.ReduceOp.MAX)
    if error is not None:
        raise error
    if status[0] > 0:
        raise RemoteRankError(f"{what}: another rank of the process group failed (its own error is raised there); "
                              f"rank {ctx.rank} stops too")
    if int(status[1]) != size or int(-status[2]) != size:
        raise ValueError(f"{what}: the ranks hold statistics of different sizes ({int(-status[2])} to "
                         f"{int(status[1])} numbers; this rank {size}): every rank must score the same "
                         f"structures of the same model with the same method and options")
    out = list(values)
    for i in large:
        out[i] = _all_reduce(ctx, values[i], dist.ReduceOp.SUM)
    if small:
        parts = [values[i].detach().reshape(-1).to(device=device, dtype=torch.float64)
                 if isinstance(values[i], torch.Tensor)
                 else torch.tensor([float(values[i])], dtype=torch.float64, device=device) for i in small]
        buffer = _all_reduce(ctx, torch.cat(parts), dist.ReduceOp.SUM)
        offset = 0
        for i in small:
            v = values[i]
            if isinstance(v, torch.Tensor):
                out[i] = buffer[offset: offset + v.numel()].reshape(v.shape).to(v.device).clone()
                offset += v.numel()
            else:
                out[i] = float(buffer[offset])
                offset += 1
    return out


def call_together(ctx: Optional[DistContext], fn: Callable[[], Any], what: str) -> Any:
    """``fn()`` on this rank, with its failure reported to every rank of ``ctx``: returns its result,
    or raises on every rank (its own exception where ``fn`` failed, :class:`RemoteRankError` on the
    others), so that no rank is left waiting in the next collective. ``ctx=None``: ``fn()``.

    Example:
        >>> call_together(None, lambda: 42, "a step")
        42
    """
    result: list = []

    def compute() -> list:
        result.append(fn())
        return []

    reduce_sums(ctx, compute, what)
    return result[0]


@torch.no_grad()
def average_gradients(tensors: Sequence[torch.Tensor], ctx: Optional[DistContext], *,
                      unscale: Optional[float] = None) -> bool:
    """Average the ``.grad`` of ``tensors`` over the ranks of ``ctx`` in place (one all-reduce), as
    ``DistributedDataParallel`` does for a model's parameters; returns whether they are all finite.

    For tensors a training loop updates itself (CTF's thresholds are buffers, not parameters, so
    DDP leaves their gradients per rank). A tensor without a gradient counts as zero; it gets
    the average if another rank has one, and stays ``None`` if no rank has. ``unscale``: divide
    by it first (a ``GradScaler``'s scale); non-finite results (an fp16 overflow, on any rank)
    are dropped (``.grad = None``) and ``False`` is returned, as ``GradScaler`` skips the step.
    ``ctx=None``: only the unscaling and the check.

    Example:
        >>> t = torch.zeros(2, requires_grad=True); t.grad = torch.tensor([2.0, 4.0])
        >>> average_gradients([t], None, unscale=2.0), t.grad.tolist()
        (True, [1.0, 2.0])
    """
    tensors = [t for t in tensors if t is not None]
    if not tensors:
        return True
    scale = 1.0 / float(unscale) if unscale else 1.0
    if ctx is None:
        grads = [t.grad for t in tensors if t.grad is not None]
        if scale != 1.0:
            for g in grads:
                g.mul_(scale)
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
    else:
        device = tensors[0].device
        flags = torch.tensor([0.0 if t.grad is None else 1.0 for t in tensors], dtype=torch.float64, device=device)
        parts = [flags] + [(t.grad if t.grad is not None else torch.zeros_like(t)).detach().reshape(-1).to(
            device=device, dtype=torch.float64) for t in tensors]
        buffer = _all_reduce(ctx, torch.cat(parts), _dist().ReduceOp.SUM)
        buffer[len(tensors):] *= scale / ctx.world_size
        finite = bool(torch.isfinite(buffer).all())
        offset = len(tensors)
        for i, t in enumerate(tensors):
            part = buffer[offset: offset + t.numel()]
            offset += t.numel()
            if buffer[i] > 0:
                t.grad = part.reshape(t.shape).to(device=t.device, dtype=t.dtype).clone()
    if not finite:
        for t in tensors:
            t.grad = None
    return finite


def same_scores(ctx: Optional[DistContext], scores: torch.Tensor) -> torch.Tensor:
    """``scores`` of the group's first rank on every rank (bit-identical, so that ``select`` makes
    one plan), a no-op without ``ctx``. The reductions already give every rank the same sums;
    this guards against a backend whose reduction order differs between ranks."""
    if ctx is None:
        return scores
    scores = scores.detach().to(torch.float64).contiguous().clone()
    return broadcast_tensor(ctx, scores, 0)


def warn_local(method: str) -> None:
    warnings.warn(f"saliency method {method!r} does not reduce its statistics across ranks (registered without "
                  f"distributed=True): each rank scores its own data. Make one plan with "
                  f"prunekit.core.plan.broadcast_plan(plan) before pruning.", RuntimeWarning, stacklevel=3)
