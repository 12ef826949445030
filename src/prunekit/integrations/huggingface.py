"""Hugging Face ``Trainer`` callbacks: CTF learned masks (:class:`CTFCallback`) and one-shot pruning (:class:`PruneCallback`).

Needs ``transformers`` and ``accelerate`` (``pip install 'prunekit[hf]'``). This module
imports without them; creating a callback then raises an ``ImportError`` that says what
to install.

A ``TrainerCallback`` sees the training events but cannot change the loss, so CTF's budget
penalty enters through :class:`ExtraLossMixin`: its ``compute_loss`` adds the
``extra_loss()`` of every callback that has one (training steps only).
:class:`PrunekitTrainer` is ``Trainer`` with the mixin; put the mixin before your own
``Trainer`` subclass otherwise. The CTF callback checks on the first step that the penalty
was taken and raises otherwise. One-shot pruning needs no loss term and works with any
``Trainer``.

Example (needs transformers; ``docs/integrations.md`` has complete, tested examples)::

    >>> from prunekit.integrations.huggingface import CTFCallback, PrunekitTrainer   # doctest: +SKIP
    >>> ctf = CTFCallback(model, rate=0.9, example_inputs=example)                  # doctest: +SKIP
    >>> PrunekitTrainer(model=model, args=args, train_dataset=ds, callbacks=[ctf]).train()  # doctest: +SKIP
    >>> small = ctf.pruned_model()                                                  # doctest: +SKIP
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..ctf import CTF
from ._common import CTFResults, CTFRun, OneShot, _device, missing, split_batch, take_batches

try:
    from transformers import Trainer as _Trainer, TrainerCallback as _TrainerCallback
except ImportError:  # pragma: no cover - depends on what is installed
    _Trainer = _TrainerCallback = None

__all__ = ["CTFCallback", "PruneCallback", "ExtraLossMixin", "PrunekitTrainer"]

_Base = _TrainerCallback if _TrainerCallback is not None else object


def _require() -> None:
    if _TrainerCallback is None:
        raise missing("transformers", "hf")


def _epoch(state) -> int:
    """The 0-based index of the epoch that starts (``state.epoch`` is fractional while resuming mid-epoch)."""
    return int(math.floor((state.epoch or 0.0) + 1e-6))


class ExtraLossMixin:
    """``Trainer`` mixin: the training loss plus every callback's ``extra_loss(model)`` (a tensor or ``None``).

    The terms are added to the loss ``compute_loss`` returns, before the ``Trainer``
    divides it for gradient accumulation; evaluation losses are left alone.
    """

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        if not (model.training and torch.is_grad_enabled()):
            return result
        loss, outputs = result if return_outputs else (result, None)
        for cb in self.callback_handler.callbacks:
            term = cb.extra_loss(model) if hasattr(cb, "extra_loss") else None
            if term is not None:
                loss = loss + term.to(loss.device)
        return (loss, outputs) if return_outputs else loss


if _Trainer is not None:
    class PrunekitTrainer(ExtraLossMixin, _Trainer):
        """``transformers.Trainer`` whose loss includes the callbacks' ``extra_loss()`` (:class:`ExtraLossMixin`)."""
else:  # pragma: no cover - depends on what is installed
    class PrunekitTrainer:  # stands in so that the name imports
        def __init__(self, *args, **kwargs):
            _require()


