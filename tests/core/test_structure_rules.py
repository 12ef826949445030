"""prunekit's own rules on top of Torch-Pruning, random networks (hypothesis), and the errors users see."""
from __future__ import annotations

import json

import pytest
import torch
import torch_pruning as tp
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from torch import nn

import prunekit
from prunekit.data.graphs import get_graph
from prunekit.core.io import ModelFileError
from prunekit.models.layers import GraphConv
from prunekit.core.plan import PruningPlan, _admissible_order


class PlainGraphConv(nn.Module):
    """The ST-GCN graph convolution written as plain modules: conv to K·C, view, einsum."""

    def __init__(self, cin, cout, adjacency):
        super().__init__()
        self.k, self.cout = adjacency.shape[0], cout
        self.conv = nn.Conv2d(cin, self.k * cout, 1)
        self.register_buffer("adjacency", adjacency)

    def forward(self, x):
        n, _, t, v = x.shape
        return torch.einsum("nkctv,kvw->nctw", self.conv(x).view(n, self.k, self.cout, t, v), self.adjacency)


class TinyGCN(nn.Module):
    def __init__(self, plain: bool):
        super().__init__()
        adjacency = get_graph("fpha").adjacency()
        self.gc = PlainGraphConv(3, 8, adjacency) if plain else GraphConv(3, 8, adjacency, learn_edges=False)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.gc(x))).mean((2, 3)))


def test_torch_pruning_alone_garbles_the_graph_convolution():
    """The peer's failure we fix: one output unit maps to dozens of conv rows through the view."""
    model, x = TinyGCN(plain=True).eval(), torch.randn(2, 3, 6, 21)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
    group = graph.get_pruning_group(model.gc.conv, tp.prune_conv_out_channels, [0])
    rows = [len(item.idxs) for item in group.items if item.dep.target.module is model.gc.conv]
    assert max(rows) > model.gc.k  # unit 0 owns exactly K rows; Torch-Pruning claims more


def test_plain_graph_convolution_is_pruned_without_a_block_rule():
    """The PYSKL-style layer as users write it: units and adjacency subsets found through the view and einsum."""
    torch.manual_seed(0)
    model, x = TinyGCN(plain=True).eval(), torch.randn(2, 3, 6, 21)
    model.bn.running_mean.uniform_(-1, 1)
    structures = prunekit.find_structures(model, x)
    units = [s for s in structures if s.kind == "channel"]
    subsets = [s for s in structures if s.kind == "head"]
    assert len(units) == 8 and len(subsets) == model.gc.k
    assert ("gc.conv.weight", 0, [5, 13, 21]) in units[5].slices and ("fc.weight", 1, [5]) in units[5].consumers
    assert ("gc.conv.weight", 0, list(range(8, 16))) in subsets[1].slices
    assert ("gc.adjacency", 0, [1]) in subsets[1].consumers
    plan = PruningPlan.from_removed(structures, [units[1].id, units[5].id, subsets[1].id])
    small = prunekit.materialize(model, plan, structures)
    assert small.gc.conv.weight.shape == (12, 3, 1, 1) and small.gc.k == 2 and small.gc.cout == 6
    assert small.gc.adjacency.shape == (2, 21, 21) and small.fc.weight.shape == (4, 6)
    assert torch.allclose(small(x), prunekit.apply_masks(model, plan, structures)(x), atol=1e-6)
    # ignore: the layer keeps every parameter, and nothing that writes into it or reads from it is pruned
    kept = prunekit.find_structures(model, x, ignore=["gc"])
    assert all(not n.startswith("gc.") for s in kept for n, _, _ in s.slices + s.consumers)


def test_graph_convolution_block_is_pruned_and_materialized_correctly():
    torch.manual_seed(0)
    plain = TinyGCN(plain=True).eval()
    model = TinyGCN(plain=False).eval()
    model.gc.conv.load_state_dict(plain.gc.conv.state_dict())
    model.bn.load_state_dict(plain.bn.state_dict())
    model.fc.load_state_dict(plain.fc.state_dict())
    model.bn.running_mean.uniform_(-1, 1)
    x = torch.randn(2, 3, 6, 21)
    structures = prunekit.find_structures(model, x)
    units = [s for s in structures if s.kind == "unit"]
    assert len(units) == 8 and len([s for s in structures if s.kind == "head"]) == 3  # units, adjacency subsets
    unit = units[5]
    rows = [k * 8 + 5 for k in range(3)]
    assert ("gc.conv.weight", 0, rows) in unit.slices and ("bn.weight", 0, [5]) in unit.slices
    plan = PruningPlan.from_removed(structures, [units[1].id, units[5].id])
    small = prunekit.materialize(model, plan, structures)
    assert small.gc.conv.weight.shape == (18, 3, 1, 1) and small.fc.weight.shape == (4, 6)
    assert torch.allclose(small(x), prunekit.apply_masks(model, plan, structures)(x), atol=1e-6)
    # the zeroed unit really contributes nothing: the kept units compute what they computed before
    full = model.bn(model.gc(x))
    assert torch.allclose(small.bn(small.gc(x)), full[:, [0, 2, 3, 4, 6, 7]], atol=1e-6)


