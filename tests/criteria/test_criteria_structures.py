"""Exactness of the criteria on structures found by ``prunekit.find_structures`` (none written by hand).

Three tiny float64 models, written here as users write them:

* ``transformer``: an embedding-free pre-norm transformer block on ``[N, T, D]`` tokens:
  LayerNorm, multi-head self-attention with separate q / k / v Linear layers viewed as
  ``(heads, head_dim)``, ``q @ k.transpose(-2, -1) * self.scale``, softmax, heads merged,
  output Linear, residual; LayerNorm, MLP Linear → GELU → Linear, residual; mean over tokens;
  Linear classifier. Structures: attention heads, head dims (tied across q, k, v and heads;
  they overlap the heads) and MLP neurons.
* ``flatten``: conv → BN → ReLU → conv → flatten → Linear → ReLU → Linear. Structures: the
  channels of both convolutions (the second one's coupled to a block of the flattened Linear's
  columns) and the hidden neurons.
* ``stgcn``: a PYSKL-style ST-GCN layer with plain modules: a 1×1 conv to ``K·C`` channels,
  ``x.view(n, K, C, t, v)``, ``torch.einsum('nkctv,kvw->nctw', x, A)`` with an adjacency buffer
  ``A`` (K, V, V), BN, ReLU, mean pooling, Linear. Structures: output units (``K`` conv rows
  each, with the BN channel) and the ``K`` subsets (``C`` conv rows each; they overlap the units).

On these structures ``taylor``, ``obd``, ``sosp-h`` (Gauss-Newton, exact Hessian, without the
first-order term) and ``sosp-i`` match the brute-force references of ``tests.criteria.brute`` (explicit
gradient, Hessian, per-sample Fisher, ``G = Jᵀ (∇²_f L) J`` from the full Jacobian and the autograd
Hessian of the loss w.r.t. the outputs) to 1e-5 relative, with the data in two batches (4 + 2).
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import prunekit
from tests.criteria.brute import N_SAMPLES, _randomize_bn, brute_case, case_batches, expected
from prunekit.criteria import saliency, sosp_h_terms, sosp_i_pairwise

RTOL = 1e-5
N_CLASSES = 3


class TransformerBlock(nn.Module):
    def __init__(self, dim=6, num_heads=2, head_dim=3, mlp=5, classes=N_CLASSES):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.scale = head_dim ** -0.5
        inner = num_heads * head_dim
        self.norm1 = nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.proj = nn.Linear(inner, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)
        self.head = nn.Linear(dim, classes)

    def _heads(self, x, n, t):
        return x.view(n, t, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x):
        n, t, _ = x.shape
        h = self.norm1(x)
        q, k, v = self._heads(self.q(h), n, t), self._heads(self.k(h), n, t), self._heads(self.v(h), n, t)
        attn = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)
        merged = (attn @ v).transpose(1, 2).reshape(n, t, self.num_heads * self.head_dim)
        x = x + self.proj(merged)
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(x.mean(dim=1))


class FlattenClassifier(nn.Module):
    def __init__(self, classes=N_CLASSES):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 3, stride=2)  # 5×5 → 2×2
        self.fc1 = nn.Linear(3 * 2 * 2, 5)
        self.fc2 = nn.Linear(5, classes)

    def forward(self, x):
        x = self.conv2(torch.relu(self.bn(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class STGCN(nn.Module):
    """PYSKL's unit_gcn in its simplest form: conv to K·C channels, split into K subsets, each
    aggregated over the graph by its own adjacency A[k], summed over k."""

    def __init__(self, adjacency, in_channels=2, channels=4, classes=N_CLASSES):
        super().__init__()
        self.num_subsets = adjacency.shape[0]
        self.register_buffer("A", adjacency)
        self.conv = nn.Conv2d(in_channels, self.num_subsets * channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, classes)

    def forward(self, x):
        x = self.conv(x)
        n, kc, t, v = x.shape
        x = x.view(n, self.num_subsets, kc // self.num_subsets, t, v)
        x = torch.einsum("nkctv,kvw->nctw", x, self.A).contiguous()
        x = torch.relu(self.bn(x))
        return self.fc(x.mean(dim=(2, 3)))


MODELS = ["transformer", "flatten", "stgcn"]


def _build(name: str) -> dict:
    """A ``tests.criteria.brute`` case (float64, eval) whose structures come from ``find_structures``."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(7)
    n = N_SAMPLES
    if name == "transformer":
        model = TransformerBlock()
        inputs = torch.randn(n, 4, 6, generator=gen)
    elif name == "flatten":
        model = FlattenClassifier()
        _randomize_bn(model.bn, gen)
        inputs = torch.randn(n, 2, 5, 5, generator=gen)
    elif name == "stgcn":
        model = STGCN(torch.rand(3, 5, 5, generator=gen))
        _randomize_bn(model.bn, gen)
        inputs = torch.randn(n, 2, 3, 5, generator=gen)
    else:
        raise KeyError(name)
    model = model.double().eval()
    inputs = inputs.double()
    structures = prunekit.find_structures(model, inputs)
    targets = torch.randint(0, N_CLASSES, (n,), generator=gen)
    return {"model": model, "structures": list(structures), "found": structures, "inputs": inputs,
            "targets": targets, "options": {}, "user": False, "mean_loss": F.cross_entropy,
            "forward": lambda params, x: functional_call(model, params, (x,))}


