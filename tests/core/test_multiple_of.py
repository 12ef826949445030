"""``select(..., multiple_of=k)``: every group keeps all its members or a multiple of ``k`` (issue 14).

Checked on a hand-made MLP (every plan worked out by hand), on ResNet-20 (full width and at
width 0.8, whose 13/26/51-wide layers are not multiples of 4 or 8) and on a PyTorch
``TransformerEncoder`` of the conformance zoo, under MAC, parameter, structure and latency
budgets: the kept counts, the budget, the shortest chunk prefix, the materialized widths, and
``multiple_of=1`` against the selection as it was.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import prunekit
from prunekit.core.latency import LatencyModel
from prunekit.core.plan import (PruningPlan, _admissible_order, _admit_chunk, _chunk_order, _latency_order,
                                collapse_guard, group_normalize)
from tests.conformance.zoo import ZOO

BUDGETS = [prunekit.Budget(macs=0.3), prunekit.Budget(params=0.5), prunekit.Budget(structures=0.2, macs=0.4)]


def _kept(structures, removed) -> list[int]:
    gone = set(removed)
    return [len(g.members) - len(gone & set(g.members)) for g in structures.groups]


def _assert_multiples(structures, removed, k):
    for group, kept in zip(structures.groups, _kept(structures, removed)):
        n = len(group.members)
        assert kept == n or (kept % k == 0 and kept >= k), (group.root, n, kept, k)
        if n <= k:
            assert kept == n, (group.root, n, kept)   # too narrow to thin: stays whole


def _met(plan_or_removed, structures, budget, latency=None) -> bool:
    removed = getattr(plan_or_removed, "removed", plan_or_removed)
    achieved = dict(PruningPlan.from_removed(structures, removed).achieved)
    if latency is not None:
        achieved["latency"] = latency.saved_fraction(removed)
    return all(achieved[key] >= target - 1e-12 for key, target in budget.targets().items())


@pytest.fixture(scope="module")
def models():
    """name -> (model, example input, structures, l1 scores)."""
    out = {}
    for name, kwargs in (("resnet20", {}), ("resnet20-w0.8", {"width": 0.8})):
        torch.manual_seed(0)
        model = prunekit.models.create("resnet20", **kwargs).eval()
        x = torch.randn(1, 3, 32, 32)
        s = prunekit.find_structures(model, x)
        out[name] = (model, x, s, prunekit.saliency(model, s, None, method="l1"))
    case = ZOO["torch_encoder"]()
    s = prunekit.find_structures(case.model, case.inputs)
    out["encoder"] = (case.model, case.inputs, s, prunekit.saliency(case.model, s, None, method="l1"))
    assert [len(g.members) for g in out["resnet20-w0.8"][2].groups][::4] == [13, 26, 51]
    assert {len(g.members) for g in s.groups} == {8, 12, 32, 64}
    return out


@pytest.fixture(scope="module")
def mlp():
    """Two groups: 10 neurons (ids 0–9) and 7 neurons (ids 10–16)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 10), nn.ReLU(), nn.Linear(10, 7), nn.ReLU(), nn.Linear(7, 2))
    s = prunekit.find_structures(model, torch.randn(1, 3))
    assert [g.members for g in s.groups] == [list(range(10)), list(range(10, 17))]
    return s


# group A: chunks {0,1} (sum 0.3), {2..5} (1.5), {6..9} (never: 4 must stay)
# group B: chunks {10,11,12} (1.2), {13..16} (never)   -> order A0, B0, A1
MLP_SCORES = torch.tensor([0.1, 0.2, 0.3, 0.35, 0.4, 0.45, 0.8, 0.9, 1.0, 1.1,
                           0.35, 0.4, 0.45, 2.0, 2.1, 2.2, 2.3], dtype=torch.float64)
RAW = {"group_norm": None, "max_group_ratio": None}


@pytest.mark.parametrize("fraction, removed", [
    (0.1, [0, 1]),                                  # 2 of 17 needed: A's first chunk (10 → 8)
    (0.2, [0, 1, 10, 11, 12]),                      # 4 needed: + B's 3 lowest (7 → 4)
    (0.5, [0, 1, 2, 3, 4, 5, 10, 11, 12]),          # 9 needed: + A's next 4 (8 → 4)
])
def test_chunks_by_hand(mlp, fraction, removed):
    plan = prunekit.select(mlp, MLP_SCORES, prunekit.Budget(structures=fraction), multiple_of=4, **RAW)
    assert plan.removed == removed
    assert plan.meta["selection"]["multiple_of"] == 4
    # k = 1: the 2, 4, 9 lowest scores (at 0.2: widths 6 and 7)
    plain = prunekit.select(mlp, MLP_SCORES, prunekit.Budget(structures=fraction), **RAW)
    assert plain.removed == {0.1: [0, 1], 0.2: [0, 1, 2, 3], 0.5: [0, 1, 2, 3, 4, 5, 10, 11, 12]}[fraction]


