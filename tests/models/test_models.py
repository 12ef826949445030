"""Tests of the model zoo, parametrized over every registered model (timm style)."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch
from torch import nn

from prunekit import models
from prunekit.data.graphs import get_graph
from prunekit.models import SkeletonGCN
from prunekit.models.registry import _REGISTRY

ALL = models.names()
SMALL = {"width": 0.25}  # keeps every test fast on a 2-core CPU


def small(name: str, **kwargs) -> nn.Module:
    return models.create(name, **{**SMALL, **kwargs})


def is_skeleton(model: nn.Module) -> bool:
    return isinstance(model, SkeletonGCN)


def other_size(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A second valid input size: another length T for skeletons, another H × W for images."""
    n, c, a, b = x.shape
    return torch.randn(n, c, 17, b) if is_skeleton(model) else torch.randn(n, c, 19, 11)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registered_names():
    expected = {"mlp", "vgg11", "vgg16", "resnet20", "resnet56", "densenet", "mobilenetv2", "stgcn", "attention_gcn"}
    assert expected <= set(ALL) and ALL == sorted(ALL)


@pytest.mark.parametrize("in_channels", [1, 3])
@pytest.mark.parametrize("name", ALL)
def test_output_shape_two_sizes(name, in_channels):
    torch.manual_seed(0)
    model = small(name, in_channels=in_channels, num_classes=7).eval()
    x = models.example_inputs(model, batch=3)
    assert x.shape[:2] == (3, in_channels)
    with torch.no_grad():
        for inp in (x, other_size(model, x)):
            out = model(inp)
            assert out.shape == (3, 7)
            assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_backward_gives_finite_grads_everywhere(name):
    torch.manual_seed(0)
    model = small(name, num_classes=5).train()
    x = models.example_inputs(model, batch=4)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", ALL)
def test_create_is_deterministic_under_manual_seed(name):
    torch.manual_seed(123)
    a = small(name)
    torch.manual_seed(123)
    b = small(name)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), f"{name}: {key} differs"
    x = models.example_inputs(a)
    with torch.no_grad():
        assert torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("name", ALL)
def test_arch_round_trips_through_json(name):
    model = small(name, num_classes=6)
    spec = json.loads(json.dumps(model.prunekit_arch))
    assert spec == model.prunekit_arch  # already JSON-normalised
    assert spec["name"] == name and spec["kwargs"]["num_classes"] == 6
    clone = models.create(spec["name"], **spec["kwargs"])
    assert clone.prunekit_arch == spec
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in clone.state_dict().items()}
    clone.load_state_dict(model.state_dict())
    x = models.example_inputs(model)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), clone.eval()(x))


GRAPH_PARAMETERS = ("edge_importance", "graph_bias")  # [K or heads, V, V]: independent of the width


def width_dependent_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] not in GRAPH_PARAMETERS)


@pytest.mark.parametrize("name", ALL)
def test_width_multiplier_scales_parameters(name):
    models_by_width = [models.create(name, width=w) for w in (0.25, 0.5, 1.0)]
    counts = [n_params(m) for m in models_by_width]
    assert counts[0] < counts[1] < counts[2]
    # Hidden-to-hidden weights scale with width², input/output layers and norms with
    # width: doubling the width multiplies the width-dependent count by 2 to 4 (up to
    # rounding); the GCNs' graph parameters do not depend on the width.
    scaled_counts = [width_dependent_params(m) for m in models_by_width]
    for small_count, big_count in zip(scaled_counts, scaled_counts[1:]):
        assert 1.9 < big_count / small_count < 4.1, (name, small_count, big_count)
    fixed = [c - s for c, s in zip(counts, scaled_counts)]
    assert fixed[0] == fixed[1] == fixed[2]


@pytest.mark.parametrize("name", ALL)
def test_model_rules_for_pruning(name):
    """Activations map 0 to 0, no channel-wise norms or gates, no shared parameters, no inplace ops."""
    model = small(name)
    allowed_activations = (nn.ReLU, nn.ReLU6, nn.GELU)
    forbidden = (nn.Sigmoid, nn.Tanh, nn.Softmax, nn.Hardsigmoid, nn.SiLU, nn.LayerNorm, nn.GroupNorm,
                 nn.InstanceNorm2d)
    for mname, module in model.named_modules():
        assert not isinstance(module, forbidden), f"{name}: {mname} is {type(module).__name__}"
        if isinstance(module, allowed_activations):
            assert not getattr(module, "inplace", False), f"{name}: {mname} is in-place"
            assert float(module(torch.zeros(1))) == 0.0
    with_duplicates = list(model.named_parameters(remove_duplicate=False))
    assert len(with_duplicates) == len(list(model.parameters())), f"{name}: shared parameters"
    modules_with_duplicates = list(model.named_modules(remove_duplicate=False))
    assert len(modules_with_duplicates) == len(list(model.modules())), f"{name}: a module is reused"


