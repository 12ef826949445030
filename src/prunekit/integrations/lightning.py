"""PyTorch Lightning callbacks: CTF learned masks (:class:`CTFCallback`) and one-shot pruning (:class:`PruneCallback`).

Needs ``lightning`` (``pip install 'prunekit[lightning]'``; the standalone
``pytorch_lightning`` works too when ``lightning`` is absent). This module imports without it;
creating a callback then raises an ``ImportError`` that says what to install.

Example (needs lightning; ``docs/integrations.md`` has complete, tested examples)::

    >>> from prunekit.integrations.lightning import CTFCallback, PruneCallback      # doctest: +SKIP
    >>> ctf = CTFCallback(module.net, rate=0.9, example_inputs=x[:2])               # doctest: +SKIP
    >>> L.Trainer(max_epochs=10, callbacks=[ctf]).fit(module, loader)               # doctest: +SKIP
    >>> small = ctf.pruned_model()                                                  # doctest: +SKIP
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch
from torch import nn

from ..ctf import CTF
from ._common import CTFResults, CTFRun, OneShot, _device, epochs_from_steps, missing, split_batch, take_batches

try:
    import lightning.pytorch as _pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as _pl
    except ImportError:
        _pl = None

__all__ = ["CTFCallback", "PruneCallback"]

_Base = _pl.Callback if _pl is not None else object


def _require() -> None:
    if _pl is None:
        raise missing("lightning", "lightning")


def _total_epochs(trainer) -> int | None:
    """The run's epochs: ``max_epochs``, else the epochs ``max_steps`` spans, else ``None``."""
    if trainer.max_epochs is not None and trainer.max_epochs >= 0:
        return int(trainer.max_epochs)
    batches = trainer.num_training_batches
    return epochs_from_steps(trainer.max_steps, batches / max(1, trainer.accumulate_grad_batches))


def _metrics(trainer) -> dict:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1}


class CTFCallback(CTFResults, _Base):
    """CTF's learned masks on ``model`` (a network inside the LightningModule) during ``Trainer.fit``.

    Args:
        model: the ``nn.Module`` to prune (often an attribute of the LightningModule, or the
            LightningModule itself), or a ready :class:`prunekit.ctf.CTF`.
        rate: fraction of the prunable weights to remove (with a module).
        epochs: epochs of mask learning: the CTF schedule (τ, ramp, hard phase) runs over
            them, :meth:`CTF.finalize` follows the last, and the remaining epochs of the
            run fine-tune with the plan's zeros held. Default: every epoch of the run
            (``max_epochs``, or what ``max_steps`` spans).
        add_penalty: add CTF's budget penalty to the loss ``training_step`` returns (the
            callback wraps the LightningModule's ``training_step`` during ``fit``). With
            ``False`` add ``callback.extra_loss()`` to the loss yourself (manual
            optimization). Either way the first step checks that the penalty was taken.
        **ctf_options: keyword arguments of :class:`prunekit.ctf.CTF` (``example_inputs``,
            ``cost``, ``granularities``, ...).

    After training: ``.plan`` (the :class:`prunekit.PruningPlan`), ``.ctf`` (its
    ``report()``), :meth:`pruned_model` (physically smaller copy). The trained module
    itself is ``apply_masks(module, plan)``: removed structures output zero.
    """

    def __init__(self, model: nn.Module | CTF, rate: float | None = None, *, epochs: int | None = None,
                 add_penalty: bool = True, **ctf_options):
        _require()
        super().__init__()
        self.run = CTFRun.of(model, rate, epochs, ctf_options)
        self.add_penalty = bool(add_penalty)
        self._wrapped: nn.Module | None = None


    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit" and self.add_penalty and self._wrapped is None:
            original = pl_module.training_step

            def training_step(*args, **kwargs):
                return self._with_penalty(original(*args, **kwargs))

            pl_module.training_step = training_step
            self._wrapped = pl_module

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._unwrap()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._unwrap()

    def _unwrap(self) -> None:
        if self._wrapped is not None:
            del self._wrapped.training_step  # the instance attribute; the class method shows again
            self._wrapped = None

    def _with_penalty(self, out: Any) -> Any:
        term = self.extra_loss()
        if term is None or out is None:
            return out
        if isinstance(out, Mapping):
            return {**out, "loss": out["loss"] + term}
        return out + term

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.run.epoch_start(trainer.current_epoch, _total_epochs(trainer))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.run.batch_start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.run.batch_end()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.run.epoch_end(trainer.current_epoch, _total_epochs(trainer), _metrics(trainer))

    def on_train_end(self, trainer, pl_module) -> None:
        self.run.finish()


class PruneCallback(_Base):
    """One-shot structured pruning during ``Trainer.fit``: at the start of epoch ``at_epoch``,
    score (:func:`prunekit.saliency`), select to the budget (:func:`prunekit.select`) and
    zero the plan in place; the zeros are held for the rest of training.

    Args:
        model: the ``nn.Module`` to prune (inside the LightningModule, or the module itself).
        budget: :class:`prunekit.Budget` (or a dict of its arguments).
        method: saliency method (``"l1"``, ``"l2"``, ``"taylor"``, ``"obd"``, ``"sosp-h"``, ...).
        at_epoch: the epoch (0-based) at whose start to prune; 0 prunes before training.
        example_inputs: inputs to find the structures with (default: the first batch's).
        num_batches: training batches the data-driven methods score on (drawn from
            ``trainer.train_dataloader``, or from ``data``).
        data: an iterable of batches to score on instead of the training loader.
        batch_to_data: ``batch -> (inputs, targets)`` (default: a tuple's first two
            elements, or a mapping without its ``"labels"`` entry).
        saliency_options, select_options: passed to :func:`prunekit.saliency` /
            :func:`prunekit.select` (e.g. ``{"loss": "mse"}``, ``{"normalize": "macs"}``).

    ``.plan`` after pruning; :meth:`pruned_model` is the physically smaller copy.
    """

    def __init__(self, model: nn.Module, budget, method: str = "l1", *, at_epoch: int = 0, example_inputs=None,
                 num_batches: int = 8, data=None, batch_to_data: Callable | None = None,
                 saliency_options: dict | None = None, select_options: dict | None = None):
        _require()
        super().__init__()
        self.model = model
        self.pruner = OneShot(budget, method, at_epoch=at_epoch, example_inputs=example_inputs,
                              num_batches=num_batches, saliency_options=saliency_options,
                              select_options=select_options)
        self.data = data
        self.batch_to_data = batch_to_data or split_batch

    @property
    def plan(self):
        """The plan, once pruned (``None`` before)."""
        return self.pruner.plan

    def pruned_model(self) -> nn.Module:
        """The trained model with the plan's structures removed (:func:`prunekit.materialize`)."""
        return self.pruner.pruned_model()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if not self.pruner.due(trainer.current_epoch):
            return
        batches = None
        if self.pruner.batches_needed:
            source = self.data if self.data is not None else trainer.train_dataloader
            batches = take_batches(source, self.pruner.batches_needed, _device(self.model), self.batch_to_data)
        self.pruner.prune(self.model, batches)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.pruner.after_step()

    def on_train_end(self, trainer, pl_module) -> None:
        self.pruner.after_step()
