"""CTF: coarse-to-fine learned pruning masks (Sahbi, 2024), as a training callback.

Every prunable weight ``Ŵ`` is reparametrized (``torch.nn.utils.parametrize``) as

.. math::  W = \\hat W \\odot \\psi(\\hat W), \\qquad
           \\psi = \\mathrm{Ch} \\odot \\mathrm{Col} \\odot \\mathrm{Row} \\odot E

(block / output-unit / input-unit / entry band-stop gates
``b(u) = σ((u − a)/τ) + σ((−u − a)/τ)``, see :mod:`prunekit.ctf.masks`), and training minimises

.. math::  \\mathcal L_{CE} + \\lambda \\Big( \\frac{\\sum_\\ell \\sum_e w_e\\, \\psi_e(\\hat W^\\ell)}
           {\\sum_\\ell \\sum_e w_e} - k_t \\Big)^2

with ``w_e = 1`` (``cost="params"``) or the MACs of entry ``e`` per sample (``cost="macs"``),
over every weight of dimension ≥ 2 except the classifier's.

prunekit's formulation (**[ours]** where METHODS.md §3 leaves room; measured on the
synthetic-SBU attention GCN of ``benchmarks/bench_ctf.py``):

* **Normalised penalty.** Dividing by ``N_w = Σ w_e`` gives the paper's ``λ' (Σψ − c)²``
  with ``c = (1 − r) N_w`` and ``λ' = λ / N_w²``: one ``λ`` for any model size and both
  costs. Default ``λ = 200``: at ``λ = 50`` training ended 0.9 % of the weights above the
  budget and the rank fix removing them cost 24 accuracy points before fine-tuning; at
  ``λ = 200`` the residual was 0.1 % (45 entries) and cost nothing.
* **Budget ramp.** The target ``k_t`` moves linearly, step by step, from the masks' initial
  kept fraction to ``1 − r`` over the first ``ramp`` (default ½) of training; ``ramp=0``
  is the paper's fixed ``c``. A fixed target crushed the kept fraction to 0.22 within the
  first epoch (test accuracy to chance, 13 %) before recovering.
* **Temperature.** Geometric, ``τ_e = τ_start (τ_end / τ_start)^{e / (E − 1)}`` for epoch
  ``e`` of ``E`` (the last epoch trains at ``τ_end``), in units of each layer's rms:
  0.5 → 0.02 by default.
* **Thresholds.** ``a = softplus(ρ)`` per factor and weight, initialised at 0.05 (an almost
  dense start). Learnable thresholds are buffers that CTF trains itself with Adam
  (``threshold_lr``, β = (0.5, 0.999)), applied in a forward pre-hook from the previous
  step's gradients, so the model optimizer (SGD, weight decay) never touches them. With the
  model's SGD the coarse thresholds never moved (0.05 after 10 epochs) while the largest
  layers' entry thresholds ran to 4.8 (2.7 % of their weights left); with ``a = |ρ|`` a
  large ``λ`` pushed ``ρ`` through 0 into a runaway. ``thresholds="fixed"`` keeps them at
  ``a_init`` (default 0.5) and lets only the weights move.
* **Finalize.** ``ψ > 0.5`` is binarised; the kept count is then fixed to
  ``round((1 − r) N)`` entries (within one entry's MACs for ``cost="macs"``) by ranking on
  ``ψ · |Ŵ| / s`` (continuous mask × magnitude in the layer's own scale ``s``): kept
  entries with the lowest score are dropped, or pruned ones with the highest revived.
  Structured-only variants (no ``"entry"``) fix with whole groups of their finest
  granularity and never drop the last group of a weight.
* **Plan.** Structures (:func:`prunekit.find_structures`) whose weight slices are all zero
  become the structured part — a closed column is an output channel/unit, a closed tied
  head gate a head — with the collapse guard (one structure per group and layer stays);
  their biases and BatchNorm affine are zeroed too (the masks never touched them), so the
  finalized model *is* ``apply_masks(model, plan)`` and ``materialize`` reproduces it. The
  remaining zeros are the plan's ``entry_masks``.

Caveat: ``torch.nn.utils.parametrize`` gives a parametrized module a class shared by its
deep copies, and removing a parametrization deletes the property from that class; call
:meth:`CTF.finalize` on the model the CTF was built on, not on a deep copy of it.

Example:
    >>> import torch, prunekit
    >>> from prunekit.ctf import CTF
    >>> from prunekit.train import fit
    >>> _ = torch.manual_seed(0)
    >>> model = prunekit.models.create("attention_gcn", channels=(8, 16))
    >>> X, y = torch.randn(16, 3, 32, 30), torch.randint(0, 8, (16,))
    >>> ctf = CTF(model, rate=0.9)
    >>> h = fit(model, (X, y), epochs=2, batch_size=8, lr=0.05, callbacks=[ctf], progress=False)
    >>> plan = ctf.finalize()
    >>> round(ctf.report()["rate"], 3)
    0.9
    >>> small = prunekit.materialize(model.eval(), plan)
    >>> torch.allclose(small(X), model(X), atol=1e-5)
    True
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..plan import PruningPlan
from .common import (
    entry_costs, fix_to_budget, head_ties, plan_from_masks, prunable_weights, resolve_example_inputs, weight_layouts,
)
from .masks import GRANULARITIES, CTFMask, HeadTie, Temperature

__all__ = ["CTF", "DEFAULT_A_INIT"]

# Initial thresholds in units of each layer's rms (see CTF's docstring).
DEFAULT_A_INIT = {
    "learnable": {"channel": 0.05, "column": 0.05, "row": 0.05, "entry": 0.05},
    "fixed": {"channel": 0.5, "column": 0.5, "row": 0.5, "entry": 0.5},
}


def _module_of(model: nn.Module, pname: str) -> nn.Module:
    return model.get_submodule(pname.rsplit(".", 1)[0]) if "." in pname else model


class CTF:
    """Coarse-to-fine learned masks on every prunable weight, usable as a :func:`prunekit.train.fit` callback.

    Args:
        model: modified in place (parametrizations attached now, removed by :meth:`finalize`).
        rate: fraction of the prunable weights (or of their MACs) to remove, in ``[0, 1)``.
        example_inputs: one batch the model accepts (default: the registry's example batch
            for models built by :func:`prunekit.models.create`); used to find the
            classifier, to count MACs and to find the structures at :meth:`finalize`.
        cost: ``"params"`` (every entry counts 1) or ``"macs"`` (each entry weighted by the
            MACs it costs per sample).
        granularities: active factors, a subset of ``("channel", "column", "row", "entry")``.
            ``("column",)`` etc. give the structured-only variants.
        exclude: module or parameter names (or modules) to leave dense; the classifier is
            always left dense.
        params: explicit weight names to mask instead of the default selection (every
            ``weight`` of dimension ≥ 2 but the classifier's).
        lam: ``λ`` of the normalised budget penalty.
        tau_start, tau_end: temperature schedule (units of each layer's rms).
        thresholds: ``"learnable"`` (trained by CTF's own Adam) or ``"fixed"``.
        a_init: initial thresholds per granularity (units of each layer's rms); defaults in
            :data:`DEFAULT_A_INIT`: 0.05 when learnable (almost dense at the start), 0.5 when
            fixed (the weights must shrink below it).
        tie_heads: share the block gate of an attention layer's query, key and value.
        layouts: ``{weight name: K}`` overriding the detected number of blocks.
        ramp: fraction of training over which the budget target moves from the initial
            kept fraction to ``1 − rate`` (0: the paper's fixed target).
        threshold_lr: Adam step size of the learnable thresholds (on ``ρ``, ``a = softplus(ρ)``).

    Use it as a :func:`~prunekit.train.fit` callback (``extra_loss`` adds :meth:`penalty`,
    ``on_epoch_start`` anneals ``τ`` and advances the ramp), or in a custom loop: call
    :meth:`step` each epoch and add :meth:`penalty` to each batch's loss; then
    :meth:`finalize`.

    Attributes:
        names: the masked weights. ``classifier``: the module left dense.
        masks_by_name: ``{weight name: CTFMask}``. ``history``: one row per epoch.
    """

    def __init__(self, model: nn.Module, rate: float, *, example_inputs=None, cost: str = "params",
                 granularities: Sequence[str] = GRANULARITIES, exclude: Sequence | None = None,
                 params: Sequence[str] | None = None, lam: float = 200.0, tau_start: float = 0.5,
                 tau_end: float = 0.02, thresholds: str = "learnable", a_init: dict | None = None,
                 tie_heads: bool = True, layouts: dict[str, int] | None = None, ramp: float = 0.5,
                 threshold_lr: float = 0.1):
        if not (0.0 <= float(rate) < 1.0) or math.isnan(rate):
            raise ValueError(f"CTF: rate must be in [0, 1), got {rate}")
        if thresholds not in ("learnable", "fixed"):
            raise ValueError(f"CTF: thresholds must be 'learnable' or 'fixed', got {thresholds!r}")
        if cost not in ("params", "macs"):
            raise ValueError(f"CTF: cost must be 'params' or 'macs', got {cost!r}")
        granularities = tuple(granularities)
        unknown = set(granularities) - set(GRANULARITIES)
        if unknown or not granularities:
            raise ValueError(f"CTF: granularities must be a non-empty subset of {GRANULARITIES}, got {granularities}")
        if not (tau_start > 0 and tau_end > 0):
            raise ValueError(f"CTF: temperatures must be positive, got tau_start={tau_start}, tau_end={tau_end}")
        if not 0.0 <= ramp <= 1.0:
            raise ValueError(f"CTF: ramp must be in [0, 1], got {ramp}")
        if any(isinstance(m, CTFMask) for m in model.modules()):
            raise ValueError("CTF: the model already carries CTF masks (finalize the other CTF first)")
        self.model = model
        self.rate = float(rate)
        self.cost = cost
        self.granularities = tuple(g for g in GRANULARITIES if g in granularities)
        self.lam = float(lam)
        self.tau_start, self.tau_end = float(tau_start), float(tau_end)
        self.ramp = float(ramp)
        self.threshold_lr = float(threshold_lr)
        self._adam: dict[str, list] = {}
        self._beta1 = 0.5
        self.anneal_threshold_lr = True
        self.target_keep = 1.0 - self.rate  # the penalty's current target (moves during the ramp)
        self._epoch, self._epochs = 0, None  # known once fit calls on_epoch_start
        self._epoch_start_generation, self._steps_per_epoch = 0, None
        self._start_keep: float | None = None
        self.learnable = thresholds == "learnable"
        self.a_init = {**DEFAULT_A_INIT[thresholds], **(a_init or {})}
        self.example_inputs = resolve_example_inputs(model, example_inputs)
        self.names, self.classifier = prunable_weights(model, self.example_inputs, exclude or (), params)
        if not self.names:
            raise ValueError(f"CTF: {type(model).__name__} has no prunable weight (dim ≥ 2, not the classifier)")
        self.layouts = weight_layouts(model, self.names)
        for name, k in (layouts or {}).items():
            if name not in self.layouts:
                raise ValueError(f"CTF: layouts names {name!r}, which is not a masked weight")
            self.layouts[name] = (int(k), None)
        self.costs = entry_costs(model, self.names, self.example_inputs, cost)
        self.temperature = Temperature(self.tau_start)
        self.masks_by_name: dict[str, CTFMask] = {}
        self.history: list[dict] = []
        self.finalized = False
        self._report: dict | None = None
        ties = {}
        if tie_heads and "channel" in self.granularities:
            for key, members in head_ties(self.layouts).items():
                ties[key] = HeadTie(self.layouts[members[0]][0], self.a_init["channel"], self.learnable,
                                    self.temperature)
        params_now = dict(model.named_parameters())
        for name in self.names:
            module = _module_of(model, name)
            weight = params_now[name].detach()
            scale = float(weight.pow(2).mean().sqrt()) or 1.0
            k, tie_key = self.layouts[name]
            tie = ties.get(tie_key)
            mask = CTFMask(weight.shape, blocks=k, granularities=self.granularities, scale=scale,
                           a_init=self.a_init, learnable=self.learnable, temperature=self.temperature,
                           cost=self.costs[name], tie=tie, tie_owner=tie is not None and not tie._members)
            if tie is not None and "channel" in mask.granularities:
                mask.tie_index = tie.add(module, "weight", scale)
            mask.to(weight.device)
            parametrize.register_parametrization(module, "weight", mask)
            self.masks_by_name[name] = mask
        self.total_cost = sum(self.costs[n] * self._latent(n).numel() for n in self.names)
        self._hook = model.register_forward_pre_hook(self._before_forward) if self.learnable else None

    def _before_forward(self, module, args) -> None:
        if module.training and torch.is_grad_enabled():
            self._update_thresholds()  # the previous backward's threshold gradients, before masks are used

    # ------------------------------------------------------------------ helpers
    def _latent(self, name: str) -> torch.Tensor:
        return _module_of(self.model, name).parametrizations["weight"].original

    def _check_live(self) -> None:
        if self.finalized:
            raise RuntimeError("CTF: already finalized (the masks are gone); create a new CTF to prune again")

    def _threshold_buffers(self) -> dict[str, tuple[nn.Module, str]]:
        """``{key: (module, buffer name)}`` of every learnable threshold ``ρ`` (a shared head tie once)."""
        found, seen = {}, set()
        for name, mask in self.masks_by_name.items():
            for owner, prefix in ((mask, name), (mask.head_tie, f"{name}:tie")):
                if owner is None or id(owner) in seen:
                    continue
                seen.add(id(owner))
                for bname, buf in owner.named_buffers(recurse=False):
                    if bname.startswith("a_") and buf.requires_grad:
                        found[f"{prefix}:{bname}"] = (owner, bname)
        return found

    def parameters(self) -> list[torch.Tensor]:
        """The learnable thresholds ``ρ`` (empty with ``thresholds="fixed"``)."""
        return [getattr(owner, bname) for owner, bname in self._threshold_buffers().values()]

    @torch.no_grad()
    def _update_thresholds(self) -> None:
        """One Adam step (β = 0.9, 0.999) on every threshold with a gradient, then clear it."""
        for key, (owner, bname) in self._threshold_buffers().items():
            rho = getattr(owner, bname)
            if not rho.is_leaf:  # moved by model.to(): make it a leaf again
                rho = rho.detach().requires_grad_(True)
                owner._buffers[bname] = rho
            if rho.grad is None:
                continue
            g = rho.grad
            state = self._adam.setdefault(key, [0, torch.zeros_like(rho), torch.zeros_like(rho)])
            state[0] += 1
            state[1] = state[1].to(g.device).mul_(self._beta1).add_(g, alpha=1 - self._beta1)
            state[2] = state[2].to(g.device).mul_(0.999).addcmul_(g, g, value=0.001)
            m_hat = state[1] / (1 - self._beta1 ** state[0])
            v_hat = state[2] / (1 - 0.999 ** state[0])
            step = self.threshold_lr * (self.tau / self.tau_start if self.anneal_threshold_lr else 1.0)
            rho.sub_(step * m_hat / (v_hat.sqrt() + 1e-8))
            rho.grad = None

    @property
    def tau(self) -> float:
        """The current temperature."""
        return self.temperature.value

    @tau.setter
    def tau(self, value: float) -> None:
        self.temperature.value = float(value)

    def thresholds(self) -> dict[str, dict[str, float]]:
        """``{weight name: {granularity: a}}`` (units of the layer's rms)."""
        return {n: {g: float(m.threshold(g).detach()) for g in m.granularities} for n, m in self.masks_by_name.items()}

    # ------------------------------------------------------------------ training
    def penalty(self) -> torch.Tensor:
        """``λ (Σ w_e ψ_e / N_w − (1 − r))²``; reuses ``Σψ`` from this step's forward pass when there was one."""
        self._check_live()
        total = None
        for name, mask in self.masks_by_name.items():
            latent = self._latent(name)
            psi_sum = mask.cached_sum(latent)
            if psi_sum is None:
                psi_sum = mask.mask(latent).sum()
            term = mask.cost * psi_sum
            total = term if total is None else total + term
        self._update_target()
        self.temperature.generation += 1
        fraction = total / self.total_cost
        return self.lam * (fraction - self.target_keep) ** 2

    def _update_target(self) -> None:
        """Target kept fraction ``k₀ − (k₀ − (1 − r))·min(1, p)``, ``p`` = training progress / ramp.

        ``k₀`` is the soft kept fraction when training starts; progress counts finished
        steps (``(e + (s + 1)/S) / (ramp·E)`` at step ``s`` of ``S`` in epoch ``e``; ``S`` is
        learned from epoch 0, during which the target is already epoch 0's end value).
        """
        final = 1.0 - self.rate
        if self.ramp <= 0.0 or self._epochs is None:
            self.target_keep = final
            return
        within = 1.0
        if self._steps_per_epoch:
            done = self.temperature.generation - self._epoch_start_generation + 1
            within = min(1.0, done / self._steps_per_epoch)
        progress = min(1.0, (self._epoch + within) / (self.ramp * self._epochs))
        start = self._start_keep if self._start_keep is not None else 1.0
        self.target_keep = start - (start - final) * progress

    def extra_loss(self, model: nn.Module | None = None) -> torch.Tensor:
        """:func:`prunekit.train.fit` hook: the budget penalty."""
        return self.penalty()

    def step(self, epoch: int, epochs: int) -> float:
        """Set ``τ`` for epoch ``epoch`` (0-based) of ``epochs``: geometric from ``tau_start`` to ``tau_end``."""
        t = epoch / (epochs - 1) if epochs > 1 else 1.0
        t = min(max(t, 0.0), 1.0)
        self.tau = self.tau_start * (self.tau_end / self.tau_start) ** t
        return self.tau

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Anneal ``τ`` and advance the budget ramp (``fit`` calls it before every epoch)."""
        self._check_live()
        if epoch > 0 and self.temperature.generation > self._epoch_start_generation:
            self._steps_per_epoch = self.temperature.generation - self._epoch_start_generation
        self._epoch_start_generation = self.temperature.generation
        self._epoch, self._epochs = epoch, epochs
        self.step(epoch, epochs)
        if self._start_keep is None:
            self._start_keep = max(min(self.kept_fraction()["soft"], 1.0), 1.0 - self.rate)

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        row = {"epoch": epoch, "tau": self.tau, "target": self.target_keep, **self.kept_fraction()}
        row["eval_accuracy"] = metrics.get("eval_accuracy")
        self.history.append(row)

    def state_dict(self) -> dict:
        """Temperature, ramp position, threshold-optimizer state and history (stored by ``fit`` checkpoints)."""
        return {"tau": self.tau, "history": list(self.history), "generation": self.temperature.generation,
                "adam": {k: [v[0], v[1].detach().cpu(), v[2].detach().cpu()] for k, v in self._adam.items()},
                "steps_per_epoch": self._steps_per_epoch, "start_keep": self._start_keep}

    def load_state_dict(self, state: dict) -> None:
        self.tau = state["tau"]
        self.history = list(state.get("history", []))
        self.temperature.generation = int(state.get("generation", 0))
        self._adam = {k: [int(v[0]), v[1].clone(), v[2].clone()] for k, v in state.get("adam", {}).items()}
        self._steps_per_epoch = state.get("steps_per_epoch")
        self._start_keep = state.get("start_keep")

    # ------------------------------------------------------------------ inspection
    @torch.no_grad()
    def _state(self) -> dict[str, dict]:
        """Per weight: continuous ψ, binarised factors, latent weight."""
        out = {}
        for name, mask in self.masks_by_name.items():
            w = self._latent(name)
            factors = mask.factors(w)
            psi = mask.mask(w)
            binary = {g: (f > 0.5).expand(mask.view_shape).reshape(w.shape) for g, f in factors.items()}
            out[name] = {"psi": psi, "factors": binary, "w": w, "mask": mask}
        return out

    @torch.no_grad()
    def masks(self) -> dict[str, torch.Tensor]:
        """The current binary masks ``ψ > 0.5`` (before the rank fix)."""
        self._check_live()
        return {n: s["psi"] > 0.5 for n, s in self._state().items()}

    @torch.no_grad()
    def kept_fraction(self) -> dict[str, float]:
        """``soft``: ``Σ w ψ / N_w``; ``binary``: the same with ``ψ > 0.5``."""
        if self.finalized:
            return {"soft": 1.0 - self._report["rate"], "binary": 1.0 - self._report["rate"]}
        soft = binary = 0.0
        for name, s in self._state().items():
            c = self.costs[name]
            soft += c * float(s["psi"].sum())
            binary += c * float((s["psi"] > 0.5).sum())
        return {"soft": soft / self.total_cost, "binary": binary / self.total_cost}

    def _summary(self, state: dict, final: dict[str, torch.Tensor] | None = None) -> dict:
        total = sum(s["w"].numel() for s in state.values())
        zeroed = {g: 0 for g in self.granularities}
        attributed = {g: 0 for g in self.granularities}
        layers = {}
        pruned_before = 0
        for name, s in state.items():
            closed = torch.zeros(s["w"].shape, dtype=torch.bool, device=s["w"].device)
            for g in self.granularities:  # coarse to fine
                if g not in s["factors"]:
                    continue
                off = ~s["factors"][g]
                zeroed[g] += int(off.sum())
                attributed[g] += int((off & ~closed).sum())
                closed |= off
            pruned_before += int((s["psi"] <= 0.5).sum())
            keep = final[name] if final is not None else s["psi"] > 0.5
            layers[name] = {"shape": list(s["w"].shape), "blocks": s["mask"].blocks,
                            "kept": float(keep.float().mean())}
        report = {
            "granularities": list(self.granularities),
            "prunable_weights": total,
            "zeroed_by": {g: v / total for g, v in zeroed.items()},
            "attributed": {g: v / total for g, v in attributed.items()},
            "pruned_by_masks": pruned_before / total,
            "layers": layers,
            "classifier": self.classifier,
            "cost": self.cost,
            "target_rate": self.rate,
        }
        return report

    def report(self) -> dict:
        """How much each granularity removes, as fractions of the prunable weights.

        ``zeroed_by[g]``: entries whose factor ``g`` is closed (< 0.5), overlaps counted in
        each; ``attributed[g]``: the same, each entry credited to the coarsest closed
        factor only (these sum to ``pruned_by_masks``, the fraction with ``ψ ≤ 0.5``).
        After :meth:`finalize` also ``rank_fix`` (entries the rank fix dropped / revived),
        ``rate`` (the final removed fraction, cost-weighted), ``removed_structures``.
        """
        if self._report is not None:
            return self._report
        return self._summary(self._state())

    # ------------------------------------------------------------------ finalize
    def _groups(self, state: dict) -> dict[str, torch.Tensor] | None:
        """Group ids of the finest structured granularity, for structured-only variants."""
        if "entry" in self.granularities:
            return None
        unit = [g for g in ("channel", "column", "row") if g in self.granularities][-1]
        groups = {}
        for name, s in state.items():
            m = s["mask"]
            if unit not in m.granularities:
                continue
            k, cc, r, kk = m.view_shape
            index = {"channel": torch.arange(k).view(k, 1, 1, 1), "column": torch.arange(cc).view(1, cc, 1, 1),
                     "row": torch.arange(r).view(1, 1, r, 1)}[unit]
            groups[name] = index.expand(m.view_shape).reshape(s["w"].shape).to(s["w"].device)
        return groups

    @staticmethod
    def _score(s: dict) -> torch.Tensor:
        """Rank-fix score of every entry: ``ψ · |Ŵ| / s`` (continuous mask × magnitude in layer units)."""
        return s["psi"] * s["w"].abs() / s["mask"].scale

    def finalize(self) -> PruningPlan:
        """Binarise, fix the rate, remove the parametrizations, and return the plan.

        The kept cost is ``round((1 − r) N)`` entries (``cost="params"``; exact) or
        ``(1 − r) N_w`` MACs (within one entry's MACs). Structured-only variants (no
        ``"entry"`` granularity) fix the rate with whole groups of their finest
        granularity instead (within one group). The model is left in place as a plain
        module whose weights are ``Ŵ ⊙ ψ_binary`` with the plan's structures zeroed
        (biases and BatchNorm included), i.e. ``apply_masks(model, plan)``.
        """
        self._check_live()
        state = self._state()
        binary = {n: s["psi"] > 0.5 for n, s in state.items()}
        scores = {n: self._score(s) for n, s in state.items()}
        if self.cost == "params":
            keep = float(round((1.0 - self.rate) * self.total_cost))
        else:
            keep = (1.0 - self.rate) * self.total_cost
        groups = self._groups(state)
        if groups is None:
            fixed = fix_to_budget(binary, scores, self.costs, keep)
        else:
            frozen = {n: torch.ones_like(binary[n]) for n in binary if n not in groups}
            frozen_cost = sum(self.costs[n] * m.numel() for n, m in frozen.items())
            fixed = fix_to_budget({n: binary[n] for n in groups}, {n: scores[n] for n in groups}, self.costs,
                                  keep - frozen_cost, groups)
            fixed.update(frozen)
            for n in frozen:
                binary[n] = frozen[n]
        dropped = sum(int((binary[n] & ~fixed[n]).sum()) for n in binary)
        revived = sum(int((~binary[n] & fixed[n]).sum()) for n in binary)
        report = self._summary(state, fixed)
        kept_cost = sum(self.costs[n] * float(fixed[n].sum()) for n in fixed)
        report.update(rank_fix={"dropped": dropped, "revived": revived}, rate=1.0 - kept_cost / self.total_cost,
                      kept_weights=int(sum(int(m.sum()) for m in fixed.values())), tau=self.tau,
                      thresholds=self.thresholds())
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        for name, mask in self.masks_by_name.items():
            mask.clear_cache()
            parametrize.remove_parametrizations(_module_of(self.model, name), "weight", leave_parametrized=False)
        self.finalized = True
        plan = plan_from_masks(self.model, {n: m.detach() for n, m in fixed.items()}, self.example_inputs,
                               method="ctf", budget={"rate": self.rate, "cost": self.cost},
                               meta={"ctf": {k: v for k, v in report.items() if k not in ("layers", "thresholds")}})
        report["removed_structures"] = len(plan.removed)
        report["structured_params_fraction"] = plan.achieved.get("params", 0.0)
        report["structured_macs_fraction"] = plan.achieved.get("macs", 0.0)
        self._report = report
        return plan
