"""What CTF and its baselines share (prunekit.ctf.common): the prunable weights, entry costs, the rank fix."""
import pytest
import torch
from torch import nn

from prunekit.ctf import fix_to_budget, prunable_weights
from prunekit.ctf.common import entry_costs
from tests.ctf.helpers import gcn, inputs


def test_fix_to_budget_with_groups_drops_whole_groups():
    masks = {"a": torch.ones(2, 3, dtype=torch.bool)}
    groups = {"a": torch.tensor([[0, 0, 0], [1, 1, 1]])}
    scores = {"a": torch.tensor([[1.0, 1.0, 1.0], [0.1, 0.1, 0.1]])}
    out = fix_to_budget(masks, scores, {"a": 1.0}, keep=3, groups=groups)
    assert out["a"].tolist() == [[True, True, True], [False, False, False]]
    revived = fix_to_budget({"a": out["a"]}, scores, {"a": 1.0}, keep=6, groups=groups)
    assert bool(revived["a"].all())
    guarded = fix_to_budget(masks, scores, {"a": 1.0}, keep=0, groups=groups)  # never the last group
    assert guarded["a"].tolist() == [[True, True, True], [False, False, False]]


def test_fix_to_budget_with_costs_stays_within_one_entry():
    masks = {"a": torch.ones(5, dtype=torch.bool), "b": torch.zeros(4, dtype=torch.bool)}
    scores = {"a": torch.tensor([0.5, 0.1, 0.9, 0.3, 0.7]), "b": torch.tensor([0.8, 0.2, 0.6, 0.4])}
    costs = {"a": 3.0, "b": 1.0}
    out = fix_to_budget(masks, scores, costs, keep=8.0)  # 15 kept: drop the cheapest scores of a until ≤ 8
    assert out["a"].tolist() == [False, False, True, False, True] and not bool(out["b"].any())
    up = fix_to_budget(masks, scores, costs, keep=17.5)  # 15 kept: revive b's best while ≤ 17.5
    assert bool(up["a"].all()) and up["b"].tolist() == [True, False, True, False]


def test_mac_cost_weights_each_entry_by_its_macs():
    model = gcn()
    names, _ = prunable_weights(model, inputs(batch=2))
    costs = entry_costs(model, names, inputs(batch=2, frames=16), "macs")
    # a 1×1 value conv runs at every (t, v) position; query/key on time-pooled input (v only)
    assert costs["blocks.0.gcn.value.weight"] == 16 * 30
    assert costs["blocks.0.gcn.query.weight"] == 30
    assert costs["blocks.1.tcn.weight"] == 8 * 30  # stride 2 in time: 8 output frames
    assert set(entry_costs(model, names, None, "params").values()) == {1.0}
    with pytest.raises(ValueError, match="example_inputs"):
        entry_costs(model, names, None, "macs")


def test_exclude_and_classifier_detection():
    model = gcn()
    names, classifier = prunable_weights(model, inputs(), exclude=["blocks.0.tcn", "blocks.1.residual.0.weight"])
    assert classifier == "fc"
    assert "fc.weight" not in names and "blocks.0.tcn.weight" not in names
    assert "blocks.1.residual.0.weight" not in names and "blocks.1.tcn.weight" in names
    assert "blocks.0.gcn.graph_bias" not in names  # not a module weight
    by_module, _ = prunable_weights(model, inputs(), exclude=[model.blocks[0]])
    assert not any(n.startswith("blocks.0.") for n in by_module) and "blocks.1.tcn.weight" in by_module
    assert prunable_weights(model, params=["blocks.1.tcn.weight"]) == (["blocks.1.tcn.weight"], None)
    with pytest.raises(ValueError, match="exclude: 'nope'"):
        prunable_weights(model, inputs(), exclude=["nope"])
    with pytest.raises(ValueError, match="params"):
        prunable_weights(model, params=["fc.bias"])


@pytest.mark.parametrize("layers,example,classifier", [
    ([nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)], None, "2"),                          # no inputs: the last Linear
    ([nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 2, 1)], (1, 3, 5, 5), "2"),            # the output's module
    ([nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1), nn.Flatten()], (1, 3, 5, 5), "1"),         # no Linear: last called
    ([nn.Linear(4, 8), nn.Linear(8, 3), nn.ReLU()], (2, 4), "1"),                        # output not a module's
])
def test_the_classifier_is_the_output_module_else_the_last_linear_else_the_last_called(layers, example, classifier):
    model = nn.Sequential(*layers)
    x = torch.randn(*example) if example else None
    names, found = prunable_weights(model, x)
    assert found == classifier
    assert names == [f"{i}.weight" for i, m in enumerate(layers) if hasattr(m, "weight") and str(i) != classifier]
