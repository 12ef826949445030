"""Losses of the data-driven criteria and their Gauss-Newton output curvature.

A loss here knows four things about one batch with outputs ``f`` (any shape, batch
first) and targets ``y``:

* ``mean(f, y)``: the batch loss ``L_b`` actually optimised (a mean over ``W_b`` entries);
* ``weight(f, y, n)``: that ``W_b`` (counted positions, entries or samples);
* ``curvature(f, y, u, n)``: ``∇²_f (W_b L_b) · u``, the Hessian of the batch *sum*
  w.r.t. the outputs applied to ``u`` (``u`` of shape ``f.shape`` or ``f.shape + (K,)``);
* ``sample_sum(f_n, y_n)`` and ``sample_counts(y, n)``: sample ``n``'s share
  ``S_n = c_n ℓ_n`` of the batch sum and its count ``c_n`` (``Σ_n c_n = W_b``), for OBD.

The criteria accumulate ``Σ_b W_b ∇L_b`` and ``Σ_b Jᵀ ∇²_f(W_b L_b) J`` and divide by
``W = Σ_b W_b``, so ``L = (1/W) Σ_b W_b L_b`` is the mean over every counted entry of
every batch (batching never changes it) and ``θ_sᵀ G θ_{s'}`` is the Gauss-Newton
approximation of ``∂²L/∂α_s∂α_{s'}`` for that same ``L``.

Built-in losses (``Λ`` is the per-entry block of ``∇²_f (W_b L_b)``):

=================  ===================================  ==================  ===============================
loss               ``L_b``                              ``W_b``             ``Λ``
=================  ===================================  ==================  ===============================
``CrossEntropy``   mean CE over positions of            counted positions   ``diag(p) − p pᵀ`` per counted
                   ``[N, ..., C]`` logits                                   position (0 where ignored)
``MSE``            mean of ``(f − y)²`` over entries    ``f.numel()``       ``2 I``
``CallableLoss``   ``loss_fn(f, y)`` (batch mean)       samples ``n_b``     ``n_b ∇²_f loss_fn`` (autograd)
=================  ===================================  ==================  ===============================

Example:
    >>> import torch
    >>> loss = resolve_loss("mse")
    >>> f, y = torch.zeros(2, 3), torch.ones(2, 3)
    >>> float(loss.mean(f, y)), loss.weight(f, y, 2), loss.curvature(f, y, torch.ones(2, 3), 2)[0].tolist()
    (1.0, 6, [2.0, 2.0, 2.0])
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

import torch
import torch.nn.functional as F

__all__ = ["Loss", "CrossEntropy", "MSE", "CallableLoss", "resolve_loss", "select_output", "LOSS_NAMES",
           "LossSpec", "OutputSpec"]


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


class Loss:
    """Base class of a criterion loss (see the module docstring for the contract).

    ``separable = True`` declares that ``curvature`` acts on every sample alone (block
    diagonal over the batch), so SOSP-I may apply it to chunks of samples.
    """

    name = "loss"
    separable = True

    def __call__(self, out: torch.Tensor, targets: Any) -> torch.Tensor:
        """The batch loss ``L_b`` (so a ``Loss`` also serves where a plain ``loss_fn`` is expected)."""
        return self.mean(out, targets)

    def check(self, out_shape: torch.Size, targets: Any) -> None:
        """Raise ``ValueError`` when ``targets`` cannot go with outputs of ``out_shape``."""

    def mean(self, out: torch.Tensor, targets: Any) -> torch.Tensor:
        raise NotImplementedError

    def weight(self, out: torch.Tensor, targets: Any, n: int) -> int:
        raise NotImplementedError

    def curvature(self, out: torch.Tensor, targets: Any, u: torch.Tensor, n: int) -> torch.Tensor:
        raise NotImplementedError

    def sample_sum(self, out: torch.Tensor, targets: Any) -> torch.Tensor:
        raise NotImplementedError

    def sample_counts(self, targets: Any, n: int, out_shape: torch.Size) -> torch.Tensor:
        raise NotImplementedError


class CrossEntropy(Loss):
    """Softmax cross-entropy over logits ``[N, ..., C]`` (classes last), mean over counted positions.

    Targets are class indices ``[N, ...]`` (= the logits' shape without ``C``); positions
    whose target equals ``ignore_index`` are excluded from the loss *and* from the mean.
    Float targets of the logits' own shape are class probabilities (soft labels; every
    position counted). ``[N, C]`` logits with ``[N]`` targets is ``F.cross_entropy(f, y)``.

    Curvature: with ``ℓ_{n,t} = −log softmax(f_{n,t} / T)_{y}`` the Hessian of the batch sum
    ``Σ_{counted} ℓ_{n,t}`` w.r.t. ``f`` is block diagonal with blocks
    ``Λ_{n,t} = (diag(p_{n,t}) − p_{n,t} p_{n,t}ᵀ) / T²`` (``p = softmax(f / T)``) on counted
    positions and 0 on ignored ones; for soft labels the block is scaled by ``Σ_c y_{n,t,c}``.

    ``temperature`` ``T`` (default 1, the plain loss) divides the logits before the softmax. On a
    network trained to a near-zero loss most samples sit at a saturated softmax, where the
    gradient and ``Λ`` vanish and the loss-based scores rest on the few unsaturated samples;
    ``T > 1`` softens the predictions the scores are taken at (docs/criteria.md, "What the
    loss-based scores estimate").

    Example:
        >>> import torch
        >>> ce = CrossEntropy()
        >>> f, y = torch.zeros(1, 2, 4), torch.tensor([[1, -100]])   # one counted token of two
        >>> round(float(ce.mean(f, y)), 4), ce.weight(f, y, 1)
        (1.3863, 1)
        >>> ce.curvature(f, y, torch.ones(1, 2, 4), 1).abs().sum().item()   # Λ 1 = 0 (rows sum to 0)
        0.0
        >>> round(float(CrossEntropy(temperature=4).mean(torch.tensor([[8.0, 0.0]]), torch.tensor([0]))), 4)
        0.1269
    """

    name = "cross_entropy"

    def __init__(self, ignore_index: int = -100, temperature: float = 1.0):
        self.ignore_index = int(ignore_index)
        temperature = float(temperature)
        if not (math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"cross_entropy: temperature must be a positive number, got {temperature}")
        self.temperature = temperature

    def __repr__(self):
        extra = "" if self.temperature == 1.0 else f", temperature={self.temperature:g}"
        return f"CrossEntropy(ignore_index={self.ignore_index}{extra})"

    def _scaled(self, out):
        return out if self.temperature == 1.0 else out / self.temperature

    @staticmethod
    def _soft(out_shape, targets) -> bool:
        return targets.is_floating_point() and tuple(targets.shape) == tuple(out_shape)

    def check(self, out_shape, targets):
        out_shape = tuple(out_shape)
        if len(out_shape) < 2:
            raise ValueError(f"cross_entropy needs logits of shape [batch, ..., classes]; the model output has "
                             f"shape {out_shape} (pick another output with output=, or use loss='mse' or a loss_fn)")
        if not isinstance(targets, torch.Tensor):
            raise ValueError(f"cross_entropy needs a tensor of class indices as targets, got {type(targets).__name__}")
        if self._soft(out_shape, targets):
            return
        if targets.is_floating_point() or targets.dtype == torch.bool or targets.is_complex():
            raise ValueError(f"cross_entropy targets must be integer class indices of shape {out_shape[:-1]} "
                             f"(or class probabilities of shape {out_shape}); got {targets.dtype} {_shape(targets)} "
                             f"for logits {out_shape}")
        if tuple(targets.shape) != out_shape[:-1]:
            raise ValueError(f"cross_entropy: logits of shape {out_shape} ([batch, ..., classes], classes last) "
                             f"need targets of shape {out_shape[:-1]}; got targets of shape {_shape(targets)}")
        classes = out_shape[-1]
        counted = targets != self.ignore_index
        bad = counted & ((targets < 0) | (targets >= classes))
        if bool(bad.any()):
            raise ValueError(f"cross_entropy: target {int(targets[bad][0])} is not a class index in [0, {classes}) "
                             f"nor ignore_index={self.ignore_index}")

    def mean(self, out, targets):
        out = self._scaled(out)
        if out.dim() == 2 and not self._soft(out.shape, targets):
            return F.cross_entropy(out, targets, ignore_index=self.ignore_index)
        classes = out.shape[-1]
        if self._soft(out.shape, targets):
            return F.cross_entropy(out.reshape(-1, classes), targets.reshape(-1, classes).to(out.dtype))
        return F.cross_entropy(out.reshape(-1, classes), targets.reshape(-1), ignore_index=self.ignore_index)

    def weight(self, out, targets, n):
        if self._soft(out.shape, targets):
            return math.prod(out.shape[:-1])
        return int((targets != self.ignore_index).sum())

    def curvature(self, out, targets, u, n):
        with torch.no_grad():
            p = torch.softmax(self._scaled(out.detach()), dim=-1)
            if self._soft(out.shape, targets):
                scale = targets.sum(-1, keepdim=True).to(p.dtype)
            else:
                scale = (targets != self.ignore_index).unsqueeze(-1).to(p.dtype)
            axis = -1
            if u.dim() == out.dim() + 1:  # u: [..., C, K], one column per K
                p, scale, axis = p.unsqueeze(-1), scale.unsqueeze(-1), -2
            v = p * u - p * (p * u).sum(axis, keepdim=True)
            return v * (scale / self.temperature ** 2)

    def sample_sum(self, out, targets):
        out = self._scaled(out)
        classes = out.shape[-1]
        if self._soft(out.shape, targets):
            return F.cross_entropy(out.reshape(-1, classes), targets.reshape(-1, classes).to(out.dtype),
                                   reduction="sum")
        return F.cross_entropy(out.reshape(-1, classes), targets.reshape(-1), ignore_index=self.ignore_index,
                               reduction="sum")

    def sample_counts(self, targets, n, out_shape):
        if self._soft(out_shape, targets):
            return torch.full((n,), float(math.prod(out_shape[1:-1])), dtype=torch.float64, device=targets.device)
        return (targets != self.ignore_index).reshape(n, -1).sum(1).to(torch.float64)


class MSE(Loss):
    """Mean squared error ``L_b = (1/W_b) Σ (f − y)²`` over *all* ``W_b = f.numel()`` entries.

    Targets have the outputs' shape. Curvature: ``∇²_f Σ (f − y)² = 2 I``; divided by
    the total number of entries ``W`` this is ``∇²_f L = (2/W) I``, the exact Hessian of
    the mean w.r.t. the outputs (so for MSE the Gauss-Newton matrix misses only the
    residual term ``Σ (f − y) ∇²f``).

    Example:
        >>> import torch
        >>> MSE().curvature(torch.zeros(2), torch.ones(2), torch.tensor([1.0, -3.0]), 2)
        tensor([ 2., -6.])
    """

    name = "mse"

    def __repr__(self):
        return "MSE()"

    def check(self, out_shape, targets):
        if not isinstance(targets, torch.Tensor):
            raise ValueError(f"mse needs a tensor of targets with the outputs' shape {tuple(out_shape)}, "
                             f"got {type(targets).__name__}")
        if not targets.is_floating_point():
            raise ValueError(f"mse needs floating-point targets, got {targets.dtype}")
        if tuple(targets.shape) != tuple(out_shape):
            raise ValueError(f"mse: targets of shape {_shape(targets)} do not match the model output of shape "
                             f"{tuple(out_shape)} (they must be equal; no broadcasting)")

    def mean(self, out, targets):
        return F.mse_loss(out, targets.to(out.dtype))

    def weight(self, out, targets, n):
        return out.numel()

    def curvature(self, out, targets, u, n):
        return 2 * u

    def sample_sum(self, out, targets):
        return (out - targets.to(out.dtype)).square().sum()

    def sample_counts(self, targets, n, out_shape):
        return torch.full((n,), float(math.prod(out_shape[1:])), dtype=torch.float64, device=targets.device)


class CallableLoss(Loss):
    """A user ``loss_fn(output, targets) -> scalar`` returning the batch *mean*; batches weighted by samples.

    Curvature: no closed form is known, so it is computed generically: ``n_b ∇²_f
    loss_fn(f, y) · u`` by double backward through ``loss_fn`` alone (a Hessian-vector
    product w.r.t. the outputs; no extra model pass). Exact for any twice-differentiable
    ``loss_fn``. The Hessian may couple samples, so SOSP-I applies it to a whole batch
    (``separable = False``) and needs one product per structure, vectorised.

    Example:
        >>> import torch
        >>> loss = CallableLoss(lambda f, y: ((f - y) ** 2).mean())
        >>> loss.curvature(torch.zeros(2, 1), torch.ones(2, 1), torch.ones(2, 1), 2).flatten().tolist()
        [2.0, 2.0]
    """

    name = "loss_fn"
    separable = False
    hvp_budget_bytes = 256 * 2**20

    def __init__(self, fn: Callable):
        self.fn = fn

    def __repr__(self):
        return f"CallableLoss({getattr(self.fn, '__name__', self.fn)!r})"

    def mean(self, out, targets):
        value = self.fn(out, targets)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise ValueError(f"loss_fn must return a scalar tensor (the batch mean), got {_shape(value)}")
        return value.reshape(())

    def weight(self, out, targets, n):
        return n

    def curvature(self, out, targets, u, n):
        o = out.detach().requires_grad_()
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self.mean(o, targets), o, create_graph=True)
        u = u.detach().to(o.dtype)
        if not g.requires_grad:  # loss linear (or piecewise linear) in the outputs: zero Hessian
            return torch.zeros_like(u)
        if u.dim() == o.dim():
            (hv,) = torch.autograd.grad(g, o, grad_outputs=u, allow_unused=True, materialize_grads=True)
            return n * hv
        cols = u.movedim(-1, 0)
        step = max(1, self.hvp_budget_bytes // max(1, o.numel() * o.element_size() * 4))
        parts = []
        for start in range(0, cols.shape[0], step):
            chunk = cols[start:start + step]
            try:
                (hv,) = torch.autograd.grad(g, o, grad_outputs=chunk, retain_graph=True, is_grads_batched=True,
                                            allow_unused=True, materialize_grads=True)
            except RuntimeError:  # an op of loss_fn without a batching rule: one product at a time
                hv = torch.stack([torch.autograd.grad(g, o, grad_outputs=c, retain_graph=True, allow_unused=True,
                                                      materialize_grads=True)[0] for c in chunk])
            parts.append(hv)
        return n * torch.cat(parts).movedim(0, -1)

    def sample_sum(self, out, targets):
        return self.fn(out, targets).reshape(())

    def sample_counts(self, targets, n, out_shape):
        return torch.ones(n, dtype=torch.float64)


LossSpec = Union[None, str, Loss, Callable]

LOSS_NAMES = {"cross_entropy": CrossEntropy, "cross-entropy": CrossEntropy, "ce": CrossEntropy, "mse": MSE}


def resolve_loss(loss: Union[None, str, Loss, Callable]) -> Loss:
    """``None`` or ``"cross_entropy"`` → :class:`CrossEntropy`, ``"mse"`` → :class:`MSE`,
    a :class:`Loss` → itself, any other callable → :class:`CallableLoss`.

    Example:
        >>> resolve_loss(None), resolve_loss("mse")
        (CrossEntropy(ignore_index=-100), MSE())
        >>> resolve_loss(CrossEntropy(ignore_index=0)).ignore_index
        0
    """
    if loss is None:
        return CrossEntropy()
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str):
        key = loss.lower()
        if key not in LOSS_NAMES:
            raise ValueError(f"unknown loss {loss!r}; known: 'cross_entropy', 'mse', or a callable "
                             f"loss_fn(output, targets) -> scalar")
        return LOSS_NAMES[key]()
    if callable(loss):
        return CallableLoss(loss)
    raise ValueError(f"loss must be 'cross_entropy', 'mse', a Loss or a callable loss_fn(output, targets); "
                     f"got {type(loss).__name__}")


OutputSpec = Union[None, str, int, Callable[[Any], torch.Tensor]]


def _fields(raw) -> Optional[list[tuple[str, Any]]]:
    """``(name, value)`` pairs of a mapping, dataclass or named tuple; ``None`` otherwise."""
    if isinstance(raw, Mapping):
        return list(raw.items())
    if dataclasses.is_dataclass(raw) and not isinstance(raw, type):
        return [(f.name, getattr(raw, f.name)) for f in dataclasses.fields(raw)]
    if isinstance(raw, tuple) and hasattr(raw, "_fields"):
        return list(zip(raw._fields, raw))
    return None


def check_output_spec(output: OutputSpec) -> None:
    if output is None or isinstance(output, str) or callable(output):
        return
    if isinstance(output, int) and not isinstance(output, bool):
        return
    raise ValueError(f"output must be None, a key/attribute name, an int index or a callable(raw) -> tensor; "
                     f"got {type(output).__name__}")


def _default_output(raw: Any) -> torch.Tensor:
    """``output=None``: a tensor itself, else the ``logits`` entry/attribute, else the first tensor."""
    if isinstance(raw, torch.Tensor):
        return raw
    fields = _fields(raw)
    if fields is not None:
        values = dict(fields)
        if isinstance(values.get("logits"), torch.Tensor):
            return values["logits"]
        candidates = [v for _, v in fields]
    elif isinstance(getattr(raw, "logits", None), torch.Tensor):
        return raw.logits
    elif isinstance(raw, (tuple, list)):
        candidates = list(raw)
    else:
        candidates = []
    for value in candidates:
        if isinstance(value, torch.Tensor):
            return value
    raise ValueError(f"the model returned {type(raw).__name__} with no tensor in it (no 'logits', no tensor "
                     f"element); pass output= (a key, an index or a callable returning the output tensor)")


def _output_by_name(raw: Any, output: str) -> Any:
    """``output="name"``: that key of a mapping, else that attribute."""
    fields = _fields(raw)
    if fields is not None and isinstance(raw, Mapping):
        if output not in raw:
            raise ValueError(f"output={output!r}: the model's output has no key {output!r}; "
                             f"keys: {', '.join(map(str, raw.keys()))}")
        return raw[output]
    if isinstance(raw, torch.Tensor) or not hasattr(raw, output):
        names = [k for k, _ in fields] if fields is not None else []
        listing = f"; fields: {', '.join(names)}" if names else ""
        raise ValueError(f"output={output!r}: the model returned {type(raw).__name__}, which has no "
                         f"key or attribute {output!r}{listing}")
    return getattr(raw, output)


def _output_by_index(raw: Any, output: int) -> Any:
    """``output=i``: position ``i`` of a tuple/list, of a mapping's values or of a dataclass's fields."""
    fields = _fields(raw)
    if fields is not None:
        seq = [v for _, v in fields]
    elif isinstance(raw, (tuple, list)):
        seq = list(raw)
    else:
        raise ValueError(f"output={output}: an index needs a tuple, list, mapping or dataclass output; "
                         f"the model returned {type(raw).__name__}")
    if not -len(seq) <= output < len(seq):
        raise ValueError(f"output={output}: index out of range for a model output of {len(seq)} elements")
    return seq[output]


def select_output(raw: Any, output: OutputSpec = None) -> torch.Tensor:
    """The tensor the loss sees, from whatever the model returned.

    ``output``: ``None`` (default) — a tensor is itself; otherwise the ``logits``
    entry/attribute if there is one, else the first tensor (of a tuple/list, of a
    mapping's values, of a dataclass's fields); a ``str`` — that key (mapping) or
    attribute; an ``int`` — that position (of a tuple/list, of a mapping's values, of a
    dataclass's fields, as ``ModelOutput[i]``); a callable — ``output(raw)``.

    Raises:
        ValueError: no such key/attribute/index, or the selection is not a tensor.

    Example:
        >>> import torch
        >>> raw = {"hidden": torch.zeros(2, 5), "logits": torch.ones(2, 3)}
        >>> select_output(raw).shape, select_output(raw, "hidden").shape, select_output(raw, 0).shape
        (torch.Size([2, 3]), torch.Size([2, 5]), torch.Size([2, 5]))
        >>> select_output((torch.zeros(1), torch.ones(4)), lambda r: r[1]).shape
        torch.Size([4])
    """
    if output is None:
        return _default_output(raw)
    if callable(output) and not isinstance(output, str):
        chosen, what = output(raw), f"output={getattr(output, '__name__', 'callable')}(raw)"
    elif isinstance(output, str):
        chosen, what = _output_by_name(raw, output), f"output={output!r}"
    else:
        chosen, what = _output_by_index(raw, output), f"output={output}"
    if not isinstance(chosen, torch.Tensor):
        raise ValueError(f"{what} selected a {type(chosen).__name__}, not a tensor")
    return chosen
