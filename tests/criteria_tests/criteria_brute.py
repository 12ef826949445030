"""Tiny float64 models, hand-made structures and brute-force references for the criteria tests.

The references never use prunekit.criteria: explicit per-sample Jacobians of the logits
w.r.t. the flattened parameters, explicit G = (1/N) Σ J_nᵀ Λ_n J_n, the explicit Hessian
of the mean loss, the explicit gradient, a per-sample loop for the Fisher diagonal, and
θ_s vectors built from boolean masks of the slices.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.functional import hessian, jacobian
from torch.func import functional_call

from prunekit.models.layers import GraphConv, MultiHeadGraphAttention
from prunekit.structure_types import Structure

N_SAMPLES = 6


def _unit(k, layer, slices, kind="unit"):
    return Structure(id=k, layer=layer, kind=kind, slices=slices)


def _randomize_bn(bn: nn.BatchNorm2d, gen: torch.Generator):
    with torch.no_grad():
        bn.weight.copy_(1 + 0.3 * torch.randn(bn.weight.shape, generator=gen, dtype=bn.weight.dtype))
        bn.bias.copy_(0.2 * torch.randn(bn.bias.shape, generator=gen, dtype=bn.bias.dtype))
        bn.running_mean.copy_(0.1 * torch.randn(bn.running_mean.shape, generator=gen, dtype=bn.running_mean.dtype))
        bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=gen, dtype=bn.running_var.dtype))


class Residual(nn.Module):
    """Two convolutions whose outputs are added: channel k of both is one coupled structure."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 3, 1)
        self.b = nn.Conv2d(2, 3, 3, padding=1)
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        y = torch.relu(self.a(x) + self.b(x))
        return self.head(y.mean(dim=(2, 3)))


class TinyGCN(nn.Module):
    def __init__(self, adjacency):
        super().__init__()
        self.gc = GraphConv(2, 4, adjacency)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.gc(x)).mean(dim=(2, 3)))


class TinyAttention(nn.Module):
    """Multi-head graph attention: its heads overlap its output units (shared value rows)."""

    def __init__(self, adjacency):
        super().__init__()
        self.att = MultiHeadGraphAttention(2, 3, adjacency, num_heads=2, key_dim=2)
        self.head = nn.Linear(3, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.att(x)).mean(dim=(2, 3)))


