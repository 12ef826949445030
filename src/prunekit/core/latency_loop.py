"""Closed-loop selection under a latency budget: select, time the materialized plan, correct, repeat.

A :class:`~prunekit.core.latency.LatencyModel` predicts from per-group tables and misses
what they do not model (groups that shrink one convolution together, kernels that change
with width, timing noise at small batches). :func:`select_to_latency` closes the loop on
the target itself: it asks :func:`prunekit.select` for ``Budget(latency=r_i)``, times the
materialized plan against the dense model (:meth:`LatencyModel.check`, pass by pass),
and corrects the request by the measured shortfall

.. math:: r_{i+1} = r_i + (f - m_i) \\quad\\text{(first step)}, \\qquad
          r_{i+1} = r_i + (f - m_i)\\,\\frac{r_i - r_{i-1}}{m_i - m_{i-1}} \\quad\\text{(secant, later)}

aiming at the middle of the acceptance window ``[f, f + tolerance]`` (a plan must deliver at
least the saving asked for, and at most ``tolerance`` more), until a plan lands in it (or
``rounds`` plans were timed). Once one round fell short of the window and another overshot it,
the next request interpolates inside that bracket instead (measured savings are not monotone in
the request at the resolution of one timing); a request whose plan was timed already narrows
the bracket without being timed again, and the loop stops when no other plan lies between. A
plan that lands in the window is timed once more (``confirm``) and kept only if the mean of its
two timings is still in it; when the second timing falls outside the window, a third decides (the
median of the three): at batch 1 two timings of one plan differ by several points on a shared CPU.
A request the selection cannot meet (group limits) is halved back towards the last one that could;
a target still missed after a request within ``LIMIT_MARGIN`` of the lowest request the selection
refused (an upper bound of its limit, reached by the halving) is out of reach, and reported (``reachable: False`` and a warning naming the limit to relax). When the rounds run out short of
the target below that limit, the plan at the limit (found by bisection on the request, without
timing) is timed once more (a round marked ``limit``; not when a round timed that plan) and decides. The plan returned is the
first confirmed in the window, else the one with the smallest miss, a shortfall counting
double an overshoot; every round is recorded in ``plan.meta["latency_loop"]``. A bracket whose
measured gap is far wider than its predicted one is a latency *step* (a kernel that changes with a
layer's width): the groups it thins are held at their widths below it (``select(max_removed=…)``)
and the search goes on with the others (:func:`_find_step`, ``avoid_steps``).
"""
from __future__ import annotations

import logging
from typing import Callable, Mapping

from torch import nn

from .latency import UNSTEADY_SPREAD, LatencyModel, spread
from .plan import Budget, BudgetError, PruningPlan, select
from .structures import Structures

log = logging.getLogger(__name__)

__all__ = ["select_to_latency"]

#: a request this close below the lowest one the selection refused counts as "at the limit"
LIMIT_MARGIN = 0.05

#: a bracket is a latency *step* when its measured gap exceeds both twice the window and this
#: many times the gap the latency model predicts between its two plans
STEP_RATIO = 4.0

#: a step is held as soon as it is found when it thins at most this share of the groups
HOLD_SHARE = 0.25


def _next_request(history: list[dict], aim: float, lo: float, hi: float, target: float, tolerance: float) -> float:
    """The next requested fraction. Once one round fell short of the window and another overshot it,
    interpolate inside that bracket (the largest short request, the smallest over one; kept off the
    bracket's ends, its middle when timing noise crossed them); before that, a fixed-point step, then
    the secant through the last two rounds."""
    short = [h for h in history if h["measured_fraction"] < target - 1e-9]
    over = [h for h in history if h["measured_fraction"] > target + tolerance + 1e-9]
    if short and over:
        below = max(short, key=lambda h: h["requested"])
        above = min(over, key=lambda h: h["requested"])
        r0, r1 = below["requested"], above["requested"]
        if r0 >= r1:  # noise: a larger request measured less than a smaller one
            return min(max((r0 + r1) / 2.0, lo), hi)
        t = (aim - below["measured_fraction"]) / (above["measured_fraction"] - below["measured_fraction"])
        return r0 + min(max(t, 0.2), 0.8) * (r1 - r0)
    last = history[-1]
    step = aim - last["measured_fraction"]
    if len(history) >= 2:
        prev = history[-2]
        dm = last["measured_fraction"] - prev["measured_fraction"]
        dr = last["requested"] - prev["requested"]
        if abs(dm) > 1e-6 and dr / dm > 0:  # a usable, increasing slope
            step *= min(dr / dm, 4.0)
    return min(max(last["requested"] + step, lo), hi)


