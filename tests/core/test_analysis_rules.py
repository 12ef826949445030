"""Rules added for patterns found in users' models: norms over pruned widths, restrides,
width attributes used as numbers. Each: what is prunable, and materialized == masked."""
from __future__ import annotations

import math
import random

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import prunekit
from prunekit.core.materialize import output_error
from prunekit.core.plan import PruningPlan, collapse_guard
from prunekit.core.pruned_layers import PrunedGroupNorm


def _exact_at(model, x, fraction=0.5, seed=0):
    """Random admissible plan: the materialized model's output against the masked model's."""
    structures = prunekit.find_structures(model, x)
    order = list(range(len(structures)))
    random.Random(seed).shuffle(order)
    admissible = collapse_guard(structures, order)
    plan = PruningPlan.from_removed(structures, admissible[: round(fraction * len(admissible))])
    small = prunekit.materialize(model, plan, structures, example_inputs=x)
    with torch.no_grad():
        return small, output_error(prunekit.apply_masks(model, plan, structures)(x), small(x))


def _affine_random(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.GroupNorm, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
    return model


def test_groupnorm_channels_are_prunable_one_by_one_and_exact():
    model = _affine_random(nn.Sequential(nn.Conv2d(3, 12, 3), nn.GroupNorm(3, 12), nn.ReLU(),
                                         nn.Conv2d(12, 8, 3), nn.GroupNorm(2, 8), nn.ReLU(),
                                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))).eval()
    x = torch.randn(2, 3, 12, 12)
    structures = prunekit.find_structures(model, x)
    assert sorted(len(g.members) for g in structures.groups) == [8, 12]  # every channel, not whole groups
    small, err = _exact_at(model, x)
    assert err <= 1e-5
    norms = [m for m in small.modules() if isinstance(m, nn.GroupNorm)]
    assert all(isinstance(m, PrunedGroupNorm) for m in norms)
    assert [m.num_channels for m in norms] == [m.weight.shape[0] for m in norms]


def test_groupnorm_after_a_dirty_width_stays_frozen():
    class Shifted(nn.Module):  # + 1 makes removed channels non-zero before the norm
        def __init__(self):
            super().__init__()
            self.conv, self.norm, self.head = nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.norm(self.conv(x) + 1.0).mean((2, 3)))

    structures = prunekit.find_structures(Shifted().eval(), torch.randn(2, 3, 8, 8))
    assert len(structures) == 0 and structures.frozen["share"] == 1.0


class ChannelsFirstNorm(nn.LayerNorm):
    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_layernorm_subclass_channels_first_is_exact():
    model = _affine_random(nn.Sequential(nn.Conv2d(3, 16, 3), ChannelsFirstNorm(16), nn.GELU(),
                                         nn.Conv2d(16, 4, 1))).eval()
    x = torch.randn(2, 3, 10, 10)
    small, err = _exact_at(model, x, fraction=0.6)
    assert err <= 1e-5
    norm = small[1]
    assert isinstance(norm, ChannelsFirstNorm) and norm.full_features == 16 and norm.weight.shape[0] < 16


class ScaledAttention(nn.Module):
    """Scale computed from the width attribute in forward (MobileViT): head dims must stay."""

    def __init__(self, dim=16, heads=4):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, -1, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        return self.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(B, N, -1))


def test_attribute_used_as_a_scale_freezes_the_width_it_sizes():
    model = ScaledAttention().eval()
    x = torch.randn(2, 5, 16)
    structures = prunekit.find_structures(model, x, probe=False)  # the analysis alone must see it
    kinds = {g.kind for g in structures.groups}
    assert "head" in kinds
    head_dims = [s for s in structures if s.layer == "qkv" and s.kind != "head"]
    assert not head_dims, "head dims are sized by head_dim, which forward also uses as a number"
    small, err = _exact_at(model, x, fraction=0.5)
    assert err <= 1e-6 and small.head_dim == 4


def test_restride_of_size_one_dims_is_followed_and_other_as_strided_is_frozen():
    class Pooled(nn.Module):  # AdaptiveAvgPool1d on a transposed input emits as_strided_ (Swin's pooler)
        def __init__(self, restride=True):
            super().__init__()
            self.a, self.b, self.restride = nn.Linear(4, 8), nn.Linear(8, 2), restride

        def forward(self, x):
            h = torch.relu(self.a(x))  # B, L, 8
            if self.restride:
                pooled = F.adaptive_avg_pool1d(h.transpose(1, 2), 1).flatten(1)
            else:
                pooled = h.as_strided((h.shape[0], 8), (h.stride(0), 1))  # the first token, by strides
            return self.b(pooled)

    x = torch.randn(2, 6, 4)
    assert {s.layer for s in prunekit.find_structures(Pooled().eval(), x)} == {"a"}
    small, err = _exact_at(Pooled().eval(), x)
    assert err <= 1e-6
    with pytest.warns(prunekit.core.structures.FrozenWarning, match="as_strided"):
        assert len(prunekit.find_structures(Pooled(restride=False).eval(), x)) == 0


