"""Shared by the CTF tests: small models, inputs and synthetic tasks, and a threshold setter."""
import math

import torch

import prunekit
from prunekit.ctf import CTFMask

COARSE_OPEN = {"channel": 1e-6, "column": 1e-6, "row": 1e-6}


def gcn(seed=0, **kwargs):
    """The attention GCN of most tests: SBU graph, channels (8, 16), 4 heads."""
    torch.manual_seed(seed)
    args = dict(graph="sbu", channels=(8, 16), num_heads=4)
    args.update(kwargs)
    return prunekit.models.create("attention_gcn", **args)


def inputs(batch=4, frames=16, seed=1):
    """Seeded random skeleton inputs [batch, 3, frames, 30 joints]."""
    return torch.randn(batch, 3, frames, 30, generator=torch.Generator().manual_seed(seed))


def set_threshold(mask: CTFMask, granularity: str, value: float) -> None:
    """Set the threshold a of one factor (the shared head gate for 'channel') through ρ = softplus⁻¹(a)."""
    owner = mask.head_tie if granularity == "channel" and mask.head_tie is not None else mask
    rho = getattr(owner, f"a_{granularity}")
    with torch.no_grad():
        rho.fill_(value + math.log(-math.expm1(-value)))  # inverse softplus


def count_zeros(model, names):
    """(exact zeros, entries) over the named parameters."""
    params = dict(model.named_parameters())
    return sum(int((params[n] == 0).sum()) for n in names), sum(params[n].numel() for n in names)


def templates(shape, n=192, classes=4, seed=0):
    """Synthetic classification: a fixed random template per class × a random gain + noise."""
    g = torch.Generator().manual_seed(seed)
    bank = torch.randn(classes, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    X = bank[y] * (0.5 + torch.rand(n, *([1] * len(shape)), generator=g)) + torch.randn(n, *shape, generator=g)
    return X, y


def untuned(arch):
    """Two architectures CTF's defaults were not tuned on (those were tuned on the attention GCN)."""
    torch.manual_seed(0)
    if arch == "resnet":
        return prunekit.models.create("resnet20", in_channels=3, num_classes=4, width=0.25), (3, 12, 12)
    return prunekit.models.create("mlp", in_channels=1, num_classes=4, hidden=(48, 32), input_shape=(8, 8)), (1, 8, 8)