class CTFCallback(CTFResults, _Base):
    """CTF's learned masks on ``model`` during ``Trainer.train()`` (use :class:`PrunekitTrainer`).

    Args:
        model: the model the ``Trainer`` trains (or a ready :class:`prunekit.ctf.CTF`);
            the masks are attached now, so create the callback before the ``Trainer``.
        rate: fraction of the prunable weights to remove (with a model).
        epochs: epochs of mask learning; :meth:`CTF.finalize` follows the last one and the
            remaining epochs fine-tune with the plan's zeros held. Default: every epoch
            of the run (``num_train_epochs``, or what ``max_steps`` spans).
        **ctf_options: keyword arguments of :class:`prunekit.ctf.CTF`;
            ``example_inputs`` (a dict of model inputs) is required for models prunekit
            did not build.

    After training: ``.plan``, ``.ctf`` (``report()``), :meth:`pruned_model`. The
    trained model is ``apply_masks(model, plan)``. Save it after training (a checkpoint
    written while the masks are attached holds their parametrizations).
    """

    def __init__(self, model: nn.Module | CTF, rate: float | None = None, *, epochs: int | None = None,
                 **ctf_options):
        _require()
        self.run = CTFRun.of(model, rate, epochs, ctf_options)
        self._epoch = 0


    def on_epoch_begin(self, args, state, control, **kwargs):
        self._epoch = _epoch(state)
        self.run.epoch_start(self._epoch, state.num_train_epochs)

    def on_step_begin(self, args, state, control, **kwargs):
        self.run.batch_start()

    def on_step_end(self, args, state, control, **kwargs):
        self.run.batch_end()

    def on_epoch_end(self, args, state, control, **kwargs):
        metrics = state.log_history[-1] if state.log_history else {}
        self.run.epoch_end(self._epoch, state.num_train_epochs, metrics)

    def on_train_end(self, args, state, control, **kwargs):
        self.run.finish()


class PruneCallback(_Base):
    """One-shot structured pruning during ``Trainer.train()``: at the start of epoch ``at_epoch``,
    score (:func:`prunekit.saliency`), select to the budget (:func:`prunekit.select`) and
    zero the plan in the model; the zeros are held for the rest of training (gradients
    masked, entries re-zeroed after every optimizer step).

    Args:
        model: the model the ``Trainer`` trains.
        budget: :class:`prunekit.Budget` (or a dict of its arguments).
        method: saliency method (``"l1"``, ``"taylor"``, ``"obd"``, ``"sosp-h"``, ...).
        at_epoch: the epoch (0-based) at whose start to prune; 0 prunes before training.
        example_inputs: model inputs (a dict) to find the structures with (default: the
            first scoring batch without its labels).
        num_batches: training batches the data-driven methods score on (drawn from the
            training loader, which draws from its sampler's random state, or from ``data``).
        data: an iterable of batches to score on instead of the training loader.
        label_key: the batch entry that holds the targets (``"labels"``).
        batch_to_data: ``batch -> (inputs, targets)``, overriding ``label_key``.
        saliency_options, select_options: passed to :func:`prunekit.saliency` /
            :func:`prunekit.select`.

    ``.plan`` after pruning; :meth:`pruned_model` is the physically smaller copy.
    """

    def __init__(self, model: nn.Module, budget, method: str = "l1", *, at_epoch: int = 0, example_inputs=None,
                 num_batches: int = 8, data=None, label_key: str = "labels", batch_to_data: Callable | None = None,
                 saliency_options: dict | None = None, select_options: dict | None = None):
        _require()
        self.model = model
        self.pruner = OneShot(budget, method, at_epoch=at_epoch, example_inputs=example_inputs,
                              num_batches=num_batches, saliency_options=saliency_options,
                              select_options=select_options)
        self.data = data
        self.batch_to_data = batch_to_data or (lambda batch: split_batch(batch, label_key))

    @property
    def plan(self):
        """The plan, once pruned (``None`` before)."""
        return self.pruner.plan

    def pruned_model(self) -> nn.Module:
        """The trained model with the plan's structures removed (:func:`prunekit.materialize`)."""
        return self.pruner.pruned_model()

    def on_epoch_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if not self.pruner.due(_epoch(state)):
            return
        batches = None
        if self.pruner.batches_needed:
            source = self.data if self.data is not None else train_dataloader
            # the plain loader under accelerate's wrapper: iterating the wrapper part-way would leave it registered
            source = getattr(source, "base_dataloader", source)
            batches = take_batches(source, self.pruner.batches_needed, _device(self.model), self.batch_to_data)
        self.pruner.prune(self.model, batches)

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.pruner.after_step()

    def on_train_end(self, args, state, control, **kwargs):
        self.pruner.after_step()
