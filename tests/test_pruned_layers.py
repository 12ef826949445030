"""The layers and hooks materialize adds so that a pruned normalised width stays exact."""
import torch
from torch import nn

from prunekit.pruned_layers import FullWidthRMS, PrunedLayerNorm

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