def test_chunks_rank_by_the_sum_of_their_scores(mlp):
    # B's 3-chunk (sum 1.2, mean 0.4) goes before A's 4-chunk (sum 1.5, mean 0.375): by sum, not by mean
    order = _chunk_order(mlp, MLP_SCORES, 4, None, 1)
    assert order == [[0, 1], [10, 11, 12], [2, 3, 4, 5]]


def test_chunks_respect_the_caps_and_name_multiple_of_when_unmet(mlp):
    # 9 of 17 is all that keeping multiples of 4 allows
    with pytest.raises(prunekit.BudgetError, match=r"multiple_of=4 \(each group keeps all its members or a "
                       r"multiple of 4, at least 4\).*multiple_of=1"):
        prunekit.select(mlp, MLP_SCORES, prunekit.Budget(structures=0.55), multiple_of=4, **RAW)
    # max_group_ratio=0.5: A may lose 5, so 2 (10 → 8) but not 6; B may lose 3
    assert _chunk_order(mlp, MLP_SCORES, 4, 0.5, 1) == [[0, 1], [10, 11, 12]]
    # min_group_width=5: A keeps >= 5, so 8 (rounded up to a multiple); B keeps 7
    assert _chunk_order(mlp, MLP_SCORES, 4, None, 5) == [[0, 1]]
    plan = prunekit.select(mlp, MLP_SCORES, prunekit.Budget(structures=0.1), multiple_of=4, group_norm=None,
                           min_group_width=5)
    assert _kept(mlp, plan.removed) == [8, 7]
    with pytest.raises(prunekit.BudgetError, match="min_group_width=5.*multiple_of=4"):
        prunekit.select(mlp, MLP_SCORES, prunekit.Budget(structures=0.15), multiple_of=4, group_norm=None,
                        min_group_width=5, max_group_ratio=None)
    # a group no wider than k stays whole
    assert _chunk_order(mlp, MLP_SCORES, 7, None, 1) == [[0, 1, 2]]
    assert _chunk_order(mlp, MLP_SCORES, 10, None, 1) == []


def test_a_refused_chunk_is_rolled_back(mlp):
    checker = mlp.collapse_checker()
    assert not _admit_chunk(checker, list(range(10)))     # the 10th would empty layer 0: none goes
    assert all(checker.admit(i) for i in range(9))         # so 9 still can, one at a time
    assert not checker.admit(9)


def test_a_group_whose_first_chunk_is_refused_stays_whole(models):
    """Encoder group 2: 4 heads + 8 value dims of one attention. Removing the 4 heads would empty q and k."""
    _, _, s, _ = models["encoder"]
    group = s.groups[2]
    heads = [i for i in group.members if s[i].kind == "head"]
    assert len(group.members) == 12 and len(heads) == 4
    keys = torch.ones(len(s), dtype=torch.float64)
    keys[heads] = 0.01                    # the heads are the group's lowest: its first chunk
    in_group = lambda order: [c for c in order if s[c[0]].group == group.id]  # noqa: E731
    # k = 8: the first chunk is the 12 mod 8 = 4 heads, refused; without it no 8-chunk may go
    assert in_group(_chunk_order(s, keys, 8, None, 1)) == []
    # k = 4: the heads are a 4-chunk like the others: skipped; one 4-chunk of value dims goes, the
    # second would empty the v projection (q, k and v of the packed in_proj are three layers)
    assert [set(c) & set(heads) for c in in_group(_chunk_order(s, keys, 4, None, 1))] == [set()]


def test_a_refused_first_chunk_keeps_the_whole_group(mlp, monkeypatch):
    """k = 3: A's chunks {0}, {1,2,3}, {4,5,6}; were {0} refused, {1,2,3} alone would leave 7 (not a multiple)."""
    import prunekit.core.plan as plan_module
    admit = plan_module._admit_chunk
    monkeypatch.setattr(plan_module, "_admit_chunk", lambda checker, chunk: chunk != [0] and admit(checker, chunk))
    assert _chunk_order(mlp, MLP_SCORES, 3, None, 1) == [[10], [11, 12, 13]]   # B: 7 -> 6 -> 3; A stays 10
    monkeypatch.setattr(plan_module, "_admit_chunk", admit)
    assert _chunk_order(mlp, MLP_SCORES, 3, None, 1)[:2] == [[0], [10]]


