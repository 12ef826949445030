"""Closed-loop latency selection (``prunekit.select_to_latency``) against a stub "device" whose
latency is not additive over groups, so the latency model's open-loop plan misses the target."""
import pytest
import torch
from torch import nn

import prunekit
from prunekit.core.latency import LatencyModel, LatencyModelError
from prunekit.core.plan import BudgetError


def _device(named, inputs):
    """Stub timer: superlinear in the model's MACs (1 ms + (MACs/100)^1.5 / 10): deterministic."""
    return {k: 1.0 + (prunekit.count(m, inputs)["macs"] / 100.0) ** 1.5 / 10 for k, m in named.items()}


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                          nn.Linear(32, 3)).eval()
    x = torch.randn(2, 6)
    structures = prunekit.find_structures(model, x)
    lat = LatencyModel.measure(model, x, structures, cache_dir=False, timer=_device)
    return model, x, structures, lat, torch.rand(len(structures))


def _measured(model, x, structures, plan) -> float:
    pruned = prunekit.materialize(model, plan, structures)
    ms = _device({"dense": model, "pruned": pruned}, x)
    return 1.0 - ms["pruned"] / ms["dense"]


@pytest.mark.parametrize("target", [0.2, 0.4, 0.6])
def test_closed_loop_reaches_the_measured_target_the_open_loop_misses(setup, target):
    model, x, s, lat, scores = setup
    open_loop = prunekit.select(s, scores, prunekit.Budget(latency=target), latency=lat)
    assert _measured(model, x, s, open_loop) - target > 0.1  # the additive model under-predicts the saving
    plan = prunekit.select_to_latency(model, s, scores, target, lat, x, timer=_device)
    loop = plan.meta["latency_loop"]
    assert target <= _measured(model, x, s, plan) <= target + 0.03  # independent of what the loop recorded
    chosen = loop["rounds"][loop["chosen"]]
    assert chosen["measured_fraction"] == pytest.approx(_measured(model, x, s, plan))
    assert loop["rounds"][0]["requested"] == target + 0.015 and 2 <= len(loop["rounds"]) <= 4  # the window's middle
    assert loop["reachable"] and loop["rounds"][loop["chosen"]]["timings"] == [chosen["measured_fraction"]] * 2
    assert loop["stopped"] == "window"
    # the first round is the open-loop plan aimed at the window's middle
    first = prunekit.select(s, scores, prunekit.Budget(latency=target + 0.015), latency=lat)
    assert loop["rounds"][0]["measured_fraction"] == pytest.approx(_measured(model, x, s, first))


def test_one_round_is_the_open_loop_plan_and_options_reach_select(setup):
    model, x, s, lat, scores = setup
    plan = prunekit.select_to_latency(model, s, scores, 0.3, lat, x, timer=_device, rounds=1, max_group_ratio=0.5,
                                      tolerance=0.0)
    same = prunekit.select(s, scores, prunekit.Budget(latency=0.3), latency=lat, max_group_ratio=0.5)
    assert plan.removed == same.removed and len(plan.meta["latency_loop"]["rounds"]) == 1
    assert all(len(set(plan.removed) & set(g.members)) <= 16 for g in s.groups)  # max_group_ratio 0.5 of 32


def test_a_request_beyond_the_limits_is_brought_back(setup):
    model, x, s, lat, scores = setup
    # under max_group_ratio=0.5 the most the selection can remove is below what the loop would ask
    plan = prunekit.select_to_latency(model, s, scores, 0.7, lat, x, timer=_device, max_group_ratio=0.5, rounds=6)
    rounds = plan.meta["latency_loop"]["rounds"]
    with pytest.raises(BudgetError):  # the open-loop request itself cannot be met ...
        prunekit.select(s, scores, prunekit.Budget(latency=0.7), latency=lat, max_group_ratio=0.5)
    assert rounds[0]["requested"] < 0.7  # ... so the loop asked for less, and the device still saved enough
    assert all(len(set(plan.removed) & set(g.members)) <= 16 for g in s.groups)
    assert 0.7 <= _measured(model, x, s, plan) <= 0.73 and plan.meta["latency_loop"]["reachable"]


