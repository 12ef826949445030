"""CTF: coarse-to-fine learned pruning masks (Sahbi, 2024), as a training callback.

Every prunable weight ``Ŵ`` is reparametrized (``torch.nn.utils.parametrize``) as

.. math::  W = \\hat W \\odot \\psi(\\hat W), \\qquad
           \\psi = \\mathrm{Ch} \\odot \\mathrm{Col} \\odot \\mathrm{Row} \\odot E

(block / output-unit / input-unit / entry band-stop gates
``b(u) = σ((u − a)/τ) + σ((−u − a)/τ)``, see :mod:`prunekit.ctf.masks`), and training minimises

.. math::  \\mathcal L_{CE} + \\lambda \\Big( \\frac{f - k_t}{1 - r} \\Big)^2, \\qquad
           f = \\frac{\\sum_\\ell \\sum_e w_e\\, [\\psi_e(\\hat W^\\ell) > ½]}{\\sum_\\ell \\sum_e w_e}

with ``w_e = 1`` (``cost="params"``) or the MACs of entry ``e`` per sample (``cost="macs"``),
over every weight of dimension ≥ 2 except the classifier's, ``r`` the rate and ``k_t`` the
target, ramped to ``1 − r``; the last quarter of the epochs (``hard=0.25``) then trains the
weights under the frozen binary masks.

prunekit's choices where the paper leaves room (**[ours]**: relative binary budget on the
thresholds, budget ramp, budget controller, settle phase, hard phase, rank fix), their reasons
and the commands that measured them are in ``docs/ctf.md``; the options, their defaults and how
they depend on each other are documented on :class:`~prunekit.ctf.options.CTFOptions`.

Caveat: ``torch.nn.utils.parametrize`` gives a parametrized module a class shared by its
deep copies, and removing a parametrization deletes the property from that class; call
:meth:`CTF.finalize` on the model the CTF was built on, not on a deep copy of it.

Example:
    >>> import torch, prunekit
    >>> from prunekit.ctf import CTF
    >>> from prunekit.pipeline.train import fit
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
import warnings

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..core.plan import PruningPlan
from ..core.structures import find_structures
from ..criteria.distributed import average_gradients, resolve_group
from .common import (
    _removable, _weight_modules, entry_costs, fix_to_budget, head_ties, output_is_constant, plan_from_masks,
    prunable_weights, resolve_example_inputs, weight_layouts,
)
from .masks import CTFMask, HeadTie, Temperature
from .options import DEFAULT_A_INIT, CTFOptions

__all__ = ["CTF", "CTFOptions", "DEFAULT_A_INIT", "CONTROL_GAIN", "CONTROL_MAX_STEP"]

# The budget controller (CTF._control_step): fraction of the predicted gap closed per step, and the
# largest common threshold shift per step (in ρ, a = softplus(ρ)).
CONTROL_GAIN = 0.5
CONTROL_MAX_STEP = 0.25


def _module_of(model: nn.Module, pname: str) -> nn.Module:
    return model.get_submodule(pname.rsplit(".", 1)[0]) if "." in pname else model


class CTF:
    """Coarse-to-fine learned masks on every prunable weight, usable as a :func:`prunekit.pipeline.train.fit` callback.

    Args:
        model: modified in place (parametrizations attached now, removed by :meth:`finalize`).
        rate: fraction of the prunable weights (or of their MACs) to remove, in ``[0, 1)``.
        options: a :class:`~prunekit.ctf.options.CTFOptions` (default ``CTFOptions()``): the
            granularities, the penalty, the thresholds, the schedule, with their documented
            defaults and how they depend on each other.
        example_inputs: one batch the model accepts (default: the registry's example batch
            for models built by :func:`prunekit.models.create`); used to find the
            classifier, to count MACs and to find the structures (now: the hard phase and
            :meth:`finalize` use them).
        **overrides: any field of :class:`~prunekit.ctf.options.CTFOptions` by name
            (``CTF(model, 0.9, lam=20)``), over ``options``; the resolved settings are ``self.options``.

    Use it as a :func:`~prunekit.pipeline.train.fit` callback (``extra_loss`` adds :meth:`penalty`,
    ``on_epoch_start`` anneals ``τ``, advances the ramp and starts the hard phase), or in a
    custom loop: call :meth:`step` each epoch (the same: ``τ``, ramp, settle phase, and the
    freeze when the hard phase is due) and add :meth:`penalty` to each batch's loss (0 in
    the hard phase); then :meth:`finalize`. ``report()["rank_fix"]`` (after
    :meth:`finalize`) says how much the rank fix, rather than the learned masks, decided:
    ``moved`` prunable entries (of ``prunable``) end in another state than the masks'
    ``ψ > ½`` when they froze (``dropped`` + ``revived``). :func:`prunekit.ctf.run` is the
    whole protocol (masks, finalize, materialize, fine-tune, evaluate) in one call.

    Attributes:
        names: the masked weights. ``classifier``: the module left dense.
        masks_by_name: ``{weight name: CTFMask}``. ``history``: one row per epoch.
    """

    def __init__(self, model: nn.Module, rate: float, options: CTFOptions | None = None, *,
                 example_inputs=None, **overrides):
        if not (0.0 <= float(rate) < 1.0) or math.isnan(rate):
            raise ValueError(f"CTF: rate must be in [0, 1), got {rate}")
        if options is not None and not isinstance(options, CTFOptions):
            raise TypeError(f"CTF: options must be a CTFOptions, got {type(options).__name__}")
        if any(isinstance(m, CTFMask) for m in model.modules()):
            raise ValueError("CTF: the model already carries CTF masks (finalize the other CTF first)")
        self.options = (options or CTFOptions()).replace(**overrides).resolved()
        self.model, self.rate = model, float(rate)
        self._use_options(self.options)
        self.example_inputs = resolve_example_inputs(model, example_inputs)
        self.names, self.classifier = prunable_weights(model, self.example_inputs, self.options.exclude or (),
                                                       self.options.params)
        if not self.names:
            raise ValueError(f"CTF: {type(model).__name__} has no prunable weight (dim ≥ 2, not the classifier)")
        # the structures, found now (the tracer cannot see through the parametrizations): the layouts
        # read their heads, the hard phase holds the biases / BatchNorm of closed structures at 0,
        # finalize turns the masks into a plan
        self._structures = find_structures(model, self.example_inputs)
        self.layouts = weight_layouts(model, self.names, self._structures)
        for name, k in (self.options.layouts or {}).items():
            if name not in self.layouts:
                raise ValueError(f"CTF: layouts names {name!r}, which is not a masked weight")
            self.layouts[name] = (int(k), None)
        self.costs = entry_costs(model, self.names, self.example_inputs, self.cost)
        self._attach_masks()
        self.total_cost = sum(self.costs[n] * self._latent(n).numel() for n in self.names)
        # the rate the penalty and the rank fix aim at: ``rate``, or what the granularities can reach
        self._max_rate = self.max_rate()
        if self.reachable_rate < self.rate - 1e-9:
            warnings.warn(f"CTF: granularities {self.granularities} can remove at most {self.reachable_rate:.4f} of "
                          f"{type(model).__name__}'s prunable weights (one group of every masked weight stays; "
                          f"weights without a {self.granularities[-1]} factor stay whole), not rate {self.rate}: "
                          "aiming at that instead", stacklevel=2)
        self.target_keep = 1.0 - self.reachable_rate  # the penalty's current target (moves during the ramp)
        self._hook = model.register_forward_pre_hook(self._before_forward) if self.learnable else None

    def _use_options(self, o: CTFOptions) -> None:
        """The resolved options as attributes, and the training state at its start."""
        self.cost, self.granularities, self.budget = o.cost, tuple(o.granularities), o.budget
        self.lam, self.relative, self.weight_penalty, self.ramp = o.lam, o.relative, o.weight_penalty, o.ramp
        self.tau_start, self.tau_end, self.hard, self.settle = o.tau_start, o.tau_end, o.hard, o.settle
        self.threshold_lr, self.anneal_threshold_lr = o.threshold_lr, bool(o.anneal_threshold_lr)
        self.threshold_control, self.learnable, self.a_init = o.threshold_control, o.thresholds == "learnable", o.a_init
        self._frozen: dict | None = None  # set when the hard phase starts: pre-freeze state and rank fix
        self._adam: dict[str, list] = {}
        self._beta1 = 0.5
        self._control: dict | None = None  # the last penalty's budget error and threshold slopes
        self._epoch, self._epochs = 0, None  # known once fit calls on_epoch_start
        self._epoch_start_generation, self._steps_per_epoch = 0, None
        self._start_keep: float | None = None
        self.temperature = Temperature(self.tau_start)
        self.masks_by_name: dict[str, CTFMask] = {}
        self.history: list[dict] = []
        self.finalized = False
        self._report: dict | None = None
        self._held_zero: list = []
        self._hold_hook = None
        self._output_constant: bool | None = None

    def _attach_masks(self) -> None:
        """A :class:`CTFMask` parametrization on every masked weight, head gates tied per attention layer."""
        ties = {}
        if self.options.tie_heads and "channel" in self.granularities:
            for key, members in head_ties(self.layouts).items():
                ties[key] = HeadTie(self.layouts[members[0]][0], self.a_init["channel"], self.learnable)
        params_now = dict(self.model.named_parameters())
        for name in self.names:
            module = _module_of(self.model, name)
            weight = params_now[name].detach()
            scale = float(weight.pow(2).mean().sqrt()) or 1.0
            k, tie_key = self.layouts[name]
            tie = ties.get(tie_key)
            mask = CTFMask(weight.shape, blocks=k, granularities=self.granularities, scale=scale,
                           a_init=self.a_init, learnable=self.learnable, temperature=self.temperature,
                           cost=self.costs[name], tie=tie, tie_owner=tie is not None and not tie._members)
            if tie is not None and "channel" in mask.granularities:
                mask.tie_index = tie.add(module, "weight", scale)
            mask.cache_sum = self.weight_penalty and self.budget == "soft"
            mask.to(weight.device)
            parametrize.register_parametrization(module, "weight", mask)
            self.masks_by_name[name] = mask

    @property
    def reachable_rate(self) -> float:
        """The rate the penalty and the rank fix aim at: ``rate``, or :meth:`max_rate` if lower."""
        return min(self.rate, self._max_rate)

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
        """One Adam step (β = 0.5, 0.999) on every threshold with a gradient, then clear it; then,
        with ``threshold_control``, the budget controller's common shift (:meth:`_control_step`).

        Under ``torch.distributed`` the threshold gradients are first averaged over the ranks
        (they are buffers, which DistributedDataParallel does not reduce), so every rank takes
        the same step in any training loop."""
        control, self._control = self._control, None
        buffers = self._threshold_buffers()
        group = resolve_group(None)
        if group is not None:
            average_gradients([getattr(owner, bname) for owner, bname in buffers.values()], group)
        moves: dict[tuple[int, str], torch.Tensor] = {}
        for key, (owner, bname) in buffers.items():
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
            move = -step * m_hat / (v_hat.sqrt() + 1e-8)
            rho.add_(move)
            moves[(id(owner), bname)] = move
            rho.grad = None
        if control is not None and self._frozen is None:
            self._control_step(control, buffers, moves)

    @torch.no_grad()
    def _control_step(self, control: dict, buffers: dict, moves: dict):
        """The budget controller: one common shift ``δ`` of every threshold ``ρ`` toward the target.

        The last :meth:`penalty` measured the binary kept fraction ``f`` (``ψ > ½``, what
        the freeze keeps) against the current target ``k_t`` and the soft slopes
        ``g_t = ∂(Σ_e w_e ψ_e)/∂ρ_t``. The Adam step just taken (``Δρ_t``) is predicted to
        change the kept cost by ``Σ g_t Δρ_t``; ``δ`` closes a fraction ``CONTROL_GAIN`` of
        what is left, to first order:

        .. math::  δ = -\\gamma \\frac{(f - k_t) N_w + \\sum_t g_t Δρ_t}{\\sum_t g_t},
                   \\qquad |δ| ≤ δ_{max}

        so the learned step decides how the thresholds move *relative to each other* (which
        layers and granularities prune) and the controller makes their total meet the
        budget. Its step does not shrink with ``τ`` (the Adam step does), so the masks
        reach the target before they freeze at every rate. Returns ``δ`` (a tensor: no device sync).
        """
        slopes = control["slopes"]
        steered = f"a_{self.granularities[-1]}"  # the finest granularity: "entry" unless structured-only
        keyed = {(id(owner), bname): getattr(owner, bname) for owner, bname in buffers.values()}
        keys = [k for k in keyed if k in slopes and k[1] == steered]
        if not keys:
            return 0.0
        derivative = sum(torch.as_tensor(slopes[k]) for k in keys)  # tensors throughout: no device sync
        predicted = control["error"] * self.total_cost
        for k, move in moves.items():
            if k in slopes:
                predicted = predicted + slopes[k] * move
        # no entry near any threshold (derivative ≈ 0): nothing to steer with, no shift
        steerable = derivative < -1e-9 * self.total_cost
        delta = torch.where(steerable, -CONTROL_GAIN * predicted / derivative.clamp(max=-1e-30),
                            torch.zeros_like(derivative)).clamp(-CONTROL_MAX_STEP, CONTROL_MAX_STEP)
        for k in keys:
            keyed[k].add_(delta.to(keyed[k].dtype))
        return delta

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
        """``λ ((f − k_t) / (1 − r))²`` (``relative``; else ``λ (f − k_t)²``), 0 in the hard phase.

        ``f = Σ w_e ψ_e / N_w`` (``budget="soft"``) or the same count of ``ψ_e > 0.5``
        with the soft gradient (``"binary"``); without ``weight_penalty`` only the
        thresholds get its gradient. A soft budget on the weights reuses ``Σψ`` from this
        step's forward pass when there was one.
        """
        self._check_live()
        if self._frozen is not None:  # hard phase: the masks meet the budget exactly
            return torch.zeros((), device=self._latent(self.names[0]).device)
        terms = None
        if self.weight_penalty:
            total = self._weight_budget()
            if self.threshold_control:
                terms = self._budget_terms()
        else:
            terms = self._budget_terms()
            total = self._threshold_budget(terms)
        self._update_target()
        self.temperature.generation += 1
        if self.threshold_control:  # for the controller's step before the next forward pass
            self._control = {"error": torch.as_tensor(terms[1]) / self.total_cost - self.target_keep,
                             "slopes": {k: v[1] for k, v in terms[2].items()}}
        fraction = total / self.total_cost
        error = fraction - self.target_keep
        if self.relative:
            error = error / (1.0 - self.reachable_rate)
        return self.lam * error ** 2

    def _weight_budget(self) -> torch.Tensor:
        """``Σ_ℓ c_ℓ Σψ`` (or the binary count, straight-through) with its gradient into weights and thresholds."""
        total = None
        for name, mask in self.masks_by_name.items():
            latent = self._latent(name)
            binary = self.budget == "binary"
            psi_sum = None if binary else mask.cached_sum(latent)
            if psi_sum is None:
                psi = mask.soft_mask(latent)
                if binary:  # value: the count ψ > 0.5 will keep; gradient: the soft ψ's
                    psi = (psi > 0.5).to(psi.dtype) + psi - psi.detach()
                psi_sum = psi.sum()
            term = mask.cost * psi_sum
            total = term if total is None else total + term
        return total

    @torch.no_grad()
    def _budget_terms(self) -> tuple[float, float, dict]:
        """``(Σ w ψ, Σ w [ψ > ½], {(id(owner), buffer): [ρ, Σ w ∂Σψ/∂ρ]})`` over every mask, without a graph."""
        soft_total, count_total, slopes = 0.0, 0.0, {}
        for name, mask in self.masks_by_name.items():
            soft, count, grads = mask.budget_terms(self._latent(name))
            soft_total = soft_total + mask.cost * soft
            count_total = count_total + mask.cost * count
            for g, d in grads.items():
                owner, bname = mask.threshold_owner(g)
                entry = slopes.setdefault((id(owner), bname), [getattr(owner, bname), 0.0])
                entry[1] = entry[1] + mask.cost * d
        return soft_total, count_total, slopes

    def _threshold_budget(self, terms: tuple | None = None) -> torch.Tensor:
        """``Σ_ℓ c_ℓ Σψ`` (or the binary count) whose gradient reaches the thresholds only.

        The value is computed without a graph (:meth:`CTFMask.budget_terms`); the gradient
        enters as ``Σ_t (ρ_t − sg(ρ_t)) ∂/∂ρ_t``, which is 0 in value and gives every
        threshold ``ρ_t`` exactly its analytic derivative (``sg``: stop-gradient). Same value and
        gradient as differentiating ``Σψ`` of the detached weights with autograd, about 20×
        fewer operations.
        """
        soft, count, slopes = terms if terms is not None else self._budget_terms()
        total = torch.as_tensor(count if self.budget == "binary" else soft).clone()
        for rho, slope in slopes.values():
            if rho.requires_grad:
                total = total + (rho - rho.detach()) * slope
        return total

    def _update_target(self) -> None:
        """Target kept fraction ``k₀ − (k₀ − (1 − r))·min(1, p)``, ``p`` = training progress / ramp.

        ``k₀`` is the soft kept fraction when training starts; progress counts finished
        steps (``(e + (s + 1)/S) / (ramp·E)`` at step ``s`` of ``S`` in epoch ``e``; ``S`` is
        learned from epoch 0, during which the target is already epoch 0's end value).
        """
        final = 1.0 - self.reachable_rate
        if self.ramp <= 0.0 or self._epochs is None:
            self.target_keep = final
            return
        within = 1.0
        if self._steps_per_epoch:
            done = self.temperature.generation - self._epoch_start_generation + 1
            within = min(1.0, done / self._steps_per_epoch)
        progress = min(1.0, (self._epoch + within) / (self.ramp * self.soft_epochs(self._epochs)))
        start = self._start_keep if self._start_keep is not None else 1.0
        self.target_keep = start - (start - final) * progress

    def extra_loss(self, model: nn.Module | None = None) -> torch.Tensor | None:
        """:func:`prunekit.pipeline.train.fit` hook: the budget penalty (``None`` in the hard phase)."""
        if self._frozen is not None:
            self._check_live()
            return None
        return self.penalty()

    def soft_epochs(self, epochs: int) -> int:
        """Epochs with learned (soft) masks out of ``epochs``: all but the last ``⌊hard · epochs⌋``, at least 1."""
        return max(1, epochs - int(self.hard * epochs + 1e-9))

    def settle_epoch(self, epochs: int) -> int:
        """First epoch of the settle phase: the last ``⌈settle · S⌉`` of the ``S`` soft epochs (``S`` if ``settle = 0``)."""
        soft = self.soft_epochs(epochs)
        return soft - math.ceil(self.settle * soft - 1e-9)

    def step(self, epoch: int, epochs: int) -> float:
        """Set ``τ`` for epoch ``epoch`` (0-based) of ``epochs``, advance the budget ramp, and start
        the hard phase when it is due (``on_epoch_start`` is the same call, for ``fit``).

        ``τ`` is geometric from ``tau_start`` (epoch 0) to ``tau_end`` (the last soft epoch,
        :meth:`soft_epochs` − 1) and stays there; from epoch :meth:`soft_epochs` on the
        masks are frozen (:meth:`freeze`).
        """
        self._check_live()
        if epoch > 0 and self.temperature.generation > self._epoch_start_generation:
            self._steps_per_epoch = self.temperature.generation - self._epoch_start_generation
        self._epoch_start_generation = self.temperature.generation
        self._epoch, self._epochs = epoch, epochs
        soft = self.soft_epochs(epochs)
        t = epoch / (soft - 1) if soft > 1 else 1.0
        t = min(max(t, 0.0), 1.0)
        self.tau = self.tau_start * (self.tau_end / self.tau_start) ** t
        settling = self.settle > 0 and epoch >= self.settle_epoch(epochs)
        for mask in self.masks_by_name.values():
            mask.gate_grad = not settling
        if epoch >= soft and self._frozen is None and self.hard > 0:
            self.freeze()
        if self._start_keep is None:
            self._start_keep = max(min(self.kept_fraction()["soft"], 1.0), 1.0 - self.reachable_rate)
        return self.tau

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Anneal ``τ``, advance the budget ramp, freeze when due (``fit`` calls it before every epoch): :meth:`step`."""
        self.step(epoch, epochs)

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        row = {"epoch": epoch, "tau": self.tau, "target": self.target_keep, **self.kept_fraction(),
               "frozen": self.frozen}
        row["eval_accuracy"] = metrics.get("eval_accuracy")
        self.history.append(row)

    def state_dict(self) -> dict:
        """Temperature, ramp position, threshold-optimizer state, history and the frozen masks (``fit`` checkpoints)."""
        frozen = None
        if self._frozen is not None:
            frozen = {"rank_fix": dict(self._frozen["rank_fix"]),
                      "masks": {n: m.frozen.detach().bool().cpu() for n, m in self.masks_by_name.items()},
                      "state": {n: {"psi": s["psi"].detach().cpu(),
                                    "factors": {g: f.cpu() for g, f in s["factors"].items()}}
                                for n, s in self._frozen["state"].items()}}
        return {"tau": self.tau, "history": list(self.history), "generation": self.temperature.generation,
                "adam": {k: [v[0], v[1].detach().cpu(), v[2].detach().cpu()] for k, v in self._adam.items()},
                "steps_per_epoch": self._steps_per_epoch, "start_keep": self._start_keep, "frozen": frozen}

    def load_state_dict(self, state: dict) -> None:
        self.tau = state["tau"]
        self.history = list(state.get("history", []))
        self.temperature.generation = int(state.get("generation", 0))
        self._adam = {k: [int(v[0]), v[1].clone(), v[2].clone()] for k, v in state.get("adam", {}).items()}
        self._steps_per_epoch = state.get("steps_per_epoch")
        self._start_keep = state.get("start_keep")
        frozen = state.get("frozen")
        if frozen is not None:
            for name, mask in self.masks_by_name.items():
                mask.freeze(frozen["masks"][name])
            self._hold_closed_structures({n: m.frozen > 0.5 for n, m in self.masks_by_name.items()})
            device = self._latent(self.names[0]).device
            self._frozen = {"rank_fix": dict(frozen["rank_fix"]),
                            "state": {n: {"psi": s["psi"].to(device),
                                          "factors": {g: f.to(device) for g, f in s["factors"].items()}}
                                      for n, s in frozen["state"].items()}}

    # ------------------------------------------------------------------ inspection
    @torch.no_grad()
    def _state(self) -> dict[str, dict]:
        """Per weight: continuous ψ, binarised factors, latent weight (frozen: ψ and factors as frozen)."""
        if self._frozen is not None:
            return {name: {**s, "w": self._latent(name), "mask": self.masks_by_name[name]}
                    for name, s in self._frozen["state"].items()}
        out = {}
        for name, mask in self.masks_by_name.items():
            w = self._latent(name)
            factors = mask.factors(w)
            psi = mask.soft_mask(w)
            binary = {g: (f > 0.5).expand(mask.view_shape).reshape(w.shape) for g, f in factors.items()}
            out[name] = {"psi": psi, "factors": binary, "w": w, "mask": mask}
        return out

    @property
    def frozen(self) -> bool:
        """Whether the hard phase has started (masks fixed to the rank-fixed binary ones)."""
        return self._frozen is not None

    @torch.no_grad()
    def masks(self) -> dict[str, torch.Tensor]:
        """The current binary masks: ``ψ > 0.5`` (before the rank fix), or the frozen ones in the hard phase."""
        self._check_live()
        if self._frozen is not None:
            return {n: m.frozen > 0.5 for n, m in self.masks_by_name.items()}
        return {n: s["psi"] > 0.5 for n, s in self._state().items()}

    @torch.no_grad()
    def kept_fraction(self) -> dict[str, float]:
        """``soft``: ``Σ w ψ / N_w``; ``binary``: the same with ``ψ > 0.5`` (the masks the forward pass uses)."""
        if self.finalized:
            return {"soft": 1.0 - self._report["rate"], "binary": 1.0 - self._report["rate"]}
        soft = binary = 0.0
        for name, mask in self.masks_by_name.items():
            c = self.costs[name]
            psi = mask.mask(self._latent(name))
            soft += c * float(psi.sum())
            binary += c * float((psi > 0.5).sum())
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
            pruned = s["psi"] <= 0.5
            if s["factors"]:  # every factor open but their product ≤ 0.5: credited to the finest
                attributed[list(s["factors"])[-1]] += int((pruned & ~closed).sum())
            pruned_before += int(pruned.sum())
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
        factor only, and an entry whose factors are all open but whose product ``ψ ≤ 0.5``
        to the finest (these sum to ``pruned_by_masks``, the fraction with ``ψ ≤ 0.5``).
        After :meth:`finalize` also ``rank_fix`` (entries the rank fix dropped / revived),
        ``rate`` (the final removed fraction, cost-weighted), ``removed_structures``, and
        ``output_constant`` (``True``: the fixed masks leave no path from the input; a warning said so).
        """
        if self._report is not None:
            return self._report
        return self._summary(self._state())

    # ------------------------------------------------------------------ finalize
    def _groups(self) -> dict[str, torch.Tensor] | None:
        """Group ids of the finest structured granularity, for structured-only variants."""
        if "entry" in self.granularities:
            return None
        unit = [g for g in ("channel", "column", "row") if g in self.granularities][-1]
        groups = {}
        for name, m in self.masks_by_name.items():
            if unit not in m.granularities:
                continue
            w = self._latent(name)
            k, cc, r, kk = m.view_shape
            index = {"channel": torch.arange(k).view(k, 1, 1, 1), "column": torch.arange(cc).view(1, cc, 1, 1),
                     "row": torch.arange(r).view(1, 1, r, 1)}[unit]
            groups[name] = index.expand(m.view_shape).reshape(w.shape).to(w.device)
        return groups

    def max_rate(self) -> float:
        """The largest rate the granularities can reach without switching a masked weight off entirely.

        With ``"entry"`` any rate below 1. A structured-only variant keeps every weight
        that has no factor of its granularity (``"channel"``: every plain layer, which has
        no blocks) plus one group of each other weight, so it cannot go further than
        ``1 −`` (that cost) ``/ N_w``.
        """
        groups = self._groups()
        if groups is None:
            return 1.0
        keep = sum(self.costs[n] * self._latent(n).numel() for n in self.names if n not in groups)
        for n, g in groups.items():
            keep += self.costs[n] * int(torch.bincount(g.flatten()).min())
        return 1.0 - keep / self.total_cost

    @staticmethod
    def _score(s: dict) -> torch.Tensor:
        """Rank-fix score of every entry: ``ψ · |Ŵ| / s`` (continuous mask × magnitude in layer units)."""
        return s["psi"] * s["w"].abs() / s["mask"].scale

    @torch.no_grad()
    def _fix(self, state: dict) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """Binarise ``ψ > 0.5`` and rank-fix to the exact budget: ``(keep masks, {"dropped", "revived"})``."""
        binary = {n: s["psi"] > 0.5 for n, s in state.items()}
        scores = {n: self._score(s) for n, s in state.items()}
        if self.cost == "params":
            keep = float(round((1.0 - self.reachable_rate) * self.total_cost))
        else:
            keep = (1.0 - self.reachable_rate) * self.total_cost
        groups = self._groups()
        if groups is None:
            fixed = fix_to_budget(binary, scores, self.costs, keep)
        else:
            start = {n: binary[n] for n in groups}
            for n, g in groups.items():  # a weight with every group closed gets its best group back
                if not bool(start[n].any()):
                    ng = int(g.max()) + 1
                    mean = torch.zeros(ng, dtype=torch.float64, device=g.device).index_add_(
                        0, g.flatten(), scores[n].flatten().double()) / torch.bincount(g.flatten(), minlength=ng)
                    start[n] = g == int(mean.argmax())
            frozen = {n: torch.ones_like(binary[n]) for n in binary if n not in groups}
            frozen_cost = sum(self.costs[n] * m.numel() for n, m in frozen.items())
            fixed = fix_to_budget(start, {n: scores[n] for n in groups}, self.costs, keep - frozen_cost, groups)
            fixed.update(frozen)
            for n in frozen:
                binary[n] = frozen[n]
        learned = {n: s["psi"] > 0.5 for n, s in state.items()}  # the masks' own binary state
        dropped = sum(int((binary[n] & ~fixed[n]).sum()) for n in binary)
        revived = sum(int((~binary[n] & fixed[n]).sum()) for n in binary)
        moved = sum(int((learned[n] != fixed[n]).sum()) for n in learned)
        prunable = sum(int(learned[n].numel()) for n in learned)
        return fixed, {"moved": moved, "prunable": prunable, "dropped": dropped, "revived": revived}

    @torch.no_grad()
    def freeze(self) -> dict[str, int]:
        """Start the hard phase: binarise, rank-fix to the exact budget, and fix every mask to that.

        From then on ``W = Ŵ ⊙ M`` with the fixed binary ``M``: only the kept weights
        train, the penalty is 0, the thresholds stop, and :meth:`finalize` returns exactly
        the model that was trained (no rank fix left to do). :meth:`step` calls it at the
        start of epoch :meth:`soft_epochs`; returns the rank fix ``{"dropped", "revived"}``.
        """
        self._check_live()
        if self._frozen is not None:
            return dict(self._frozen["rank_fix"])
        state = self._state()
        fixed, rank_fix = self._fix(state)
        for name, mask in self.masks_by_name.items():
            mask.freeze(fixed[name])
        self._hold_closed_structures(fixed)
        self._frozen = {"rank_fix": rank_fix,
                        "state": {n: {"psi": s["psi"].detach().clone(), "factors": s["factors"]}
                                  for n, s in state.items()}}
        self._check_output(fixed)
        return dict(rank_fix)

    def _check_output(self, fixed: dict[str, torch.Tensor], warn: bool = True) -> None:
        """Warn when the fixed masks leave the output the same for every example input (a dead network);
        ``report()["output_constant"]`` records it (``None``: the example batch cannot tell)."""
        self._output_constant = output_is_constant(self.model, self.example_inputs)
        if self._output_constant and warn:
            empty = [n for n, m in fixed.items() if not bool(m.any())]
            warnings.warn(f"CTF: at rate {self.rate} the masks leave {type(self.model).__name__}'s output the same "
                          f"for every example input: no path from the input is left (masked weights left empty: "
                          f"{empty or 'none, the paths are cut between layers'}). Fine-tuning cannot undo this; use "
                          "a lower rate, more epochs with masks, or keep a layer dense (exclude=...)", stacklevel=3)

    @torch.no_grad()
    def _hold_closed_structures(self, fixed: dict[str, torch.Tensor]) -> None:
        """Zero, and keep at zero while training, the non-weight slices (biases, BatchNorm affine,
        a head's graph) of the structures :meth:`finalize` will remove, so that the hard phase
        trains exactly the model that finalize returns."""
        weights = _weight_modules(self.model)
        view = {}
        for n, module in weights.items():
            view[n] = fixed[n] if n in fixed else module.weight
        removed = _removable(self._structures, view, set(weights))
        params = dict(self.model.named_parameters())
        held = []
        for sid in removed:
            for n, dim, idxs in self._structures[sid].slices:
                if n in weights or n not in params:
                    continue
                held.append((params[n], dim, torch.as_tensor(idxs, dtype=torch.long, device=params[n].device)))
        self._held_zero = held
        self._zero_held()
        if held and self._hold_hook is None:
            self._hold_hook = self.model.register_forward_pre_hook(lambda module, args: self._zero_held())

    @torch.no_grad()
    def _zero_held(self) -> None:
        for param, dim, index in self._held_zero:
            param.index_fill_(dim, index, 0.0)

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
        if self._frozen is not None:
            fixed = {n: m.frozen > 0.5 for n, m in self.masks_by_name.items()}
            rank_fix = dict(self._frozen["rank_fix"])
        else:
            fixed, rank_fix = self._fix(state)
        report = self._summary(state, fixed)
        kept_cost = sum(self.costs[n] * float(fixed[n].sum()) for n in fixed)
        report.update(rank_fix=rank_fix, rate=1.0 - kept_cost / self.total_cost,
                      kept_weights=int(sum(int(m.sum()) for m in fixed.values())), tau=self.tau,
                      thresholds=self.thresholds(), hard_phase=self._frozen is not None)
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self._hold_hook is not None:
            self._hold_hook.remove()
            self._hold_hook = None
        self._held_zero = []
        for name, mask in self.masks_by_name.items():
            mask.clear_cache()
            parametrize.remove_parametrizations(_module_of(self.model, name), "weight", leave_parametrized=False)
        self.finalized = True
        plan = plan_from_masks(self.model, {n: m.detach() for n, m in fixed.items()}, self.example_inputs,
                               structures=self._structures,
                               method="ctf", budget={"rate": self.rate, "cost": self.cost},
                               meta={"ctf": {k: v for k, v in report.items() if k not in ("layers", "thresholds")}})
        self._check_output(fixed, warn=not self._output_constant)  # the model now computes with the fixed masks
        report["output_constant"] = self._output_constant
        report["removed_structures"] = len(plan.removed)
        report["structured_params_fraction"] = plan.achieved.get("params", 0.0)
        report["structured_macs_fraction"] = plan.achieved.get("macs", 0.0)
        self._report = report
        return plan
