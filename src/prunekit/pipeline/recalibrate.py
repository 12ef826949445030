"""BatchNorm statistics re-estimated after pruning, without training.

Removing channels changes what every later normalisation layer sees, but its running mean and
variance still describe the dense network: a pruned network is often at chance before any
fine-tuning only because of them. :func:`recalibrate_batchnorm` resets them and re-estimates
them from forward passes over unlabelled data (no gradient, no weight changes), with the
cumulative average (``momentum=None``):

.. math:: \\hat\\mu = \\frac{1}{B}\\sum_b \\mu_b, \\qquad \\hat\\sigma^2 = \\frac{1}{B}\\sum_b s_b^2

(``μ_b`` the batch mean, ``s_b²`` the unbiased batch variance, per channel, over ``B`` batches).
Only the normalisation layers run in training mode; dropout and the rest stay in eval mode.
"""
from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from .train import _resolve_device, _split, _to

log = logging.getLogger(__name__)

__all__ = ["recalibrate_batchnorm"]


def _inputs(data: Any, batch_size: int, num_batches: int | None):
    if isinstance(data, torch.Tensor) or (isinstance(data, (tuple, list)) and len(data) == 2
                                          and isinstance(data[0], torch.Tensor) and isinstance(data[1], torch.Tensor)
                                          and len(data[0]) == len(data[1])):
        X = data if isinstance(data, torch.Tensor) else data[0]
        data = [X[i:i + batch_size] for i in range(0, len(X), batch_size)]
    for i, batch in enumerate(data):
        if num_batches is not None and i >= num_batches:
            return
        yield batch if isinstance(batch, torch.Tensor) else _split(batch)[0]


def recalibrate_batchnorm(model: nn.Module, data: Any, *, batch_size: int = 128, num_batches: int | None = None,
                          device: str | torch.device | None = None) -> int:
    """Re-estimate the running statistics of every BatchNorm layer of ``model`` on ``data``, in place.

    Args:
        model: any module (a pruned one, typically); its weights are not changed.
        data: inputs ``X``, ``(X, y)`` tensors (cut into ``batch_size`` batches), or an iterable of
            batches (``x`` or ``(x, y)``); labels are not used.
        num_batches: use at most this many batches (default: all).
        device: where batches are sent (default: the model's device).

    Returns:
        The number of BatchNorm layers recalibrated (0: nothing to do, ``model`` untouched).
        Modes and momenta are restored afterwards.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8)).eval()
        >>> x = torch.randn(64, 4) * 3 + 1
        >>> recalibrate_batchnorm(net, x, batch_size=64)
        1
        >>> torch.allclose(net[1].running_mean, net[0](x).mean(0).detach(), atol=1e-5)
        True
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    dev = _resolve_device(device, model)
    batches = _inputs(data, batch_size, num_batches)
    first = next(batches, None)
    if first is None:  # checked before anything is reset: the model keeps its statistics
        raise ValueError("recalibrate_batchnorm: no batches in data")
    modes = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in norms]
    seen = 0
    try:
        model.eval()
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches
            m.train()
        with torch.no_grad():
            for x in (first, *batches):
                model(_to(x, dev))
                seen += 1
    finally:
        for m, flag in modes:
            m.training = flag
        for m, momentum in momenta:
            m.momentum = momentum
    log.debug("recalibrated %d BatchNorm layers on %d batches", len(norms), seen)
    return len(norms)
