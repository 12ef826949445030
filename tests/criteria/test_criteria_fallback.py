"""SOSP-H on models that cannot run in forward mode (no forward-mode derivative).

SOSP-H's Gauss-Newton product ``u = J θ_P`` is one forward-mode JVP. Fused kernels (CPU flash
attention behind ``F.scaled_dot_product_attention``, oneDNN LSTM, the ``TransformerEncoderLayer``
fast path) and ``autograd.Function`` s without ``setup_context`` (Bloom's GeLU) have no
forward-mode derivative; the JVP is then computed by double backward with the fused kernels
switched off. Checked: the fallback is taken, its scores match brute force (float64) or the
forward-mode scores computed with the fused kernels switched off by hand (float32), the global
flags are restored, and an unrelated error is not swallowed.
"""
from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

import prunekit
import prunekit.criteria.sosp as sosp_module
from tests.criteria.brute import N_SAMPLES, _hidden_units, brute_case, build_case, case_batches, expected
from prunekit.criteria import saliency, sosp_h_terms
from prunekit.core.structures import FrozenWarning


class SDPAClassifier(nn.Module):
    def __init__(self, dim=4, heads=2, head_dim=2, classes=3):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.ModuleList(nn.Linear(dim, heads * head_dim) for _ in range(3))
        self.proj = nn.Linear(heads * head_dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        n, t, _ = x.shape
        q, k, v = (lin(x).view(n, t, self.heads, self.head_dim).transpose(1, 2) for lin in self.qkv)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, -1)
        return self.head(torch.tanh(x + self.proj(o)).mean(1))