def test_weight_norm_parametrization_and_l2_normalize_keep_widths_prunable():
    class Audio(nn.Module):  # wav2vec2's positional conv (weight norm over dim 2) and an L2-normalised embedding
        def __init__(self):
            super().__init__()
            self.a = nn.Conv1d(4, 12, 3, padding=1)
            self.pos = nn.utils.parametrizations.weight_norm(nn.Conv1d(12, 12, 5, padding=2, groups=3), dim=2)
            self.proj = nn.Linear(12, 6)

        def forward(self, x):
            h = torch.relu(self.a(x))
            h = h + self.pos(h)
            return F.normalize(self.proj(h.mean(-1)), dim=1)

    x = torch.randn(2, 4, 9)
    structures = prunekit.find_structures(Audio().eval(), x)
    assert {"a"} <= {s.layer for s in structures}
    assert structures.frozen["share"] < 0.2  # only proj's outputs (they reach the output) stay
    small, err = _exact_at(Audio().eval(), x, fraction=0.5)
    assert err <= 1e-6


def test_a_norm_over_a_pruned_width_of_another_order_is_frozen():
    class P3(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

        def forward(self, x):
            h = self.a(x)
            return self.b(h / torch.linalg.vector_norm(h, ord=3, dim=1, keepdim=True))

    assert len(prunekit.find_structures(P3().eval(), torch.randn(3, 4))) == 0


def test_a_tensor_cache_filled_by_forward_is_recomputed_not_reused():
    class CachedBias(nn.Module):  # LeViT: per-head attention biases cached in a dict on the first eval call
        def __init__(self, heads=4, n=5):
            super().__init__()
            self.heads, self.qkv = heads, nn.Linear(8, 3 * heads * 2)
            self.bias = nn.Parameter(torch.randn(heads, n, n))
            self.out = nn.Linear(heads * 2, 3)
            self.cache = {}

        def forward(self, x):
            B, N, _ = x.shape
            q, k, v = self.qkv(x).view(B, N, 3, self.heads, 2).permute(2, 0, 3, 1, 4)
            if "b" not in self.cache:
                self.cache["b"] = self.bias * 1.0
            scores = (q @ k.transpose(-1, -2) + self.cache["b"]).softmax(-1)
            return self.out((scores @ v).transpose(1, 2).reshape(B, N, -1))

    model, x = CachedBias().eval(), torch.randn(2, 5, 8)
    model(x)  # the cache is filled before the analysis, as in a user's session
    cached = model.cache["b"]
    structures = prunekit.find_structures(model, x)
    assert [g.size for g in structures.groups] == [4]  # the heads, with the bias (head dims: a literal 2)
    assert model.cache["b"] is cached  # the user's cache is back
    small, err = _exact_at(model, x, fraction=0.5)
    assert err <= 1e-6 and small.cache["b"].shape[0] == small.bias.shape[0] < 4


def test_grouped_matmul_contracts_its_inner_width_and_counts_its_macs():
    class MoE(nn.Module):  # transformers' grouped-mm experts: rows sorted by expert, one matrix per expert
        def __init__(self):
            super().__init__()
            self.up = nn.Linear(8, 16)
            self.experts = nn.Parameter(torch.randn(2, 16, 8) / 4)
            self.head = nn.Linear(8, 3)

        def forward(self, x):  # x: (T, 8), the first half of the rows to expert 0
            h = torch.relu(self.up(x))
            offs = torch.tensor([x.shape[0] // 2, x.shape[0]], dtype=torch.int32)
            return self.head(torch._grouped_mm(h, self.experts, offs=offs))

    model, x = MoE().eval(), torch.randn(8, 8)
    structures = prunekit.find_structures(model, x, probe=False)
    assert {g.root for g in structures.groups} >= {"up"}  # up's 16 units feed the grouped contraction
    assert prunekit.count(model, x)["macs"] == 8 * 8 * 16 + 8 * 16 * 8 + 8 * 8 * 3
    assert structures.total_macs == prunekit.count(model, x)["macs"]
