"""What the Lightning and Hugging Face adapters share, free of either library.

* :class:`CTFRun` drives a :class:`prunekit.ctf.CTF` from epoch and step events: the CTF
  schedule over the mask-learning epochs, the check that the budget penalty reached the
  loss, :meth:`CTF.finalize` after the last of them, and the zeros held while the
  remaining epochs fine-tune.
* :class:`OneShot` scores with :func:`prunekit.saliency`, selects with
  :func:`prunekit.select` and masks the model in place.
* :class:`HeldZeros` keeps a plan's removed slices and entry masks at zero while a model
  trains on (gradients masked, tensors re-zeroed after every optimizer step).

Example:
    >>> import torch, prunekit
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> x = torch.randn(2, 4)
    >>> pruner = OneShot(prunekit.Budget(structures=0.5), "l1", example_inputs=x)
    >>> plan = pruner.prune(model)
    >>> int((model[0].weight.abs().sum(1) == 0).sum())            # 4 of the 8 units are zero
    4
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> model(x).sum().backward(); opt.step(); pruner.after_step()
    >>> int((model[0].weight.abs().sum(1) == 0).sum())            # ... and stay zero
    4
    >>> tuple(pruner.pruned_model()[0].weight.shape)
    (4, 4)
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..core.materialize import materialize, structures_for_plan
from ..core.plan import Budget, PruningPlan, select
from ..core.structures import Structures, find_structures
from ..criteria import CRITERIA, saliency
from ..ctf import CTF

__all__ = ["CTFRun", "CTFResults", "OneShot", "HeldZeros", "missing", "split_batch", "to_device", "take_batches"]

log = logging.getLogger("prunekit")


def missing(library: str, extra: str) -> ImportError:
    """The error raised when an adapter's library is not installed."""
    return ImportError(f"this prunekit adapter needs {library}, which is not installed: "
                       f"pip install 'prunekit[{extra}]'")


def split_batch(batch: Any, label_key: str = "labels") -> tuple[Any, Any]:
    """``(inputs, targets)`` of a training batch: a mapping loses its ``label_key`` entry
    (the targets); a tuple or list gives its first two elements.

    Example:
        >>> split_batch({"input_ids": 1, "labels": 2})
        ({'input_ids': 1}, 2)
        >>> split_batch((10, 20, 30))
        (10, 20)
    """
    if isinstance(batch, Mapping):
        if label_key not in batch:
            raise ValueError(f"a batch mapping needs the targets under {label_key!r}; it has {sorted(batch)}")
        return {k: v for k, v in batch.items() if k != label_key}, batch[label_key]
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(f"cannot split a {type(batch).__name__} batch into (inputs, targets); "
                    "pass batch_to_data= (a function batch -> (inputs, targets))")