def test_attention_heads_are_structures_and_leave_a_working_model():
    model = prunekit.models.create("attention_gcn", channels=(8, 16)).eval()
    x = prunekit.models.example_inputs(model, batch=2)
    structures = prunekit.find_structures(model, x)
    heads = [s for s in structures if s.kind == "head"]
    assert heads and all(structures.groups[s.group].kind == "head" for s in heads)
    block = heads[0].layer
    same_block = [s.id for s in heads if s.layer == block]
    plan = PruningPlan.from_removed(structures, same_block[:-1])  # all heads but one
    small = prunekit.materialize(model, plan, structures)
    assert dict(small.named_modules())[block].num_heads == 1
    assert torch.allclose(small(x), prunekit.apply_masks(model, plan, structures)(x), atol=1e-5)
    # the collapse guard never removes the last head
    scores = torch.zeros(len(structures))
    order = _admissible_order(structures, scores)
    assert not set(same_block) <= set(order)


# ------------------------------------------------------------------ random networks


class RandomNet(nn.Module):
    """Stem, then blocks of kind conv / residual / concat / depthwise, then a linear head."""

    def __init__(self, widths, kinds, in_channels=3, classes=3):
        super().__init__()
        self.kinds = kinds
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1), nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.blocks = nn.ModuleList()
        c = widths[0]
        for kind, w in zip(kinds, widths[1:]):
            if kind == "conv":
                block = nn.Sequential(nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU())
                c = w
            elif kind == "residual":
                block = nn.Sequential(nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(),
                                      nn.Conv2d(w, c, 3, padding=1), nn.BatchNorm2d(c))
            elif kind == "concat":
                block = nn.Sequential(nn.Conv2d(c, w, 1), nn.BatchNorm2d(w), nn.ReLU())
                c = c + w
            else:  # depthwise
                block = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c), nn.BatchNorm2d(c), nn.ReLU())
            self.blocks.append(block)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        x = self.stem(x)
        for kind, block in zip(self.kinds, self.blocks):
            if kind == "residual":
                x = torch.relu(x + block(x))
            elif kind == "concat":
                x = torch.cat([x, block(x)], dim=1)
            else:
                x = block(x)
        return self.head(x.mean((2, 3)))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    widths=st.lists(st.integers(2, 6), min_size=2, max_size=5),
    kinds=st.lists(st.sampled_from(["conv", "residual", "concat", "depthwise"]), min_size=4, max_size=4),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(0, 1000),
)
@example(widths=[2, 2, 2, 2, 2], kinds=["conv", "concat", "depthwise", "conv"], fraction=0.5, seed=0)  # found a bug
def test_random_networks_materialize_exactly(widths, kinds, fraction, seed):
    torch.manual_seed(seed)
    model = RandomNet(widths, kinds[: len(widths) - 1]).double().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    structures = prunekit.find_structures(model, x)
    order = _admissible_order(structures, torch.rand(len(structures)))
    removed_everything = PruningPlan.from_removed(structures, order)
    with torch.no_grad():  # the collapse guard leaves every layer at least one output
        assert prunekit.materialize(model, removed_everything, structures)(x).shape == (2, 3)
    plan = PruningPlan.from_removed(structures, order[: round(fraction * len(order))])
    with torch.no_grad():
        small = prunekit.materialize(model, plan, structures)
        reference = prunekit.apply_masks(model, plan, structures)(x)
        assert torch.allclose(small(x), reference, atol=1e-9 * max(1.0, float(reference.abs().max())))
    counted = prunekit.count(small, x)
    assert (counted["params"], counted["macs"]) == tuple(structures.cost(plan.removed).values())


# ------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    model = prunekit.models.create("resnet20", width=0.25).eval()
    x = prunekit.models.example_inputs(model, batch=1)
    structures = prunekit.find_structures(model, x)
    plan = prunekit.select(structures, prunekit.saliency(model, structures, None, method="l1"), prunekit.Budget(macs=0.4))
    folder = tmp_path_factory.mktemp("saved") / "model"
    prunekit.save(prunekit.materialize(model, plan, structures), folder)
    return folder, model, x


def test_load_detects_corruption_and_mismatch(saved, tmp_path):
    folder, model, x = saved
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    data = bytearray((broken / "weights.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (broken / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="weights.safetensors.*checksum"):
        prunekit.load(broken)
    spec = json.loads((folder / "prunekit.json").read_text())
    (broken / "prunekit.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="prunekit.json.*line 1"):
        prunekit.load(broken)
    with pytest.raises(ModelFileError, match="missing"):
        prunekit.load(tmp_path / "nothing-here")
    other = prunekit.models.create("resnet20", width=0.5)
    with pytest.raises(ModelFileError, match="plan does not match"):
        prunekit.load(folder, model=other)
    assert spec["format"] == "prunekit.model/1" and spec["plan"]["removed"]


def test_bad_arguments_get_clear_errors():
    model = prunekit.models.create("mlp")
    x = prunekit.models.example_inputs(model)
    with pytest.raises(ValueError, match="no module named 'nope'"):
        prunekit.find_structures(model, x, ignore=["nope"])
    structures = prunekit.find_structures(model, x)
    with pytest.raises(ValueError, match="scores"):
        prunekit.select(structures, torch.zeros(3), prunekit.Budget(structures=0.5))
    with pytest.raises(prunekit.BudgetError, match="fraction"):
        prunekit.Budget(macs=1.5)
    with pytest.raises(prunekit.BudgetError, match="cannot be met"):
        prunekit.select(structures, torch.zeros(len(structures)), prunekit.Budget(structures=0.999))
    nan = torch.zeros(len(structures))
    nan[0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        prunekit.select(structures, nan, prunekit.Budget(structures=0.5))
    with pytest.raises(ValueError, match="malformed|not a prunekit plan"):
        PruningPlan.from_json('{"format": "prunekit.core.plan/1"}')
