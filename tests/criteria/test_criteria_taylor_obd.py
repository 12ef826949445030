"""Taylor (|θ_sᵀ g|) and OBD (½ Σ θ_i² F_ii, empirical Fisher) against brute force."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from tests.criteria.brute import N_SAMPLES, batches, build, cached, expected
from prunekit.criteria import fisher_diagonal, gradient_terms, saliency, scaled_parameters

MODELS = ["mlp", "mlp-overlap", "cnn", "residual", "gcn", "attention"]


def close(actual, wanted, rtol=1e-5):
    torch.testing.assert_close(actual, wanted.to(actual.dtype), rtol=rtol, atol=1e-12 * (1 + float(wanted.abs().max())))


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", ["taylor", "obd"])
def test_matches_brute_force(name, method):
    model, structures, x, y, ref = cached(name)
    close(saliency(model, structures, batches(x, y, 4), method), expected(ref, method))


@pytest.mark.parametrize("name", MODELS)
def test_gradient_terms_signed(name):
    model, structures, x, y, ref = cached(name)
    close(gradient_terms(model, structures, batches(x, y, 5)), ref["Theta"] @ ref["g"])


@pytest.mark.parametrize("name", ["mlp-overlap", "cnn", "residual", "gcn", "attention"])
def test_alpha_derivative_is_theta_s_dot_g_by_finite_differences(name):
    """(L(α = 1 + h e_s) − L(α = 1 − h e_s)) / 2h = θ_sᵀ g."""
    model, structures, x, y, ref = cached(name)
    h = 1e-5
    fd = []
    for k in range(len(structures)):
        e = torch.zeros(len(structures), dtype=torch.float64)
        e[k] = h
        losses = [F.cross_entropy(functional_call(model, scaled_parameters(model, structures, 1 + sign * e), (x,)), y)
                  for sign in (1, -1)]
        fd.append((losses[0] - losses[1]) / (2 * h))
    fd = torch.stack(fd).detach()
    close(fd, ref["Theta"] @ ref["g"])


def test_obd_fisher_uses_every_sample():
    """F_ii = mean over *all* samples of squared per-sample gradients (explicit per-sample loop)."""
    model, structures, x, y, ref = cached("cnn")
    names = [n for n, _ in model.named_parameters()]
    fisher = fisher_diagonal(model, structures, batches(x, y, 4))
    offsets, i = {}, 0
    for n, p in model.named_parameters():
        offsets[n] = (i, i + p.numel())
        i += p.numel()
    per_sample = []  # the loop, independent of tests.criteria.brute
    for n in range(N_SAMPLES):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[n:n + 1]), y[n:n + 1]).backward()
        per_sample.append({k: p.grad.detach().clone() for k, p in model.named_parameters()})
    model.zero_grad(set_to_none=True)
    for name, f in fisher.items():
        assert name in names
        want = torch.stack([g[name] for g in per_sample]).square().mean(0)
        close(f, want)
        a, b = offsets[name]
        close(f.reshape(-1), ref["F"][a:b])
        last_only = per_sample[-1][name].square()  # what an accumulation bug would give
        assert not torch.allclose(f, last_only)


@pytest.mark.parametrize("method,options", [("taylor", {}), ("obd", {}), ("obd", {"chunk_size": 2})])
def test_batching_and_num_samples(method, options):
    model, structures, x, y, _ = cached("gcn")
    results = [saliency(model, structures, batches(x, y, b), method, **options) for b in (1, 3, N_SAMPLES)]
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=1e-10, atol=1e-14)
    more_x = torch.cat([x, x[:3] + 1])
    more_y = torch.cat([y, y[:3]])
    got = saliency(model, structures, batches(more_x, more_y, 4), method, num_samples=N_SAMPLES, **options)
    torch.testing.assert_close(got, results[0], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("method", ["taylor", "obd"])
def test_deterministic(method):
    model, structures, x, y, _ = cached("residual")
    assert torch.equal(saliency(model, structures, batches(x, y, 4), method),
                       saliency(model, structures, batches(x, y, 4), method))


def test_custom_loss_fn():
    """taylor / sosp-h(hessian) use loss_fn; references use the same loss."""
    model, structures, x, y = build("mlp")

    def smooth_ce(logits, targets):
        return F.cross_entropy(logits, targets, label_smoothing=0.2)

    from tests.criteria.brute import flat, theta_matrix, unflatten
    names, shapes, w0 = flat(model)

    def loss(w):
        return smooth_ce(functional_call(model, unflatten(names, shapes, w), (x,)), y)

    g = torch.autograd.functional.vjp(loss, w0)[1]
    H = torch.autograd.functional.hessian(loss, w0)
    Th = theta_matrix(model, structures)
    close(saliency(model, structures, batches(x, y, 4), "taylor", loss_fn=smooth_ce), (Th @ g).abs())
    close(saliency(model, structures, batches(x, y, 4), "sosp-h", loss_fn=smooth_ce, curvature="hessian"),
          (-(Th @ g) + 0.5 * Th @ (H @ Th.sum(0))).abs())
