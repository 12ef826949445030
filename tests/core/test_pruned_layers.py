"""The layers and hooks materialize adds so that a pruned normalised width stays exact."""
import copy
import pickle

import pytest
import torch
from torch import nn

from prunekit.core.pruned_layers import FullWidthRMS, PrunedGroupNorm, PrunedLayerNorm, make_full_width, pruned_norm_class

KEEP = [0, 2, 3, 5]


def _input(width=6, removed=(1, 4)):
    x = torch.randn(3, 5, width, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[..., list(removed)] = 0.0  # the masked model's removed channels
    return x


def test_pruned_layernorm_equals_the_full_layernorm_on_kept_channels():
    full = nn.LayerNorm(6, eps=1e-3).double()
    with torch.no_grad():
        full.weight.uniform_(0.5, 1.5), full.bias.uniform_(-1, 1)
    x = _input()
    small = PrunedLayerNorm(4, full_features=6, eps=1e-3).double()
    with torch.no_grad():
        small.weight.copy_(full.weight[KEEP]), small.bias.copy_(full.bias[KEEP])
    assert torch.allclose(small(x[..., KEEP]), full(x)[..., KEEP], atol=1e-12)
    # a plain LayerNorm over the kept channels is not the same thing
    plain = nn.LayerNorm(4, eps=1e-3).double()
    with torch.no_grad():
        plain.weight.copy_(full.weight[KEEP]), plain.bias.copy_(full.bias[KEEP])
    assert not torch.allclose(plain(x[..., KEEP]), full(x)[..., KEEP], atol=1e-3)


class LlamaStyleRMSNorm(nn.Module):
    def __init__(self, width, eps=1e-6, offset=False):
        super().__init__()
        self.weight, self.eps, self.offset = nn.Parameter(torch.rand(width, dtype=torch.float64) + 0.5), eps, offset

    def forward(self, x):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return y * ((1.0 + self.weight) if self.offset else self.weight)  # Gemma adds 1


def test_full_width_rms_hooks_keep_the_mean_over_the_original_width():
    for offset in (False, True):
        full = LlamaStyleRMSNorm(6, eps=1e-2, offset=offset)
        x = _input()
        small = LlamaStyleRMSNorm(4, eps=1e-2, offset=offset)
        with torch.no_grad():
            small.weight.copy_(full.weight[KEEP])
        expected = full(x)[..., KEEP]
        assert not torch.allclose(small(x[..., KEEP]), expected, atol=1e-3)
        FullWidthRMS(kept=4, full=6).attach(small)
        assert torch.allclose(small(x[..., KEEP]), expected, atol=1e-12)
        assert small.prunekit_full_width == 6


def _affine(norm):
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-1, 1)
    return norm


def _sliced(norm, keep):
    small = copy.deepcopy(norm)
    small.weight = nn.Parameter(norm.weight.detach()[keep].clone())
    small.bias = nn.Parameter(norm.bias.detach()[keep].clone())
    return small


def test_pruned_groupnorm_keeps_every_groups_statistics_over_its_original_channels():
    full = _affine(nn.GroupNorm(3, 9, eps=1e-3).double())
    x = torch.randn(2, 9, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    keep = [0, 2, 3, 4, 6]  # groups {0,1,2} {3,4,5} {6,7,8} lose 1, 1 and 2 channels
    x[:, [1, 5, 7, 8]] = 0.0
    small = _sliced(full, keep)
    with pytest.raises(RuntimeError, match="divisible"):  # a plain GroupNorm cannot even run
        small(x[:, keep])
    make_full_width(small, 9, keep)
    assert isinstance(small, PrunedGroupNorm) and small.num_channels == 5
    assert torch.allclose(small(x[:, keep]), full(x)[:, keep], atol=1e-12)
    # pruned again (indices into the 5 kept channels): still the original statistics
    again = [0, 2, 4]  # positions in keep: original channels 2 and 4 go as well
    x2 = x.clone()
    x2[:, [keep[1], keep[3]]] = 0.0
    small2 = _sliced(small, again)
    make_full_width(small2, 5, again)
    assert torch.allclose(small2(x2[:, [keep[i] for i in again]]), full(x2)[:, [keep[i] for i in again]], atol=1e-12)
    # the constructor builds the same layer
    direct = PrunedGroupNorm(3, 9, kept=keep, eps=1e-3).double()
    direct.load_state_dict(small.state_dict())
    assert torch.equal(direct(x[:, keep]), small(x[:, keep]))


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """A user's LayerNorm subclass for (N, C, H, W) inputs, as in ConvNeXt."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def test_layernorm_subclass_keeps_its_code_and_gets_full_width_statistics():
    full = _affine(ChannelsFirstLayerNorm(6, eps=1e-3).double())
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x[:, [1, 4]] = 0.0
    small = _sliced(full, KEEP)
    make_full_width(small, 6, KEEP)
    assert isinstance(small, ChannelsFirstLayerNorm) and type(small).__name__ == "PrunedChannelsFirstLayerNorm"
    assert small.normalized_shape == (4,) and small.full_features == 6
    assert torch.allclose(small(x[:, KEEP]), full(x)[:, KEEP], atol=1e-12)
    # whole-module pickling and deep copies rebuild the class
    for clone in (pickle.loads(pickle.dumps(small)), copy.deepcopy(small)):
        assert type(clone) is type(small) and torch.equal(clone(x[:, KEEP]), small(x[:, KEEP]))
    assert pruned_norm_class(ChannelsFirstLayerNorm) is type(small)
    assert pruned_norm_class(nn.LayerNorm) is PrunedLayerNorm and pruned_norm_class(nn.GroupNorm) is PrunedGroupNorm


def test_make_full_width_refuses_other_modules():
    with pytest.raises(TypeError, match="BatchNorm1d"):
        make_full_width(nn.BatchNorm1d(4), 4, [0, 1])