def build(name: str, seed: int = 0):
    """``(model, structures, inputs, targets)`` for one of the tiny test models (float64, eval)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 100)
    n = N_SAMPLES
    if name in ("mlp", "mlp-overlap", "tanh-mlp"):
        act = nn.Tanh if name == "tanh-mlp" else nn.ReLU
        model = nn.Sequential(nn.Linear(4, 6), act(), nn.Linear(6, 5), act(), nn.Linear(5, 3))
        x = torch.randn(n, 4, generator=gen)
        units0 = [_unit(k, "0", [("0.weight", 0, [k]), ("0.bias", 0, [k])]) for k in range(6)]
        units2 = [_unit(6 + k, "2", [("2.weight", 0, [k]), ("2.bias", 0, [k])]) for k in range(5)]
        structures = units0 + units2
        if name == "mlp-overlap":  # overlapping structures: columns of layer 2 and a two-dim slice
            cols = [_unit(11 + j, "2", [("2.weight", 1, [j])], kind="column") for j in range(6)]
            odd = _unit(17, "2", [("2.weight", 0, [0]), ("2.weight", 1, [1]), ("2.weight", 0, [0, 0])], kind="odd")
            dup = _unit(18, "4", [("4.weight", 0, [1, 1]), ("4.weight", 0, [1]), ("4.bias", 0, [1])])
            structures = units2 + cols + [odd, dup]
    elif name == "cnn":
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                              nn.Conv2d(4, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 3))
        _randomize_bn(model[1], gen)
        _randomize_bn(model[4], gen)
        x = torch.randn(n, 2, 4, 4, generator=gen)
        structures = []
        for conv, bn, width in (("0", "1", 4), ("3", "4", 3)):
            for k in range(width):
                structures.append(_unit(len(structures), conv, [
                    (f"{conv}.weight", 0, [k]), (f"{conv}.bias", 0, [k]),
                    (f"{bn}.weight", 0, [k]), (f"{bn}.bias", 0, [k])], kind="channel"))
    elif name == "residual":
        model = Residual()
        x = torch.randn(n, 2, 4, 4, generator=gen)
        structures = [_unit(k, "a+b", [("a.weight", 0, [k]), ("a.bias", 0, [k]),
                                       ("b.weight", 0, [k]), ("b.bias", 0, [k])], kind="channel")
                      for k in range(3)]
        structures.append(_unit(3, "head", [("head.weight", 0, [0]), ("head.bias", 0, [0])]))
    elif name == "gcn":
        model = TinyGCN(torch.rand(3, 5, 5, generator=gen))
        with torch.no_grad():
            model.gc.edge_importance.add_(0.1 * torch.randn(model.gc.edge_importance.shape, generator=gen))
        x = torch.randn(n, 2, 3, 5, generator=gen)
        structures = [_unit(c, "gc", [("gc." + p, d, i) for p, d, i in model.gc.out_channel_slices([c])])
                      for c in range(4)]
    elif name == "attention":
        model = TinyAttention(torch.rand(3, 5, 5, generator=gen))
        x = torch.randn(n, 2, 3, 5, generator=gen)
        att = model.att
        units = [[("att." + p, d, i) for p, d, i in att.out_channel_slices([c])] for c in range(3)]
        heads = [[("att." + p, d, i) for p, d, i in h] for h in att.internal_structures()]
        structures = [_unit(k, "att", sl, kind="unit" if k < 3 else "head") for k, sl in enumerate(units + heads)]
    else:
        raise KeyError(name)
    model = model.double().eval()
    x = x.double()
    y = torch.randint(0, 3, (n,), generator=gen)
    return model, structures, x, y


def flat(model):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    w = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])
    return names, shapes, w


def unflatten(names, shapes, w):
    out, i = {}, 0
    for n, s in zip(names, shapes):
        k = int(torch.Size(s).numel())
        out[n] = w[i:i + k].view(s)
        i += k
    return out


def theta_matrix(model, structures):
    """Rows θ_s: θ on the union of the slices of s, zero elsewhere; shape [|S|, P]."""
    names, shapes, w = flat(model)
    rows = []
    for s in structures:
        masks = {n: torch.zeros(sh, dtype=torch.bool) for n, sh in zip(names, shapes)}
        for name, dim, idxs in s.slices:
            index = [slice(None)] * len(masks[name].shape)
            index[dim] = torch.tensor(list(idxs), dtype=torch.long)
            masks[name][tuple(index)] = True
        mask = torch.cat([masks[n].reshape(-1) for n in names])
        rows.append(torch.where(mask, w, torch.zeros_like(w)))
    return torch.stack(rows)


def brute(model, structures, x, y, with_hessian=True):
    """Brute-force g, G, H, F (diagonal empirical Fisher), Θ for the mean cross-entropy."""
    model.eval()
    names, shapes, w0 = flat(model)

    def logits(w, inputs=x):
        return functional_call(model, unflatten(names, shapes, w), (inputs,))

    def loss(w):
        return F.cross_entropy(logits(w), y)

    n = x.shape[0]
    J = jacobian(logits, w0)  # [N, C, P]: sample n's logits depend on sample n only
    with torch.no_grad():
        p = torch.softmax(logits(w0), dim=1)
    lam = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)  # [N, C, C]
    G = torch.einsum("ncp,ncd,ndq->pq", J, lam, J) / n
    g = torch.autograd.functional.vjp(loss, w0)[1]
    H = hessian(loss, w0) if with_hessian else None
    per_sample = []
    for i in range(n):
        wi = w0.clone().requires_grad_()
        (gi,) = torch.autograd.grad(F.cross_entropy(logits(wi, x[i:i + 1]), y[i:i + 1]), wi)
        per_sample.append(gi)
    fisher = torch.stack(per_sample).square().mean(0)
    theta = theta_matrix(model, structures)
    return {"g": g, "G": G, "H": H, "F": fisher, "Theta": theta, "w": w0, "J": J, "loss": loss}


@functools.lru_cache(maxsize=None)
def cached(name):
    model, structures, x, y = build(name)
    return model, structures, x, y, brute(model, structures, x, y)


def expected(ref, method, curvature="gauss-newton", first_order=True):
    """Brute-force scores from the METHODS.md formulas."""
    Th, g = ref["Theta"], ref["g"]
    gt = Th @ g
    if method == "taylor":
        return gt.abs()
    if method == "obd":
        return 0.5 * (Th.square() * ref["F"]).sum(1)
    if method == "sosp-h":
        C = ref["G"] if curvature == "gauss-newton" else ref["H"]
        theta_p = Th.sum(0)
        return ((-gt if first_order else 0) + 0.5 * Th @ (C @ theta_p)).abs()
    if method == "sosp-i":
        Q = Th @ ref["G"] @ Th.T
        return gt.abs() + 0.5 * Q.abs().sum(1)
    if method == "l1":
        return Th.abs().sum(1)
    if method == "l2":
        return Th.square().sum(1).sqrt()
    raise KeyError(method)


def batches(x, y, size):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, x.shape[0], size)]
