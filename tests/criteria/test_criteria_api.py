"""The saliency() entry point: registry, errors, side effects, dtypes, docstring examples."""

import pytest
import torch
from torch import nn

from tests.criteria.brute import batches, build, cached, expected
from prunekit.criteria import CRITERIA, available_methods, register_criterion, saliency
from prunekit.core.structure_types import Structure

DATA_METHODS = ["taylor", "obd", "sosp-h", "sosp-i"]
ALL_METHODS = ["random", "l1", "l2"] + DATA_METHODS


def test_registry_lists_every_method():
    assert set(ALL_METHODS) <= set(available_methods())


def test_unknown_method_lists_known_ones():
    model, structures, x, y, _ = cached("mlp")
    with pytest.raises(ValueError) as err:
        saliency(model, structures, (x, y), "sosp-x")
    for name in ALL_METHODS:
        assert name in str(err.value)


def test_method_name_is_case_insensitive():
    model, structures, *_ = cached("mlp")
    assert torch.equal(saliency(model, structures, None, "L1"), saliency(model, structures, None, "l1"))


@pytest.mark.parametrize("method", DATA_METHODS)
def test_data_required(method):
    model, structures, *_ = cached("mlp")
    with pytest.raises(ValueError, match="needs data"):
        saliency(model, structures, None, method)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_num_samples(bad):
    model, structures, x, y, _ = cached("mlp")
    with pytest.raises(ValueError, match="num_samples"):
        saliency(model, structures, (x, y), "taylor", num_samples=bad)


def test_empty_data_and_empty_structures():
    model, structures, x, y, _ = cached("mlp")
    with pytest.raises(ValueError, match="no samples"):
        saliency(model, structures, [], "sosp-h")
    assert saliency(model, [], (x, y), "sosp-h").shape == (0,)


def test_unknown_option_is_an_error():
    model, structures, x, y, _ = cached("mlp")
    with pytest.raises(TypeError):
        saliency(model, structures, (x, y), "taylor", curvature="hessian")


def test_register_custom_criterion():
    @register_criterion("test-neg-l1", needs_data=False, summary="minus l1")
    def neg_l1(model, structures, data=None, *, loss_fn=None, num_samples=None, scale=1.0):
        return -scale * CRITERIA["l1"].fn(model, structures)

    try:
        model, structures, *_ = cached("mlp")
        torch.testing.assert_close(saliency(model, structures, None, "test-neg-l1", scale=2.0),
                                   -2 * saliency(model, structures, None, "l1"))
        with pytest.raises(ValueError, match="already registered"):
            register_criterion("test-neg-l1", needs_data=False)(neg_l1)
    finally:
        CRITERIA.pop("test-neg-l1", None)


@pytest.mark.parametrize("method,options", [(m, {}) for m in ALL_METHODS] + [("sosp-h", {"curvature": "hessian"})])
def test_no_side_effects(method, options):
    model, structures, x, y = build("cnn")
    model.train()
    model[4].eval()  # mixed flags must come back exactly
    model[0].weight.grad = torch.full_like(model[0].weight, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    saliency(model, structures, batches(x, y, 4), method, **options)
    assert [m.training for m in model.modules()] == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k  # parameters and BatchNorm running statistics
    assert torch.equal(model[0].weight.grad, torch.full_like(model[0].weight, 0.5))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "0.weight")


@pytest.mark.parametrize("method", DATA_METHODS)
def test_eval_mode_is_used(method):
    """A model left in train mode scores like the eval-mode model (BatchNorm frozen)."""
    model, structures, x, y, ref = cached("cnn")
    model.train()
    try:
        got = saliency(model, structures, batches(x, y, 3), method)
    finally:
        model.eval()
    torch.testing.assert_close(got, expected(ref, method), rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("method", DATA_METHODS)
def test_float32_model(method):
    model, structures, x, y, ref = cached("residual")
    model32 = build("residual")[0].float()
    got = saliency(model32, structures, batches(x.float(), y, 4), method)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, expected(ref, method), rtol=2e-3, atol=1e-6)


def test_works_under_no_grad():
    model, structures, x, y, ref = cached("mlp")
    with torch.no_grad():
        got = saliency(model, structures, (x, y), "sosp-h")
    torch.testing.assert_close(got, expected(ref, "sosp-h"), rtol=1e-5, atol=1e-12)


def test_non_logit_output_is_a_clear_error():
    model = nn.Sequential(nn.Conv2d(2, 3, 1))
    s = [Structure(0, "0", "channel", [("0.weight", 0, [0])])]
    with pytest.raises(ValueError, match="logits"):
        saliency(model, s, (torch.randn(2, 2, 3, 3), torch.zeros(2, dtype=torch.long)), "sosp-h")


@pytest.mark.parametrize("method", DATA_METHODS)
def test_cross_entropy_temperature_matches_the_autograd_loss(method):
    """CrossEntropy(temperature=T): closed-form curvature Λ(softmax(f/T))/T² against CE(f/T) by autograd."""
    from prunekit.criteria import CrossEntropy
    import torch.nn.functional as F
    model, structures, x, y, _ = cached("mlp")
    x = x * 8  # confident logits (float64 like the model), so that the temperature matters
    got = saliency(model, structures, batches(x, y, 4), method, loss=CrossEntropy(temperature=3.0))
    want = saliency(model, structures, batches(x, y, 4), method, loss_fn=lambda f, t: F.cross_entropy(f / 3.0, t))
    plain = saliency(model, structures, batches(x, y, 4), method)
    assert torch.allclose(got, want, rtol=1e-8, atol=1e-12)
    assert not torch.allclose(got, plain, rtol=1e-3)
    assert torch.equal(saliency(model, structures, batches(x, y, 4), method, loss=CrossEntropy(temperature=1.0)), plain)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_cross_entropy_temperature_must_be_positive(bad):
    from prunekit.criteria import CrossEntropy
    with pytest.raises(ValueError, match="temperature"):
        CrossEntropy(temperature=bad)
