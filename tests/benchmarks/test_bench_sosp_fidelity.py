"""The saliency-fidelity benchmark's measurements against independent routes: removal by materializing."""
import math

import pytest
import torch
import torch.nn.functional as F

import prunekit
from benchmarks.bench_sosp_fidelity import confidence, method_row, single_removals, spearman, _run
from prunekit.criteria.scaling import StructureScaling


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    model = prunekit.models.create("mlp", input_shape=(1, 8, 8), num_classes=10, width=0.25).eval()
    x, y = torch.randn(48, 1, 8, 8), torch.randint(0, 10, (48,))
    structures = prunekit.find_structures(model, x[:1])
    return model, structures, [(x[:32], y[:32]), (x[32:], y[32:])], (x, y)


def _loss_materialized(model, structures, removed, x, y):
    plan = prunekit.PruningPlan.from_removed(structures, removed)
    pruned = prunekit.materialize(model, plan, structures).eval()
    with torch.no_grad():
        return float(F.cross_entropy(pruned(x), y))


def test_single_removals_equal_the_loss_of_the_materialized_network(case):
    model, structures, batches, (x, y) = case
    scaling = StructureScaling(model, structures)
    with torch.no_grad():
        base = float(F.cross_entropy(model(x), y))
    delta = single_removals(model, scaling, batches, base)
    assert len(delta) == len(structures) and float(delta.abs().max()) > 1e-4
    for s in (0, len(structures) // 2, len(structures) - 1):
        assert math.isclose(float(delta[s]), _loss_materialized(model, structures, [s], x, y) - base, abs_tol=1e-5)


def test_plan_loss_and_one_shot_accuracy_are_those_of_the_materialized_network(case):
    model, structures, batches, (x, y) = case
    scaling = StructureScaling(model, structures)
    scores = torch.rand(len(structures), generator=torch.Generator().manual_seed(1)).double()
    row = method_row(model, structures, scaling, scores, scores, -scores, {"prune": batches, "test": (x, y)}, [0.5])
    assert row["rho_delta_loss"] == pytest.approx(1.0) and row["rho_magnitude"] == pytest.approx(-1.0)
    plan = prunekit.select(structures, scores, prunekit.Budget(macs=0.5))
    assert row["budgets"]["0.5"]["prune_loss"] == pytest.approx(
        _loss_materialized(model, structures, plan.removed, x, y), abs=1e-5)
    pruned = prunekit.materialize(model, plan, structures).eval()
    with torch.no_grad():
        assert row["budgets"]["0.5"]["acc_oneshot"] == float((pruned(x).argmax(-1) == y).double().mean())
    with torch.no_grad():
        dense_loss = float(F.cross_entropy(model(x), y))
    assert _run(model, scaling, scaling.ones(), batches)[0] == pytest.approx(dense_loss)


def test_spearman_and_confidence_by_hand():
    assert spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([10.0, 40.0, 20.0, 30.0])) == pytest.approx(0.4)
    # logits: one sample certain of class 0 (p_max → 1, tr Λ → 0), one uniform over 2 classes
    model = torch.nn.Identity()
    logits = torch.tensor([[50.0, 0.0], [0.0, 0.0]])
    c = confidence(model, [(logits, torch.tensor([0, 1]))])
    assert c["p_max"] == pytest.approx(0.75) and c["share_p_max_0999"] == 0.5
    assert c["trace_lambda"] == pytest.approx(0.25) and c["loss"] == pytest.approx(math.log(2) / 2)
