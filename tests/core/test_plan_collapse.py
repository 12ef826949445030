"""Selection that cannot collapse a layer: group normalisation, max_group_ratio, min_group_width.

The last test trains the small digits CNN of ``benchmarks/bench_collapse.py`` on
scikit-learn's real handwritten digits (a few seconds) and checks that, with the
defaults of :func:`prunekit.select`, no criterion leaves a layer at one channel under a
90 % MAC budget (the paper setting does, issue 13).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

import prunekit
from prunekit.core.plan import PruningPlan, _admissible_order, collapse_guard, group_normalize


@pytest.fixture(scope="module")
def mlp():
    """Two prunable groups: 4 neurons of layer 0, 10 neurons of layer 2 (14 structures, 72 MACs)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 2))
    structures = prunekit.find_structures(model, torch.randn(1, 3))
    assert [g.members for g in structures.groups] == [[0, 1, 2, 3], list(range(4, 14))]
    return structures


# Layer 0: small scale; layer 2: large scale (what an unnormalised criterion produces across layers)
SCORES = torch.tensor([1e-3, 2e-3, 3e-3, 6e-3, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], dtype=torch.float64)


def _widths(structures, removed):
    gone = set(removed)
    return [len(g.members) - len(gone & set(g.members)) for g in structures.groups]


def test_group_normalize_math(mlp):
    a, b = SCORES[:4], SCORES[4:]
    expect = {
        None: SCORES,
        "mean": torch.cat([a / a.mean(), b / b.mean()]),
        "max": torch.cat([a / 6e-3, b / 10.0]),
        "sum": torch.cat([a / 12e-3, b / 55.0]),
        "gaussian": torch.cat([(a - 3e-3) / math.sqrt(3.5e-6), (b - 5.5) / math.sqrt(8.25)]),
    }
    for mode, want in expect.items():
        got = group_normalize(mlp, SCORES, mode)
        assert got.dtype == torch.float64
        assert torch.allclose(got, want, rtol=1e-12, atol=0), mode
    # the input is not modified; the documented example
    assert SCORES[0] == 1e-3
    assert group_normalize(mlp, SCORES, "mean")[:4].tolist() == pytest.approx([1 / 3, 2 / 3, 1.0, 2.0], rel=1e-12)


def test_group_normalize_edge_cases(mlp):
    # signed (user) scores keep their sign: denominators use |s|
    signed = torch.tensor([-1.0, 1.0, -2.0, 2.0] + [1.0] * 10, dtype=torch.float64)
    assert group_normalize(mlp, signed, "mean")[:4].tolist() == [-2 / 3, 2 / 3, -4 / 3, 4 / 3]
    assert group_normalize(mlp, signed, "max")[:4].tolist() == [-0.5, 0.5, -1.0, 1.0]
    # a group of zeros stays zero; a constant group is 0 under "gaussian" (std 0), 1 under "mean"/"max"
    zeros = torch.zeros(14, dtype=torch.float64)
    for mode in ("mean", "max", "sum", "gaussian"):
        assert torch.equal(group_normalize(mlp, zeros, mode), zeros)
    constant = torch.full((14,), 5.0, dtype=torch.float64)
    assert torch.equal(group_normalize(mlp, constant, "gaussian"), zeros)
    assert torch.equal(group_normalize(mlp, constant, "mean"), torch.ones(14, dtype=torch.float64))
    with pytest.raises(ValueError, match="group_norm must be one of"):
        group_normalize(mlp, SCORES, "median")


def test_paper_setting_is_the_raw_global_ranking(mlp):
    """group_norm=None, max_group_ratio=None: the shortest prefix of the raw ranking, collapse guard only."""
    budget = prunekit.Budget(structures=0.25)  # 4 of 14 structures
    paper = prunekit.select(mlp, SCORES, budget, group_norm=None, max_group_ratio=None)
    order = collapse_guard(mlp, sorted(range(14), key=lambda i: (float(SCORES[i]), i)))
    assert paper.removed == sorted(order[:4]) == [0, 1, 2, 4]   # layer 0 cut to one neuron
    assert _widths(mlp, paper.removed) == [1, 9]
    assert paper.meta["selection"] == {"group_norm": None, "max_group_ratio": None, "min_group_width": 1,
                                       "normalize": None, "multiple_of": 1}
    # with the scores on one scale per layer, both layers lose their least important members
    mean = prunekit.select(mlp, SCORES, budget, group_norm="mean", max_group_ratio=None)
    keys = group_normalize(mlp, SCORES, "mean")
    assert mean.removed == sorted(sorted(range(14), key=lambda i: float(keys[i]))[:4]) == [0, 4, 5, 6]
    assert _widths(mlp, mean.removed) == [3, 7]