def test_resnet20_parameter_count():
    # 269,722 for the option-A original; option-B adds two 1×1 conv + BN shortcuts:
    # 16·32 + 2·32 + 32·64 + 2·64 = 2,752.
    assert n_params(models.create("resnet20", in_channels=3, num_classes=10, width=1.0)) == 272_474


def test_known_parameter_counts():
    assert n_params(models.create("mlp")) == 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10
    assert n_params(models.create("resnet56")) == 855_770
    assert n_params(models.create("stgcn")) == 128_958
    assert n_params(models.create("attention_gcn")) == 148_654


def test_gcn_defaults_are_small():
    for name in ("stgcn", "attention_gcn"):
        assert 100_000 <= n_params(models.create(name)) <= 300_000


def test_unknown_name_lists_known_models():
    with pytest.raises(ValueError, match="unknown model 'resnet18'.*resnet20"):
        models.create("resnet18")
    with pytest.raises(ValueError, match="unknown model"):
        models.example_inputs("nope")


def test_bad_kwargs_name_the_model():
    with pytest.raises(TypeError, match=r"'resnet20'.*'widht'.*did you mean 'width'"):
        models.create("resnet20", widht=0.5)
    with pytest.raises(ValueError, match=r"'vgg16'.*width must be > 0"):
        models.create("vgg16", width=0)
    with pytest.raises(ValueError, match=r"'stgcn'.*3 strides for 4 blocks"):
        models.create("stgcn", strides=[1, 1, 2])
    with pytest.raises(ValueError, match=r"'attention_gcn'.*unknown skeleton graph"):
        models.create("attention_gcn", graph="ntu")


def test_non_json_kwargs_are_refused():
    with pytest.raises(TypeError, match=r"'stgcn'.*JSON"):
        models.create("stgcn", graph=get_graph("fpha"))


def test_example_inputs_are_seeded_and_leave_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = models.example_inputs("resnet20", batch=2)
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(a, models.example_inputs("resnet20", batch=2))
    assert not torch.equal(a, models.example_inputs("resnet20", batch=2, seed=1))
    assert models.example_inputs("stgcn", graph="fpha").shape == (2, 3, 32, 21)
    assert models.example_inputs("stgcn").shape == (2, 3, 32, 30)
    assert models.example_inputs("mlp").shape == (2, 1, 28, 28)
    assert models.example_inputs("mlp", in_channels=3).shape == (2, 3, 28, 28)
    model = models.create("vgg11", in_channels=1, width=0.25)
    assert models.example_inputs(model, batch=5).shape == (5, 1, 32, 32)
    with pytest.raises(ValueError, match="prunekit_arch"):
        models.example_inputs(nn.Linear(2, 2))


def test_register_rejects_duplicates_and_var_kwargs():
    with pytest.raises(ValueError, match="already registered"):
        models.register("resnet20", lambda a: (3, 8, 8))(lambda **kw: nn.Identity())
    with pytest.raises(TypeError, match="named arguments only"):
        models.register("test-varkw", lambda a: (3,))(lambda **kw: nn.Identity())
    assert "test-varkw" not in models.names()


def test_register_custom_model():
    @models.register("test-tiny", lambda a: (a["in_features"],))
    def tiny(in_features: int = 4, num_classes: int = 3) -> nn.Module:
        return nn.Linear(in_features, num_classes)

    try:
        model = models.create("test-tiny", in_features=6)
        assert model.prunekit_arch == {"name": "test-tiny", "kwargs": {"in_features": 6, "num_classes": 3}}
        assert model(models.example_inputs(model)).shape == (2, 3)
    finally:
        _REGISTRY.pop("test-tiny")


def test_mlp_shapes_and_any_input_size():
    net = models.create("mlp", input_shape=[3, 8, 8], hidden=[16])
    assert net.features[0].in_features == 3 * 8 * 8
    assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert net(torch.randn(2, 3, 20, 5)).shape == (2, 10)
    # in_channels overrides the channel entry of input_shape
    assert models.create("mlp", in_channels=2, hidden=[]).classifier.in_features == 2 * 28 * 28
    assert models.create("mlp", hidden=[100, 50], width=0.5).features[2].out_features == 25


def test_width_rounds_and_keeps_one_channel():
    net = models.create("vgg11", width=0.001)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels == 1 for c in convs)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert models.create("resnet20", width=0.25).layer3[0].conv1.out_channels == 16


