"""SOSP-H and SOSP-I against brute force (explicit Jacobians, G, H) on tiny float64 models."""
import pytest
import torch
import torch.nn.functional as F

from tests.criteria.brute import N_SAMPLES, batches, build, cached, expected
from prunekit.criteria import (SaliencyMemoryError, saliency, sosp_h_terms, sosp_i_pairwise)

MODELS = ["mlp", "mlp-overlap", "cnn", "residual", "gcn", "attention"]
RTOL, ATOL = 1e-5, 1e-12


def close(actual, wanted, rtol=RTOL):
    torch.testing.assert_close(actual, wanted.to(actual.dtype), rtol=rtol, atol=ATOL * (1 + float(wanted.abs().max())))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("curvature", ["gauss-newton", "hessian"])
@pytest.mark.parametrize("first_order", [True, False])
def test_sosp_h_matches_brute_force(name, curvature, first_order):
    model, structures, x, y, ref = cached(name)
    got = saliency(model, structures, batches(x, y, 4), "sosp-h", curvature=curvature, first_order=first_order)
    close(got, expected(ref, "sosp-h", curvature, first_order))
    assert got.dtype == torch.float64 and got.shape == (len(structures),)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("curvature", ["gauss-newton", "hessian"])
def test_sosp_h_terms_match_brute_force(name, curvature):
    model, structures, x, y, ref = cached(name)
    terms = sosp_h_terms(model, structures, batches(x, y, 5), curvature=curvature)
    Th = ref["Theta"]
    C = ref["G"] if curvature == "gauss-newton" else ref["H"]
    close(terms["gradient"], Th @ ref["g"])
    close(terms["curvature"], Th @ (C @ Th.sum(0)))
    close(terms["delta_loss"], -(Th @ ref["g"]) + 0.5 * Th @ (C @ Th.sum(0)))
    fused = saliency(model, structures, batches(x, y, 5), "sosp-h", curvature=curvature)
    close(fused, terms["delta_loss"].abs(), rtol=1e-10)


@pytest.mark.parametrize("name", MODELS)
def test_sosp_i_matches_brute_force(name):
    model, structures, x, y, ref = cached(name)
    stats = sosp_i_pairwise(model, structures, batches(x, y, 4))
    Th = ref["Theta"]
    close(stats.Q, Th @ ref["G"] @ Th.T)
    close(stats.gradient, Th @ ref["g"])
    assert stats.num_samples == N_SAMPLES
    close(saliency(model, structures, batches(x, y, 4), "sosp-i"), expected(ref, "sosp-i"))


def test_gauss_newton_single_sample_exact():
    model, structures, x, y = build("cnn")
    x, y = x[:1], y[:1]
    from tests.criteria.brute import brute
    ref = brute(model, structures, x, y, with_hessian=False)
    Th, g, G = ref["Theta"], ref["g"], ref["G"]
    # G for one sample, written out: J_1ᵀ (diag p − p pᵀ) J_1
    J = ref["J"][0]
    p = torch.softmax(model(x), 1)[0].detach()
    assert torch.allclose(G, J.T @ (torch.diag(p) - torch.outer(p, p)) @ J)
    got = saliency(model, structures, (x, y), "sosp-h")
    torch.testing.assert_close(got, (-(Th @ g) + 0.5 * Th @ (G @ Th.sum(0))).abs(), rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("method,options", [("sosp-h", {}), ("sosp-h", {"curvature": "hessian"}),
                                            ("sosp-i", {}), ("sosp-i", {"chunk_size": 2})])
def test_batching_does_not_change_result(method, options):
    model, structures, x, y, _ = cached("residual")
    results = [saliency(model, structures, batches(x, y, b), method, **options) for b in (1, 3, N_SAMPLES)]
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=1e-10, atol=1e-14)


