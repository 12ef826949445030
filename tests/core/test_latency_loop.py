"""Closed-loop latency selection (``prunekit.select_to_latency``) against a stub "device" whose
latency is not additive over groups, so the latency model's open-loop plan misses the target."""
import pytest
import torch
from torch import nn

import prunekit
from prunekit.core.latency import LatencyModel
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
    assert abs(_measured(model, x, s, plan) - target) <= 0.02  # independent of what the loop recorded
    chosen = loop["rounds"][loop["chosen"]]
    assert chosen["measured_fraction"] == pytest.approx(_measured(model, x, s, plan))
    assert loop["rounds"][0]["requested"] == target and 2 <= len(loop["rounds"]) <= 4
    # the first round is the open-loop plan
    assert loop["rounds"][0]["measured_fraction"] == pytest.approx(_measured(model, x, s, open_loop))


def test_one_round_is_the_open_loop_plan_and_options_reach_select(setup):
    model, x, s, lat, scores = setup
    plan = prunekit.select_to_latency(model, s, scores, 0.3, lat, x, timer=_device, rounds=1, max_group_ratio=0.5)
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
    assert abs(_measured(model, x, s, plan) - 0.7) <= 0.02


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
    """A shortfall counts double an overshoot: 4 points short beats 11 over, 6 short loses to 11 over."""
    from prunekit.core.latency_loop import _best

    rounds = [{"measured_fraction": m} for m in (0.42, 0.404, 0.612, 0.48)]
    assert _best(rounds, 0.5, 0.02)["measured_fraction"] == 0.48  # 0.48 is 0.020000000000000018 short
    rounds = [{"measured_fraction": m} for m in (0.44, 0.61)]
    assert _best(rounds, 0.5, 0.02)["measured_fraction"] == 0.61
    rounds = [{"measured_fraction": m} for m in (0.2, 0.31, 0.5)]
    assert _best(rounds, 0.3, 0.02)["measured_fraction"] == 0.31  # the first within tolerance