def test_resnet_shortcuts_are_option_b():
    net = models.create("resnet20")
    assert isinstance(net.layer1[0].shortcut, nn.Identity)
    for stage in (net.layer2, net.layer3):
        conv, bn = stage[0].shortcut
        assert isinstance(conv, nn.Conv2d) and conv.kernel_size == (1, 1) and conv.stride == (2, 2)
        assert isinstance(bn, nn.BatchNorm2d)
        assert all(isinstance(b.shortcut, nn.Identity) for b in stage[1:])
    assert len(net.layer1) == 3 and len(models.create("resnet56").layer1) == 9


def test_densenet_concatenates_and_transitions():
    net = models.create("densenet", growth_rate=4, layers_per_block=3)
    first_block = net.features[0]
    assert [layer.conv.in_channels for layer in first_block] == [8, 12, 16]
    transition = net.features[1]
    assert transition.conv.in_channels == 20 and transition.conv.out_channels == 10
    assert isinstance(transition.pool, nn.AvgPool2d)
    assert net(torch.randn(2, 3, 9, 9)).shape == (2, 10)


def test_mobilenetv2_blocks():
    net = models.create("mobilenetv2")
    depthwise = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    residual = [b.use_residual for b in net.blocks]
    assert any(residual) and not all(residual)
    assert all(isinstance(m, nn.ReLU6) for m in net.modules() if isinstance(m, (nn.ReLU, nn.ReLU6)))


@pytest.mark.parametrize("name, layer", [("stgcn", models.GraphConv), ("attention_gcn", models.MultiHeadGraphAttention)])
def test_gcn_structure(name, layer):
    net = models.create(name, graph="fpha", num_classes=45)
    assert isinstance(net.data_bn, nn.BatchNorm2d) and net.data_bn.num_features == 3
    assert all(isinstance(b.gcn, layer) for b in net.blocks)
    assert [b.tcn.stride[0] for b in net.blocks] == [1, 1, 2, 1]
    assert all(b.tcn.kernel_size == (9, 1) and b.tcn.padding == (4, 0) for b in net.blocks)
    assert isinstance(net.blocks[0].residual, nn.Sequential)  # 3 → 32 channels
    assert isinstance(net.blocks[1].residual, nn.Identity)
    assert isinstance(net.blocks[2].residual, nn.Sequential)  # stride 2, 32 → 64
    graph_param = "edge_importance" if name == "stgcn" else "graph_bias"
    assert getattr(net.blocks[0].gcn, graph_param).shape[-2:] == (21, 21)
    x = torch.randn(2, 3, 16, 21)
    assert net(x).shape == (2, 45)
    if name == "attention_gcn":
        net = models.create(name, num_heads=2, key_dim=4, channels=[8, 16], strides=[1, 1])
        assert net.blocks[0].gcn.num_heads == 2 and net.blocks[0].gcn.key_dim == 4
        assert net.prunekit_arch["kwargs"]["channels"] == [8, 16]


def test_zeroed_graph_unit_stays_zero_downstream():
    """Zeroing a graph-conv unit's slices and its BatchNorm zeroes that channel after the activation."""
    torch.manual_seed(0)
    net = models.create("stgcn", channels=[8, 8], strides=[1, 1]).eval()
    block = net.blocks[0]
    with torch.no_grad():
        for pname, dim, idxs in block.gcn.out_channel_slices([3]):
            block.gcn.get_parameter(pname).index_fill_(dim, torch.tensor(idxs), 0.0)
        block.bn1.weight[3] = 0.0
        block.bn1.bias[3] = 0.0
        hidden = block.relu1(block.bn1(block.gcn(net.data_bn(models.example_inputs(net)))))
    assert torch.count_nonzero(hidden[:, 3]) == 0
    assert torch.count_nonzero(hidden[:, 2]) > 0


CNNS = [n for n in ALL if n not in ("stgcn", "attention_gcn")]


@pytest.mark.parametrize("name", CNNS)
def test_torch_pruning_traces_and_prunes_cnn(name):
    tp = pytest.importorskip("torch_pruning")
    torch.manual_seed(0)
    model = small(name).eval()
    x = models.example_inputs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=x)
        groups = list(graph.get_all_groups(ignored_layers=[model.get_submodule(_head(model))]))
        assert groups, f"{name}: no prunable groups"
        before = n_params(model)
        for group in groups:  # remove channel 0 of every coupled group
            dep = group[0].dep
            pruning = graph.get_pruning_group(dep.target.module, dep.handler, [0])
            if graph.check_pruning_group(pruning):
                pruning.prune()
    assert n_params(model) < before
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def _head(model: nn.Module) -> str:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return linears[-1]


def test_doc_param_counts_match():
    """The docstrings quote these numbers."""
    assert math.isclose(n_params(models.create("vgg11")), 9.2e6, rel_tol=0.01)
    assert math.isclose(n_params(models.create("vgg16")), 14.7e6, rel_tol=0.01)