@pytest.mark.parametrize("rounds", [3, 8])  # 3: the rounds run out just below the limit
def test_a_target_out_of_reach_is_reported_with_the_limit_to_relax(setup, caplog, rounds):
    model, x, s, lat, scores = setup
    with caplog.at_level("WARNING", logger="prunekit.core.latency_loop"):
        plan = prunekit.select_to_latency(model, s, scores, 0.95, lat, x, timer=_device, max_group_ratio=0.5,
                                          rounds=rounds)
    loop = plan.meta["latency_loop"]
    best = max(r["measured_fraction"] for r in loop["rounds"])
    assert not loop["reachable"] and best < 0.95
    assert loop["rounds"][loop["chosen"]]["measured_fraction"] == best  # the closest to the target it could get
    assert "out of reach" in caplog.text and "max_group_ratio" in caplog.text


class _Noisy:
    """The stub device with a timing error that alternates +e, -e, ... per call."""

    def __init__(self, error):
        self.error, self.calls = error, 0

    def __call__(self, named, inputs):
        ms = _device(named, inputs)
        self.calls += 1
        sign = 1 if self.calls % 2 else -1
        return {k: v * (1 - sign * self.error) if k == "pruned" else v for k, v in ms.items()}


def test_a_plan_in_the_window_is_timed_again_and_kept_on_the_mean(setup):
    model, x, s, lat, scores = setup
    timer = _Noisy(0.01)
    plan = prunekit.select_to_latency(model, s, scores, 0.4, lat, x, timer=timer, rounds=6)
    loop = plan.meta["latency_loop"]
    chosen = loop["rounds"][loop["chosen"]]
    assert len(chosen["timings"]) == 2 and chosen["timings"][0] != chosen["timings"][1]
    assert chosen["measured_fraction"] == pytest.approx(sum(chosen["timings"]) / 2)
    assert chosen["measured_fraction"] == pytest.approx(_measured(model, x, s, plan), abs=0.01)

class _Scripted:
    """The stub device whose k-th timing of one plan (the pruned model's shapes) saves ``offsets[k]``
    more of the dense time than the plan does (the last offset repeats)."""

    def __init__(self, offsets):
        self.offsets, self.seen = offsets, {}

    def __call__(self, named, inputs):
        ms = _device(named, inputs)
        key = tuple(tuple(p.shape) for p in named["pruned"].parameters())
        k = self.seen[key] = self.seen.get(key, -1) + 1
        return {**ms, "pruned": ms["pruned"] - self.offsets[min(k, len(self.offsets) - 1)] * ms["dense"]}


@pytest.mark.parametrize("third", [0.0, 0.04])
def test_a_second_timing_outside_the_window_calls_a_third_and_the_median_decides(setup, third):
    """The second timing of a plan in the window [0.4, 0.43] saves 4 points more and leaves it. A third
    timing that agrees with the first keeps the plan on the first (the median); one that agrees with the
    second moves the plan out of the window, although the mean of the first two lies in it."""
    model, x, s, lat, scores = setup
    plan = prunekit.select_to_latency(model, s, scores, 0.4, lat, x, timer=_Scripted([0.0, 0.04, third]), rounds=6)
    loop = plan.meta["latency_loop"]
    confirmed = [r for r in loop["rounds"] if "timings" in r]
    assert confirmed and all(len(r["timings"]) == 3 for r in confirmed)  # every second timing overshot
    for r in confirmed:
        assert r["timings"][1] == pytest.approx(r["timings"][0] + 0.04)
        assert r["timings"][2] == pytest.approx(r["timings"][0] + third)
        assert r["measured_fraction"] == sorted(r["timings"])[1]
    chosen = loop["rounds"][loop["chosen"]]
    if third == 0.0:
        assert loop["stopped"] == "window" and len(confirmed) == 1
        assert chosen["measured_fraction"] == pytest.approx(_measured(model, x, s, plan))
    else:  # every confirmed plan is kept on first + 4 points: over the window, never returned as in it
        assert loop["stopped"] != "window"
        assert all(r["measured_fraction"] > 0.43 for r in confirmed)
        assert any(0.4 <= sum(r["timings"][:2]) / 2 <= 0.43 for r in confirmed)  # the mean of two would keep it
        assert not 0.4 <= chosen["measured_fraction"] <= 0.43


