"""Three tiny float64 models written as users write them, whose structures ``find_structures`` finds.

* ``transformer``: a pre-norm transformer block on ``[N, T, D]`` tokens (separate q / k / v
  Linear layers viewed as ``(heads, head_dim)``, ``q @ k.transpose(-2, -1) * scale``, softmax,
  heads merged, MLP, residuals, mean over tokens, classifier): heads, head dims, MLP neurons.
* ``flatten``: conv → BN → ReLU → conv → flatten → Linear → ReLU → Linear: the channels of both
  convolutions (the second coupled to a block of the flattened Linear's columns), hidden neurons.
* ``stgcn``: a PYSKL-style ST-GCN layer (1×1 conv to ``K·C`` channels, ``view(n, K, C, t, v)``,
  ``einsum('nkctv,kvw->nctw', x, A)``, BN, ReLU, pooling, Linear): output units and subsets.

They are cases of :func:`tests.criteria.brute.cached_case` like the hand-written ones.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import prunekit
from tests.criteria.brute import N_SAMPLES, _randomize_bn

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


FOUND = ["transformer", "flatten", "stgcn"]


def build_found_case(name: str) -> dict:
    """A brute-force case (float64, eval) whose structures come from ``find_structures``."""
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