def _in_window(measured: float, target: float, tolerance: float) -> bool:
    return target - 1e-9 <= measured <= target + tolerance + 1e-9


def _confirm(first: float, target: float, tolerance: float, again: Callable[[], float]) -> list[float]:
    """The timings of a plan whose first timing landed in the window: a second one, and a third when
    the second falls outside the window (two timings that disagree about the window: the third decides)."""
    timings = [first, again()]
    if not _in_window(timings[1], target, tolerance):
        timings.append(again())
    return timings


def _settle(timings: list[float]) -> float:
    """The saving a confirmed plan is kept on: the mean of two timings, the median of three."""
    if len(timings) == 3:
        return sorted(timings)[1]
    return sum(timings) / len(timings)


def _best(history: list[dict], target: float, tolerance: float) -> dict:
    """The first round in the window ``[target, target + tolerance]``, else the one whose miss costs
    least, a shortfall counting double an overshoot (a plan slower than asked is worse than one a
    little faster, but a large overshoot gives away accuracy for speed nobody asked for)."""
    within = [h for h in history if _in_window(h["measured_fraction"], target, tolerance)]
    if within:
        return within[0]

    def miss(h):
        short, over = target - h["measured_fraction"], h["measured_fraction"] - target - tolerance
        return 2.0 * short if short > 0 else over
    return min(history, key=miss)


def _find_step(history: list[dict], plans: list[PruningPlan] | None, regime: list[int], target: float,
               tolerance: float) -> tuple[int, int] | None:
    """``(below, above)``: the tightest bracket of the window among the rounds ``regime`` (indices
    into ``history``) when it is a **step**: the plan above contains the plan below, and the measured
    saving jumps between them by more than ``2 × tolerance`` and more than :data:`STEP_RATIO` times
    the jump the latency model predicts (a kernel that changes with width, which the tables'
    sampled widths miss). ``None`` otherwise. Without ``plans`` (recorded rounds only) the
    containment is not checked."""
    short = [i for i in regime if history[i]["measured_fraction"] < target - 1e-9]
    over = [i for i in regime if history[i]["measured_fraction"] > target + tolerance + 1e-9]
    if not short or not over:
        return None
    below = max(short, key=lambda i: history[i]["requested"])
    above = min(over, key=lambda i: history[i]["requested"])
    if history[below]["requested"] >= history[above]["requested"]:
        return None
    measured_gap = history[above]["measured_fraction"] - history[below]["measured_fraction"]
    predicted_gap = history[above]["predicted_fraction"] - history[below]["predicted_fraction"]
    if (measured_gap > 2.0 * tolerance and measured_gap > STEP_RATIO * max(predicted_gap, 0.0)
            and (plans is None or set(plans[below].removed) <= set(plans[above].removed))):
        return below, above
    return None


def _hold_step(history, plans, regime, target, tolerance, structures, held: dict, steps: list,
               narrowed: bool) -> bool:
    """When the rounds ``regime`` bracket the window with a step (:func:`_find_step`), hold each group
    the step thins at its width in the plan below it (``held``: group id -> most members removed) and
    record the step in ``steps``. Unless the bracket is ``narrowed`` (no plan between its ends), only
    when the step thins at most :data:`HOLD_SHARE` of the groups (one at least); else the bracket is
    narrowed first, so that the holds leave most of the network to thin. True if held."""
    step = _find_step(history, plans, regime, target, tolerance)
    if step is None:
        return False
    below, above = step
    removed_below = set(plans[below].removed)
    groups = sorted({structures[sid].group for sid in set(plans[above].removed) - removed_below})
    if not narrowed and len(groups) > max(1, int(HOLD_SHARE * len(structures.groups))):
        return False
    for gid in groups:
        held[gid] = sum(1 for sid in removed_below if structures[sid].group == gid)
    steps.append({"below": below, "above": above, "groups": groups,
                  "measured_gap": history[above]["measured_fraction"] - history[below]["measured_fraction"],
                  "predicted_gap": history[above]["predicted_fraction"] - history[below]["predicted_fraction"]})
    log.info("latency loop: a step between rounds %d and %d (measured %+.3f, predicted %+.3f): groups %s held at "
             "their widths in round %d", below + 1, above + 1, steps[-1]["measured_gap"], steps[-1]["predicted_gap"],
             groups, below + 1)
    return True