def test_bad_arguments(setup):
    model, x, s, lat, scores = setup
    for bad in (0.0, 1.0, -0.1, "0.5"):
        with pytest.raises(ValueError, match="fraction must be in"):
            prunekit.select_to_latency(model, s, scores, bad, lat, x, timer=_device)
    with pytest.raises(ValueError, match="rounds"):
        prunekit.select_to_latency(model, s, scores, 0.3, lat, x, timer=_device, rounds=0)
    with pytest.raises(ValueError, match="tolerance"):
        prunekit.select_to_latency(model, s, scores, 0.3, lat, x, timer=_device, tolerance=-1)
    with pytest.raises(BudgetError):  # nothing can be removed: min_group_width keeps every member
        prunekit.select_to_latency(model, s, scores, 0.3, lat, x, timer=_device, min_group_width=32)


def test_the_plan_kept_when_no_round_is_within_tolerance():
    """Window [0.5, 0.52]; a shortfall counts double an overshoot: 2 short (cost 4) beats 5 over the
    window, 3 short (cost 6) loses to 5 over."""
    from prunekit.core.latency_loop import _best

    rounds = [{"measured_fraction": m} for m in (0.42, 0.404, 0.57, 0.48)]
    assert _best(rounds, 0.5, 0.02)["measured_fraction"] == 0.48
    rounds = [{"measured_fraction": m} for m in (0.47, 0.57)]
    assert _best(rounds, 0.5, 0.02)["measured_fraction"] == 0.57
    rounds = [{"measured_fraction": m} for m in (0.2, 0.29, 0.31, 0.30)]
    assert _best(rounds, 0.3, 0.02)["measured_fraction"] == 0.31  # the first in the window (0.29 is short)


def test_tables_sampled_at_channel_multiples_are_what_select_uses(setup):
    """``measure(multiple_of=8)`` samples kept widths 24 / 16 / 8 of 32 (removed 8 / 16 / 24), and
    ``select`` with that model keeps multiples of 8 unless told otherwise."""
    model, x, s, _, scores = setup
    lat8 = LatencyModel.measure(model, x, s, cache_dir=False, timer=_device, multiple_of=8)
    assert lat8.multiple_of == 8 and lat8.settings["multiple_of"] == 8
    assert {tuple(t["removed"]) for t in lat8.tables.values()} == {(0, 8, 16, 24)}
    plan = prunekit.select(s, scores, prunekit.Budget(latency=0.5), latency=lat8)
    kept = [len(g.members) - len(set(g.members) & set(plan.removed)) for g in s.groups if len(g.members) == 32]
    assert all(k % 8 == 0 for k in kept) and min(kept) < 32 and plan.meta["selection"]["multiple_of"] == 8
    plan1 = prunekit.select(s, scores, prunekit.Budget(latency=0.5), latency=lat8, multiple_of=1)
    assert plan1.meta["selection"]["multiple_of"] == 1
    again = LatencyModel.from_dict(lat8.to_dict())
    assert again.multiple_of == 8
    with pytest.raises(LatencyModelError, match="multiple_of"):
        LatencyModel.measure(model, x, s, cache_dir=False, timer=_device, multiple_of=0)


class _Sluggish:
    """The stub device on which a pruned model saves only ``share`` of what it saves on ``_device``."""

    def __init__(self, share):
        self.share = share

    def __call__(self, named, inputs):
        ms = _device(named, inputs)
        if "pruned" in ms:
            ms["pruned"] = ms["dense"] - self.share * (ms["dense"] - ms["pruned"])
        return ms


