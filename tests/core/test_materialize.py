"""Structures, plans, masks and materialization over every registered model (timm style).

For random plans removing 10 %, 50 % and 90 % of the structures:
* the materialized model computes what the masked model computes;
* the counted parameters and MACs of the materialized model equal the structures' cost model;
* zeroing one structure's slices equals removing it physically;
* save → load gives identical outputs, and the small model exports.
Models run in float64 so that agreement is checked to near machine precision.
"""
from __future__ import annotations

import random

import pytest
import torch

import prunekit
from prunekit import models
from prunekit.core.plan import (DEFAULT_GROUP_NORM, DEFAULT_MAX_GROUP_RATIO, PruningPlan, _admissible_order,
                           group_normalize)

FRACTIONS = (0.1, 0.5, 0.9)
SMALL = {  # small widths keep the suite fast; depth and topology are unchanged
    "vgg11": {"width": 0.25}, "vgg16": {"width": 0.125}, "resnet20": {"width": 0.5}, "resnet56": {"width": 0.25},
    "mobilenetv2": {"width": 0.25}, "densenet": {"growth_rate": 4}, "stgcn": {"channels": (8, 8, 16)},
    "attention_gcn": {"channels": (8, 16)},
}


def randomize_norms(model: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so a forgotten BN slice shows."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            if module.affine:
                module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.data.copy_(torch.randn(n, generator=generator) * 0.5)


def build(name: str):
    torch.manual_seed(0)
    kwargs = dict(SMALL.get(name, {}))
    try:
        model = models.create(name, **kwargs)
    except (TypeError, ValueError):
        model = models.create(name)
    randomize_norms(model)
    model = model.double().eval()
    x = models.example_inputs(model, batch=2).double()
    return model, x


def random_plan(structures, fraction: float, seed: int) -> PruningPlan:
    generator = torch.Generator().manual_seed(seed)
    order = _admissible_order(structures, torch.rand(len(structures), generator=generator))
    k = min(round(fraction * len(structures)), len(order))
    return PruningPlan.from_removed(structures, order[:k])


def scale(t: torch.Tensor) -> float:
    return max(float(t.detach().abs().max()), 1e-12)


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


@pytest.fixture(scope="module", params=models.names())
def found(request):
    model, x = build(request.param)
    return request.param, model, x, prunekit.find_structures(model, x)


def test_structures_are_found_and_costed(found):
    name, model, x, structures = found
    assert len(structures) > 0, name
    counted = prunekit.count(model, x)
    assert structures.total_params == counted["params"]
    assert structures.total_macs == counted["macs"]
    params = dict(model.named_parameters())
    for s in structures:
        assert s.id == structures[s.id].id
        assert s.params > 0, (name, s.layer, s.meta)
        for pname, dim, idxs in s.slices:
            assert pname in params and 0 <= dim < params[pname].dim()
            assert max(idxs) < params[pname].shape[dim]


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_materialized_equals_masked_and_counts_match(found, fraction):
    name, model, x, structures = found
    plan = random_plan(structures, fraction, seed=int(fraction * 100))
    masked = prunekit.apply_masks(model, plan, structures)
    small = prunekit.materialize(model, plan, structures)
    reference = masked(x)
    assert (small(x) - reference).abs().max() <= 1e-5 * scale(reference), name
    counted = prunekit.count(small, x)
    expected = structures.cost(plan.removed)
    assert counted["params"] == expected["params"], name
    assert counted["macs"] == expected["macs"], name
    assert plan.remaining["params"] == expected["params"]
    if plan.removed:
        assert counted["params"] < structures.total_params
    # the input model is untouched
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), build(name)[0].state_dict().values()))


def test_zeroing_slices_equals_physical_removal(found):
    name, model, x, structures = found
    rng = random.Random(1)
    candidates = [s.id for s in structures if len(structures.groups[s.group].members) > 1]
    for sid in rng.sample(candidates, min(3, len(candidates))):
        zeroed = prunekit.apply_masks(model, PruningPlan.from_removed(structures, [sid]), structures)
        params = dict(zeroed.named_parameters())
        for pname, dim, idxs in structures[sid].slices:  # apply_masks really zeroed exactly those slices
            assert params[pname].index_select(dim, torch.tensor(idxs)).abs().sum() == 0
        small = prunekit.materialize(model, PruningPlan.from_removed(structures, [sid]), structures)
        counted = prunekit.count(small, x)
        assert structures.total_params - counted["params"] == structures[sid].params
        assert structures.total_macs - counted["macs"] == structures[sid].macs
        reference = zeroed(x)
        assert (small(x) - reference).abs().max() <= 1e-5 * scale(reference), (name, structures.describe(sid))


def test_save_load_roundtrip_and_export(found, tmp_path):
    name, model, x, structures = found
    plan = random_plan(structures, 0.5, seed=7)
    small = prunekit.materialize(model, plan, structures)
    prunekit.save(small, tmp_path / "m")
    reloaded = prunekit.load(tmp_path / "m").double().eval()
    assert torch.equal(reloaded(x), small(x))
    # replay the plan on the user's own dense model
    replayed = prunekit.load(tmp_path / "m", model=model)
    assert torch.equal(replayed(x), small(x))
    exported = torch.export.export(small, (x,))
    assert torch.allclose(exported.module()(x), small(x), atol=1e-10)


def test_select_meets_budgets_exactly(found):
    name, model, x, structures = found
    scores = torch.rand(len(structures), generator=torch.Generator().manual_seed(3))
    # the paper setting (raw scores, collapse guard only) and the defaults (group-normalised, capped)
    settings = {"paper": ({"group_norm": None, "max_group_ratio": None}, _admissible_order(structures, scores)),
                "defaults": ({}, _admissible_order(structures, group_normalize(structures, scores, DEFAULT_GROUP_NORM),
                                                   DEFAULT_MAX_GROUP_RATIO))}
    for key in ("structures", "params", "macs"):
        for options, order in settings.values():
            plan = prunekit.select(structures, scores, prunekit.Budget(**{key: 0.3}), **options)
            assert plan.achieved[key] >= 0.3
            # the plan is the shortest admissible prefix: one structure fewer misses the target
            k = len(plan.removed)
            assert sorted(order[:k]) == plan.removed
            shorter = PruningPlan.from_removed(structures, order[: k - 1])
            assert shorter.achieved[key] < 0.3
    # the collapse guard: every group keeps a member even when asking for almost everything
    plan = prunekit.select(structures, scores, prunekit.Budget(structures=0.01))
    big = PruningPlan.from_removed(structures, _admissible_order(structures, scores))
    for group in structures.groups:
        assert set(group.members) - set(big.removed), group
    assert PruningPlan.from_json(plan.to_json()).to_dict() == plan.to_dict()