def _with_holds(select_options: dict, held: dict) -> dict:
    """``select_options`` with the steps' holds added to ``max_removed`` (within the caller's own caps)."""
    if not held:
        return select_options
    mine = dict(select_options.get("max_removed") or {})
    return dict(select_options, max_removed={**mine, **{g: min(n, mine.get(g, n)) for g, n in held.items()}})


def _from_below(history: list[dict], steps: list[dict]) -> tuple[list[int], list[dict], float, float]:
    """``(regime, steering, feasible, ceiling)`` to go on from the plan below the last step."""
    below = steps[-1]["below"]
    return [below], [history[below]], history[below]["requested"], 0.999


def _time(latency, model, plan, inputs, structures, check_rounds, timer) -> dict:
    checked = latency.check(model, plan, inputs, structures, rounds=check_rounds, timer=timer)
    return {key: checked[key] for key in ("predicted_fraction", "measured_fraction", "dense_ms", "measured_ms",
                                          "ratio_iqr")}


def _limit_request(structures, scores, latency, feasible: float, ceiling: float, select_options: dict) -> float:
    """The largest latency request :func:`select` accepts, by bisection between ``feasible`` (accepted)
    and ``ceiling`` (refused, or 0.999): selections only, nothing is timed."""
    lo, hi = feasible, ceiling
    try:
        select(structures, scores, Budget(latency=hi), latency=latency, **select_options)
        return hi
    except BudgetError:
        pass
    while hi - lo > 1e-3:
        mid = (lo + hi) / 2.0
        try:
            select(structures, scores, Budget(latency=mid), latency=latency, **select_options)
            lo = mid
        except BudgetError:
            hi = mid
    return lo


def _run_rounds(model, structures, scores, fraction, latency, inputs, rounds, tolerance, check_rounds, confirm,
                timer, select_options, avoid_steps: bool = True
                ) -> tuple[list[dict], list[PruningPlan], float, float, str, list[dict]]:
    """The loop's timed rounds: ``(history, plans, feasible, ceiling, stopped, steps)``, ``stopped`` why they
    ended (``"window"``, ``"rounds"``, ``"limit"``, ``"granularity"``, ``"held limit"``: the limit of
    the selection under the steps' holds, not the caller's). A request whose plan
    was timed already is not timed again: it steers the next request with that plan's measurement
    (so a bracket narrows to the plans between its ends) without spending a round. When a bracket is
    a step (:func:`_find_step`), the groups the step thins are held at the widths of the plan below it
    (``select(max_removed=…)``) and the search goes on from that plan, with the other groups."""
    aim = fraction + tolerance / 2.0
    history: list[dict] = []
    plans: list[PruningPlan] = []
    steering: list[dict] = []  # the timed rounds, and requests that gave a plan already timed
    regime: list[int] = []  # the timed rounds under the present group holds
    held: dict[int, int] = {}  # group id -> most members removed (the steps' holds)
    steps: list[dict] = []
    timed: dict[frozenset, int] = {}
    request, feasible, ceiling, stopped = float(aim), 0.0, 0.999, "rounds"
    free_ceiling = ceiling  # the lowest request refused without holds: the caller's limits
    for _ in range(8 * rounds + 8):  # selections are cheap, timings are not: the cap only stops a cycle
        if len(history) >= rounds:
            break
        try:
            plan = select(structures, scores, Budget(latency=request), latency=latency,
                          **_with_holds(select_options, held))
        except BudgetError:
            if feasible <= 0.0 and request <= 1e-4:
                raise  # not even the smallest request can be met
            ceiling = request  # the selection's limits stop below this request
            if not held:
                free_ceiling = request
            if request - feasible <= 1e-4:  # ... and at or above the largest one accepted: at the limit
                stopped = "held limit" if held else "limit"
                break
            request = (feasible + request) / 2.0
            continue
        feasible = max(feasible, request)
        key = frozenset(plan.removed)
        if key in timed:
            steering.append({"requested": request, "measured_fraction": history[timed[key]]["measured_fraction"]})
        else:
            row = {"requested": request, **_time(latency, model, plan, inputs, structures, check_rounds, timer)}
            if held:
                row["held_groups"] = sorted(held)
            if confirm and _in_window(row["measured_fraction"], fraction, tolerance):
                row["timings"] = _confirm(row["measured_fraction"], fraction, tolerance,
                                          lambda: _time(latency, model, plan, inputs, structures, check_rounds,
                                                        timer)["measured_fraction"])
                row["measured_fraction"] = _settle(row["timings"])
            history.append(row)
            plans.append(plan)
            timed[key] = len(history) - 1
            regime.append(len(history) - 1)
            steering.append(row)
            log.info("latency loop round %d: requested %.3f, predicted %.3f, measured %.3f (target %.3f)",
                     len(history), request, row["predicted_fraction"], row["measured_fraction"], fraction)
            if _in_window(row["measured_fraction"], fraction, tolerance):
                stopped = "window"
                break
            if avoid_steps and _hold_step(history, plans, regime, fraction, tolerance, structures, held, steps,
                                          narrowed=False):
                regime, steering, feasible, ceiling = _from_below(history, steps)
        following = _next_request(steering, aim, 1e-3, ceiling - 1e-4, fraction, tolerance)
        if (abs(following - request) < 1e-4 and following < ceiling - 2e-4 and avoid_steps
                and _hold_step(history, plans, regime, fraction, tolerance, structures, held, steps, narrowed=True)):
            # no plan between the two ends of a step: hold what it thins, go on from below it
            regime, steering, feasible, ceiling = _from_below(history, steps)
            following = _next_request(steering, aim, 1e-3, ceiling - 1e-4, fraction, tolerance)
        if abs(following - request) < 1e-4:
            # no request left to try: at the selection's limit, or no other plan between two timed ones
            stopped = ("held limit" if held else "limit") if following >= ceiling - 2e-4 else "granularity"
            if stopped == "granularity":
                log.info("latency loop: no plan between the timed ones around %.3f (the selection's granularity)",
                         request)
            break
        request = following
    return history, plans, feasible, free_ceiling, stopped, steps


