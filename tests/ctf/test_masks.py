"""The band-stop gate and the four-factor mask (prunekit.ctf.masks): values, groups, gradients."""
import math

import pytest
import torch
from torch import nn

from prunekit.ctf import CTFMask, band_stop
from prunekit.ctf.masks import threshold_value
from tests.ctf.helpers import COARSE_OPEN


def test_band_stop_is_a_band_stop_and_identity_at_zero_threshold():
    u = torch.tensor([0.0, 0.5, 0.99, 1.01, 3.0])
    assert band_stop(u, 1.0, 1e-3).tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0, 1.0], abs=1e-4)
    assert band_stop(-u, 1.0, 1e-3).tolist() == pytest.approx([0.0, 0.0, 0.0, 1.0, 1.0], abs=1e-4)  # symmetric
    assert band_stop(u, 0.0, 0.3).tolist() == pytest.approx([1.0] * 5, abs=1e-6)
    # exact value at a soft temperature: σ((u−a)/τ) + σ((−u−a)/τ)
    assert float(band_stop(torch.tensor(0.5), 1.0, 0.5)) == pytest.approx(
        1 / (1 + math.exp(1.0)) + 1 / (1 + math.exp(3.0)), rel=1e-6)


def test_band_stop_node_matches_autograd_of_the_formula():
    from prunekit.ctf.masks import _BandStop

    u = torch.linspace(-1.5, 1.5, 41, dtype=torch.float64).reshape(1, 41).repeat(3, 1).requires_grad_(True)
    a = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(3, 41, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    fused = band_stop(u, a, 0.3)
    assert fused.grad_fn is not None and "BandStop" in type(fused.grad_fn).__name__
    reference = torch.sigmoid((u - a) / 0.3) + torch.sigmoid((-u - a) / 0.3)
    assert torch.allclose(fused, reference, atol=1e-15)
    g_fused = torch.autograd.grad((fused * weights).sum(), (u, a))
    g_reference = torch.autograd.grad((reference * weights).sum(), (u, a))
    for x, y in zip(g_fused, g_reference):
        assert torch.allclose(x, y, rtol=1e-12, atol=1e-14)
    assert torch.autograd.gradcheck(lambda u, a: _BandStop.apply(u, a, 0.3), (u, a))


@pytest.mark.parametrize("granularity", ["channel", "column", "row"])
def test_a_closed_coarse_factor_removes_its_whole_group_whatever_the_entries(granularity):
    # weight [K·Cc, R] = [2·3, 4]; every entry has |w| ≥ 1 ≫ a_entry, so E ≈ 1 everywhere
    w = torch.full((6, 4), 3.0)
    w[::2] *= -1  # signs do not matter
    k_view = w.view(2, 3, 4)
    if granularity == "channel":
        k_view[1] = 1.0      # block 1: rms 1
    elif granularity == "column":
        k_view[:, 2] = -1.0  # column (output unit) 2 = rows {2, 5}: rms 1
    else:
        k_view[:, :, 0] = 1.0  # row (input unit) 0: rms 1
    a = {"channel": 1e-6, "column": 1e-6, "row": 1e-6, "entry": 0.1}
    a[granularity] = 2.0  # between the closed group's rms (1) and the others' (≥ 2.2)
    mask = CTFMask(w.shape, blocks=2, scale=1.0, a_init=a)
    mask.temperature.value = 0.01
    with torch.no_grad():
        factors = mask.factors(w)
        psi = mask.mask(w).view(2, 3, 4)
    assert float(factors["entry"].min()) > 0.999
    closed = {"channel": psi[1], "column": psi[:, 2], "row": psi[:, :, 0]}[granularity]
    assert float(closed.max()) < 1e-6
    rest = psi.clone()
    {"channel": lambda t: t[1].fill_(1.0), "column": lambda t: t[:, 2].fill_(1.0),
     "row": lambda t: t[:, :, 0].fill_(1.0)}[granularity](rest)
    assert float(rest.min()) > 0.99
    # the forward of the parametrization zeroes the group exactly as ψ says
    assert torch.equal(mask(w), w * mask.mask(w))


def test_with_every_coarse_factor_open_the_entry_factor_alone_decides():
    torch.manual_seed(0)
    w = torch.randn(12, 5, 3)
    mask = CTFMask(w.shape, blocks=3, scale=1.0, a_init={**COARSE_OPEN, "entry": 0.7})
    mask.temperature.value = 0.05
    a = float(mask.threshold("entry").detach())
    assert a == pytest.approx(0.7, rel=1e-5)
    psi = mask.mask(w).detach()
    assert torch.allclose(psi, band_stop(w.abs(), a, 0.05), atol=1e-4)
    binary = psi > 0.5
    assert torch.equal(binary, w.abs() > a)
    assert 0.2 < binary.float().mean() < 0.8  # a real mix of kept and pruned entries


def test_gradients_reach_the_latent_weight_through_both_paths():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, dtype=torch.float64, requires_grad=True)
    mask = CTFMask(w.shape, blocks=2, scale=1.0,
                   a_init={"channel": 0.6, "column": 0.7, "row": 0.5, "entry": 0.6}).double()
    mask.temperature.value = 0.4
    g_out = torch.randn(6, 4, 3, dtype=torch.float64)
    total = torch.autograd.grad((mask(w) * g_out).sum(), w)[0]
    direct = mask.mask(w).detach() * g_out                                          # ∂/∂Ŵ through the Ŵ factor
    through_psi = torch.autograd.grad((w.detach() * mask.mask(w) * g_out).sum(), w)[0]  # through ψ(Ŵ)
    assert torch.allclose(total, direct + through_psi, atol=1e-12)
    assert direct.norm() > 0.1 and through_psi.norm() > 0.1
    assert (total - direct).norm() / total.norm() > 0.05  # the ψ path is not negligible
    # and the analytic gradient matches finite differences
    assert torch.autograd.gradcheck(lambda t: mask(t), (w,), eps=1e-6, atol=1e-6)
    # thresholds receive gradient too
    rho = mask.a_entry
    assert rho.requires_grad and not isinstance(rho, nn.Parameter)
    (mask(w) * g_out).sum().backward()
    assert rho.grad is not None and float(rho.grad.abs()) > 0


def test_threshold_is_the_softplus_of_rho():
    rho = torch.tensor([-3.0, 0.0, 2.0])
    assert threshold_value(rho).tolist() == pytest.approx([math.log1p(math.exp(-3.0)), math.log(2),
                                                           2.0 + math.log1p(math.exp(-2.0))], rel=1e-6)
    mask = CTFMask((4, 3), a_init={"entry": 0.7, **COARSE_OPEN})
    assert float(mask.threshold("entry").detach()) == pytest.approx(0.7, rel=1e-6)  # stored as softplus⁻¹(0.7)
