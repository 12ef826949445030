"""Closed-loop selection under a latency budget: select, time the materialized plan, correct, repeat.

A :class:`~prunekit.core.latency.LatencyModel` predicts from per-group tables and misses
what they do not model (groups that shrink one convolution together, kernels that change
with width, timing noise at small batches). :func:`select_to_latency` closes the loop on
the target itself: it asks :func:`prunekit.select` for ``Budget(latency=r_i)``, times the
materialized plan against the dense model (:meth:`LatencyModel.check`, alternating rounds),
and corrects the request by the measured shortfall

.. math:: r_{i+1} = r_i + (f - m_i) \\quad\\text{(first step)}, \\qquad
          r_{i+1} = r_i + (f - m_i)\\,\\frac{r_i - r_{i-1}}{m_i - m_{i-1}} \\quad\\text{(secant, later)}

until the measured fraction ``m_i`` is within ``tolerance`` of the target ``f`` (or
``rounds`` plans were timed). A request the selection cannot meet (group limits) is
halved back towards the last one that could. The plan returned is the first within
tolerance, else the one with the smallest miss, a shortfall counting double an overshoot
(measured on the 2-core CPU, "closest from above" kept a 1.25× overshoot where a plan
4 points short was timed); every round is recorded in ``plan.meta["latency_loop"]``.
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping

from torch import nn

from .latency import LatencyModel
from .plan import Budget, BudgetError, PruningPlan, select
from .structures import Structures

log = logging.getLogger(__name__)

__all__ = ["select_to_latency"]


def _next_request(history: list[dict], target: float, lo: float, hi: float) -> float:
    """The next requested fraction: fixed-point step, then secant through the last two rounds."""
    last = history[-1]
    step = target - last["measured_fraction"]
    if len(history) >= 2:
        prev = history[-2]
        dm = last["measured_fraction"] - prev["measured_fraction"]
        dr = last["requested"] - prev["requested"]
        if abs(dm) > 1e-6 and dr / dm > 0:  # a usable, increasing slope
            step *= min(dr / dm, 4.0)
    return min(max(last["requested"] + step, lo), hi)


def _best(history: list[dict], target: float, tolerance: float) -> dict:
    """The first round within tolerance, else the one whose miss costs least, a shortfall counting
    double an overshoot (a plan slower than asked is worse than one a little faster, but a large
    overshoot gives away accuracy for speed nobody asked for)."""
    within = [h for h in history if abs(h["measured_fraction"] - target) <= tolerance]
    if within:
        return within[0]

    def miss(h):
        gap = h["measured_fraction"] - target
        return -2.0 * gap if gap < 0 else gap
    return min(history, key=miss)


def select_to_latency(model: nn.Module, structures: Structures, scores, fraction: float, latency: LatencyModel,
                      example_inputs, *, rounds: int = 4, tolerance: float = 0.02, check_rounds: int = 3,
                      timer: Callable[[dict, object], Mapping[str, float]] | None = None,
                      **select_options) -> PruningPlan:
    """A plan whose **measured** latency saving is within ``tolerance`` of ``fraction`` (closed loop).

    Args:
        model: the dense model the ``latency`` model was measured on (not modified).
        structures, scores: as for :func:`prunekit.select`.
        fraction: the fraction of the measured latency to remove, in ``(0, 1)``.
        latency: :meth:`prunekit.LatencyModel.measure` of ``model`` on the target.
        example_inputs: inputs for timing (resized to the latency model's batch size).
        rounds: at most this many plans are materialized and timed (``1``: open loop, timed).
        tolerance: accept a plan whose measured fraction is within this of ``fraction``.
        check_rounds: alternating timing rounds per plan (:meth:`LatencyModel.check`).
        timer: replaces the wall-clock timer (tests), as in :meth:`LatencyModel.measure`.
        **select_options: passed to :func:`prunekit.select` (``group_norm``, ``max_group_ratio``, …).

    Returns:
        The chosen :class:`PruningPlan`; ``plan.meta["latency_loop"]`` holds ``target``,
        ``rounds`` (``requested``, ``predicted_fraction``, ``measured_fraction``, ``dense_ms``,
        ``measured_ms`` per round) and ``chosen`` (index of the round returned).

    Example:
        >>> import torch, prunekit
        >>> m = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        >>> x = torch.randn(4, 8)
        >>> s = prunekit.find_structures(m, x)
        >>> t = lambda named, inp: {k: 1.0 + prunekit.count(v, inp)["macs"] / 100 for k, v in named.items()}
        >>> lat = prunekit.LatencyModel.measure(m, x, s, cache_dir=False, timer=t)
        >>> plan = select_to_latency(m, s, torch.rand(len(s)), 0.3, lat, x, timer=t)
        >>> abs(plan.meta["latency_loop"]["rounds"][-1]["measured_fraction"] - 0.3) <= 0.02
        True
    """
    if not (isinstance(fraction, (int, float)) and 0.0 < fraction < 1.0):
        raise ValueError(f"select_to_latency: fraction must be in (0, 1), got {fraction!r}")
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ValueError(f"select_to_latency: rounds must be an int >= 1, got {rounds!r}")
    if not tolerance >= 0.0:
        raise ValueError(f"select_to_latency: tolerance must be >= 0, got {tolerance!r}")
    history: list[dict] = []
    plans: list[PruningPlan] = []
    request, feasible, ceiling = float(fraction), 0.0, 0.999
    while len(history) < rounds:
        try:
            plan = select(structures, scores, Budget(latency=request), latency=latency, **select_options)
        except BudgetError:
            if request <= feasible + 1e-4:
                raise
            ceiling = request  # the selection's limits stop below this request
            request = (feasible + request) / 2.0
            continue
        feasible = max(feasible, request)
        checked = latency.check(model, plan, example_inputs, structures, rounds=check_rounds, timer=timer)
        history.append({"requested": request, "predicted_fraction": checked["predicted_fraction"],
                        "measured_fraction": checked["measured_fraction"], "dense_ms": checked["dense_ms"],
                        "measured_ms": checked["measured_ms"]})
        plans.append(plan)
        log.info("latency loop round %d: requested %.3f, predicted %.3f, measured %.3f (target %.3f)",
                 len(history), request, checked["predicted_fraction"], checked["measured_fraction"], fraction)
        if abs(checked["measured_fraction"] - fraction) <= tolerance:
            break
        following = _next_request(history, fraction, 1e-3, ceiling - 1e-4)
        if abs(following - request) < 1e-4:
            break  # no request left to try (at the selection's limit)
        request = following
    chosen = _best(history, fraction, tolerance)
    index = history.index(chosen)
    plan = plans[index]
    plan.meta["latency_loop"] = {"target": float(fraction), "tolerance": tolerance, "rounds": history,
                                 "chosen": index}
    return plan