def test_sosp_i_memory_budget_chunks_samples_without_changing_the_result():
    from prunekit.criteria.sosp import auto_chunk_size
    model, structures, x, y, _ = cached("residual")
    q_bytes = len(structures) ** 2 * 8
    params = sum(p.numel() for p in model.parameters())
    assert auto_chunk_size(3, params, 0) == 1 and auto_chunk_size(3, params, 2 * 3 * params * 4 * 5) == 5
    whole = saliency(model, structures, (x, y), "sosp-i")
    tight = saliency(model, structures, (x, y), "sosp-i", max_memory_bytes=q_bytes + 1)  # one sample at a time
    torch.testing.assert_close(tight, whole, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("method", ["sosp-h", "sosp-i"])
def test_num_samples_truncates(method):
    model, structures, x, y = build("mlp")
    extra_x = torch.cat([x, torch.randn(3, 4, dtype=x.dtype)])
    extra_y = torch.cat([y, torch.tensor([0, 1, 2])])
    want = saliency(model, structures, (x, y), method)
    got = saliency(model, structures, batches(extra_x, extra_y, 4), method, num_samples=N_SAMPLES)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-14)
    everything = saliency(model, structures, batches(extra_x, extra_y, 4), method, num_samples=1000)
    torch.testing.assert_close(everything, saliency(model, structures, (extra_x, extra_y), method),
                               rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("method", ["sosp-h", "sosp-i"])
def test_deterministic(method):
    model, structures, x, y, _ = cached("gcn")
    a = saliency(model, structures, batches(x, y, 4), method)
    b = saliency(model, structures, batches(x, y, 4), method)
    assert torch.equal(a, b)


def test_removal_delta_loss_sign_convention():
    """L(θ − θ_s) − L(θ) ≈ −θ_sᵀ g + ½ θ_sᵀ H θ_s for a structure of tiny norm."""
    model, structures, x, y = build("tanh-mlp")
    s = structures[2]  # unit 2 of the first layer
    with torch.no_grad():
        model[0].weight[2] *= 1e-2
        model[0].bias[2] *= 1e-2
        base = F.cross_entropy(model(x), y)
        w, b = model[0].weight[2].clone(), model[0].bias[2].clone()
        model[0].weight[2] = 0
        model[0].bias[2] = 0
        removed = F.cross_entropy(model(x), y)
        model[0].weight[2], model[0].bias[2] = w, b
    true_delta = float(removed - base)
    terms = sosp_h_terms(model, [s], (x, y), curvature="hessian")  # S = {s}: θ_P = θ_s
    estimate = float(terms["delta_loss"][0])
    first_order_only = float(-terms["gradient"][0])
    assert abs(true_delta) > 1e-6
    assert estimate == pytest.approx(true_delta, rel=1e-3)
    assert abs(estimate - true_delta) < 0.1 * abs(first_order_only - true_delta)
    assert float(saliency(model, [s], (x, y), "sosp-h", curvature="hessian")[0]) == pytest.approx(abs(estimate), rel=1e-10)


def test_sosp_i_memory_error():
    model, structures, x, y, _ = cached("mlp")
    with pytest.raises(SaliencyMemoryError) as err:
        saliency(model, structures, (x, y), "sosp-i", max_memory_bytes=100)
    assert isinstance(err.value, MemoryError)
    msg = str(err.value)
    n = len(structures)
    assert f"{n} structures" in msg and str(n * n * 8) in msg and "100" in msg and "sosp-h" in msg
    # the limit is checked before any model pass: data is never consumed
    consumed = []

    def data():
        consumed.append(1)
        yield x, y

    with pytest.raises(SaliencyMemoryError):
        sosp_i_pairwise(model, structures, data(), max_memory_bytes=100)
    assert not consumed


def test_bad_curvature():
    model, structures, x, y, _ = cached("mlp")
    with pytest.raises(ValueError, match="curvature"):
        saliency(model, structures, (x, y), "sosp-h", curvature="fisher")
