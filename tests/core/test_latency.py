"""Latency budgets: the latency model (tables, prediction, cache, measurement) and selection under it.

Selection is tested on latency models built from given tables (deterministic); the
measurement pipeline with a stub timer (deterministic) and once with the wall clock on a
tiny network (end to end, not checked for accuracy).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import prunekit
from prunekit.core.latency import LatencyModel, LatencyModelError, _monotone
from prunekit.core.plan import BudgetError


@pytest.fixture(scope="module")
def mlp():
    """Three prunable groups of 10 neurons (layers 0, 2, 4)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 10), nn.ReLU(),
                          nn.Linear(10, 3)).eval()
    x = torch.randn(1, 6)
    structures = prunekit.find_structures(model, x)
    assert [len(g.members) for g in structures.groups] == [10, 10, 10]
    return model, x, structures


def _tables():
    # group 0 saves a lot (and less per member once half is gone), group 1 a little, group 2 nothing
    return {0: ([0, 5, 8], [0.0, 5.0, 6.5]), 1: ([0, 5, 8], [0.0, 1.0, 1.6]), 2: ([0, 8], [0.0, 0.0])}


def _widths(structures, removed):
    gone = set(removed)
    return [len(g.members) - len(gone & set(g.members)) for g in structures.groups]


def test_predict_piecewise_linear(mlp):
    _, _, s = mlp
    lat = LatencyModel.from_tables(s, dense_ms=10.0, tables=_tables())
    g0, g1 = s.groups[0].members, s.groups[1].members
    assert lat.predict([]) == pytest.approx(10.0)
    assert lat.predict(g0[:5]) == pytest.approx(5.0)
    assert lat.predict(g0[:6]) == pytest.approx(10.0 - 5.5)          # interpolated: 5 + 1.5/3
    assert lat.predict(g0[:9]) == pytest.approx(10.0 - 7.0)          # last segment extended
    assert lat.predict(g0[:5] + g1[:5]) == pytest.approx(4.0)        # additive across groups
    assert lat.predict(g0[:5] + g1[:5], "multiplicative") == pytest.approx(10 * 0.5 * 0.9)
    assert lat.saved_fraction(g0[:5]) == pytest.approx(0.5)
    assert _monotone([0.0, 2.0, 1.0, 3.0]) == [0.0, 1.5, 1.5, 3.0]


@pytest.mark.parametrize("ratio", [0.8, None])
def test_select_meets_predicted_budget_monotone_never_empties(mlp, ratio):
    _, _, s = mlp
    lat = LatencyModel.from_tables(s, dense_ms=10.0, tables=_tables())
    scores = torch.rand(len(s), generator=torch.Generator().manual_seed(1)) + 0.1
    previous: set = set()
    for f in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7):
        plan = prunekit.select(s, scores, prunekit.Budget(latency=f), latency=lat, max_group_ratio=ratio)
        assert plan.achieved["latency"] >= f - 1e-12
        assert plan.achieved["latency"] == pytest.approx(lat.saved_fraction(plan.removed))
        assert plan.meta["latency"]["predicted_ms"] == pytest.approx(lat.predict(plan.removed))
        widths = _widths(s, plan.removed)
        assert min(widths) >= (2 if ratio else 1)                    # never emptied (cap: ⌊0.8·10⌋ = 8)
        assert previous <= set(plan.removed)                         # nested: monotone in the fraction
        previous = set(plan.removed)
    # group 2 saves nothing: never touched while the others can still save
    assert _widths(s, previous)[2] == 10


def test_select_trades_score_against_ms(mlp):
    _, _, s = mlp
    lat = LatencyModel.from_tables(s, dense_ms=10.0, tables=_tables())
    scores = torch.ones(len(s))
    plan = prunekit.select(s, scores, prunekit.Budget(latency=0.3), latency=lat)
    # equal scores: the cheapest ms come from group 0 (1 ms per member vs 0.2)
    assert _widths(s, plan.removed) == [7, 10, 10]
    # group 0's members now scored 10x higher: 10/1 > 1/0.2, so group 1 goes first
    scores[s.groups[0].members] = 10.0
    plan = prunekit.select(s, scores, prunekit.Budget(latency=0.1), latency=lat, group_norm=None)
    assert _widths(s, plan.removed)[0] == 10 and _widths(s, plan.removed)[1] < 10