def test_max_group_ratio_meets_budgets_exactly(mlp):
    keys = SCORES  # raw: layer 0 would go first
    for key, target in (("structures", 0.3), ("params", 0.4), ("macs", 0.45)):
        plan = prunekit.select(mlp, keys, prunekit.Budget(**{key: target}), group_norm=None, max_group_ratio=0.5)
        assert plan.achieved[key] >= target
        widths = _widths(mlp, plan.removed)
        assert widths[0] >= 2 and widths[1] >= 5      # ⌊0.5·4⌋ = 2 and ⌊0.5·10⌋ = 5 removed at most
        order = _admissible_order(mlp, keys, 0.5)
        assert sorted(order[:len(plan.removed)]) == plan.removed
        shorter = PruningPlan.from_removed(mlp, order[:len(plan.removed) - 1])
        assert shorter.achieved[key] < target       # one fewer misses: the prefix is the shortest
    # the caps: ⌊r·n⌋ per group, and n - min_group_width
    assert len(_admissible_order(mlp, keys, 0.5)) == 2 + 5
    assert len(_admissible_order(mlp, keys, 0.8)) == 3 + 8
    assert len(_admissible_order(mlp, keys, 0.74)) == 2 + 7
    assert len(_admissible_order(mlp, keys, None, 3)) == 1 + 7
    assert len(_admissible_order(mlp, keys)) == 3 + 9    # the collapse guard alone
    # exactly every allowed structure: 7 of 14 is still feasible
    plan = prunekit.select(mlp, keys, prunekit.Budget(structures=0.5), max_group_ratio=0.5)
    assert len(plan.removed) == 7 and _widths(mlp, plan.removed) == [2, 5]
    plan = prunekit.select(mlp, keys, prunekit.Budget(structures=0.3), group_norm=None, min_group_width=3,
                           max_group_ratio=None)
    assert _widths(mlp, plan.removed) == [3, 6] and plan.meta["selection"]["min_group_width"] == 3


def test_infeasible_budget_names_the_limit(mlp):
    with pytest.raises(prunekit.BudgetError, match=r"max_group_ratio=0\.5 \(at most 50% of each group"):
        prunekit.select(mlp, SCORES, prunekit.Budget(structures=0.55), max_group_ratio=0.5)
    with pytest.raises(prunekit.BudgetError, match="min_group_width=4"):
        prunekit.select(mlp, SCORES, prunekit.Budget(structures=0.6), max_group_ratio=None, min_group_width=4)
    # the limit that binds is the collapse guard itself: the old message
    with pytest.raises(prunekit.BudgetError, match=r"without emptying a layer: removing every admissible structure "
                       r"reaches \{'structures': 0\.8571.*\(with max_group_ratio=0\.5 .*'structures': 0\.5,"):
        prunekit.select(mlp, SCORES, prunekit.Budget(structures=0.9), max_group_ratio=0.5)
    for bad in ({"max_group_ratio": 0.0}, {"max_group_ratio": 1.5}, {"min_group_width": 0},
                {"group_norm": "lamp"}, {"group_norm": "gaussian", "normalize": "macs"}):
        with pytest.raises(ValueError):
            prunekit.select(mlp, SCORES, prunekit.Budget(structures=0.1), **bad)


def test_max_removed_holds_named_groups_and_the_budget_is_met_from_the_others(mlp):
    keys = SCORES  # raw: layer 0 goes first
    free = prunekit.select(mlp, keys, prunekit.Budget(structures=0.5), group_norm=None, max_group_ratio=None)
    assert _widths(mlp, free.removed) == [1, 6]
    held = prunekit.select(mlp, keys, prunekit.Budget(structures=0.5), group_norm=None, max_group_ratio=None,
                           max_removed={0: 1})
    assert _widths(mlp, held.removed) == [3, 4] and len(held.removed) == 7  # the rest from group 1
    assert held.meta["selection"]["max_removed"] == {"0": 1}
    assert prunekit.PruningPlan.from_json(held.to_json()).meta["selection"] == held.meta["selection"]
    whole = prunekit.select(mlp, keys, prunekit.Budget(structures=0.3), group_norm=None, max_removed={0: 0})
    assert _widths(mlp, whole.removed)[0] == 4
    # on top of the other limits, whatever the order (latency chunks use the same caps)
    chunks = prunekit.select(mlp, keys, prunekit.Budget(structures=0.5), group_norm=None, multiple_of=2)
    assert _widths(mlp, chunks.removed) == [2, 4]
    assert _widths(mlp, prunekit.select(mlp, keys, prunekit.Budget(structures=0.4), group_norm=None, multiple_of=2,
                                        max_removed={1: 5}).removed) == [2, 6]  # 5 allowed, a multiple of 2 kept
    with pytest.raises(prunekit.BudgetError, match="max_removed"):
        prunekit.select(mlp, keys, prunekit.Budget(structures=0.5), group_norm=None, multiple_of=2,
                        max_removed={1: 5})
    # a hold on the plan's own widths keeps the plan a prefix: larger budgets contain it
    small = prunekit.select(mlp, keys, prunekit.Budget(structures=0.2), group_norm=None)
    cap = {0: len(set(small.removed) & {0, 1, 2, 3})}
    for target in (0.2, 0.3, 0.5):
        bigger = prunekit.select(mlp, keys, prunekit.Budget(structures=target), group_norm=None, max_removed=cap)
        assert set(small.removed) <= set(bigger.removed)
    with pytest.raises(prunekit.BudgetError, match=r"max_removed on 2 group\(s\).*raise max_removed"):
        prunekit.select(mlp, keys, prunekit.Budget(structures=0.3), max_removed={0: 0, 1: 2})
    for bad in ({7: 1}, {0: -1}, {0: 1.5}, {0: True}):
        with pytest.raises(ValueError, match="max_removed"):
            prunekit.select(mlp, keys, prunekit.Budget(structures=0.1), max_removed=bad)


