"""Tests of prunekit.core.sparse: sparse layers compute what the dense layers compute."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import prunekit
from prunekit.core.sparse import LAYOUTS, SparseConv2d, SparseLinear, sparsify, weight_sparsity


def zero_out(module: nn.Module, rate: float, seed: int = 0) -> nn.Module:
    """Zero a random ``rate`` of the entries of every Linear / Conv2d weight, in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.mul_(torch.rand(m.weight.shape, generator=gen) >= rate)
    return module


def assert_equal_outputs(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal within 1e-5 relative to the output's scale (float32 sums run in another order)."""
    assert actual.shape == expected.shape
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * max(scale, 1e-12))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_equivalence(layout, bias):
    torch.manual_seed(0)
    lin = zero_out(nn.Linear(32, 24, bias=bias), 0.9).eval()
    sp = SparseLinear.from_dense(lin, layout=layout)
    assert sp.weight.layout == {"csr": torch.sparse_csr, "coo": torch.sparse_coo}[layout]
    assert sp.nnz == int(torch.count_nonzero(lin.weight))
    for x in (torch.randn(5, 32), torch.randn(2, 3, 32), torch.randn(32)):
        with torch.no_grad():
            assert_equal_outputs(sp(x), lin(x))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("batch", [1, 3])
def test_pointwise_conv_equivalence(layout, batch):
    torch.manual_seed(0)
    conv = zero_out(nn.Conv2d(16, 24, 1), 0.9).eval()
    sp = SparseConv2d.from_dense(conv, layout=layout)
    x = torch.randn(batch, 16, 12, 7)
    with torch.no_grad():
        assert_equal_outputs(sp(x), conv(x))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=(9, 1), stride=(2, 1), padding=(4, 0)),              # the GCNs' temporal conv, strided
    dict(kernel_size=(9, 1), stride=(1, 1), padding=(4, 0), bias=False),
    dict(kernel_size=(3, 1), stride=(2, 1), padding=(2, 0), dilation=(2, 1)),
    dict(kernel_size=(3, 3), stride=(1, 2), padding=1),
    dict(kernel_size=(5, 1), padding="same"),
    dict(kernel_size=1, stride=(2, 1)),                                    # strided residual 1×1
])
def test_conv_equivalence(layout, kwargs):
    torch.manual_seed(0)
    conv = zero_out(nn.Conv2d(8, 12, **kwargs), 0.9).eval()
    sp = SparseConv2d.from_dense(conv, layout=layout)
    x = torch.randn(2, 8, 20, 6)
    with torch.no_grad():
        assert_equal_outputs(sp(x), conv(x))
        assert_equal_outputs(sp(x[0]), conv(x[0]))  # unbatched input


def test_all_zero_weight():
    conv = nn.Conv2d(4, 4, (9, 1), padding=(4, 0))
    with torch.no_grad():
        conv.weight.zero_()
    x = torch.randn(2, 4, 10, 3)
    with torch.no_grad():
        assert_equal_outputs(SparseConv2d.from_dense(conv)(x), conv(x))


@pytest.mark.parametrize("name", ["attention_gcn", "stgcn"])
def test_whole_gcn_equivalence(name):
    torch.manual_seed(0)
    model = prunekit.models.create(name, graph="sbu", num_classes=8).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # ~90 % random zeros in every conv weight, classifier left dense
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(torch.rand(m.weight.shape, generator=gen) >= 0.9)
    x = prunekit.models.example_inputs(model, batch=2)
    fast, report = sparsify(model, min_sparsity=0.8, measure=False)
    converted = {r["name"] for r in report if r["converted"]}
    convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert converted == convs and "fc" not in converted
    assert all(isinstance(fast.get_submodule(n), SparseConv2d) for n in converted)
    with torch.no_grad():
        assert_equal_outputs(fast.eval()(x), model(x))


def test_measured_conversion_is_consistent():
    torch.manual_seed(0)
    model = zero_out(nn.Sequential(nn.Conv2d(16, 32, 1), nn.ReLU(), nn.Conv2d(32, 32, (9, 1), padding=(4, 0))), 0.95)
    x = torch.randn(2, 16, 16, 10)
    fast, report = sparsify(model, min_sparsity=0.5, example_inputs=x, warmup=1, repeats=3)
    for r in report:
        assert r["dense_ms"] > 0 and r["sparse_ms"] > 0
        assert r["converted"] == (r["dense_ms"] / r["sparse_ms"] >= 1.0)
        assert isinstance(fast.get_submodule(r["name"]), (SparseConv2d if r["converted"] else nn.Conv2d))
    with torch.no_grad():
        assert_equal_outputs(fast.eval()(x), model.eval()(x))


def test_below_min_sparsity_and_grouped_stay_dense():
    model = nn.Sequential(zero_out(nn.Conv2d(8, 8, 1), 0.5), zero_out(nn.Conv2d(8, 8, 3, groups=8), 0.95),
                          nn.Flatten(), zero_out(nn.Linear(8 * 4 * 4, 4), 0.95))
    fast, report = sparsify(model, min_sparsity=0.8, measure=False)
    by_name = {r["name"]: r for r in report}
    assert not by_name["0"]["converted"] and "min_sparsity" in by_name["0"]["reason"]
    assert not by_name["1"]["converted"] and "groups" in by_name["1"]["reason"]
    assert by_name["3"]["converted"]
    assert type(fast[0]) is nn.Conv2d and type(fast[1]) is nn.Conv2d and type(fast[3]) is SparseLinear
    assert by_name["0"]["sparsity"] == pytest.approx(weight_sparsity(model[0].weight))
    x = torch.randn(3, 8, 6, 6)
    with torch.no_grad():
        assert_equal_outputs(fast.eval()(x), model.eval()(x))


def test_input_model_unchanged():
    torch.manual_seed(0)
    model = zero_out(nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 8, (9, 1), padding=(4, 0))), 0.9)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    sparsify(model, min_sparsity=0.5, example_inputs=torch.randn(1, 4, 12, 5), warmup=0, repeats=1)
    sparsify(model, min_sparsity=0.5, measure=False)
    assert [type(m) for m in model.modules()] == types
    assert all(m.training for m in model.modules())
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), "0.9", True])
def test_bad_min_sparsity(bad):
    with pytest.raises(ValueError, match="min_sparsity"):
        sparsify(nn.Linear(2, 2), min_sparsity=bad)


def test_bad_layout_and_measure_without_inputs():
    with pytest.raises(ValueError, match="layout"):
        sparsify(nn.Linear(2, 2), layout="bsr")
    with pytest.warns(UserWarning, match="example_inputs"):
        _, report = sparsify(zero_out(nn.Linear(8, 8), 0.9), min_sparsity=0.5)
    assert report[0]["converted"]
    with pytest.raises(ValueError, match="groups"):
        SparseConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=2))