def test_existing_budgets_unchanged_and_record_latency(mlp):
    _, _, s = mlp
    lat = LatencyModel.from_tables(s, dense_ms=10.0, tables=_tables())
    scores = torch.arange(len(s), dtype=torch.float64) + 1
    a = prunekit.select(s, scores, prunekit.Budget(macs=0.4))
    b = prunekit.select(s, scores, prunekit.Budget(macs=0.4), latency=lat)
    assert a.removed == b.removed
    assert "latency" not in a.achieved and b.achieved["latency"] == pytest.approx(lat.saved_fraction(b.removed))
    both = prunekit.select(s, scores, prunekit.Budget(macs=0.4, latency=0.2), latency=lat)
    assert both.achieved["macs"] >= 0.4 and both.achieved["latency"] >= 0.2
    assert prunekit.PruningPlan.from_json(both.to_json()).budget == {"macs": 0.4, "latency": 0.2}


def test_clear_errors(mlp):
    model, x, s = mlp
    lat = LatencyModel.from_tables(s, dense_ms=10.0, tables=_tables())
    with pytest.raises(BudgetError, match="needs a latency model.*LatencyModel.measure"):
        prunekit.select(s, torch.ones(len(s)), prunekit.Budget(latency=0.5))
    with pytest.raises(BudgetError, match="in \\[0, 1\\)"):
        prunekit.Budget(latency=1.5)
    with pytest.raises(BudgetError, match="cannot be met"):
        prunekit.select(s, torch.ones(len(s)), prunekit.Budget(latency=0.95), latency=lat)
    with pytest.raises(ValueError, match="normalize"):
        prunekit.select(s, torch.ones(len(s)), prunekit.Budget(latency=0.3), latency=lat, normalize="macs")
    with pytest.raises(ValueError, match="gaussian"):
        prunekit.select(s, torch.ones(len(s)), prunekit.Budget(latency=0.3), latency=lat, group_norm="gaussian")
    with pytest.raises(ValueError, match="scores >= 0"):
        prunekit.select(s, -torch.ones(len(s)), prunekit.Budget(latency=0.3), latency=lat)
    other = prunekit.find_structures(nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3)), x)
    with pytest.raises(LatencyModelError, match="signature"):
        prunekit.select(other, torch.ones(len(other)), prunekit.Budget(latency=0.3), latency=lat)
    with pytest.raises(LatencyModelError, match="increase"):
        LatencyModel.from_tables(s, 10.0, {0: ([0, 5, 5], [0.0, 1.0, 2.0])})
    with pytest.raises(LatencyModelError, match="fractions"):
        LatencyModel.measure(model, x, s, fractions=(1.0,), cache_dir=False, timer=lambda m, i: {})


def _mac_timer(calls):
    """Stub timer: 1 ms + 1 ms per 100 MACs, deterministic."""
    def timer(named, inputs):
        calls.append(sorted(named))
        return {name: 1.0 + prunekit.count(m, inputs)["macs"] / 100.0 for name, m in named.items()}
    return timer


def test_measure_with_stub_timer_and_cache_round_trip(mlp, tmp_path):
    model, x, s = mlp
    calls: list = []
    lat = LatencyModel.measure(model, x, s, batch_size=2, threads=1, cache_dir=tmp_path, timer=_mac_timer(calls))
    assert len(calls) == 1
    # the three groups have different shapes (6→10, 10→10, 10→10 then 10→3): ≥ 2 classes, 3 points each
    assert set(lat.tables) == {0, 1, 2} and all(t["removed"] == [0, 2, 5, 8] for t in lat.tables.values())
    dense_macs = prunekit.count(model, torch.randn(2, 6))["macs"]
    assert lat.dense_ms == pytest.approx(1.0 + dense_macs / 100.0)
    assert lat.floor_ms is not None and lat.additivity_error is not None and lat.cost_s >= 0
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1 and s.signature() in files[0].name and "_b2_t1_float32_" in files[0].name
    # cached: the timer is not called again, and the model is the same
    again = LatencyModel.measure(model, x, s, batch_size=2, threads=1, cache_dir=tmp_path, timer=_mac_timer(calls))
    assert len(calls) == 1 and again.to_dict() == lat.to_dict()
    removed = s.groups[1].members[:4]
    assert again.predict(removed) == pytest.approx(lat.predict(removed))
    # another batch size is another entry; refresh re-measures
    LatencyModel.measure(model, x, s, batch_size=4, threads=1, cache_dir=tmp_path, timer=_mac_timer(calls))
    LatencyModel.measure(model, x, s, batch_size=2, threads=1, cache_dir=tmp_path, timer=_mac_timer(calls),
                         refresh=True)
    assert len(calls) == 3 and len(list(tmp_path.glob("*.json"))) == 2
    # the stub is linear in MACs, so a single group's additive prediction is exact ...
    check = lat.check(model, removed, x, s, timer=_mac_timer(calls))
    assert lat.predict(removed, "additive") == pytest.approx(check["measured_ms"])
    # ... and the calibrated one (the default) is exact at both ends: dense, and the all-thinned plan,
    # where the summed savings of groups sharing a layer overstate (a layer's MACs shrink with both widths)
    assert lat.combine == "calibrated" and 0 < lat.calibration < 1
    assert lat.predict([]) == pytest.approx(lat.dense_ms)
    assert lat.predict(lat.measured["floor_removed"]) == pytest.approx(lat.floor_ms)
    assert lat.predict(lat.measured["floor_removed"], "additive") < lat.floor_ms
    with pytest.raises(LatencyModelError, match="not a prunekit latency model"):
        files[0].write_text("{}")
        LatencyModel.load(files[0])


