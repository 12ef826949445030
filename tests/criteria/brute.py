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
from prunekit.core.structure_types import Structure

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
    """Brute-force scores from the docs/methods.md formulas."""
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


# ---------------------------------------------------------------------------------------------------
# Models with other inputs, outputs and losses: token classification, regression, dict / tuple inputs,
# dict / dataclass / tuple outputs, user losses. The reference is the Gauss-Newton matrix of the mean
# loss actually optimised, G = Jᵀ (∇²_f L) J, with ∇²_f L the autograd Hessian of that loss w.r.t. the
# whole output of all samples: no closed-form Λ is written here.
# ---------------------------------------------------------------------------------------------------

import dataclasses  # noqa: E402

T_TOKENS, N_CLASSES = 4, 3


@dataclasses.dataclass
class TinyOutput:
    """A ModelOutput-like dataclass: ``logits`` is not the first field."""

    hidden: torch.Tensor
    logits: torch.Tensor
    aux: object = None


class KeywordModel(nn.Module):
    """``model(x=..., shift=..., flag=...)``: ``shift`` [C] is shared by all samples, ``flag`` a bool."""

    def __init__(self, returns="dict"):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, N_CLASSES))
        self.returns = returns

    def forward(self, x, shift, flag=True):
        h = self.body[1](self.body[0](x))
        logits = self.body[2](h) + (shift if flag else 0)
        if self.returns == "dict":
            return {"hidden": h, "logits": logits, "note": "not a tensor"}
        return TinyOutput(hidden=h, logits=logits)


class PositionalModel(nn.Module):
    """``model(x, gate)`` with two batched positional inputs, returning ``(hidden, output)``."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))

    def forward(self, x, gate):
        h = self.body[1](self.body[0](x)) * gate
        return h, self.body[2](h)


def _hidden_units(prefix, width, first="0", second="2"):
    """One structure per hidden neuron: its row (and bias) in the first layer and its column in the second."""
    p = f"{prefix}." if prefix else ""
    return [_unit(j, first, [(f"{p}{first}.weight", 0, [j]), (f"{p}{first}.bias", 0, [j]),
                             (f"{p}{second}.weight", 1, [j])]) for j in range(width)]


def weighted_token_ce(out, targets):
    """A user loss: class-weighted token cross-entropy (ignore_index -100), mean over weight."""
    weight = torch.tensor([1.0, 2.5, 0.5], dtype=out.dtype, device=out.device)
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), targets.reshape(-1), weight=weight)


def huber(out, targets):
    """A user loss: Huber (δ = 0.5) on a regression output."""
    return F.huber_loss(out, targets, delta=0.5)


CASES = ["tokens", "soft-tokens", "regression", "dict", "dataclass", "positional", "user-wce", "user-huber"]


def build_case(name: str, seed: int = 0):
    """A dict describing one case: ``model, structures, inputs, targets`` (full data, float64),
    ``options`` for ``saliency`` (``loss``, ``output``), ``forward(params, inputs) -> tensor``,
    ``mean_loss(out, targets)`` (what the criteria call the batch loss) and ``user`` (whether the
    loss is a user ``loss_fn``: batches weighted by samples, OBD per-sample terms with weight 1/N)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 200)
    n = N_SAMPLES
    case = {"options": {}, "user": False}
    if name in ("tokens", "soft-tokens", "user-wce"):
        model = nn.Sequential(nn.Linear(3, 5), nn.ReLU(), nn.Linear(5, N_CLASSES))
        structures = _hidden_units("", 5)
        structures.append(_unit(5, "2", [("2.weight", 0, [1]), ("2.bias", 0, [1])]))
        inputs = torch.randn(n, T_TOKENS, 3, generator=gen)
        if name == "soft-tokens":
            targets = torch.softmax(2 * torch.randn(n, T_TOKENS, N_CLASSES, generator=gen), -1).double()
            case["mean_loss"] = lambda o, y: F.cross_entropy(o.reshape(-1, N_CLASSES), y.reshape(-1, N_CLASSES))
        else:
            targets = torch.randint(0, N_CLASSES, (n, T_TOKENS), generator=gen)
            targets[0, 1] = targets[2, 0] = targets[2, 3] = targets[3, 2] = -100  # a few ignored tokens
            targets[5] = -100  # and one sample with no counted token
            case["mean_loss"] = lambda o, y: F.cross_entropy(o.reshape(-1, N_CLASSES), y.reshape(-1),
                                                             ignore_index=-100)
        if name == "user-wce":
            targets[5, 0] = 1  # a user loss is a batch mean: a sample alone with no counted token is 0/0
            case["options"] = {"loss": weighted_token_ce}
            case["mean_loss"], case["user"] = weighted_token_ce, True
        case["forward"] = lambda params, x: functional_call(model, params, (x,))
    elif name in ("regression", "user-huber"):
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2))
        structures = _hidden_units("", 6) + [_unit(6, "2", [("2.weight", 0, [0]), ("2.bias", 0, [0])])]
        inputs = torch.randn(n, 4, generator=gen)
        targets = torch.randn(n, 2, generator=gen).double()
        if name == "regression":
            case["options"] = {"loss": "mse"}
            case["mean_loss"] = F.mse_loss
        else:
            case["options"] = {"loss": huber}
            case["mean_loss"], case["user"] = huber, True
        case["forward"] = lambda params, x: functional_call(model, params, (x,))
    elif name in ("dict", "dataclass"):
        model = KeywordModel("dict" if name == "dict" else "dataclass")
        structures = _hidden_units("body", 5)
        shift = torch.randn(N_CLASSES, generator=gen).double()
        inputs = {"x": torch.randn(n, 4, generator=gen), "shift": shift, "flag": True}
        targets = torch.randint(0, N_CLASSES, (n,), generator=gen)
        case["options"] = {"output": "logits"}
        case["mean_loss"] = F.cross_entropy

        def forward(params, x):
            out = functional_call(model, params, (), x)
            return out["logits"] if isinstance(out, dict) else out.logits

        case["forward"] = forward
    elif name == "positional":
        model = PositionalModel()
        structures = _hidden_units("body", 5)
        inputs = (torch.randn(n, 4, generator=gen), torch.rand(n, 5, generator=gen) + 0.5)
        targets = torch.randn(n, 2, generator=gen).double()
        case["options"] = {"output": 1, "loss": "mse"}
        case["mean_loss"] = F.mse_loss
        case["forward"] = lambda params, x: functional_call(model, params, tuple(x))[1]
    else:
        raise KeyError(name)
    model = model.double().eval()
    inputs = _double_tree(inputs)
    case.update(model=model, structures=structures, inputs=inputs, targets=targets)
    return case