def select_to_latency(model: nn.Module, structures: Structures, scores, fraction: float, latency: LatencyModel,
                      example_inputs, *, rounds: int = 6, tolerance: float = 0.03, check_rounds: int = 3,
                      confirm: bool = True, timer: Callable[[dict, object], Mapping[str, float]] | None = None,
                      avoid_steps: bool = True, **select_options) -> PruningPlan:
    """A plan whose **measured** latency saving lies in ``[fraction, fraction + tolerance]`` (closed loop).

    Args:
        model: the dense model the ``latency`` model was measured on (not modified).
        structures, scores: as for :func:`prunekit.select`.
        fraction: the fraction of the measured latency to remove, in ``(0, 1)``.
        latency: :meth:`prunekit.LatencyModel.measure` of ``model`` on the target.
        example_inputs: inputs for timing (resized to the latency model's batch size).
        rounds: at most this many plans are materialized and timed (``1``: open loop, timed), and
            one more, the plan at the selection's limit, when all fall short of ``fraction`` below it.
        tolerance: width of the acceptance window above ``fraction``.
        check_rounds: sets the pairs of passes timed per plan, ``max(15, check_rounds × repeats)``
            (:meth:`LatencyModel.check`; ``repeats``: the latency model's passes per round).
        confirm: time a plan that lands in the window a second time and keep the mean; when the
            second timing is outside the window, time it a third time and keep the median.
        timer: replaces the wall-clock timer (tests), as in :meth:`LatencyModel.measure`.
        avoid_steps: when the window lies inside a jump of the measured saving between two plans
            that the latency model predicts to be close (a step: :func:`_find_step`), hold the
            groups the jump thins at their widths below it and go on with the others.
        **select_options: passed to :func:`prunekit.select` (``group_norm``, ``max_group_ratio``, …).

    Returns:
        The chosen :class:`PruningPlan`; ``plan.meta["latency_loop"]`` holds ``target``,
        ``tolerance``, ``rounds`` (``requested``, ``predicted_fraction``, ``measured_fraction``,
        ``dense_ms``, ``measured_ms``, ``ratio_iqr`` per round; ``timings`` when confirmed: two or three), ``chosen`` (index of
        the round returned), ``stopped`` (why the rounds ended: ``"window"``, ``"rounds"`` run
        out, at the selection's ``"limit"``, ``"held limit"`` (the limit under the steps' holds: the
        plan at the caller's limits is then timed and decides ``reachable``), or ``"granularity"``: no
        other plan between two timed ones), ``steps`` (the latency steps found: ``below`` / ``above``
        round indices, ``groups`` held, ``measured_gap``, ``predicted_gap``), ``reachable`` (``False`` when the selection's limits stopped
        below the target; a round with ``limit: True`` is the plan at those limits, timed after the
        rounds ran out short), ``dense_spread`` (the dense model's time across the rounds, max − min
        over median) and ``steady`` (``dense_spread <= UNSTEADY_SPREAD``; else a warning: the
        machine's speed moved under the loop).

    Example:
        >>> import torch, prunekit
        >>> m = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
        >>> x = torch.randn(4, 8)
        >>> s = prunekit.find_structures(m, x)
        >>> t = lambda named, inp: {k: 1.0 + prunekit.count(v, inp)["macs"] / 100 for k, v in named.items()}
        >>> lat = prunekit.LatencyModel.measure(m, x, s, cache_dir=False, timer=t)
        >>> plan = select_to_latency(m, s, torch.rand(len(s)), 0.3, lat, x, timer=t)
        >>> 0.3 <= plan.meta["latency_loop"]["rounds"][-1]["measured_fraction"] <= 0.33
        True
    """
    if not (isinstance(fraction, (int, float)) and 0.0 < fraction < 1.0):
        raise ValueError(f"select_to_latency: fraction must be in (0, 1), got {fraction!r}")
    if not (isinstance(rounds, int) and rounds >= 1):
        raise ValueError(f"select_to_latency: rounds must be an int >= 1, got {rounds!r}")
    if not tolerance >= 0.0:
        raise ValueError(f"select_to_latency: tolerance must be >= 0, got {tolerance!r}")
    history, plans, feasible, ceiling, stopped, steps = _run_rounds(
        model, structures, scores, fraction, latency, example_inputs, rounds, tolerance, check_rounds, confirm, timer,
        select_options, avoid_steps)
    near_limit = stopped == "limit" or (ceiling < 0.999 and max(h["requested"] for h in history) >= ceiling - LIMIT_MARGIN)
    if not near_limit and max(h["measured_fraction"] for h in history) < fraction:
        # the rounds ran out short of the target below the limit: time the most the limits allow, once
        top = _limit_request(structures, scores, latency, feasible, ceiling, select_options)
        if top > max(h["requested"] for h in history) + 1e-3:
            plan = select(structures, scores, Budget(latency=top), latency=latency, **select_options)
            if all(set(plan.removed) != set(p.removed) for p in plans):  # else a round timed it already
                history.append({"requested": top, "limit": True,
                                **_time(latency, model, plan, example_inputs, structures, check_rounds, timer)})
                plans.append(plan)
        near_limit = True
    chosen = _best(history, fraction, tolerance)
    # out of reach: short of the target although the loop asked for (nearly) the most the limits allow
    reachable = not near_limit or max(h["measured_fraction"] for h in history) >= fraction
    if not reachable:
        log.warning("select_to_latency: a %.0f%% latency cut is out of reach under the selection's limits "
                    "(%s): the most measured was %.1f%%; relax max_group_ratio / min_group_width to go further",
                    100 * fraction, {k: v for k, v in select_options.items() if k in ("max_group_ratio", "min_group_width")}
                    or "defaults", 100 * max(h["measured_fraction"] for h in history))
    index = history.index(chosen)
    plan = plans[index]
    moved = spread(h["dense_ms"] for h in history)
    if moved > UNSTEADY_SPREAD:
        log.warning("select_to_latency: the dense model's time moved by %.0f%% across the loop's rounds (more than "
                    "%.0f%%): the machine's speed is not steady, so the measured savings, and the plan chosen on them, "
                    "are unreliable; time on an idle machine", 100 * moved, 100 * UNSTEADY_SPREAD)
    plan.meta["latency_loop"] = {"target": float(fraction), "tolerance": tolerance, "rounds": history,
                                 "chosen": index, "reachable": reachable, "stopped": stopped, "dense_spread": moved,
                                 "steady": moved <= UNSTEADY_SPREAD, "steps": steps}
    return plan
