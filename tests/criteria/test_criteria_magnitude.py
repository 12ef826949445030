"""Magnitude, random, and the α-scaling shared by every data-driven method."""
import pytest
import torch

from tests.criteria.brute import build, cached, expected, theta_matrix, flat, unflatten
from prunekit.criteria import StructureScaling, saliency, scaled_parameters
from prunekit.core.structure_types import Structure

MODELS = ["mlp", "mlp-overlap", "cnn", "residual", "gcn", "attention"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", ["l1", "l2"])
def test_magnitude_matches_masks(name, method):
    model, structures, _, _, ref = cached(name)
    got = saliency(model, structures, None, method)
    torch.testing.assert_close(got, expected(ref, method), rtol=1e-12, atol=0)


def test_magnitude_values_by_hand():
    lin = torch.nn.Linear(2, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, -4.0], [0.0, 1.0]]))
        lin.bias.copy_(torch.tensor([0.0, -2.0]))
    units = [Structure(i, "l", "unit", [("weight", 0, [i]), ("bias", 0, [i])]) for i in range(2)]
    assert saliency(lin, units, None, "l1").tolist() == [7.0, 3.0]
    torch.testing.assert_close(saliency(lin, units, None, "l2"), torch.tensor([5.0, 5 ** 0.5], dtype=torch.float64))


def test_random_is_seeded_and_uniform():
    model, structures, *_ = build("mlp")
    a = saliency(model, structures, None, "random", seed=7)
    b = saliency(model, structures, None, "random", seed=7)
    c = saliency(model, structures, None, "random", seed=8)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float64 and bool(((a >= 0) & (a < 1)).all())
    state = torch.get_rng_state()
    saliency(model, structures, None, "random")
    assert torch.equal(state, torch.get_rng_state())  # global RNG untouched


@pytest.mark.parametrize("name", MODELS)
def test_scaled_parameters_is_theta_plus_sum_of_scaled_structures(name):
    """θ(α) = θ + Σ_s (α_s − 1) θ_s (prunekit's additive formulation where structures overlap)."""
    model, structures, *_ = build(name)
    names, shapes, w = flat(model)
    Th = theta_matrix(model, structures)
    alpha = torch.rand(len(structures), dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    got = scaled_parameters(model, structures, alpha)
    want = unflatten(names, shapes, w + (alpha - 1) @ Th)
    assert set(got) == set(names)
    for n in names:
        torch.testing.assert_close(got[n], want[n], rtol=1e-14, atol=1e-15)
    ones = scaled_parameters(model, structures, torch.ones(len(structures), dtype=torch.float64))
    for n, p in model.named_parameters():
        assert torch.equal(ones[n], p.detach())  # α = 1 is bitwise the model


def test_scaling_multiplies_non_overlapping_slices():
    model, structures, *_ = build("cnn")
    alpha = torch.ones(len(structures), dtype=torch.float64)
    alpha[1] = 0.0
    alpha[5] = 3.0
    p = scaled_parameters(model, structures, alpha)
    assert bool((p["0.weight"][1] == 0).all()) and float(p["1.bias"][1]) == 0.0
    torch.testing.assert_close(p["3.weight"][1], 3 * model[3].weight[1].detach())
    torch.testing.assert_close(p["4.weight"][1], 3 * model[4].weight[1].detach())


def test_reduce_sums_over_structure_entries():
    model, structures, *_ = build("mlp-overlap")
    names, shapes, w = flat(model)
    values = torch.randn(w.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    masks = theta_matrix(model, structures) != 0  # θ has no exact zeros in these models
    got = StructureScaling(model, structures).reduce(unflatten(names, shapes, values))
    torch.testing.assert_close(got, (masks * values).sum(1), rtol=1e-13, atol=1e-14)


def test_slice_validation():
    lin = torch.nn.Linear(2, 3)
    with pytest.raises(ValueError, match="no parameter named 'weigth'"):
        saliency(lin, [Structure(0, "l", "unit", [("weigth", 0, [0])])], None, "l1")
    with pytest.raises(ValueError, match="out of range"):
        saliency(lin, [Structure(0, "l", "unit", [("weight", 0, [3])])], None, "l1")
    with pytest.raises(ValueError, match="dim"):
        saliency(lin, [Structure(0, "l", "unit", [("bias", 1, [0])])], None, "l1")
