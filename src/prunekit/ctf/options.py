"""The settings of :class:`~prunekit.ctf.CTF`, in one validated object with documented, dependent defaults.

``CTF(model, rate, options)`` and ``CTF(model, rate, lam=20, hard=0)`` are the same thing:
keywords override the fields of ``options`` (or of ``CTFOptions()``). A field left at
``None`` takes a default that depends on ``thresholds`` (see :class:`CTFOptions`);
:meth:`CTFOptions.resolved` fills them in.

Example:
    >>> CTFOptions(thresholds="fixed").resolved().lam
    200.0
    >>> CTFOptions(ramp=2.0)
    Traceback (most recent call last):
    ...
    ValueError: CTFOptions: ramp must be in [0, 1], got 2.0
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Sequence

from .masks import GRANULARITIES

__all__ = ["CTFOptions", "DEFAULT_A_INIT"]

# Initial thresholds in units of each layer's rms: almost dense when they learn, a real cut when fixed.
DEFAULT_A_INIT = {
    "learnable": {"channel": 0.05, "column": 0.05, "row": 0.05, "entry": 0.05},
    "fixed": {"channel": 0.5, "column": 0.5, "row": 0.5, "entry": 0.5},
}


def _fraction(name: str, value: float, closed: bool = True) -> None:
    ok = 0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0
    if not ok or math.isnan(value):
        raise ValueError(f"CTFOptions: {name} must be in [0, {'1]' if closed else '1)'}, got {value}")


def _choice(name: str, value, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"CTFOptions: {name} must be one of {choices}, got {value!r}")


@dataclass
class CTFOptions:
    """Every setting of :class:`~prunekit.ctf.CTF` but the model, the rate and the example inputs.

    What is masked:
        cost: ``"params"`` (each entry counts 1) or ``"macs"`` (each entry weighted by the
            MACs it costs per sample).
        granularities: active factors, a non-empty subset of ``("channel", "column", "row",
            "entry")``; ``("column",)`` etc. are the structured-only variants.
        exclude: module or parameter names (or modules) left dense; the classifier always is.
        params: explicit weight names to mask instead of every ``weight`` of dimension ≥ 2
            but the classifier's.
        tie_heads: one block gate for an attention layer's query, key and value.
        layouts: ``{weight name: K}`` overriding the detected number of blocks.

    The budget penalty ``λ ((f − k_t) / (1 − r))²``:
        lam: ``λ``. Default ``None``: 50 with learnable thresholds, 200 with fixed ones.
        relative: divide the miss by ``1 − r``. Default ``None``: with learnable thresholds.
        budget: ``"binary"`` (``f`` counts ``ψ > ½``, straight-through gradient) or ``"soft"``
            (the paper's ``Σψ``).
        weight_penalty: the penalty's gradient also reaches the weights. Default ``None``:
            only with fixed thresholds, where it must (``False`` with fixed thresholds is an error).
        ramp: fraction of the soft epochs over which ``k_t`` moves from the initial kept
            fraction to ``1 − r`` (0: the paper's fixed target).

    Thresholds ``a = softplus(ρ)`` and temperature (units of each layer's rms):
        thresholds: ``"learnable"`` (CTF's own Adam) or ``"fixed"``.
        a_init: initial thresholds per granularity, over :data:`DEFAULT_A_INIT`
            (0.05 learnable, 0.5 fixed).
        threshold_lr: Adam step on ``ρ``; ``anneal_threshold_lr`` scales it by ``τ / τ_start``.
        threshold_control: the budget controller (a common shift of the finest thresholds
            every step, closing half the binary budget gap). Default ``None``: with learnable
            thresholds, which it needs.
        tau_start, tau_end: geometric temperature schedule over the soft epochs.

    Schedule:
        hard: fraction of the epochs, at the end, trained under frozen binary masks (in [0, 1)).
        settle: fraction of the soft epochs, at their end, with no gradient through ``ψ`` into
            the weights (default ½; the ramp, default ¼, ends before it).

    Example:
        >>> o = CTFOptions(thresholds="fixed", lam=80).resolved()
        >>> o.lam, o.relative, o.weight_penalty, o.threshold_control, o.a_init["entry"]
        (80.0, False, True, False, 0.5)
    """

    cost: str = "params"
    granularities: Sequence[str] = GRANULARITIES
    exclude: Sequence | None = None
    params: Sequence[str] | None = None
    tie_heads: bool = True
    layouts: dict[str, int] | None = None
    lam: float | None = None
    relative: bool | None = None
    budget: str = "binary"
    weight_penalty: bool | None = None
    ramp: float = 0.25
    thresholds: str = "learnable"
    a_init: dict[str, float] | None = None
    threshold_lr: float = 0.2
    anneal_threshold_lr: bool = True
    threshold_control: bool | None = None
    tau_start: float = 0.5
    tau_end: float = 0.02
    hard: float = 0.25
    settle: float = 0.5

    def __post_init__(self) -> None:
        _choice("cost", self.cost, ("params", "macs"))
        _choice("thresholds", self.thresholds, ("learnable", "fixed"))
        _choice("budget", self.budget, ("binary", "soft"))
        granularities = tuple(self.granularities)
        if not granularities or not set(granularities) <= set(GRANULARITIES):
            raise ValueError(f"CTFOptions: granularities must be a non-empty subset of {GRANULARITIES}, "
                             f"got {granularities}")
        for name in ("tau_start", "tau_end"):
            if not getattr(self, name) > 0:
                raise ValueError(f"CTFOptions: {name} must be positive, got {getattr(self, name)}")
        _fraction("ramp", self.ramp)
        _fraction("settle", self.settle)
        _fraction("hard", self.hard, closed=False)
        for name in ("lam", "threshold_lr"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError(f"CTFOptions: {name} must be ≥ 0, got {value}")
        unknown = set(self.a_init or {}) - set(GRANULARITIES)
        if unknown or any(not v >= 0 for v in (self.a_init or {}).values()):
            raise ValueError(f"CTFOptions: a_init must map granularities {GRANULARITIES} to thresholds ≥ 0, "
                             f"got {self.a_init}")
        if any(int(k) < 1 for k in (self.layouts or {}).values()):
            raise ValueError(f"CTFOptions: layouts must give every weight K ≥ 1 blocks, got {self.layouts}")
        fixed = self.thresholds == "fixed"
        if fixed and self.threshold_control:
            raise ValueError("CTFOptions: threshold_control needs learnable thresholds (thresholds='learnable')")
        if fixed and self.weight_penalty is False:
            raise ValueError("CTFOptions: weight_penalty=False needs learnable thresholds: with "
                             "thresholds='fixed' only the weights can carry the budget")

    def replace(self, **overrides) -> CTFOptions:
        """A copy with ``overrides`` (validated; an unknown name raises naming it)."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"CTF: unknown option(s) {unknown}; the options are {sorted(known)}")
        return dataclasses.replace(self, **overrides)

    def resolved(self) -> CTFOptions:
        """A copy with every dependent default filled in (``None`` → its value for these ``thresholds``).

        Resolve after the last :meth:`replace`: a resolved ``lam`` stays what it was if
        ``thresholds`` changes later."""
        learnable = self.thresholds == "learnable"
        # learnable: the budget moves the thresholds (Adam), so a strong relative penalty is safe;
        # fixed: only the weights can meet it (SGD), which a strong penalty destabilises
        return dataclasses.replace(
            self, granularities=tuple(g for g in GRANULARITIES if g in self.granularities),
            lam=float(self.lam if self.lam is not None else (50.0 if learnable else 200.0)),
            relative=learnable if self.relative is None else bool(self.relative),
            weight_penalty=(not learnable) or bool(self.weight_penalty),
            threshold_control=learnable if self.threshold_control is None else bool(self.threshold_control),
            a_init={**DEFAULT_A_INIT[self.thresholds], **(self.a_init or {})},
            tau_start=float(self.tau_start), tau_end=float(self.tau_end), ramp=float(self.ramp),
            hard=float(self.hard), settle=float(self.settle), threshold_lr=float(self.threshold_lr))