def to_device(obj: Any, device: torch.device) -> Any:
    """``obj`` with every tensor (in nested mappings, tuples, lists) moved to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_device(v, device) for v in obj)
    return obj


def take_batches(loader: Iterable, n: int, device: torch.device, batch_to_data) -> list:
    """The first ``n`` batches of ``loader`` as ``(inputs, targets)`` pairs on ``device``."""
    out = []
    for batch in loader:
        if len(out) >= n:
            break
        out.append(to_device(batch_to_data(batch), device))
    if not out:
        raise ValueError("the training data gave no batch to score the structures with")
    return out


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


class HeldZeros:
    """Keep the plan's removed slices (producers and consumers) and zero entries at zero.

    Zeroes them now, masks their gradients (so momentum, Adam moments and gradient
    clipping never see them) and re-zeroes the tensors on :meth:`apply` (call it after
    every optimizer step: weight decay, buffers such as BatchNorm statistics). The model
    then computes what ``prunekit.apply_masks(model, plan)`` computes.
    """

    def __init__(self, model: nn.Module, structures: Structures, plan: PruningPlan):
        self.model = model
        tensors = self._tensors()
        keep: dict[str, torch.Tensor] = {}
        for sid in plan.removed:
            for name, dim, idxs in list(structures[sid].slices) + list(structures[sid].consumers):
                t = tensors[name]
                k = keep.setdefault(name, torch.ones(t.shape, dtype=torch.bool, device=t.device))
                k.index_fill_(dim, torch.as_tensor(idxs, dtype=torch.long, device=t.device), False)
        for name, mask in plan.entry_masks.items():
            t = tensors[name]
            k = keep.setdefault(name, torch.ones(t.shape, dtype=torch.bool, device=t.device))
            k &= mask.to(device=t.device, dtype=torch.bool)
        self.drop = {name: ~k for name, k in keep.items()}
        params = dict(model.named_parameters())
        self._hooks = [params[n].register_hook(self._grad_hook(n)) for n in self.drop
                       if n in params and params[n].requires_grad]
        self.apply()

    def _tensors(self) -> dict[str, torch.Tensor]:
        tensors = dict(self.model.named_parameters())
        tensors.update(self.model.named_buffers())
        return tensors

    def _grad_hook(self, name: str):
        def hook(grad: torch.Tensor) -> torch.Tensor:
            return grad.masked_fill(self.drop[name].to(grad.device), 0)
        return hook

    @torch.no_grad()
    def apply(self) -> None:
        """Zero every held entry again."""
        tensors = self._tensors()
        for name, drop in self.drop.items():
            t = tensors[name]
            if drop.device != t.device:
                drop = self.drop[name] = drop.to(t.device)
            t.masked_fill_(drop, 0)

    def remove(self) -> None:
        """Zero once more and stop masking the gradients."""
        self.apply()
        for h in self._hooks:
            h.remove()
        self._hooks = []


class OneShot:
    """Score, select and mask in place once (at the start of epoch ``at_epoch``), then hold the zeros.

    Args:
        budget: a :class:`prunekit.Budget` (or its keyword arguments as a dict).
        method: a :func:`prunekit.saliency` method (``"l1"``, ``"taylor"``, ``"sosp-h"``, ...).
        example_inputs: one batch of inputs the model accepts, to find the structures
            (default: the inputs of the first scoring batch).
        num_batches: batches of training data the data-driven methods score on.
        saliency_options: extra keyword arguments of :func:`prunekit.saliency`
            (``loss=``, ``output=``, ``num_samples=``, ``seed=`` ...).
        select_options: extra keyword arguments of :func:`prunekit.select`.
    """

    def __init__(self, budget, method: str = "l1", *, at_epoch: int = 0, example_inputs=None, num_batches: int = 8,
                 saliency_options: dict | None = None, select_options: dict | None = None):
        if method.lower() not in CRITERIA:
            raise ValueError(f"unknown saliency method {method!r}; known: {', '.join(sorted(CRITERIA))}")
        if at_epoch < 0 or num_batches < 1:
            raise ValueError(f"at_epoch must be >= 0 and num_batches >= 1, got {at_epoch} and {num_batches}")
        self.budget = budget if isinstance(budget, Budget) else Budget(**budget)
        self.method, self.at_epoch, self.num_batches = method.lower(), int(at_epoch), int(num_batches)
        self.example_inputs = example_inputs
        self.saliency_options = dict(saliency_options or {})
        self.select_options = dict(select_options or {})
        self.model: nn.Module | None = None
        self.structures: Structures | None = None
        self.plan: PruningPlan | None = None
        self.held: HeldZeros | None = None

    @property
    def batches_needed(self) -> int:
        """Training batches :meth:`prune` needs: ``num_batches`` for a data-driven method, else one
        batch to find the structures on when there are no ``example_inputs``, else none."""
        if CRITERIA[self.method].needs_data:
            return self.num_batches
        return 1 if self.example_inputs is None else 0

    def due(self, epoch: int) -> bool:
        return self.plan is None and epoch >= self.at_epoch

    def prune(self, model: nn.Module, batches: list | None = None) -> PruningPlan:
        """Find the structures, score, select, and zero the plan in ``model`` (kept zero from now on)."""
        if self.batches_needed and not batches:
            raise ValueError(f"one-shot {self.method!r} pruning needs training batches")
        example = self.example_inputs if self.example_inputs is not None else batches[0][0]
        example = to_device(example, _device(model))
        structures = find_structures(model, example)
        data = batches if CRITERIA[self.method].needs_data else None
        scores = saliency(model, structures, data, self.method, **self.saliency_options)
        plan = select(structures, scores, self.budget, method=self.method, **self.select_options)
        self.model, self.structures, self.plan = model, structures, plan
        self.held = HeldZeros(model, structures, plan)
        log.info("prunekit: %s removed %d of %d structures (%s)", self.method, len(plan.removed), len(structures),
                 ", ".join(f"{k} {v:.3f}" for k, v in plan.achieved.items()))
        return plan

    def after_step(self) -> None:
        """Re-zero the held entries (call after every optimizer step)."""
        if self.held is not None:
            self.held.apply()

    def pruned_model(self) -> nn.Module:
        """The physically smaller copy (:func:`prunekit.materialize`); the trained model is untouched."""
        if self.plan is None:
            raise RuntimeError("not pruned yet: the callback prunes at the start of epoch "
                               f"{self.at_epoch}, which training has not reached")
        self.after_step()
        return materialize(self.model, self.plan, self.structures)


class CTFResults:
    """What both frameworks' CTF callbacks expose, read from their :class:`CTFRun` (``self.run``)."""

    @property
    def ctf(self) -> CTF:
        return self.run.ctf

    @property
    def plan(self):
        """The plan, once CTF is finalized (``None`` before)."""
        return self.run.plan

    def extra_loss(self, model: nn.Module | None = None) -> torch.Tensor | None:
        """The budget penalty for this step (``None`` in the hard phase and after finalize)."""
        return None if self.run.plan is not None else self.ctf.extra_loss()

    def pruned_model(self) -> nn.Module:
        """The finalized model, physically smaller (:func:`prunekit.materialize`)."""
        return self.run.pruned_model()