def test_real_measurement_end_to_end(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 4)).eval()
    x = torch.randn(1, 3, 16, 16)
    s = prunekit.find_structures(model, x)
    lat = prunekit.LatencyModel.measure(model, x, s, batch_size=2, threads=1, rounds=1, repeats=3, warmup=1,
                                        cache_dir=tmp_path)
    assert lat.dense_ms > 0 and lat.threads == 1 and lat.batch_size == 2 and lat.device == "cpu"
    assert set(lat.tables) == {g.id for g in s.groups}
    assert all(t["saved_ms"] == sorted(t["saved_ms"]) for t in lat.tables.values())
    plan = prunekit.select(s, prunekit.saliency(model, s, None, method="l1"), prunekit.Budget(latency=0.05),
                           latency=lat, max_group_ratio=None) if _reachable(lat, s, 0.05) else None
    removed = plan.removed if plan is not None else s.groups[0].members[:8]
    check = lat.check(model, removed, x, s, rounds=1, repeats=3)
    assert set(check) >= {"dense_ms", "measured_ms", "predicted_ms", "error", "fraction_error"}
    assert check["measured_ms"] > 0 and check["predicted_ms"] <= lat.dense_ms


def _reachable(lat, s, f):
    """Whether thinning every group to one member is predicted to save ``f`` (timing noise may say no)."""
    return lat.saved_fraction([sid for g in s.groups for sid in g.members[1:]]) >= f


def test_time_in_rounds_statistic():
    ms = prunekit.core.measure.time_in_rounds({"a": nn.Linear(4, 4)}, torch.randn(3, 4), batch_size=5, rounds=2,
                                         repeats=2, warmup=0, statistic="min_ms")
    assert set(ms) == {"a"} and ms["a"] > 0


def test_time_in_rounds_keeps_each_models_best_round_whole(monkeypatch):
    """``full=True`` returns the stats of the round with the lowest statistic, per model; without it, that number."""
    medians = iter([5.0, 9.0, 4.0, 11.0, 6.0, 10.0])  # rounds of (a, b): a is best in round 2, b in round 1
    monkeypatch.setattr(prunekit.core.measure, "measure_latency", lambda model, x, batch_sizes, **kw: {
        "batches": {batch_sizes[0]: (lambda m: {"median_ms": m, "iqr_ms": m / 10})(next(medians))}})
    models = {"a": nn.Linear(4, 4), "b": nn.Linear(4, 2)}
    full = prunekit.core.measure.time_in_rounds(models, torch.randn(3, 4), batch_size=2, rounds=3, full=True)
    assert full == {"a": {"median_ms": 4.0, "iqr_ms": 0.4}, "b": {"median_ms": 9.0, "iqr_ms": 0.9}}
    medians = iter([5.0, 9.0, 4.0, 11.0, 6.0, 10.0])
    assert prunekit.core.measure.time_in_rounds(models, torch.randn(3, 4), rounds=3) == {"a": 4.0, "b": 9.0}


