"""Plumbing shared by the data-driven criteria: batches, eval mode, the default loss."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]


def default_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the batch (the loss of METHODS.md)."""
    return F.cross_entropy(logits, targets)


def resolve_loss(loss_fn: Optional[LossFn]) -> LossFn:
    return default_loss if loss_fn is None else loss_fn


@contextlib.contextmanager
def evaluation_mode(model: nn.Module):
    """Put every module in eval mode; restore each module's own training flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.enable_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def _to(obj, device):
    return obj.to(device) if isinstance(obj, torch.Tensor) else obj


class Batches:
    """Iterate ``(inputs, targets, n)`` over ``data``, stopping after ``num_samples`` samples.

    ``data`` is any iterable of ``(inputs, targets)`` batches (a DataLoader, a list of
    tuples) or one ``(inputs, targets)`` tuple of tensors. The last batch is
    truncated so that exactly ``min(num_samples, len(data))`` samples are used; after
    iterating, ``self.total`` holds that count.
    """

    def __init__(self, data: Iterable, num_samples: Optional[int], device: torch.device):
        if data is None:
            raise ValueError("this saliency method needs data: an iterable of (inputs, targets) batches")
        if num_samples is not None and (not isinstance(num_samples, int) or num_samples <= 0):
            raise ValueError(f"num_samples must be a positive int or None, got {num_samples!r}")
        if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
            data = [tuple(data)]  # a single (inputs, targets) batch
        self.data, self.num_samples, self.device = data, num_samples, device
        self.total = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, Any, int]]:
        self.total = 0
        for batch in self.data:
            if self.num_samples is not None and self.total >= self.num_samples:
                break
            try:
                inputs, targets = batch[0], batch[1]
            except (TypeError, IndexError, KeyError):
                raise ValueError(f"each batch must be (inputs, targets), got {type(batch).__name__}")
            if not isinstance(inputs, torch.Tensor):
                raise TypeError(f"batch inputs must be a tensor, got {type(inputs).__name__}")
            n = int(inputs.shape[0])
            if self.num_samples is not None and self.total + n > self.num_samples:
                n = self.num_samples - self.total
                inputs, targets = inputs[:n], targets[:n]
            if n == 0:
                continue
            self.total += n
            yield _to(inputs, self.device), _to(targets, self.device), n
        if self.total == 0:
            raise ValueError("saliency: the data yielded no samples")


def check_logits(out) -> torch.Tensor:
    """The model's output must be logits ``[batch, classes]``."""
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"the model must return logits of shape [batch, classes]; got {shape}")
    return out


def softmax_ce_curvature(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``Λ_n u_n = p_n ⊙ u_n − p_n (p_nᵀ u_n)``: the softmax cross-entropy Hessian w.r.t. logits.

    ``probs`` is ``[N, C]``; ``u`` is ``[N, C]`` or ``[N, C, K]`` (applied column-wise).
    """
    if u.dim() == probs.dim() + 1:
        probs = probs.unsqueeze(-1)
    return probs * u - probs * (probs * u).sum(1, keepdim=True)
