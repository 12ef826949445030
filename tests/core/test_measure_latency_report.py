"""Predicted latency reported next to params and MACs: ``compare(..., plan=/predicted_ms=)`` and ``count``.

The latency models here are built from given tables (deterministic predictions); ``compare``
times the models for real (few repeats), so the checks are the relations between its fields,
not the timings themselves.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit
from prunekit.core.latency import LatencyModel
from prunekit.core.measure import compare, count

RATIO_KEYS = {"param_reduction", "mac_reduction", "params_removed", "macs_removed", "speedup",
              "speedup_per_mac_reduction"}


@pytest.fixture(scope="module")
def planned():
    """An MLP, a latency model from tables (batch 2, one thread), a plan at Budget(latency=0.3), its pruned model."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    x = torch.randn(1, 16)
    s = prunekit.find_structures(model, x)
    lat = LatencyModel.from_tables(s, dense_ms=2.0, tables={0: ([0, 16, 24], [0.0, 0.6, 0.8]),
                                                            1: ([0, 16, 24], [0.0, 0.3, 0.4])},
                                   batch_size=2, threads=1)
    plan = prunekit.select(s, prunekit.saliency(model, s, None, method="l1"), prunekit.Budget(latency=0.3),
                           latency=lat)
    return model, x, s, lat, plan, prunekit.materialize(model, plan, s)


def test_compare_with_a_plan_reports_predicted_next_to_measured(planned):
    model, x, _, lat, plan, pruned = planned
    res = compare(model, pruned, x, warmup=1, repeats=3, plan=plan)
    assert set(res["ratios"]) == RATIO_KEYS and set(res["dense"]) == set(res["pruned"]) == {"count", "latency"}
    p = res["prediction"]
    # the prediction is the latency model's, at its batch size and thread count
    assert p["predicted_ms"] == pytest.approx(lat.predict(plan.removed))
    assert p["dense_predicted_ms"] == lat.dense_ms == 2.0
    assert p["predicted_fraction"] == pytest.approx(lat.saved_fraction(plan.removed)) and p["predicted_fraction"] >= 0.3
    assert p["batch_size"] == 2 and p["threads"] == 1 and p["statistic"] == "min_ms"
    # timed at the example's batch (1) and the prediction's (2), with the prediction's thread count
    assert sorted(res["pruned"]["latency"]["batches"]) == [1, 2] and res["pruned"]["latency"]["threads"] == 1
    pruned_b2, dense_b2 = res["pruned"]["latency"]["batches"][2], res["dense"]["latency"]["batches"][2]
    assert p["measured_ms"] == pruned_b2["min_ms"] and p["measured_median_ms"] == pruned_b2["median_ms"]
    assert p["dense_measured_ms"] == dense_b2["min_ms"]
    assert p["measured_over_predicted"] == pytest.approx(p["measured_ms"] / p["predicted_ms"])
    assert p["error"] == pytest.approx(p["predicted_ms"] / p["measured_ms"] - 1)
    assert p["measured_fraction"] == pytest.approx(1 - pruned_b2["min_ms"] / dense_b2["min_ms"])
    assert p["fraction_error"] == pytest.approx(p["predicted_fraction"] - p["measured_fraction"])
    # the pruned model's own plan, and the plan's JSON form, say the same
    for source in (pruned.prunekit_plan, plan.to_dict()):
        again = compare(model, pruned, x, batch_sizes=[2], warmup=0, repeats=2, plan=source)["prediction"]
        assert again["predicted_ms"] == p["predicted_ms"] and again["predicted_fraction"] == p["predicted_fraction"]
    assert compare(model, pruned, x, warmup=0, repeats=2)["prediction"] is None


def test_compare_with_a_predicted_latency_alone(planned):
    model, x, _, _, _, pruned = planned
    res = compare(model, pruned, x, batch_sizes=[3], warmup=0, repeats=3, predicted_ms=0.5)
    p = res["prediction"]
    assert p["batch_size"] == 3 and sorted(res["pruned"]["latency"]["batches"]) == [3]
    assert p["measured_over_predicted"] == pytest.approx(res["pruned"]["latency"]["batches"][3]["min_ms"] / 0.5)
    assert p["predicted_fraction"] is None and p["fraction_error"] is None and p["measured_fraction"] < 1


@pytest.mark.parametrize("kwargs, message", [
    ({"plan": "unpredicted"}, "records no latency prediction"),
    ({"plan": "plan", "predicted_ms": 1.0}, "not both"),
    ({"plan": "plan", "threads": 3}, "is for 1 thread(s), not threads=3"),
    ({"plan": "plan", "latency": False}, "drop latency=False"),
    ({"predicted_ms": 1.0, "batch_sizes": [1, 2]}, "one batch size"),
    ({"predicted_ms": -1.0}, "finite number of ms >= 0"),
    ({"predicted_ms": float("nan")}, "finite number of ms >= 0"),
])
def test_compare_refuses_a_prediction_it_cannot_check(planned, kwargs, message):
    model, x, s, _, plan, pruned = planned
    unpredicted = prunekit.select(s, torch.arange(float(len(s))), prunekit.Budget(structures=0.2))
    kwargs = {**kwargs, **({"plan": {"plan": plan, "unpredicted": unpredicted}[kwargs["plan"]]}
                           if "plan" in kwargs else {})}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compare(model, pruned, x, warmup=0, repeats=1, **kwargs)


def test_count_reports_the_plans_prediction_and_never_times(planned):
    model, x, _, lat, plan, pruned = planned
    stats = count(pruned, x)
    assert stats["predicted_latency"]["predicted_ms"] == pytest.approx(lat.predict(plan.removed))
    assert stats["predicted_latency"]["batch_size"] == 2 and stats["predicted_latency"]["threads"] == 1
    stats["predicted_latency"]["predicted_ms"] = -1.0      # a copy: the plan is not changed
    assert plan.meta["latency"]["predicted_ms"] == pytest.approx(lat.predict(plan.removed))
    assert count(model, x)["predicted_latency"] is None
    no_latency = prunekit.select(prunekit.find_structures(model, x), torch.arange(64.0), prunekit.Budget(macs=0.2))
    assert count(prunekit.materialize(model, no_latency), x)["predicted_latency"] is None