@pytest.mark.parametrize("share, reachable", [(0.3, False), (0.6, True)])
def test_rounds_that_run_out_below_the_limit_time_the_plan_at_the_limit(setup, caplog, share, reachable):
    model, x, s, lat, scores = setup
    with caplog.at_level("WARNING", logger="prunekit.core.latency_loop"):
        plan = prunekit.select_to_latency(model, s, scores, 0.5, lat, x, timer=_Sluggish(share), rounds=1)
    loop = plan.meta["latency_loop"]
    first, last = loop["rounds"]
    assert first["measured_fraction"] < 0.5 and "limit" not in first  # the one round fell short ...
    assert last["limit"] and last["requested"] > 0.9  # ... far below the limit, which was then timed
    with pytest.raises(BudgetError):  # the limit: a request 0.002 above it is refused
        prunekit.select(s, scores, prunekit.Budget(latency=last["requested"] + 2e-3), latency=lat)
    assert (last["measured_fraction"] >= 0.5) is reachable and loop["reachable"] is reachable
    assert ("out of reach" in caplog.text) is not reachable


def test_a_bracket_is_searched_inside_and_crossed_noise_gives_its_middle():
    """Window [0.3, 0.33], aim 0.315: short at request 0.38 (0.21), over at 0.48 (0.38); the secant
    through the last two rounds would leave the bracket, the bracket's interpolation does not."""
    from prunekit.core.latency_loop import _next_request

    history = [{"requested": r, "measured_fraction": m} for r, m in ((0.315, 0.08), (0.55, 0.43), (0.48, 0.38),
                                                                     (0.38, 0.21))]
    r = _next_request(history, 0.315, 1e-3, 0.999, 0.3, 0.03)
    assert r == pytest.approx(0.38 + (0.315 - 0.21) / (0.38 - 0.21) * 0.10)  # 0.4418: inside (0.38, 0.48)
    # kept 20 % off the bracket's ends when the interpolation points at one of them
    history = [{"requested": 0.4, "measured_fraction": 0.299}, {"requested": 0.5, "measured_fraction": 0.9}]
    assert _next_request(history, 0.315, 1e-3, 0.999, 0.3, 0.03) == pytest.approx(0.42)
    # noise crossed the bracket (a larger request measured less): its middle
    history = [{"requested": 0.45, "measured_fraction": 0.28}, {"requested": 0.40, "measured_fraction": 0.36}]
    assert _next_request(history, 0.315, 1e-3, 0.999, 0.3, 0.03) == pytest.approx(0.425)
    # no bracket yet: the secant through the last two rounds, as before
    history = [{"requested": 0.315, "measured_fraction": 0.2}, {"requested": 0.4, "measured_fraction": 0.25}]
    assert _next_request(history, 0.315, 1e-3, 0.999, 0.3, 0.03) == pytest.approx(0.4 + 0.065 * min(0.085 / 0.05, 4))


class _Counting:
    """The stub device, counting how many pruned models it timed."""

    def __init__(self):
        self.pruned = []

    def __call__(self, named, inputs):
        self.pruned.append(prunekit.count(named["pruned"], inputs)["macs"])
        return _device(named, inputs)