class CTFRun:
    """A :class:`prunekit.ctf.CTF` driven by a trainer's events.

    The CTF schedule runs over the first ``epochs`` epochs (default: all of them);
    :meth:`CTF.finalize` follows the last of them (or the end of training), and any
    epochs left fine-tune with the plan's zeros held (:class:`HeldZeros`).
    """

    @classmethod
    def of(cls, model, rate: float | None, epochs: int | None, ctf_options: dict) -> "CTFRun":
        """A run of a ready :class:`CTF` (``rate`` and options not allowed), or of a new one on ``model``."""
        if isinstance(model, CTF):
            if rate is not None or ctf_options:
                raise ValueError("CTFCallback: give either a ready CTF or a model with rate= and CTF options")
            return cls(model, epochs)
        if rate is None:
            raise ValueError("CTFCallback: rate= is required with a model")
        return cls(CTF(model, rate, **ctf_options), epochs)

    def __init__(self, ctf: CTF, epochs: int | None = None):
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        self.ctf, self.epochs = ctf, epochs
        self.plan: PruningPlan | None = None
        self.held: HeldZeros | None = None
        self._generation: int | None = None
        self._checked = False

    def learning_epochs(self, total: int | None) -> int:
        if self.epochs is not None:
            return self.epochs if total is None else min(self.epochs, total)
        if total is None or total < 1 or total >= 2 ** 31:
            raise ValueError("CTF needs the number of epochs: set the trainer's epochs, or pass epochs= to the callback")
        return int(total)

    def epoch_start(self, epoch: int, total: int | None) -> None:
        learn = self.learning_epochs(total)
        if self.plan is None and epoch < learn:
            self.ctf.on_epoch_start(epoch, learn)

    def batch_start(self) -> None:
        self._generation = self.ctf.temperature.generation if self.plan is None else None

    def batch_end(self) -> None:
        """Check, once, that the penalty reached the loss; after finalize, re-zero."""
        if self.held is not None:
            self.held.apply()
        if self._checked or self.plan is not None or self._generation is None:
            return
        self._checked = True
        if not self.ctf.frozen and self.ctf.temperature.generation == self._generation:
            raise RuntimeError("CTF's budget penalty was not added to the training loss in this step; "
                               "see docs/integrations.md (Lightning: add_penalty=True or add callback.extra_loss(); "
                               "Hugging Face: PrunekitTrainer or ExtraLossMixin)")

    def epoch_end(self, epoch: int, total: int | None, metrics: dict | None = None) -> None:
        if self.plan is not None:
            return
        self.ctf.on_epoch_end(epoch, dict(metrics or {}))
        if epoch + 1 >= self.learning_epochs(total):
            self.finalize(hold=total is not None and epoch + 1 < total)

    def finalize(self, hold: bool = False) -> PruningPlan:
        """:meth:`CTF.finalize` (once); with ``hold``, keep the plan's zeros while training goes on."""
        if self.plan is None:
            self.plan = self.ctf.finalize()
            report = self.ctf.report()
            log.info("prunekit: CTF finalized at rate %.4f (%d structures removed, rank fix moved %d entries)",
                     report["rate"], report["removed_structures"], report["rank_fix"]["moved"])
            if hold:
                model = self.ctf.model
                self.held = HeldZeros(model, structures_for_plan(model, self.plan), self.plan)
        return self.plan

    def finish(self) -> PruningPlan:
        """Finalize if not yet done and stop holding the zeros (they stay zero: nothing trains them now)."""
        plan = self.finalize()
        if self.held is not None:
            self.held.remove()
        return plan

    def pruned_model(self) -> nn.Module:
        """The physically smaller copy of the finalized model (:func:`prunekit.materialize`)."""
        if self.plan is None:
            raise RuntimeError("CTF is not finalized yet: it finalizes after its last epoch or at the end of training")
        model = self.ctf.model
        return materialize(model, self.plan, example_inputs=to_device(self.ctf.example_inputs, _device(model)))


def epochs_from_steps(max_steps: int, steps_per_epoch: int | float) -> int | None:
    """Epochs that ``max_steps`` optimizer steps span, ``None`` when unknown."""
    if max_steps is None or max_steps <= 0 or not steps_per_epoch or math.isinf(steps_per_epoch):
        return None
    return max(1, math.ceil(max_steps / steps_per_epoch))