class LegacyTanh(torch.autograd.Function):
    """Old-style Function: forward(ctx, x), no setup_context, no jvp (like Bloom's GeLUFunction)."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)


class Legacy(nn.Module):
    def forward(self, x):
        return LegacyTanh.apply(x)


@contextlib.contextmanager
def _spy(calls: list):
    original = sosp_module.reference_kernels

    @contextlib.contextmanager
    def spy():
        calls.append(1)
        with original():
            yield

    sosp_module.reference_kernels = spy
    try:
        yield
    finally:
        sosp_module.reference_kernels = original


def _case(name):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    if name == "sdpa":
        model = SDPAClassifier().double().eval()
        inputs = torch.randn(N_SAMPLES, 3, 4, generator=gen).double()
        structures = list(prunekit.find_structures(model, inputs))
        assert any(s.kind == "head" for s in structures)
    else:
        model = nn.Sequential(nn.Linear(4, 5), Legacy(), nn.Linear(5, 3)).double().eval()
        inputs = torch.randn(N_SAMPLES, 4, generator=gen).double()
        structures = _hidden_units("", 5)
    targets = torch.randint(0, 3, (N_SAMPLES,), generator=gen)
    return {"model": model, "structures": structures, "inputs": inputs, "targets": targets, "options": {},
            "user": False, "mean_loss": F.cross_entropy,
            "forward": lambda params, x: functional_call(model, params, (x,))}


@pytest.mark.parametrize("name", ["sdpa", "legacy-function"])
def test_fallback_matches_brute_force(name):
    case = _case(name)
    with pytest.raises((RuntimeError, NotImplementedError)):  # the forward-mode JVP itself fails
        torch.func.jvp(lambda x: case["model"](x), (case["inputs"],), (case["inputs"],))
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel(SDPBackend.MATH):
        ref = brute_case(case, batch_size=4, with_hessian=False)
    calls = []
    with _spy(calls):
        got = saliency(case["model"], case["structures"], case_batches(case, 4), "sosp-h")
        terms = sosp_h_terms(case["model"], case["structures"], case_batches(case, 4))
    assert len(calls) == 4  # two batches, two calls
    want = expected(ref, "sosp-h")
    assert float(want.abs().max()) > 1e-6
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-12)
    Th = ref["Theta"]
    torch.testing.assert_close(terms["curvature"], Th @ (ref["G"] @ Th.sum(0)), rtol=1e-5, atol=1e-12)


class LSTMClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.lstm(x)[0].mean(1))


class EncoderClassifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), 1,
                                             enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def _flags():
    return (torch._C._get_mkldnn_enabled(), torch.backends.cudnn.enabled, torch.backends.mha.get_fastpath_enabled())


@pytest.mark.parametrize("name", ["lstm", "encoder"])
def test_fused_kernels_fall_back_to_the_same_scores(name):
    """float32 on the CPU: oneDNN LSTM / the encoder fast path have no forward-mode derivative; the
    fallback equals forward mode with those kernels switched off by hand."""
    torch.manual_seed(0)
    model = (LSTMClassifier() if name == "lstm" else EncoderClassifier()).eval()
    x = torch.randn(6, 5, 3 if name == "lstm" else 8)
    y = torch.randint(0, 3, (6,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FrozenWarning)
        structures = prunekit.find_structures(model, x)
    assert len(structures) > 0
    before = _flags()
    calls = []
    with _spy(calls):
        got = saliency(model, structures, (x, y), "sosp-h")
    assert calls == [1] and _flags() == before
    torch.backends.mha.set_fastpath_enabled(False)
    torch._C._set_mkldnn_enabled(False)
    try:  # (the attention heads are structures too: CPU flash attention has no forward derivative either)
        with _spy(calls), sdpa_kernel(SDPBackend.MATH):
            want = saliency(model, structures, (x, y), "sosp-h")
    finally:
        torch._C._set_mkldnn_enabled(before[0])
        torch.backends.mha.set_fastpath_enabled(before[2])
    assert calls == [1]  # forward mode worked without the fused kernels
    assert float(want.abs().max()) > 1e-6
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7 * float(want.abs().max()))


def test_other_errors_are_not_swallowed():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x):
            raise RuntimeError("broken model")

    s = [prunekit.core.structure_types.Structure(0, "lin", "unit", [("lin.weight", 0, [0]), ("lin.bias", 0, [0])])]
    calls = []
    with _spy(calls), pytest.raises(RuntimeError, match="broken model"):
        saliency(Broken(), s, (torch.randn(3, 2), torch.tensor([0, 1, 1])), "sosp-h")
    assert calls == []


# ------------------------------------------------------------------ OBD and SOSP-I without vmap

class CheckedSequential(nn.Sequential):
    """Python control flow on a tensor's value, as Hugging Face text models have: vmap cannot run it."""

    def forward(self, x):
        if not torch.isfinite(x).all():
            raise ValueError("non-finite input")
        return super().forward(x)


def _unvmappable(name):
    """A tests.criteria.brute case whose model vmap cannot run (control flow or a legacy autograd.Function)."""
    if name == "legacy-function":
        case = _case("legacy-function")
    else:
        case = build_case(name)
        model = CheckedSequential(*case["model"]).eval()
        case["model"] = model
        case["forward"] = lambda params, x: functional_call(model, params, (x,))
    with pytest.raises(RuntimeError):  # the precondition: vmap itself fails on this model
        torch.func.vmap(case["model"])(case["inputs"][:, None])
    return case


@pytest.mark.parametrize("name", ["tokens", "regression", "legacy-function"])
@pytest.mark.parametrize("method", ["obd", "sosp-i"])
def test_per_sample_loop_matches_brute_force(name, method):
    """Token cross-entropy with ignored tokens (one sample has none), MSE and [N, C] cross-entropy."""
    case = _unvmappable(name)
    ref = brute_case(case, batch_size=4, with_hessian=False)
    got = saliency(case["model"], case["structures"], case_batches(case, 4), method, **case["options"])
    want = expected(ref, method)
    assert float(want.abs().max()) > 1e-6
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-12)
    # chunks of two samples: the loop serves every chunk after vmap failed on the first
    again = saliency(case["model"], case["structures"], case_batches(case, 4), method, chunk_size=2,
                     **case["options"])
    torch.testing.assert_close(again, want, rtol=1e-5, atol=1e-12)