def _double_tree(x):
    if isinstance(x, torch.Tensor):
        return x.double() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: _double_tree(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return type(x)(_double_tree(v) for v in x)
    return x


def slice_inputs(inputs, start, stop, n=N_SAMPLES):
    """Samples ``start:stop`` of inputs: tensors with leading size n are cut, the rest shared."""
    if isinstance(inputs, torch.Tensor):
        return inputs[start:stop] if inputs.dim() and inputs.shape[0] == n else inputs
    if isinstance(inputs, dict):
        return {k: slice_inputs(v, start, stop, n) for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(slice_inputs(v, start, stop, n) for v in inputs)
    return inputs


def case_batches(case, size, n=N_SAMPLES):
    return [(slice_inputs(case["inputs"], i, i + size, n), case["targets"][i:i + size]) for i in range(0, n, size)]


def brute_case(case, batch_size, with_hessian=True):
    """Brute-force g, G, H, F and Θ for a case scored on batches of ``batch_size``.

    The mean loss L: built-in losses are means over every counted entry of all the data (the loss
    on the concatenated data: cross-entropy over counted tokens, MSE over all entries); a user
    loss_fn returns batch means, L = Σ_b n_b L_b / N. G = Jᵀ (∇²_f L) J with the autograd Hessian
    of L w.r.t. all outputs; H = ∇²_θ L; F = Σ_n w_n (∇ℓ_n)², ℓ_n the loss of sample n alone,
    w_n its share of L (c_n / W: its counted entries over all counted entries; 1/N for a user loss).
    """
    model, x, y, mean_loss = case["model"], case["inputs"], case["targets"], case["mean_loss"]
    names, shapes, w0 = flat(model)
    n = N_SAMPLES

    def out_of(w, inputs=x):
        return case["forward"](unflatten(names, shapes, w), inputs)

    def loss_of_output(out):
        if not case["user"]:
            return mean_loss(out, y)
        return sum((min(i + batch_size, n) - i) * mean_loss(out[i:i + batch_size], y[i:i + batch_size])
                   for i in range(0, n, batch_size)) / n

    def loss(w):
        return loss_of_output(out_of(w))

    out0 = out_of(w0).detach()
    J = jacobian(out_of, w0).reshape(out0.numel(), -1)
    H_out = hessian(loss_of_output, out0).reshape(out0.numel(), out0.numel())
    G = J.T @ H_out @ J
    g = torch.autograd.functional.vjp(loss, w0)[1]
    H = hessian(loss, w0) if with_hessian else None
    if case["user"]:
        weights = [1.0 / n] * n
    elif case["mean_loss"] is F.mse_loss or (y.is_floating_point() and y.shape == out0.shape):
        weights = [1.0 / n] * n  # every sample has the same number of entries / positions
    else:
        counted = (y != -100).reshape(n, -1).sum(1).double()
        weights = (counted / counted.sum()).tolist()
    fisher = torch.zeros_like(w0)
    for i in range(n):
        if weights[i] == 0:
            continue  # no counted entry: the sample is not in L
        wi = w0.clone().requires_grad_()
        (gi,) = torch.autograd.grad(mean_loss(out_of(wi, slice_inputs(x, i, i + 1)), y[i:i + 1]), wi)
        fisher += weights[i] * gi.square()
    return {"g": g, "G": G, "H": H, "F": fisher, "Theta": theta_matrix(model, case["structures"]), "w": w0,
            "loss": loss}


@functools.lru_cache(maxsize=None)
def cached_case(name, batch_size=4):
    """``(case, brute-force reference)`` for a hand-written case (``CASES``) or a case whose
    structures ``find_structures`` found (``tests.criteria.found_cases.FOUND``)."""
    from tests.criteria.found_cases import FOUND, build_found_case

    case = build_found_case(name) if name in FOUND else build_case(name)
    return case, brute_case(case, batch_size)