def test_a_family_of_latency_plans_from_one_set_of_scores_is_nested_and_meets_each_target(mlp):
    _, _, s = mlp
    lat = LatencyModel.from_tables(s, dense_ms=10.0, tables=_tables())
    scores = torch.rand(len(s), generator=torch.Generator().manual_seed(3)) + 0.1
    budgets = [prunekit.Budget(latency=f) for f in (0.6, 0.2, 0.4)]  # any order
    plans = prunekit.select_family(s, scores, budgets, latency=lat)
    for budget, plan in zip(budgets, plans):
        assert plan.achieved["latency"] >= budget.latency - 1e-9
        assert plan.removed == prunekit.select(s, scores, budget, latency=lat).removed
    small, middle, large = (set(plans[i].removed) for i in (1, 2, 0))
    assert small < middle < large
    assert [p.meta["family"]["index"] for p in plans] == [0, 1, 2]


# ---------------------------------------------------------------- multiple_of="auto": the step probe


@pytest.fixture(scope="module")
def wide():
    """Hidden layers of 40 and 24 units: the 40-wide group has the most MACs (probed at 16 and 8)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 40), nn.ReLU(), nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 3)).eval()
    x = torch.randn(1, 6)
    return model, x, prunekit.find_structures(model, x)


def _hidden(m):
    return [layer.out_features for layer in m if isinstance(layer, nn.Linear)][:-1]


def _stairs(named, inputs):
    """1 ms + 1 ms per started block of 8 units in each hidden layer: a staircase."""
    return {k: 1.0 + sum(-(-w // 8) for w in _hidden(m)) for k, m in named.items()}


def _smooth(named, inputs):
    """1 ms + 0.2 ms per unit: a line (one unit more or less moves the time alike)."""
    return {k: 1.0 + 0.2 * sum(_hidden(m)) for k, m in named.items()}


def test_step_probe_finds_the_staircase_and_not_a_line(wide):
    from prunekit.core.latency import probe_steps
    model, x, s = wide
    steps = probe_steps(model, s, x, 1, timer=_stairs)
    assert steps["multiple_of"] == 8 and steps["width"] == 40 and [p["width"] for p in steps["probes"]] == [8, 16]
    dense = 1.0 + 5 + 3
    for p in steps["probes"]:   # one block more past the multiple, none below it
        assert p["t_above"] - p["t_at"] == pytest.approx(1.0 / dense) and p["t_at"] == p["t_below"]
        assert p["excess"] == pytest.approx(1.0 / dense)
    line = probe_steps(model, s, x, 1, timer=_smooth)
    assert line["multiple_of"] == 1 and all(abs(p["excess"]) < 1e-12 for p in line["probes"])
    # a step below the threshold does not count; a class too narrow to probe gives 1
    assert probe_steps(model, s, x, 1, timer=_stairs, threshold=0.2)["multiple_of"] == 1
    narrow = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3)).eval()
    none = probe_steps(narrow, prunekit.find_structures(narrow, x), x, 1, timer=_stairs)
    assert none["multiple_of"] == 1 and none["class"] is None and none["probes"] == []


def test_measure_auto_samples_multiples_and_select_keeps_them(wide, tmp_path):
    model, x, s = wide
    calls: list = []

    def timer(named, inputs):
        calls.append(len(named))
        return _stairs(named, inputs)
    lat = LatencyModel.measure(model, x, s, cache_dir=tmp_path, timer=timer, multiple_of="auto")
    assert lat.multiple_of == 8 and lat.measured["steps"]["multiple_of"] == 8 and lat.settings["multiple_of"] == "auto"
    for table in lat.tables.values():   # every sampled kept width is a multiple of 8
        assert all((table["size"] - k) % 8 == 0 for k in table["removed"][1:]), table
    plan = prunekit.select(s, torch.rand(len(s), generator=torch.Generator().manual_seed(0)),
                           prunekit.Budget(latency=0.3), latency=lat)
    assert plan.meta["selection"]["multiple_of"] == 8
    assert all(w in (n, 8, 16, 24, 32) for w, n in zip(_widths(s, plan.removed), (40, 24)))
    files = list(tmp_path.glob("*_xauto_*.json"))
    assert len(files) == 1 and len(calls) == 2   # the probe, then the tables
    again = LatencyModel.measure(model, x, s, cache_dir=tmp_path, timer=timer, multiple_of="auto")
    assert len(calls) == 2 and again.multiple_of == 8 and again.to_dict() == lat.to_dict()
    smooth = LatencyModel.measure(model, x, s, cache_dir=False, timer=_smooth, multiple_of="auto")
    assert smooth.multiple_of == 1 and all(t["removed"] == [0, 10, 20, 30] for t in smooth.tables.values()
                                           if t["size"] == 40)
    with pytest.raises(LatencyModelError, match="'auto'"):
        LatencyModel.measure(model, x, s, cache_dir=False, timer=_smooth, multiple_of="eight")


@pytest.mark.parametrize("swing, warned", [(0.0, False), (0.1, False), (0.4, True)])
def test_measure_records_how_far_the_dense_time_moved_and_warns_when_unsteady(mlp, monkeypatch, caplog, swing,
                                                                             warned):
    """The wall-clock path, with ``measure_latency`` replaced by a clock on which the dense model takes
    10 ms in rounds 1 and 3 and 10·(1 + swing) ms in round 2 (the others: 1 ms per kept parameter / 100)."""
    from prunekit.core import measure as measure_module

    model, x, s = mlp
    calls = {"dense": 0}
    dense_params = sum(p.numel() for p in model.parameters())

    def clock(m, inputs, batch_sizes=None, warmup=0, repeats=1, threads=None, device=None):
        if sum(p.numel() for p in m.parameters()) == dense_params:  # the dense model (a copy of it)
            calls["dense"] += 1
            ms = 10.0 * (1 + swing if calls["dense"] % 3 == 0 else 1.0)  # the 1st call sets the repeats
        else:
            ms = sum(p.numel() for p in m.parameters()) / 100.0
        b = batch_sizes[0]
        return {"batches": {b: {"min_ms": ms, "median_ms": ms}}}

    monkeypatch.setattr(measure_module, "measure_latency", clock)
    with caplog.at_level("WARNING", logger="prunekit.core.latency"):
        lat = LatencyModel.measure(model, x, s, rounds=3, cache_dir=False, timing="rounds")
    assert calls["dense"] == 4  # the repeats probe, then once per round
    moved = lat.measured["settings_used"]["dense_spread"]
    assert moved == pytest.approx(10.0 * swing / 10.0)  # (max − min) / the upper median (10 ms)
    assert ("not steady" in caplog.text) is warned
    assert lat.dense_ms == pytest.approx(10.0)  # the best round still counts


class _DriftingClock:
    """A fake clock for ``prunekit.core.measure`` (its ``time`` module and ``call_model``): a forward
    pass takes one ms per 100 parameters of the model times the machine's speed factor, which
    changes every second pass (``speeds``, cycled); the ``slow`` passes (by index) take ten times longer."""

    def __init__(self, speeds, slow=()):
        self.now, self.order, self.speeds, self.slow = 0.0, [], list(speeds), set(slow)

    def perf_counter(self):
        return self.now

    def call_model(self, model, inputs):
        n = len(self.order)
        factor = self.speeds[(n // 2) % len(self.speeds)] * (10.0 if n in self.slow else 1.0)
        params = sum(p.numel() for p in model.parameters())
        self.now += factor * params / 100.0 / 1e3
        self.order.append(params)

    def install(self, monkeypatch):
        from prunekit.core import measure as measure_module
        monkeypatch.setattr(measure_module, "time", self)
        monkeypatch.setattr(measure_module, "call_model", self.call_model)
        return measure_module


def test_time_paired_cancels_a_drifting_machine_and_ignores_an_interrupted_pair(monkeypatch):
    big, small = nn.Linear(30, 30), nn.Linear(30, 15)  # 930 and 465 parameters: ratio 0.5
    clock = _DriftingClock([1.0, 1.6, 0.7, 2.5], slow={7})
    measure_module = clock.install(monkeypatch)
    r = measure_module.time_paired(big, small, torch.randn(1, 30), batch_size=4, pairs=7, warmup=1)
    assert clock.order == [930, 465] + [930, 465, 465, 930] * 3 + [930, 465]  # AB, then AB BA AB ...
    # pass 7 (pair 3's 2nd pass, after warm-up) was interrupted: one ratio of 5, the median is still exact
    assert r["pairs"] == 7 and r["ratio"] == pytest.approx(0.5) and r["ratios"][-1] == pytest.approx(5.0)
    assert r["ratios"][:6] == [pytest.approx(0.5)] * 6 and r["ratio_iqr"] == pytest.approx(0.0, abs=1e-12)
    assert r["reference_ms"] == pytest.approx(9.30 * 1.6)  # the median pass of a model sees the machine's speed
    assert r["reference_min_ms"] == pytest.approx(9.30 * 0.7) and r["candidate_min_ms"] == pytest.approx(4.65 * 0.7)
    with pytest.raises(ValueError, match="pairs >= 1"):
        measure_module.time_paired(big, small, torch.randn(1, 30), pairs=0)


def test_check_measures_the_saving_pass_by_pass(mlp, monkeypatch):
    """On a machine whose speed changes between pairs of passes, the measured saving is exactly the
    fraction of parameters removed (the fake clock's cost), whatever the absolute times."""
    model, x, s = mlp
    lat = LatencyModel.from_tables(s, dense_ms=10.0, tables=_tables())
    clock = _DriftingClock([1.0, 3.0, 0.5])
    clock.install(monkeypatch)
    check = lat.check(model, s.groups[1].members[:4], x, s, rounds=1, repeats=3)
    dense_params = sum(p.numel() for p in model.parameters())
    pruned_params = dense_params - 4 * (10 + 1) - 4 * 10  # four neurons: their row + bias, and a column of the next
    assert check["measured_fraction"] == pytest.approx(1 - pruned_params / dense_params)
    assert check["ratio_iqr"] == pytest.approx(0.0, abs=1e-12)
    d, p = dense_params, pruned_params
    assert clock.order[-30:] == [d, p, p, d] * 7 + [d, p]  # max(15, rounds × repeats) = 15 pairs, alternating


def test_measure_times_the_tables_pass_by_pass_so_a_drifting_machine_scales_them(mlp, monkeypatch, caplog):
    """With ``timing="pairs"`` the tables measured on a machine whose speed changes between
    pairs of passes are the steady machine's scaled by the dense model's fastest pass (one factor for all),
    so every predicted fraction is the same; in rounds, the same drift distorts them."""
    model, x, s = mlp
    tables = {}
    for name, speeds, timing in (("steady", [1.0], "pairs"), ("drifting", [1.0, 3.0, 0.5], "pairs"),
                                 ("rounds", [1.0, 3.0, 0.5], "rounds")):
        clock = _DriftingClock(speeds)
        with monkeypatch.context() as patch:
            clock.install(patch)
            with caplog.at_level("WARNING", logger="prunekit.core.latency"):
                tables[name] = LatencyModel.measure(model, x, s, rounds=1, repeats=3, warmup=1, cache_dir=False,
                                                    timing=timing)
    steady, drifting = tables["steady"], tables["drifting"]
    assert drifting.settings["timing"] == "pairs" and drifting.measured["settings_used"]["pairs"] == 3
    assert drifting.dense_ms == pytest.approx(0.5 * steady.dense_ms)  # the fastest pass saw the fastest machine
    removals = [s.groups[0].members[:3], s.groups[1].members[:6], s.groups[2].members[:9] + s.groups[0].members[:1]]
    for removed in removals:
        assert drifting.saved_fraction(removed) == pytest.approx(steady.saved_fraction(removed))
    assert max(abs(tables["rounds"].saved_fraction(r) - steady.saved_fraction(r)) for r in removals) > 0.05
    with pytest.raises(LatencyModelError, match="timing must be"):
        LatencyModel.measure(model, x, s, cache_dir=False, timing="best")


@pytest.mark.parametrize("timing", ["rounds", "pairs"])
def test_a_model_with_nothing_to_thin_gets_the_dense_time_alone(timing, monkeypatch):
    """No group to thin (one output layer): the tables are empty and the dense time is timed alone,
    in either timing (exact on the fake clock: 36 parameters cost 0.36 ms)."""
    model, x = nn.Sequential(nn.Linear(8, 4)), torch.randn(1, 8)
    s = prunekit.find_structures(model, x)
    assert not s.groups
    clock = _DriftingClock([1.0])
    clock.install(monkeypatch)
    lat = LatencyModel.measure(model, x, s, rounds=2, repeats=3, warmup=1, cache_dir=False, timing=timing)
    assert lat.dense_ms == pytest.approx(0.36) and lat.saved_fraction([]) == 0.0
    assert set(clock.order) == {36}
    assert lat.measured["settings_used"]["dense_spread"] == pytest.approx(0.0, abs=1e-12)
    if timing == "pairs":
        assert lat.measured["settings_used"]["pairs"] == 0