def test_cost_normalisation_after_group_normalisation(mlp):
    """normalize='macs' divides the group-normalised score by the structure's MACs."""
    plan = prunekit.select(mlp, SCORES, prunekit.Budget(structures=0.25), normalize="macs", group_norm="mean",
                           max_group_ratio=None)
    keys = group_normalize(mlp, SCORES, "mean") / torch.tensor([float(s.macs) for s in mlp], dtype=torch.float64)
    assert plan.removed == sorted(sorted(range(14), key=lambda i: (float(keys[i]), i))[:4])


# ------------------------------------------------------------------ real data: the digits CNN


def _digits_cnn(widths=(16, 32, 32)):
    layers, c_in = [], 1
    for c in widths:
        layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10))


@pytest.fixture(scope="module")
def digits_cnn():
    pytest.importorskip("sklearn")
    import prunekit.pipeline.train as T
    (X, y), (Xt, yt) = prunekit.data.load_digits(test_fraction=0.25, seed=0)
    X, Xt = torch.from_numpy(X).unsqueeze(1) / 16, torch.from_numpy(Xt).unsqueeze(1) / 16
    y, yt = torch.from_numpy(y), torch.from_numpy(yt)
    torch.manual_seed(0)
    model = _digits_cnn()
    T.fit(model, (X, y), epochs=8, optimizer="adam", lr=3e-3, batch_size=64, seed=0, progress=False)
    accuracy = T.evaluate(model, (Xt, yt))["accuracy"]
    assert accuracy >= 0.97, accuracy
    return model.eval(), X, y


def test_no_criterion_collapses_a_layer_on_real_digits(digits_cnn):
    model, X, y = digits_cnn
    structures = prunekit.find_structures(model, X[:1])
    assert [len(g.members) for g in structures.groups] == [16, 32, 32]
    batches = [(X[i:i + 64], y[i:i + 64]) for i in range(0, 128, 64)]
    collapsed_as_in_paper = []
    for method in ("random", "l1", "taylor", "obd", "sosp-h", "sosp-i"):
        scores = prunekit.saliency(model, structures, None if method in ("random", "l1") else batches, method)
        plan = prunekit.select(structures, scores, prunekit.Budget(macs=0.9), method=method)
        assert plan.achieved["macs"] >= 0.9
        widths = _widths(structures, plan.removed)
        assert min(widths) >= 2, (method, widths)
        paper = prunekit.select(structures, scores, prunekit.Budget(macs=0.9), group_norm=None,
                                max_group_ratio=None)
        if min(_widths(structures, paper.removed)) == 1:
            collapsed_as_in_paper.append(method)
    # the test is not vacuous: ranking the raw scores does cut a layer to one channel
    assert collapsed_as_in_paper, "no criterion collapsed a layer under the paper setting"


def test_packed_qkv_projection_is_three_layers_for_the_guard():
    """``nn.MultiheadAttention`` packs q, k and v rows in one ``in_proj_weight``: removing every value
    head dim must count as emptying the v projection, not as thinning one 96-row layer."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, batch_first=True)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha, self.fc = mha, nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(self.mha(x, x, x, need_weights=False)[0].mean(1))

    model, x = Net().eval(), torch.randn(2, 5, 16)
    s = prunekit.find_structures(model, x)
    head_group = next(g for g in s.groups if any(s[i].kind == "head" for i in g.members))
    v_dims = [i for i in head_group.members if s[i].kind != "head"]
    assert len(v_dims) == 8  # head_dim 8, each removes one row of v per head
    scores = torch.ones(len(s), dtype=torch.float64)
    scores[v_dims] = 0.0  # the value dims first
    plan = prunekit.select(s, scores, prunekit.Budget(structures=len(v_dims) / len(s)), group_norm=None,
                           max_group_ratio=None)
    assert len(set(plan.removed) & set(v_dims)) == 7  # the guard keeps one value dim: v is not emptied
    pruned = prunekit.materialize(model, plan, s)
    assert pruned.mha.v_proj.weight.shape[0] == 2  # 1 dim × 2 heads


def test_kept_widths_count_each_groups_surviving_members(mlp):
    s = mlp
    a, b = s.groups[0].id, s.groups[1].id
    assert PruningPlan.from_removed(s, [0, 1, 2, 12, 13]).kept_widths(s) == {a: 1, b: 8}
    assert PruningPlan.from_removed(s, []).kept_widths(s) == {a: 4, b: 10}