@functools.lru_cache(maxsize=None)
def _cached(name):
    case = _build(name)
    return case, brute_case(case, batch_size=4)


def close(actual, wanted, rtol=RTOL):
    torch.testing.assert_close(actual, wanted.to(actual.dtype), rtol=rtol,
                               atol=1e-12 * (1 + float(wanted.abs().max())))


def _rows(structure, name):
    return sorted({i for p, dim, idx in structure.slices if p == name and dim == 0 for i in idx})


def test_transformer_block_has_heads_head_dims_and_mlp_neurons():
    case, _ = _cached("transformer")
    structures = case["structures"]
    heads = [s for s in structures if s.kind == "head"]
    assert sorted(tuple(_rows(s, "q.weight")) for s in heads) == [(0, 1, 2), (3, 4, 5)]
    for s in heads:  # a head removes the same rows of q, k and v and the matching columns of proj
        assert _rows(s, "k.weight") == _rows(s, "v.weight") == _rows(s, "q.weight")
        assert {(p, d) for p, d, _ in s.consumers} >= {("proj.weight", 1)}
    dims = [s for s in structures if s.kind != "head" and _rows(s, "q.weight")]
    assert sorted(tuple(_rows(s, "q.weight")) for s in dims) == [(0, 3), (1, 4), (2, 5)]  # index j of every head
    mlp = [s for s in structures if _rows(s, "fc1.weight")]
    assert sorted(tuple(_rows(s, "fc1.weight")) for s in mlp) == [(j,) for j in range(5)]
    for s in mlp:
        assert [(p, d, list(i)) for p, d, i in s.consumers] == [("fc2.weight", 1, _rows(s, "fc1.weight"))]
    # the residual stream is normalised by LayerNorm: frozen, so nothing else
    assert len(structures) == len(heads) + len(dims) + len(mlp) == 10


def test_flatten_classifier_couples_conv_channels_to_linear_columns():
    case, _ = _cached("flatten")
    structures = case["structures"]
    conv1 = [s for s in structures if _rows(s, "conv1.weight")]
    assert sorted(tuple(_rows(s, "conv1.weight")) for s in conv1) == [(c,) for c in range(4)]
    for s in conv1:  # BN affine parameters are produced with the channel
        assert _rows(s, "bn.weight") == _rows(s, "bn.bias") == _rows(s, "conv1.weight")
    conv2 = [s for s in structures if _rows(s, "conv2.weight")]
    assert len(conv2) == 3
    for s in conv2:  # channel c of conv2 feeds the 2×2 = 4 flattened columns 4c..4c+3 of fc1
        (c,) = _rows(s, "conv2.weight")
        columns = [list(i) for p, d, i in s.consumers if p == "fc1.weight" and d == 1]
        assert columns == [[4 * c + j for j in range(4)]]
    hidden = [s for s in structures if _rows(s, "fc1.weight")]
    assert sorted(tuple(_rows(s, "fc1.weight")) for s in hidden) == [(j,) for j in range(5)]
    assert len(structures) == 12


def test_stgcn_has_units_and_subsets():
    case, _ = _cached("stgcn")
    structures = case["structures"]
    k, c = 3, 4
    units = [s for s in structures if _rows(s, "bn.weight")]
    assert sorted(tuple(_rows(s, "conv.weight")) for s in units) == [tuple(u + c * j for j in range(k))
                                                                     for u in range(c)]
    subsets = [s for s in structures if not _rows(s, "bn.weight")]
    assert sorted(tuple(_rows(s, "conv.weight")) for s in subsets) == [tuple(range(c * j, c * j + c))
                                                                       for j in range(k)]
    for s in subsets:  # a subset's adjacency A[k] is read with it
        assert [p for p, _, _ in s.consumers] == ["A"]
    assert len(structures) == k + c


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method,options", [("taylor", {}), ("obd", {}), ("sosp-h", {}),
                                            ("sosp-h", {"curvature": "hessian"}),
                                            ("sosp-h", {"first_order": False}), ("sosp-i", {})])
def test_matches_brute_force(name, method, options):
    case, ref = _cached(name)
    got = saliency(case["model"], case["found"], case_batches(case, 4), method, **options)
    want = expected(ref, method, options.get("curvature", "gauss-newton"), options.get("first_order", True))
    assert got.shape == (len(case["structures"]),) and got.dtype == torch.float64
    assert float(want.abs().max()) > 1e-6  # not a vacuous comparison
    close(got, want)


@pytest.mark.parametrize("name", MODELS)
def test_signed_terms_match_brute_force(name):
    """θ_sᵀ g and θ_sᵀ G θ_P (SOSP-H) and the whole Q = Θ G Θᵀ (SOSP-I): overlapping structures
    (heads and head dims, subsets and units) have non-zero off-diagonal terms."""
    case, ref = _cached(name)
    model, structures, Th = case["model"], case["found"], ref["Theta"]
    terms = sosp_h_terms(model, structures, case_batches(case, 4))
    close(terms["gradient"], Th @ ref["g"])
    close(terms["curvature"], Th @ (ref["G"] @ Th.sum(0)))
    stats = sosp_i_pairwise(model, structures, case_batches(case, 4))
    close(stats.Q, Th @ ref["G"] @ Th.T)
    assert stats.num_samples == N_SAMPLES