def test_latency_chunks_are_ranked_on_the_ms_the_whole_chunk_saves(mlp):
    # A saves 0.1 ms for its 1st member but 3 ms for its 2 lowest; B saves 1.5 ms for its 3 lowest
    lat = LatencyModel.from_tables(mlp, dense_ms=10.0, tables={0: ([0, 1, 2, 6], [0.0, 0.1, 3.0, 4.0]),
                                                               1: ([0, 3, 7], [0.0, 1.5, 2.0])})
    # Σ score / Δms: A0 0.3/3.0 = 0.1 < B0 1.2/1.5 = 0.8 < A1 1.5/1.0 (one member at a time, B0 would lead)
    assert _chunk_order(mlp, MLP_SCORES, 4, None, 1, lat) == [[0, 1], [10, 11, 12], [2, 3, 4, 5]]
    plan = prunekit.select(mlp, MLP_SCORES, prunekit.Budget(latency=0.3), latency=lat, multiple_of=4, **RAW)
    assert plan.removed == [0, 1] and plan.achieved["latency"] == pytest.approx(0.3)
    plan = prunekit.select(mlp, MLP_SCORES, prunekit.Budget(latency=0.31), latency=lat, multiple_of=4, **RAW)
    assert plan.removed == [0, 1, 10, 11, 12] and plan.achieved["latency"] == pytest.approx(0.45)


@pytest.mark.parametrize("name", ["resnet20", "resnet20-w0.8", "encoder"])
@pytest.mark.parametrize("k", [4, 8])
def test_every_group_keeps_a_multiple_and_the_plan_is_the_shortest_chunk_prefix(models, name, k):
    _, _, s, scores = models[name]
    keys = group_normalize(s, scores, "mean")
    chunks = _chunk_order(s, keys, k, 0.8, 1)
    for chunk in chunks:  # one group each: k members, or the n mod k lowest of their group, taken first
        group = s.groups[s[chunk[0]].group]
        assert {s[i].group for i in chunk} == {group.id}
        assert len(chunk) == k or (len(chunk) == len(group.members) % k and chunk == [
            c for c in chunks if s[c[0]].group == group.id][0])
    met_any = False
    for budget in BUDGETS:
        try:
            plan = prunekit.select(s, scores, budget, multiple_of=k)
        except prunekit.BudgetError:
            assert not _met([i for c in chunks for i in c], s, budget)   # truly out of reach
            continue
        met_any = True
        assert _met(plan, s, budget)
        _assert_multiples(s, plan.removed, k)
        assert plan.meta["selection"]["multiple_of"] == k
        # the plan is the first c chunks, and c - 1 chunks miss the budget
        sizes = [0]
        for chunk in chunks:
            sizes.append(sizes[-1] + len(chunk))
        c = sizes.index(len(plan.removed))
        assert plan.removed == sorted(i for chunk in chunks[:c] for i in chunk)
        assert c > 0 and not _met([i for chunk in chunks[:c - 1] for i in chunk], s, budget)
    assert met_any


def test_odd_widths_are_rounded_down(models):
    """ResNet-20 at width 0.8: the 13/26/51-wide groups a plan touches end at 8/24/48 (k=8), never at 13-1."""
    _, _, s, scores = models["resnet20-w0.8"]
    plain = prunekit.select(s, scores, prunekit.Budget(macs=0.3))
    assert any(kept % 8 for kept in _kept(s, plain.removed))   # not vacuous: the global ranking leaves odd widths
    plan = prunekit.select(s, scores, prunekit.Budget(macs=0.3), multiple_of=8)
    assert set(_kept(s, plan.removed)) <= {8, 16, 24, 32, 40, 48, 13, 26, 51}
    assert plan.achieved["macs"] >= 0.3


@pytest.mark.parametrize("k", [4, 8])
def test_materialized_widths_are_multiples_and_the_model_runs(models, k):
    model, x, s, scores = models["resnet20"]
    plan = prunekit.select(s, scores, prunekit.Budget(macs=0.5), multiple_of=k)
    small = prunekit.materialize(model, plan, s).eval()
    widths = [m.out_channels for m in small.modules() if isinstance(m, nn.Conv2d)]
    dense = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(widths) == len(dense) == 21 and all(w % k == 0 for w in widths), widths
    assert sum(widths) < sum(dense)
    with torch.no_grad():
        assert small(x).shape == (1, 10) and torch.isfinite(small(x)).all()
    encoder, inputs, s, scores = models["encoder"]
    plan = prunekit.select(s, scores, prunekit.Budget(macs=0.4), multiple_of=k)
    small = prunekit.materialize(encoder, plan, s).eval()
    linears = {n: m.out_features for n, m in small.named_modules() if n.endswith("linear1")}
    assert len(linears) == 2 and all(w % k == 0 for w in linears.values()), linears
    assert small.embed.embedding_dim % k == 0 and small.embed.embedding_dim < 32
    with torch.no_grad():
        assert ZOO["torch_encoder"]().run(small).shape == (2, 3)