def test_coarse_plans_are_timed_once_and_the_loop_stops_between_two_of_them():
    """Four hidden units: the plans are coarse, none lands in [0.3, 0.31]; the loop times each plan it
    meets once, stops when no plan lies between a short and an overshooting one, and keeps the cheaper
    miss (a shortfall counts double)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 4), nn.ReLU(), nn.Linear(4, 64)).eval()
    x = torch.randn(2, 64)
    s = prunekit.find_structures(model, x)
    lat = LatencyModel.measure(model, x, s, cache_dir=False, timer=_device)
    timer = _Counting()
    plan = prunekit.select_to_latency(model, s, torch.rand(len(s)), 0.3, lat, x, timer=timer, tolerance=0.01,
                                      rounds=10, max_group_ratio=1.0)
    loop = plan.meta["latency_loop"]
    levels = []  # the saving of each plan the selection can make: 1, 2, 3 units removed
    for k in (1, 2, 3):
        pruned = prunekit.materialize(model, prunekit.PruningPlan.from_removed(s, list(range(k))), s)
        ms = _device({"dense": model, "pruned": pruned}, x)
        levels.append(1.0 - ms["pruned"] / ms["dense"])
    assert levels[0] < 0.3 < 0.31 < levels[1]  # 26.9 % and 49.5 %: no plan in the window
    measured = sorted(r["measured_fraction"] for r in loop["rounds"])
    assert measured == pytest.approx(levels[:2])  # the two plans around the window, each timed once
    assert len(timer.pruned) == len(set(timer.pruned)) == 2 and loop["stopped"] == "granularity"
    chosen = loop["rounds"][loop["chosen"]]["measured_fraction"]
    assert chosen == pytest.approx(levels[0]) and loop["reachable"]  # 2 x 3.1 short < 18.5 over


def test_requests_that_close_in_on_the_limit_end_the_loop_at_it(setup, monkeypatch):
    """A selection that accepts requests up to 0.49371 and a device that measures 0.9 of the request:
    the loop's requests close in on the limit from both sides and it stops there, out of reach
    (it used to raise once a refused request came within 1e-4 of an accepted one)."""
    from prunekit.core import latency_loop

    model, x, s, lat, scores = setup
    n = len(s)

    def fake_select(structures, scores, budget, latency=None, **options):
        request = budget.targets()["latency"]
        if request > 0.49371:
            raise BudgetError("over the limit")
        return prunekit.PruningPlan.from_removed(structures, list(range(int(request * 2 * (n - 1)))))

    def fake_time(latency, model, plan, inputs, structures, check_rounds, timer):
        saved = 0.9 * 0.5 * len(plan.removed) / (n - 1)
        return {"predicted_fraction": saved, "measured_fraction": saved, "dense_ms": 1.0, "measured_ms": 1 - saved}

    monkeypatch.setattr(latency_loop, "select", fake_select)
    monkeypatch.setattr(latency_loop, "_time", fake_time)
    plan = prunekit.select_to_latency(model, s, scores, 0.6, lat, x, rounds=12)
    loop = plan.meta["latency_loop"]
    assert not loop["reachable"] and max(r["requested"] for r in loop["rounds"]) > 0.48 and loop["stopped"] == "limit"
    assert loop["rounds"][loop["chosen"]]["measured_fraction"] == max(r["measured_fraction"] for r in loop["rounds"])


class _Drifting:
    """The stub device whose speed moves by ``swing`` from call to call (dense and pruned alike)."""

    def __init__(self, swing):
        self.swing, self.calls = swing, 0

    def __call__(self, named, inputs):
        self.calls += 1
        scale = 1.0 + (self.swing if self.calls % 2 else 0.0)
        return {k: v * scale for k, v in _device(named, inputs).items()}


@pytest.mark.parametrize("swing, steady", [(0.0, True), (0.1, True), (0.3, False)])
def test_a_machine_whose_speed_moves_under_the_loop_is_flagged(setup, caplog, swing, steady):
    model, x, s, lat, scores = setup
    with caplog.at_level("WARNING", logger="prunekit.core.latency_loop"):
        plan = prunekit.select_to_latency(model, s, scores, 0.4, lat, x, timer=_Drifting(swing), rounds=6)
    loop = plan.meta["latency_loop"]
    assert len(loop["rounds"]) >= 2  # the dense model was timed more than once
    dense = [r["dense_ms"] for r in loop["rounds"]]
    assert loop["dense_spread"] == pytest.approx((max(dense) - min(dense)) / sorted(dense)[len(dense) // 2])
    assert loop["steady"] is steady and ("not steady" in caplog.text) is not steady


def test_the_plan_at_the_limit_is_not_timed_again_when_a_round_timed_it(setup, monkeypatch):
    """Coarse structures: every request from 0.2 up to the limit (0.49371) gives the same plan. The one round
    allowed times it (asked 0.3075: the first request, 0.615, was refused and halved) short of the target,
    well below the limit, so the loop looks up the plan at the limit: the one already timed, not timed again."""
    from prunekit.core import latency_loop

    model, x, s, lat, scores = setup
    n = len(s)
    timed = []

    def fake_select(structures, scores, budget, latency=None, **options):
        request = budget.targets()["latency"]
        if request > 0.49371:
            raise BudgetError("over the limit")
        return prunekit.PruningPlan.from_removed(structures, list(range(4 if request < 0.2 else 8)))

    def fake_time(latency, model, plan, inputs, structures, check_rounds, timer):
        timed.append(len(plan.removed))
        saved = 0.03 * len(plan.removed)
        return {"predicted_fraction": saved, "measured_fraction": saved, "dense_ms": 1.0, "measured_ms": 1 - saved,
                "ratio_iqr": 0.0}

    monkeypatch.setattr(latency_loop, "select", fake_select)
    monkeypatch.setattr(latency_loop, "_time", fake_time)
    plan = prunekit.select_to_latency(model, s, scores, 0.6, lat, x, rounds=1)
    loop = plan.meta["latency_loop"]
    assert n > 8 and timed == [8] and loop["stopped"] == "rounds"  # the plan timed once
    assert not any(r.get("limit") for r in loop["rounds"]) and not loop["reachable"]
    assert loop["rounds"][loop["chosen"]]["measured_fraction"] == pytest.approx(0.24)


def _stepped(named, inputs):
    """The stub device with a kernel switch the tables do not see: 40 % faster once the second layer is down
    to 24 outputs (the tables are measured on the smooth ``_device``)."""
    out = _device(named, inputs)
    return {k: t * (0.6 if named[k][2].out_features <= 24 else 1.0) for k, t in out.items()}


@pytest.mark.parametrize("target", [0.45, 0.5, 0.55])
def test_a_step_the_tables_miss_is_held_and_the_search_goes_on_with_the_other_groups(setup, target):
    model, x, s, lat, scores = setup

    def measured(plan):
        ms = _stepped({"dense": model, "pruned": prunekit.materialize(model, plan, s)}, x)
        return 1.0 - ms["pruned"] / ms["dense"]
    step_group = s[next(iter(s.groups[1].members))].group
    # without the hold the window lies inside the jump: the loop ends on one side of it
    stuck = prunekit.select_to_latency(model, s, scores, target, lat, x, timer=_stepped, rounds=8, avoid_steps=False)
    assert not target <= measured(stuck) <= target + 0.03 and stuck.meta["latency_loop"]["steps"] == []
    plan = prunekit.select_to_latency(model, s, scores, target, lat, x, timer=_stepped, rounds=8)
    loop = plan.meta["latency_loop"]
    assert target <= measured(plan) <= target + 0.03 and loop["stopped"] == "window"
    (step,) = loop["steps"]
    assert step["groups"] == [step_group] and step["measured_gap"] > 0.2 > 4 * step["predicted_gap"]
    below, above = loop["rounds"][step["below"]], loop["rounds"][step["above"]]
    assert below["measured_fraction"] < target < target + 0.03 < above["measured_fraction"]
    # the group is held at its width below the step (above the switch), the others were thinned further
    widths = plan.kept_widths(s)
    assert widths[step_group] == 25 and sum(widths.values()) < sum(stuck.kept_widths(s).values())
    assert plan.meta["selection"]["max_removed"] == {str(step_group): 7}
    assert loop["rounds"][loop["chosen"]]["held_groups"] == [step_group]


def test_a_hold_that_cannot_reach_the_target_leaves_the_plans_across_the_step(setup):
    """Under max_group_ratio=0.3 the held group leaves too little to thin for 60 %: the rounds stop at the
    limit *of the holds*, which is not the caller's (the target is reachable across the step), and the plan
    kept is the one that overshoots least."""
    model, x, s, lat, scores = setup
    plan = prunekit.select_to_latency(model, s, scores, 0.6, lat, x, timer=_stepped, rounds=8, max_group_ratio=0.3)
    loop = plan.meta["latency_loop"]
    assert loop["stopped"] == "held limit" and loop["reachable"] and len(loop["steps"]) == 1
    held = [r for r in loop["rounds"] if "held_groups" in r]
    assert held and max(r["measured_fraction"] for r in held) < 0.6  # the holds' most falls short
    chosen = loop["rounds"][loop["chosen"]]
    assert "held_groups" not in chosen and chosen["measured_fraction"] == min(
        r["measured_fraction"] for r in loop["rounds"] if r["measured_fraction"] > 0.63)
