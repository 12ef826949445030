"""CTF mask parametrizations: the band-stop gate and the four-factor coarse-to-fine mask.

Each prunable weight keeps its latent values ``Ŵ`` and is used as

.. math::  W = \\hat W \\odot \\psi(\\hat W), \\qquad
           \\psi = \\mathrm{Ch} \\odot \\mathrm{Col} \\odot \\mathrm{Row} \\odot E

with every factor a band-stop gate of a magnitude,

.. math::  b_a(u) = \\sigma\\big((u - a)/\\tau\\big) + \\sigma\\big((-u - a)/\\tau\\big),

≈ 0 for ``|u| < a`` and ≈ 1 above (``b_0 ≡ 1`` exactly, since ``σ(x) + σ(−x) = 1``).

prunekit's formulation (**[ours]** where docs/methods.md leaves room):

* **Layout.** A weight of shape ``[K·Cc, R, *kernel]`` is viewed as
  ``[K blocks, Cc columns (output units), R rows (input units), kernel]``: block ``k``
  owns rows ``k·Cc … (k+1)·Cc − 1`` of dim 0, column ``j`` owns rows ``{k·Cc + j}``.
  ``K`` is the number of adjacency subsets of a :class:`~prunekit.models.layers.GraphConv`
  and the number of heads of a :class:`~prunekit.models.layers.MultiHeadGraphAttention`
  (query, key and value weights); ``K = 1`` for a plain convolution or linear layer.
* **Factors.** ``E_e = b(|Ŵ_e| / s)``, ``Col_j = b(rms(Ŵ[:, j]) / s)``,
  ``Row_i = b(rms(Ŵ[:, :, i]) / s)``, ``Ch_k = b(rms(Ŵ[k]) / s)``, the rms taken over every
  entry of the slice (kernel included).
* **Scale.** ``s`` is the tensor's rms at attach time (a fixed buffer), so thresholds
  ``a`` and the temperature ``τ`` are in units of each layer's own weight scale and one
  schedule fits every layer.
* **No channel factor when K = 1.** For a plain layer the "channel" would be the whole
  tensor, and a gate on it could switch a layer off (layer collapse); the factor is
  absent (≡ 1) there. Columns and rows still prune such layers structurally.
* **Tied head gates.** The block factor of an attention layer is shared by its query,
  key and value weights, computed from the rms of all three head-``h`` slices
  (each divided by its own ``s``): a head is then gated as one unit, which is what
  lets a closed gate become a removable head structure.
* **Thresholds.** One threshold per factor and tensor (one per tied head gate),
  ``a = softplus(ρ)``; the buffer ``a_<granularity>`` holds ``ρ`` and requires grad when
  learnable (trained by :class:`~prunekit.ctf.CTF`'s own Adam, not the model optimizer). ``softplus`` keeps ``a > 0`` (a
  negative ``a`` would make ``b > 1``, an amplifier) without a kink: ``a = |ρ|`` lets a
  budget push through 0 and come back with the opposite sign, a runaway we measured.
* **Hard phase.** :meth:`CTFMask.freeze` replaces ``ψ`` by a fixed 0/1 mask (a
  non-persistent buffer): ``W = Ŵ ⊙ M``, no gradient to the thresholds or to the pruned
  entries; :class:`~prunekit.ctf.CTF` freezes every mask for the last epochs.
* **Settle phase.** With ``gate_grad = False`` the forward is ``Ŵ ⊙ ψ(sg(Ŵ))``: the
  thresholds still get their gradient, the weights see ``ψ`` as a mask (no ``∂ψ/∂Ŵ``,
  which grows as ``1/τ`` and kicks weights across their thresholds at low ``τ``);
  :class:`~prunekit.ctf.CTF` sets it for the soft epochs after the budget ramp.

Example:
    >>> import torch
    >>> mask = CTFMask((6, 4), blocks=2, scale=1.0, a_init={"entry": 0.5, "column": 0.0, "row": 0.0, "channel": 0.0})
    >>> mask.temperature.value = 1e-3
    >>> w = torch.tensor([[0.1, 2.0, 0.3, 4.0]] * 6)
    >>> mask.mask(w)[0].round().tolist()       # only the entries above a = 0.5 pass
    [0.0, 1.0, 0.0, 1.0]
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

__all__ = ["band_stop", "threshold_value", "CTFMask", "HeadTie", "Temperature", "GRANULARITIES"]

GRANULARITIES = ("channel", "column", "row", "entry")  # coarse to fine
_EPS = 1e-12


def band_stop(u: torch.Tensor, a: torch.Tensor | float, tau: float) -> torch.Tensor:
    """The symmetrised shifted sigmoid ``b(u) = σ((u − a)/τ) + σ((−u − a)/τ)``.

    Example:
        >>> band_stop(torch.tensor([0.0, 0.2, 2.0]), 1.0, 0.01).round().tolist()
        [0.0, 0.0, 1.0]
        >>> float(band_stop(torch.tensor(0.3), 0.0, 0.5))   # a = 0: the identity gate
        1.0
    """
    if torch.is_grad_enabled() and (u.requires_grad or (isinstance(a, torch.Tensor) and a.requires_grad)):
        if not isinstance(a, torch.Tensor):
            a = torch.tensor(float(a), dtype=u.dtype, device=u.device)
        if a.dim() == 0:
            return _BandStop.apply(u, a, float(tau))
    up, down = _band_stop_halves(u, a, tau)
    return up + down


def _band_stop_halves(u, a, tau):
    """``(σ(x₊), σ(x₋))`` with ``x± = (±u − a)/τ``: the two sigmoids ``b_a(u)`` adds up."""
    return torch.sigmoid((u - a) / tau), torch.sigmoid((-u - a) / tau)


def _band_stop_slopes(up, down, tau, wrt_u=True, wrt_a=True):
    """``(∂b/∂u, ∂b/∂a) = ((σ'(x₊) − σ'(x₋))/τ, −(σ'(x₊) + σ'(x₋))/τ)`` from the two halves
    (``None`` for the one not asked for)."""
    slope_up, slope_down = up * (1 - up), down * (1 - down)
    return ((slope_up - slope_down) / tau if wrt_u else None,
            -(slope_up + slope_down) / tau if wrt_a else None)


class _BandStop(torch.autograd.Function):
    """``b_a(u)`` as one autograd node (a scalar threshold ``a``): the mask is evaluated for
    every weight at every step, and one node with a hand-written backward,

    .. math::  \\frac{\\partial b}{\\partial u} = \\frac{σ'(x_+) - σ'(x_-)}{τ}, \\qquad
               \\frac{\\partial b}{\\partial a} = -\\frac{σ'(x_+) + σ'(x_-)}{τ}, \\qquad
               x_\\pm = \\frac{\\pm u - a}{τ},

    costs a fraction of the eight recorded operations (tested against autograd).
    """

    @staticmethod
    def forward(ctx, u, a, tau):
        up, down = _band_stop_halves(u, a, tau)
        ctx.save_for_backward(up, down)
        ctx.tau = tau
        return up + down

    @staticmethod
    def backward(ctx, grad):
        d_u, d_a = _band_stop_slopes(*ctx.saved_tensors, ctx.tau, *ctx.needs_input_grad[:2])
        grad_u = grad * d_u if d_u is not None else None
        grad_a = (grad * d_a).sum() if d_a is not None else None
        return grad_u, grad_a, None


class Temperature:
    """The temperature ``τ`` shared by every mask of one :class:`~prunekit.ctf.CTF`.

    ``generation`` counts penalty evaluations: a mask's forward pass caches ``Σψ``
    under the current generation so the penalty of the same step reuses it.
    """

    def __init__(self, value: float = 1.0):
        self.value = float(value)
        self.generation = 0

    def __repr__(self) -> str:
        return f"Temperature({self.value:.4g})"


def threshold_value(rho: torch.Tensor) -> torch.Tensor:
    """The threshold ``a = softplus(ρ) = log(1 + e^ρ) > 0`` stored as ``ρ``."""
    return torch.nn.functional.softplus(rho)


def _inverse_softplus(a: float) -> float:
    a = max(float(a), 1e-6)
    return a + math.log(-math.expm1(-a))


def _threshold(module: nn.Module, name: str, value: float, learnable: bool) -> None:
    """Register ``ρ`` (``a = softplus(ρ)``) as a buffer; a learnable one requires grad.

    Thresholds are buffers, not parameters, so a model optimizer never updates them:
    :class:`~prunekit.ctf.CTF` trains them with its own Adam (see its docstring).
    """
    tensor = torch.tensor(_inverse_softplus(value))
    module.register_buffer(name, tensor.requires_grad_(learnable))


def _releaf(module: nn.Module) -> None:
    """After ``.to()`` / ``.double()``, a grad-requiring buffer is a copy with a graph: make it a leaf again."""
    for name, buf in module._buffers.items():
        if name.startswith("a_") and buf is not None and buf.grad_fn is not None:
            module._buffers[name] = buf.detach().requires_grad_(True)


class HeadTie(nn.Module):
    """One block gate ``Ch_k`` shared by several weights (query, key, value of an attention layer).

    ``Ch_k = b( sqrt( Σ_t ‖Ŵ_t[k] / s_t‖² / Σ_t |Ŵ_t[k]| ) )``: the rms over the block-``k``
    slices of every member ``t``, each in units of its own scale ``s_t``.
    """

    def __init__(self, blocks: int, a_init: float, learnable: bool):
        super().__init__()
        self.blocks = int(blocks)
        _threshold(self, "a_channel", a_init, learnable)
        self._members: list = []  # (module, parameter name, scale); plain list: no module cycle

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        _releaf(self)
        return result

    def add(self, module: nn.Module, name: str, scale: float) -> int:
        self._members.append((module, name, float(scale)))
        return len(self._members) - 1

    def norms(self, index: int | None = None, own: torch.Tensor | None = None, detach: bool = False) -> torch.Tensor:
        """Block rms in scale units; member ``index`` uses ``own`` (its latent weight) as given."""
        squares, count = 0.0, 0
        for i, (module, name, scale) in enumerate(self._members):
            w = own if i == index else module.parametrizations[name].original
            if detach:
                w = w.detach()
            block = (w / scale).reshape(self.blocks, -1)
            squares = squares + block.pow(2).sum(1)
            count += block.shape[1]
        return torch.sqrt(squares / count + _EPS)


class CTFMask(nn.Module):
    """The parametrization ``Ŵ ↦ Ŵ ⊙ ψ(Ŵ)`` of one weight (see the module docstring).

    Args:
        shape: the weight's shape ``[K·Cc, R, *kernel]`` (a linear weight ``[Cc, R]``).
        blocks: ``K``; ``shape[0]`` must be a multiple of it.
        granularities: the active factors, a subset of ``("channel", "column", "row", "entry")``.
        scale: ``s``, the magnitude unit of this tensor.
        a_init: initial threshold per granularity (in units of ``s``).
        learnable: train the thresholds (parameters) or keep them fixed (buffers).
        temperature: shared :class:`Temperature`; a fresh one (τ = 1) if ``None``.
        cost: cost of one entry in the budget (1 for parameters, its MACs for MACs).
        tie: a :class:`HeadTie` providing the block gate (replaces this tensor's own).
        tie_owner: register ``tie`` as a submodule (exactly one member does).
    """

    def __init__(self, shape: Sequence[int], blocks: int = 1, granularities: Sequence[str] = GRANULARITIES,
                 scale: float = 1.0, a_init: dict | None = None, learnable: bool = True,
                 temperature: Temperature | None = None, cost: float = 1.0,
                 tie: HeadTie | None = None, tie_owner: bool = False):
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2:
            raise ValueError(f"CTFMask: a weight needs at least 2 dimensions, got shape {shape}")
        if blocks < 1 or shape[0] % blocks:
            raise ValueError(f"CTFMask: {shape[0]} output rows cannot be split into {blocks} blocks")
        unknown = set(granularities) - set(GRANULARITIES)
        if unknown:
            raise ValueError(f"CTFMask: unknown granularities {sorted(unknown)}; expected a subset of {GRANULARITIES}")
        self.shape = shape
        self.blocks, self.columns, self.rows = int(blocks), shape[0] // blocks, shape[1]
        self.view_shape = (self.blocks, self.columns, self.rows, math.prod(shape[2:]))
        self.granularities = tuple(g for g in GRANULARITIES if g in granularities)
        if "channel" in self.granularities and self.blocks == 1 and tie is None:
            self.granularities = tuple(g for g in self.granularities if g != "channel")
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.temperature = temperature if temperature is not None else Temperature()
        self.cost = float(cost)
        a_init = dict(a_init or {})
        for g in self.granularities:
            if g == "channel" and tie is not None:
                continue
            _threshold(self, f"a_{g}", a_init.get(g, 0.0), learnable)
        self.tie_index: int | None = None
        if tie is not None and "channel" in self.granularities:
            if tie.blocks != self.blocks:
                raise ValueError(f"CTFMask: tie has {tie.blocks} blocks, this weight {self.blocks}")
            if tie_owner:
                self.tie = tie
            else:
                self._tie_ref = (tie,)  # a tuple: not registered, so the tie's threshold is stored once
        self._cache: tuple[int, torch.Tensor] | None = None
        self.register_buffer("frozen", None, persistent=False)  # the hard phase's fixed 0/1 mask
        self.cache_sum = True  # keep Σψ of the forward for the penalty (CTF turns it off when unused)
        self.gate_grad = True  # differentiate ψ(Ŵ) with respect to Ŵ in the forward (CTF's settle phase: off)

    def _apply(self, fn, recurse=True):
        result = super()._apply(fn, recurse)
        _releaf(self)
        return result

    # ------------------------------------------------------------------ hard phase
    @property
    def is_frozen(self) -> bool:
        return self.frozen is not None

    def freeze(self, keep: torch.Tensor) -> None:
        """Replace ``ψ`` by the fixed binary mask ``keep`` (weight-shaped): ``W = Ŵ ⊙ keep``.

        The thresholds then get no gradient and the pruned entries of ``Ŵ`` none either.
        """
        if tuple(keep.shape) != self.shape:
            raise ValueError(f"CTFMask.freeze: mask shape {tuple(keep.shape)} != weight shape {self.shape}")
        self.frozen = keep.detach().to(self.scale.device, torch.get_default_dtype()).clone()
        self._cache = None

    def unfreeze(self) -> None:
        self.frozen = None

    # ------------------------------------------------------------------ factors
    @property
    def head_tie(self) -> HeadTie | None:
        return self.__dict__["_modules"].get("tie") or (self.__dict__.get("_tie_ref") or (None,))[0]

    def threshold(self, granularity: str) -> torch.Tensor:
        """The effective threshold ``a = softplus(ρ)`` of a factor (in units of ``s``)."""
        return threshold_value(getattr(*self.threshold_owner(granularity)))

    def threshold_owner(self, granularity: str) -> tuple[nn.Module, str]:
        """``(module, buffer name)`` holding the ``ρ`` of a factor (the head tie for a tied block gate)."""
        if granularity == "channel" and self.head_tie is not None:
            return self.head_tie, "a_channel"
        return self, f"a_{granularity}"

    def magnitudes(self, w: torch.Tensor, detach: bool = False) -> dict[str, torch.Tensor]:
        """The gated magnitude ``u`` of each active factor, shaped to broadcast over the view
        ``[K, Cc, R, kernel]``: block / column / row rms and ``|Ŵ_e|``, in units of ``s``.

        ``detach``: no gradient to any latent weight (a tied head gate's other members included).
        """
        if detach:
            w = w.detach()
        v = w.reshape(self.view_shape) / self.scale
        out: dict[str, torch.Tensor] = {}
        if "channel" in self.granularities:
            tie = self.head_tie
            if tie is not None:
                ch = tie.norms(self.tie_index, w, detach)
            else:
                ch = torch.sqrt(v.pow(2).mean(dim=(1, 2, 3)) + _EPS)
            out["channel"] = ch.view(-1, 1, 1, 1)
        squares = v.pow(2) if ("column" in self.granularities or "row" in self.granularities) else None
        if "column" in self.granularities:
            out["column"] = torch.sqrt(squares.mean(dim=(0, 2, 3)) + _EPS).view(1, -1, 1, 1)
        if "row" in self.granularities:
            out["row"] = torch.sqrt(squares.mean(dim=(0, 1, 3)) + _EPS).view(1, 1, -1, 1)
        if "entry" in self.granularities:
            out["entry"] = v.abs()
        return out

    def factors(self, w: torch.Tensor, detach: bool = False) -> dict[str, torch.Tensor]:
        """Each active factor ``b_a(u)``, shaped to broadcast over the view ``[K, Cc, R, kernel]``.

        ``detach``: no gradient to any latent weight (a tied head gate's other members
        included); the thresholds still get theirs.
        """
        tau = self.temperature.value
        return {g: band_stop(u, self.threshold(g), tau) for g, u in self.magnitudes(w, detach).items()}

    @torch.no_grad()
    def budget_terms(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``(Σψ, #{ψ > ½}, {granularity: ∂Σψ/∂ρ_g})`` of the soft mask, without autograd.

        With ``x± = (±u − a)/τ`` and ``σ' = σ(1 − σ)``,

        .. math::  \\frac{\\partial b_a(u)}{\\partial a} = -\\frac{σ'(x_+) + σ'(x_-)}{τ}, \\qquad
                   \\frac{\\partial \\sum_e ψ_e}{\\partial ρ_g} = σ(ρ_g) \\sum_e
                   \\frac{\\partial b_{a_g}}{\\partial a_g}(u_{g,e}) \\prod_{h ≠ g} F_{h,e}

        (``a = softplus(ρ)``, ``F_h`` the other factors broadcast to entry ``e``): exactly the
        gradient autograd gives for ``soft_mask(w, detach=True).sum()``, at a fraction of the
        cost (no graph; the leave-one-out products from prefix and suffix products).

        Example:
            >>> mask = CTFMask((4, 3), a_init={"column": 0.3, "row": 0.3, "entry": 0.3})
            >>> w = torch.randn(4, 3)
            >>> total, count, grads = mask.budget_terms(w)
            >>> mask.soft_mask(w, detach=True).sum().backward()
            >>> bool(torch.allclose(grads["entry"], mask.a_entry.grad, atol=1e-6))
            True
        """
        tau = self.temperature.value
        names, values, slopes = [], [], []
        for g, u in self.magnitudes(w, detach=True).items():
            rho = getattr(*self.threshold_owner(g))
            a = threshold_value(rho)
            up, down = _band_stop_halves(u, a, tau)
            names.append(g)
            values.append(up + down)
            slopes.append(_band_stop_slopes(up, down, tau, wrt_u=False)[1] * torch.sigmoid(rho))
        if not names:
            n = torch.tensor(float(math.prod(self.shape)))
            return n, n, {}
        prefix = [None] * len(values)  # prefix[i] = F_0 ⋯ F_{i-1}
        running = None
        for i, f in enumerate(values):
            prefix[i] = running
            running = f if running is None else running * f
        psi = running.expand(self.view_shape)
        grads: dict[str, torch.Tensor] = {}
        suffix = None  # F_{i+1} ⋯ F_last
        for i in range(len(values) - 1, -1, -1):
            others = prefix[i] if suffix is None else (suffix if prefix[i] is None else prefix[i] * suffix)
            term = slopes[i] if others is None else slopes[i] * others
            grads[names[i]] = term.expand(self.view_shape).sum()
            suffix = values[i] if suffix is None else values[i] * suffix
        return psi.sum(), (psi > 0.5).sum().to(psi.dtype), grads

    def mask(self, w: torch.Tensor) -> torch.Tensor:
        """``ψ(Ŵ)``, the product of the active factors, in the weight's shape (the fixed mask once frozen)."""
        if self.frozen is not None:
            return self.frozen.to(w.dtype)
        return self.soft_mask(w)

    def soft_mask(self, w: torch.Tensor, detach: bool = False) -> torch.Tensor:
        """``ψ(Ŵ)`` from the gates, frozen or not (``detach``: see :meth:`factors`)."""
        psi = None
        for factor in self.factors(w, detach).values():
            psi = factor if psi is None else psi * factor
        if psi is None:
            return torch.ones_like(w)
        return psi.expand(self.view_shape).reshape(w.shape)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.frozen is not None:
            return w * self.frozen.to(w.dtype)
        if not self.gate_grad:  # W = Ŵ ⊙ ψ(sg(Ŵ)): the thresholds still learn, the weights see ψ as a mask
            return w * self.soft_mask(w, detach=True)
        psi = self.mask(w)
        if self.cache_sum and torch.is_grad_enabled() and w.requires_grad:
            self._cache = (self._cache_key(w), psi.sum())  # reused by this step's penalty
        return w * psi

    def _cache_key(self, w: torch.Tensor) -> tuple:
        return (self.temperature.generation, self.temperature.value, w._version, id(w))

    def cached_sum(self, w: torch.Tensor) -> torch.Tensor | None:
        """``Σψ(w)`` from a forward pass since the last penalty, at the same ``τ`` and weights, or ``None``."""
        if self._cache is not None and self._cache[0] == self._cache_key(w):
            return self._cache[1]
        return None

    def clear_cache(self) -> None:
        self._cache = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_cache"] = None  # a non-leaf tensor with a graph: never copied or pickled
        return state

    def extra_repr(self) -> str:
        return (f"blocks={self.blocks}, columns={self.columns}, rows={self.rows}, "
                f"granularities={self.granularities}")