def _latency(structures) -> LatencyModel:
    """Each group saves ms in proportion to its MACs, less per member once half is gone."""
    tables = {}
    for g in structures.groups:
        n, ms = len(g.members), sum(structures[i].macs for i in g.members) / 1e6
        tables[g.id] = ([0, n // 2, n], [0.0, 0.7 * ms, ms])
    return LatencyModel.from_tables(structures, dense_ms=sum(t[1][-1] for t in tables.values()) * 1.2,
                                    tables=tables)


@pytest.mark.parametrize("k", [4, 8])
def test_latency_budget_keeps_multiples(models, k):
    _, _, s, scores = models["resnet20-w0.8"]
    lat = _latency(s)
    keys = group_normalize(s, scores, "mean")
    chunks = _chunk_order(s, keys, k, 0.8, 1, lat)
    plans = prunekit.select_family(s, scores, [prunekit.Budget(latency=f) for f in (0.2, 0.4)], latency=lat,
                                   multiple_of=k)
    for plan, f in zip(plans, (0.2, 0.4)):
        assert plan.achieved["latency"] >= f - 1e-12 and plan.meta["selection"]["multiple_of"] == k
        _assert_multiples(s, plan.removed, k)
        c = next(c for c in range(len(chunks) + 1) if sum(map(len, chunks[:c])) == len(plan.removed))
        assert plan.removed == sorted(i for chunk in chunks[:c] for i in chunk)
        assert lat.saved_fraction([i for chunk in chunks[:c - 1] for i in chunk]) < f   # the last chunk was needed
    assert set(plans[0].removed) < set(plans[1].removed)
    # chunks are ranked by Σ score / Δms of the whole chunk: check the first one against every group's first
    def ratio(chunk, gone=0):
        g = s[chunk[0]].group
        return float(keys[chunk].sum()) / (lat.saved(g, gone + len(chunk)) - lat.saved(g, gone))
    firsts = [next(c for c in chunks if s[c[0]].group == g.id) for g in s.groups
              if any(s[c[0]].group == g.id for c in chunks)]
    assert ratio(chunks[0]) == pytest.approx(min(ratio(c) for c in firsts))


@pytest.mark.parametrize("name", ["resnet20", "encoder"])
def test_multiple_of_1_is_the_selection_as_before(models, name):
    _, _, s, scores = models[name]
    for options in ({}, RAW, {"normalize": "macs"}, {"min_group_width": 3, "max_group_ratio": 0.5}):
        keys = group_normalize(s, scores, options.get("group_norm", "mean"))
        if "normalize" in options:
            keys = keys / torch.tensor([max(st.macs, 1) for st in s], dtype=torch.float64)
        ratio, width = options.get("max_group_ratio", 0.8), options.get("min_group_width", 1)
        order = _admissible_order(s, keys, ratio, width)
        # the chunk machinery with k = 1 is the old order, structure by structure
        assert [c[0] for c in _chunk_order(s, keys, 1, ratio, width)] == order
        if ratio is None and width == 1:
            assert order == collapse_guard(s, sorted(range(len(s)), key=lambda i: (float(keys[i]), i)))
        for budget in BUDGETS[:2]:
            plan = prunekit.select(s, scores, budget, multiple_of=1, **options)
            n = len(plan.removed)
            assert plan.removed == sorted(order[:n]) and not _met(order[:n - 1], s, budget)
            assert plan.removed == prunekit.select(s, scores, budget, **options).removed
    lat = _latency(s)
    keys = group_normalize(s, scores, "mean")
    assert [c[0] for c in _chunk_order(s, keys, 1, 0.8, 1, lat)] == _latency_order(s, keys, lat, 0.8, 1)


@pytest.mark.parametrize("bad", [0, -8, 2.0, True, "8"])
def test_bad_multiple_of_is_refused(mlp, bad):
    with pytest.raises(ValueError, match=r"multiple_of must be an int >= 1"):
        prunekit.select(mlp, MLP_SCORES, prunekit.Budget(macs=0.1), multiple_of=bad)


def test_multiple_of_none_means_one_without_a_latency_model(mlp):
    plan = prunekit.select(mlp, MLP_SCORES, prunekit.Budget(macs=0.1), multiple_of=None)
    assert plan.meta["selection"]["multiple_of"] == 1
    assert plan.removed == prunekit.select(mlp, MLP_SCORES, prunekit.Budget(macs=0.1), multiple_of=1).removed


def test_multiple_of_is_recorded_and_survives_json(mlp):
    plan = prunekit.select(mlp, MLP_SCORES, prunekit.Budget(structures=0.2), multiple_of=4, **RAW)
    again = PruningPlan.from_json(plan.to_json())
    assert again.meta["selection"]["multiple_of"] == 4 and again.removed == plan.removed
