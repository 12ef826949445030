"""Training and evaluation loops: progress bars, atomic checkpoints, exact resumption, DDP.

:func:`fit` trains a classifier and returns its per-epoch history; :func:`evaluate`
returns accuracy, loss, per-class accuracy and the confusion matrix.

Data may be

* a pair ``(X, y)`` of tensors (or a map-style ``torch.utils.data.Dataset``):
  ``fit`` shuffles it with a ``torch.Generator`` seeded from ``(seed, epoch)``, so
  the batches of epoch ``k`` do not depend on what ran before: a run resumed at
  epoch ``k`` sees exactly the batches an uninterrupted run would have seen;
* any other iterable of ``(inputs, targets)`` batches (e.g. a ``DataLoader``), used
  as is. A ``DataLoader`` that shuffles draws from the global torch RNG, which the
  checkpoints store and resumption restores, so it also resumes exactly
  (with ``num_workers=0``, or workers seeded from that RNG).

Resumption: with ``out_dir`` a checkpoint is written atomically after each epoch
(model, optimizer, scheduler, RNG states, history, callback states, and the resolved
training configuration), and ``resume=True`` continues from the latest complete one;
training 3 epochs straight and training 1, being killed, and resuming for 2 more give
bit-identical weights. Resuming with a different configuration raises
:class:`ResumeError` naming each changed key; only ``epochs`` (the schedule follows
the new length), ``device``, ``progress``, ``eval_batch_size``, ``checkpoint_every``,
``keep_last``, ``eval_data``, ``loss_fn`` and ``callbacks`` may change. An
``out_dir`` belongs to one run: a new run in a folder holding checkpoints refuses
unless ``overwrite=True`` (which deletes them), and a second ``fit`` on the same
folder at the same time fails with :class:`~prunekit.pipeline.checkpoint.FolderLockedError`.

Distributed: launched with ``torchrun`` (``WORLD_SIZE > 1``) — or inside an already
initialised process group — ``fit`` initialises the group if needed (``gloo`` on
CPU, ``nccl`` on CUDA), wraps the model in ``DistributedDataParallel``, reduces the
metrics across ranks, and lets rank 0 alone write checkpoints and show progress (the
others wait for each checkpoint; a failure on one rank is raised on every rank).
``batch_size`` is per process: the global batch is ``batch_size × world size``.
``(X, y)`` tensors and map-style data sets are sharded as ``DistributedSampler(shuffle=True)``
shards them — the order padded by wrapping around to a multiple of the world size, rank
``r`` taking every ``world``-th index from ``r`` — but the order is the one a single process
uses (:func:`epoch_generator` of ``(seed, epoch)``), so global step ``k`` trains on positions
``[k·B·w, (k+1)·B·w)`` of it, exactly the batch of one process with ``batch_size = B·w``:
when the number of samples is a multiple of ``w``, ``w`` ranks and that one process take
the same steps up to float rounding (BatchNorm aside: its batch statistics are per rank,
its running statistics rank 0's, as ``DistributedDataParallel`` broadcasts them).
Checkpoints record the global batch, so a run resumes on any number of ranks with
``batch_size = global batch / ranks``. Iterables of batches are used as they are: shard
them yourself (a ``DataLoader`` with a ``DistributedSampler``, whose ``set_epoch`` is
called; a ``DataLoader`` without one is warned about). Tensors that callbacks train
themselves (their ``parameters()``, e.g. CTF's thresholds) get their gradients averaged
over the ranks after each backward, as DDP does for the model's.

Example:
    >>> import torch
    >>> X = torch.randn(64, 5); y = (X[:, 0] > 0).long()
    >>> model = torch.nn.Linear(5, 2)
    >>> hist = fit(model, (X, y), (X, y), epochs=3, lr=0.5, batch_size=16, progress=False)
    >>> sorted(hist)[:4]
    ['epoch', 'eval_accuracy', 'eval_loss', 'extra_loss']
    >>> evaluate(model, (X, y))["accuracy"] > 0.8
    True
"""
from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import sys
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from prunekit.core._atomic import folder_lock
from prunekit.core._atomic import atomic_write_bytes
from prunekit.pipeline.checkpoint import (
    _EPOCH_RE,
    LATEST,
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

__all__ = ["fit", "evaluate", "Callback", "make_optimizer", "make_scheduler", "epoch_generator", "ResumeError",
           "init_distributed", "rank_shard"]

log = logging.getLogger("prunekit")

_RESERVED_EXTRA = ("history", "seed", "epochs", "callbacks", "fit_config", "amp_scaler")
RUN_LOCK = ".prunekit-run.lock"
HISTORY = "history.json"


class ResumeError(ValueError):
    """``resume=True`` with a configuration that differs from the checkpointed run's."""


class Callback:
    """Hooks called by :func:`fit`. Every hook is optional; duck typing works too.

    * ``on_epoch_start(epoch, epochs)`` – before epoch ``epoch`` (0-based) of ``epochs``.
    * ``extra_loss(model) -> Tensor | None`` – called once per batch after the
      forward pass with the unwrapped model; a returned scalar is added to the loss
      before ``backward`` (e.g. a pruning-budget penalty).
    * ``on_epoch_end(epoch, metrics)`` – after the epoch's evaluation, with that
      epoch's history row (``loss``, ``train_accuracy``, ``eval_accuracy``, ``lr``, ...).
    * ``state_dict() -> dict`` / ``load_state_dict(d)`` – if present, the state is
      stored in every checkpoint and restored on resume.
    * ``parameters() -> list[Tensor]`` – tensors the callback updates itself (not the
      model's parameters, not in the optimizer); under DDP their gradients are averaged
      over the ranks after each backward (and unscaled with ``amp="fp16"``).

    Example:
        >>> class L1(Callback):
        ...     def extra_loss(self, model):
        ...         return 1e-4 * sum(p.abs().sum() for p in model.parameters())
        >>> X, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
        >>> h = fit(torch.nn.Linear(4, 2), (X, y), epochs=1, callbacks=[L1()], progress=False)
        >>> h["extra_loss"][0] > 0
        True
    """

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        """Called before each epoch."""

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """Extra loss term for the current batch, or ``None``."""
        return None

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        """Called after each epoch with its history row."""


# --------------------------------------------------------------------------- optimizers


def make_optimizer(params: Iterable, name: str = "sgd", *, lr: float = 0.1, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``"sgd"`` (with ``momentum``), ``"adam"`` or ``"adamw"``.

    Example:
        >>> opt = make_optimizer(torch.nn.Linear(2, 2).parameters(), "adamw", lr=1e-3)
        >>> type(opt).__name__
        'AdamW'
    """
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; expected 'sgd', 'adam' or 'adamw'")


def _lr_factor(schedule: str, epoch: int, epochs: int, warmup: int, milestones: list[int], gamma: float) -> float:
    if epoch < warmup:
        return (epoch + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        t = (epoch - warmup) / max(1, epochs - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    if schedule == "step":
        return gamma ** sum(epoch >= m for m in milestones)
    raise ValueError(f"unknown schedule {schedule!r}; expected 'cosine', 'step' or 'constant'")


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str | Callable[[int], float] = "cosine", *,
                   epochs: int, warmup_epochs: int = 0, milestones: list[int] | None = None,
                   gamma: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch ``LambdaLR``: linear warm-up, then cosine / step / constant.

    ``lr(epoch) = base_lr * factor(epoch)``; during the first ``warmup_epochs`` the
    factor is ``(epoch + 1) / (warmup_epochs + 1)``; ``"cosine"`` then decays
    ``0.5 (1 + cos(pi t))`` over the remaining epochs, ``"step"`` multiplies by
    ``gamma`` at each of ``milestones`` (default: half and three quarters of
    ``epochs``). ``schedule`` may also be a function ``epoch -> factor``. Call
    ``scheduler.step()`` once per epoch.

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
        >>> s = make_scheduler(opt, "step", epochs=4, milestones=[2])
        >>> lrs = []
        >>> for _ in range(4):
        ...     lrs.append(opt.param_groups[0]["lr"]); opt.step(); s.step()
        >>> lrs
        [1.0, 1.0, 0.1, 0.1]
    """
    if callable(schedule):
        fn = schedule
    else:
        if schedule not in ("cosine", "step", "constant"):
            raise ValueError(f"unknown schedule {schedule!r}; expected 'cosine', 'step' or 'constant'")
        ms = list(milestones) if milestones else [epochs // 2, (3 * epochs) // 4]

        def fn(epoch: int) -> float:  # a plain function: LambdaLR stores no state for it
            return _lr_factor(schedule, epoch, epochs, warmup_epochs, ms, gamma)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


# --------------------------------------------------------------------------- data


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The ``torch.Generator`` that shuffles epoch ``epoch`` of a run seeded ``seed``.

    Depends on ``(seed, epoch)`` only, which is what makes resumption exact.

    Example:
        >>> a = torch.randperm(5, generator=epoch_generator(0, 3))
        >>> torch.equal(a, torch.randperm(5, generator=epoch_generator(0, 3)))
        True
    """
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(1, dtype=np.uint64)[0]
    g = torch.Generator()
    g.manual_seed(int(state))
    return g


def _is_tensor_pair(data: Any) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data))


def _is_map_dataset(data: Any) -> bool:
    from torch.utils.data import Dataset, IterableDataset

    return isinstance(data, Dataset) and not isinstance(data, IterableDataset) and hasattr(data, "__len__")


def _indices(n: int, *, seed: int, epoch: int, shuffle: bool, rank: int, world: int, pad: bool) -> torch.Tensor:
    idx = torch.randperm(n, generator=epoch_generator(seed, epoch)) if shuffle else torch.arange(n)
    if world > 1:
        if pad and n % world:
            total = math.ceil(n / world) * world
            idx = torch.cat([idx, idx.repeat(math.ceil(total / n))[: total - n]])
        idx = idx[rank::world]
    return idx


class _Batches:
    """One epoch of ``(inputs, targets)`` batches, with a length when known."""

    def __init__(self, data: Any, *, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = False,
                 rank: int = 0, world: int = 1, pad: bool = False, drop_last: bool = False) -> None:
        self.data, self.batch_size, self.drop_last = data, batch_size, drop_last
        self.idx = None
        if _is_tensor_pair(data):
            X, y = data
            if len(X) != len(y):
                raise ValueError(f"inputs and targets differ in length: {len(X)} vs {len(y)}")
            self.idx = _indices(len(X), seed=seed, epoch=epoch, shuffle=shuffle, rank=rank, world=world, pad=pad)
        elif _is_map_dataset(data):
            self.idx = _indices(len(data), seed=seed, epoch=epoch, shuffle=shuffle, rank=rank, world=world, pad=pad)
        else:
            sampler = getattr(data, "sampler", None)
            if shuffle and hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)

    def __len__(self) -> int:
        if self.idx is not None:
            n = len(self.idx)
            return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return len(self.data)  # TypeError when unknown; callers check with _length

    def __iter__(self) -> Iterator:
        if self.idx is None:
            yield from self.data
        elif _is_tensor_pair(self.data):
            X, y = self.data
            for b in range(len(self)):
                sel = self.idx[b * self.batch_size:(b + 1) * self.batch_size]
                yield X[sel], y[sel]
        else:
            from torch.utils.data import DataLoader

            yield from DataLoader(self.data, batch_size=self.batch_size, sampler=self.idx.tolist(),
                                  drop_last=self.drop_last)


def _length(it: Any) -> int | None:
    try:
        return len(it)
    except TypeError:
        return None


def _split(batch: Any) -> tuple[Any, torch.Tensor]:
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(f"a batch must be an (inputs, targets) pair, got {type(batch).__name__}")


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    return x


# --------------------------------------------------------------------------- device / distributed


def _resolve_device(device: str | torch.device | None, model: nn.Module) -> torch.device:
    if device is None:
        p = next(iter(model.parameters()), None)
        return p.device if p is not None else torch.device("cpu")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return dev


def _world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun describes (``WORLD_SIZE > 1``); ``(rank, world)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        # We created the group, so we tear it down: left to interpreter exit, gloo can abort
        # ("terminate called without an active exception"). atexit keeps it usable after fit.
        atexit.register(_destroy_group)
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: str | torch.device | None = "auto") -> tuple[int, int]:
    """Join the process group ``torchrun`` describes when ``WORLD_SIZE > 1`` (``nccl`` for a
    CUDA ``device``, else ``gloo``); ``(rank, world size)``, ``(0, 1)`` without one.

    Example:
        >>> init_distributed("cpu")   # not launched by torchrun
        (0, 1)
    """
    if device is None:
        device = "cpu"
    return _init_distributed(_resolve_device(device, nn.Module()))


def rank_shard(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """This rank's share of tensors indexed by sample: every ``world``-th from the rank (all on one rank).

    The shares of all ranks make up the tensors exactly (sizes differ by at most one), as
    the criteria expect: each rank scores its shard and the sums are reduced.

    Example:
        >>> rank_shard(torch.arange(5))[0].tolist()   # one process: everything
        [0, 1, 2, 3, 4]
    """
    rank, world = _world()
    return tuple(t[rank::world] for t in tensors) if world > 1 else tuple(tensors)


def _destroy_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _all_reduce(t: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


# --------------------------------------------------------------------------- evaluate


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, *, batch_size: int = 256, device: str | torch.device | None = None,
             loss_fn: Callable | None = None, num_classes: int | None = None, distributed: bool = False,
             progress: bool = False) -> dict:
    """Accuracy, mean loss, per-class accuracy and confusion matrix of a classifier.

    Args:
        data: ``(X, y)`` tensors, a map-style dataset, or an iterable of batches.
        loss_fn: ``loss_fn(logits, targets)`` returning the batch *mean*
            (default: cross-entropy).
        device: where batches are sent (default: the model's device; the model is not moved).
        num_classes: default: the width of the model's output.
        distributed: inside a process group, evaluate a shard per rank
            (``(X, y)``/datasets are sharded here; iterables must be pre-sharded)
            and sum the counts across ranks. Every rank must call it.

    Returns:
        ``{"accuracy": float, "loss": float, "per_class_accuracy": [float | None],
        "confusion_matrix": [[int]], "num_samples": int}`` with
        ``confusion_matrix[true][predicted]``; a class without samples has
        accuracy ``None``. The model's train/eval mode is restored afterwards.

    Example:
        >>> class Fixed(torch.nn.Module):          # predicts the class stored in x
        ...     def forward(self, x):
        ...         return torch.nn.functional.one_hot(x, 3).float()
        >>> pred = torch.tensor([0, 1, 1, 2]); true = torch.tensor([0, 1, 2, 2])
        >>> r = evaluate(Fixed(), (pred, true))
        >>> r["accuracy"], r["per_class_accuracy"], r["confusion_matrix"]
        (0.75, [1.0, 1.0, 0.5], [[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    """
    dev = _resolve_device(device, model)
    rank, world = _world() if distributed else (0, 1)
    was_training = model.training
    model.eval()
    cm: torch.Tensor | None = None
    loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
    try:
        batches = _Batches(data, batch_size=batch_size, rank=rank, world=world)
        for batch in tqdm(batches, total=_length(batches), desc="eval", leave=False,
                          disable=not progress or rank != 0):
            x, y = _split(batch)
            x, y = _to(x, dev), _to(y, dev)
            out = model(x)
            k = num_classes or out.shape[-1]
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= k):
                raise ValueError(f"target {int(y.max())} out of range for {k} classes")
            if loss_fn is None:
                loss_sum += F.cross_entropy(out, y, reduction="sum").double()
            else:
                loss_sum += loss_fn(out, y).double() * len(y)
            pred = out.argmax(-1)
            counts = torch.bincount(y.long() * k + pred, minlength=k * k).view(k, k)
            if cm is None:
                cm = counts
            else:
                if cm.shape[0] != k:
                    raise ValueError(f"the model's output width changed between batches ({cm.shape[0]} vs {k})")
                cm += counts
    finally:
        model.train(was_training)
    if world > 1:
        import torch.distributed as dist

        k_all = torch.tensor([0 if cm is None else cm.shape[0]], device=dev)
        dist.all_reduce(k_all, op=dist.ReduceOp.MAX)
        k = int(k_all)
        local = torch.zeros(k, k, dtype=torch.long, device=dev)
        if cm is not None:
            local[: cm.shape[0], : cm.shape[1]] = cm
        cm = _all_reduce(local, world)
        loss_sum = _all_reduce(loss_sum, world)
    if cm is None or int(cm.sum()) == 0:
        raise ValueError("evaluate: the data holds no samples")
    cm = cm.cpu()
    n = int(cm.sum())
    rows = cm.sum(1)
    return {
        "accuracy": float(cm.diag().sum()) / n,
        "loss": float(loss_sum) / n,
        "per_class_accuracy": [float(cm[c, c]) / int(rows[c]) if int(rows[c]) else None for c in range(len(rows))],
        "confusion_matrix": cm.tolist(),
        "num_samples": n,
    }


# --------------------------------------------------------------------------- fit


def _fit_config(opt: torch.optim.Optimizer, schedule: Any, warmup_epochs: int, milestones: Any, gamma: float,
                batch_size: int, drop_last: bool, seed: int, world: int, amp: str | None = None) -> dict:
    """The resolved configuration a resumed run must share (JSON-friendly).

    ``global_batch_size`` (``batch_size × world``) is what the optimisation sees; ``batch_size``
    and ``world_size`` are recorded but may change on resume (any number of ranks).
    """
    cfg: dict[str, Any] = {"optimizer": type(opt).__name__}
    for key, value in opt.defaults.items():
        value = list(value) if isinstance(value, tuple) else value
        if value is None or isinstance(value, (bool, int, float, str)) or \
                (isinstance(value, list) and all(isinstance(v, (bool, int, float)) for v in value)):
            cfg[key] = value
    cfg.update(schedule=schedule if isinstance(schedule, str)
               else f"function {getattr(schedule, '__qualname__', type(schedule).__name__)}",
               warmup_epochs=int(warmup_epochs), milestones=[int(m) for m in milestones] if milestones else None,
               gamma=float(gamma), batch_size=int(batch_size), drop_last=bool(drop_last), seed=int(seed),
               world_size=int(world), global_batch_size=int(batch_size) * int(world), amp=amp)
    return json.loads(json.dumps(cfg))


_PER_RANK_KEYS = ("batch_size", "world_size")  # may change on resume as long as the global batch does not


def _config_changes(saved: dict, now: dict) -> list[str]:
    saved = dict(saved)
    if "global_batch_size" not in saved and "batch_size" in saved:  # written before global batches were recorded
        saved["global_batch_size"] = int(saved["batch_size"]) * int(saved.get("world_size", 1))
    saved.setdefault("amp", None)
    changes = []
    for k in now:
        if k in saved and k not in _PER_RANK_KEYS and saved[k] != now[k]:
            note = (f" (batch_size {now['batch_size']} × {now['world_size']} rank(s); pass "
                    f"batch_size={saved[k]} // ranks)" if k == "global_batch_size" else "")
            changes.append(f"{k} {saved[k]!r} -> {now[k]!r}{note}")
    return changes


def _run_files(folder: Path) -> list[Path]:
    """Files of an earlier run in ``folder``: checkpoints, the latest pointer, the history."""
    try:
        names = sorted(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [folder / n for n in names
            if n in (LATEST, HISTORY) or _EPOCH_RE.match(n) or (n.startswith("epoch-") and n.endswith(".safetensors"))]


def _new_history() -> dict[str, list]:
    return {k: [] for k in ("epoch", "loss", "train_accuracy", "eval_loss", "eval_accuracy",
                            "lr", "seconds", "extra_loss")}


_AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class _Run:
    """One :func:`fit` call: its arguments and the state its steps share."""

    model: nn.Module
    train_data: Any
    eval_data: Any
    epochs: int
    batch_size: int
    eval_batch_size: int
    drop_last: bool
    seed: int
    out_dir: str | os.PathLike | None
    checkpoint_every: int
    keep_last: int | None
    checkpoint_extra: dict
    loss_fn: Callable
    cbs: list
    amp: str | None
    dev: torch.device
    rank: int
    world: int
    show: bool
    net: nn.Module | None = None
    opt: Any = None
    sched: Any = None
    scaler: Any = None
    config: dict = field(default_factory=dict)
    history: dict = field(default_factory=_new_history)
    start: int = 0

    @property
    def ctx(self):
        """The process group of the run (``None`` on one rank)."""
        from prunekit.criteria.distributed import resolve_group

        return resolve_group(None) if self.world > 1 else None


def fit(
    model: nn.Module,
    train_data: Any,
    eval_data: Any = None,
    *,
    epochs: int,
    optimizer: str | torch.optim.Optimizer = "sgd",
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    schedule: str | Callable[[int], float] = "cosine",
    warmup_epochs: int = 0,
    milestones: list[int] | None = None,
    gamma: float = 0.1,
    batch_size: int = 64,
    eval_batch_size: int = 256,
    drop_last: bool = False,
    seed: int = 0,
    device: str | torch.device | None = None,
    out_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    checkpoint_every: int = 1,
    keep_last: int | None = None,
    checkpoint_extra: dict | None = None,
    progress: bool | None = None,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    callbacks: Iterable[Any] | None = None,
    amp: str | None = None,
) -> dict[str, list]:
    """Train ``model`` for ``epochs`` epochs and return the per-epoch history.

    Args:
        model: trained in place (moved to ``device``).
        train_data: ``(X, y)`` tensors, a map-style dataset (both shuffled
            reproducibly from ``(seed, epoch)``), or an iterable of batches.
        eval_data: evaluated after every epoch with :func:`evaluate` (optional).
        optimizer: ``"sgd" | "adam" | "adamw"`` (built with ``lr``, ``momentum``,
            ``weight_decay``) or a ready ``torch.optim.Optimizer``.
        schedule, warmup_epochs, milestones, gamma: see :func:`make_scheduler`.
        batch_size: per process; the global batch is ``batch_size × world size``.
            ``drop_last`` drops an incomplete last batch.
        seed: seeds torch/numpy/python at the start and the per-epoch shuffling.
        device: ``None`` (the model's), ``"cpu"``, ``"cuda"``, ``"auto"``, ...
        out_dir: if given, rank 0 writes ``epoch-NNNN`` checkpoints atomically every
            ``checkpoint_every`` epochs and after the last (keeping the newest
            ``keep_last``), plus ``history.json``. ``checkpoint_extra`` (e.g. the
            model's registry name and arguments) is stored in each checkpoint's extra.
        resume: continue from the latest complete checkpoint in ``out_dir`` (model,
            optimizer, scheduler, RNG states, history, callback states), on any number of
            ranks with the same global batch; starts from scratch when the folder holds no
            checkpoint; raises :class:`ResumeError` naming each key whose value differs
            from the checkpointed run's, and
            :class:`~prunekit.pipeline.checkpoint.CheckpointError` when checkpoints exist but
            none is complete (never silently restarts at epoch 0).
        overwrite: start a new run in an ``out_dir`` that holds an earlier run's
            checkpoints, deleting them (without it, and without ``resume``, that raises
            ``FileExistsError``).
        progress: tqdm progress bars and a line per epoch on rank 0; ``None`` (default): only
            when stderr is a terminal, so logs and CI stay clean.
        loss_fn: ``loss_fn(logits, targets)`` → batch-mean loss; default cross-entropy.
        callbacks: objects with any of the hooks of :class:`Callback`.
        amp: ``None`` (full precision), ``"bf16"`` or ``"fp16"``: the forward pass and the
            loss run under ``torch.autocast`` in that dtype; ``"fp16"`` also scales the
            loss with a ``GradScaler`` (its state is checkpointed). Worth it on CUDA.

    Returns:
        ``{"epoch", "loss", "train_accuracy", "eval_loss", "eval_accuracy", "lr",
        "seconds", "extra_loss"}``, each a list with one entry per epoch (including
        the epochs restored from a checkpoint); eval entries are ``None`` without
        ``eval_data``. ``epoch`` is 0-based.

    Example:
        >>> import tempfile
        >>> X = torch.randn(40, 3); y = (X.sum(1) > 0).long()
        >>> run = tempfile.mkdtemp()
        >>> _ = torch.manual_seed(0); m = torch.nn.Linear(3, 2)
        >>> h = fit(m, (X, y), epochs=1, out_dir=run, progress=False)      # "interrupted"
        >>> _ = torch.manual_seed(1); m = torch.nn.Linear(3, 2)             # fresh process
        >>> h = fit(m, (X, y), epochs=3, out_dir=run, resume=True, progress=False)
        >>> h["epoch"]
        [0, 1, 2]
    """
    _check_fit_arguments(epochs, checkpoint_every, resume, overwrite, out_dir, checkpoint_extra, amp)
    dev = _resolve_device(device, model)
    model.to(dev)
    rank, world = _init_distributed(dev)
    run = _Run(model=model, train_data=train_data, eval_data=eval_data, epochs=epochs, batch_size=batch_size,
               eval_batch_size=eval_batch_size, drop_last=drop_last, seed=seed, out_dir=out_dir,
               checkpoint_every=checkpoint_every, keep_last=keep_last, checkpoint_extra=dict(checkpoint_extra or {}),
               loss_fn=loss_fn or F.cross_entropy, cbs=list(callbacks or []), amp=amp, dev=dev, rank=rank,
               world=world, show=(sys.stderr.isatty() if progress is None else bool(progress)) and rank == 0)
    optim = dict(optimizer=optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay, schedule=schedule,
                 warmup_epochs=warmup_epochs, milestones=milestones, gamma=gamma)
    from prunekit.criteria.distributed import call_together

    with contextlib.ExitStack() as run_lock:
        # every rank learns whether any failed (a held folder, a changed configuration) before
        # DDP's first collective, so that none waits for the others forever
        call_together(run.ctx, lambda: _prepare(run, run_lock, optim, resume, overwrite), "fit")
        run.net = _wrap(run)
        for epoch in range(run.start, epochs):
            _run_epoch(run, epoch)
    return run.history


def _check_fit_arguments(epochs, checkpoint_every, resume, overwrite, out_dir, checkpoint_extra, amp) -> None:
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    if resume and overwrite:
        raise ValueError("resume=True and overwrite=True contradict each other; pass one of them")
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise NotADirectoryError(f"out_dir {out_dir} exists and is not a folder")
    bad = [k for k in (checkpoint_extra or {}) if k in _RESERVED_EXTRA]
    if bad:
        raise ValueError(f"checkpoint_extra may not use the reserved keys {bad}")
    if amp is not None and amp not in _AMP_DTYPES:
        raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")


def _prepare(run: _Run, run_lock: contextlib.ExitStack, optim: dict, resume: bool, overwrite: bool) -> None:
    """Lock and check the run folder, seed, build the optimizer and scheduler, resume (every rank)."""
    if run.out_dir is not None and run.rank == 0:  # one run per folder at a time
        run_lock.enter_context(folder_lock(Path(run.out_dir), 0.0, name=RUN_LOCK, what="run"))
    if run.out_dir is not None:
        _check_run_folder(Path(run.out_dir), resume, overwrite, run.rank)
    _seed_everything(run.seed)
    optimizer = optim["optimizer"]
    run.opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else make_optimizer(
        run.model.parameters(), optimizer, lr=optim["lr"], momentum=optim["momentum"],
        weight_decay=optim["weight_decay"])
    run.sched = make_scheduler(run.opt, optim["schedule"], epochs=run.epochs, warmup_epochs=optim["warmup_epochs"],
                               milestones=optim["milestones"], gamma=optim["gamma"])
    run.scaler = torch.amp.GradScaler(run.dev.type) if run.amp == "fp16" else None
    run.config = _fit_config(run.opt, optim["schedule"], optim["warmup_epochs"], optim["milestones"], optim["gamma"],
                             run.batch_size, run.drop_last, run.seed, run.world, run.amp)
    if resume:
        if run.out_dir is None:
            raise ValueError("resume=True needs out_dir")
        _resume(run)
    _warn_unsharded(run)


def _check_run_folder(folder: Path, resume: bool, overwrite: bool, rank: int) -> None:
    """An ``out_dir`` belongs to one run: refuse a new run over an earlier one unless ``overwrite``."""
    earlier = _run_files(folder)
    if earlier and overwrite:
        if rank == 0:
            log.info("%s: overwrite=True: deleting %d files of the earlier run", folder, len(earlier))
            for f in earlier:
                f.unlink(missing_ok=True)
    elif earlier and not resume:
        raise FileExistsError(
            f"{folder}: holds an earlier run ({', '.join(f.name for f in earlier[:4])}"
            f"{', ...' if len(earlier) > 4 else ''}); pass resume=True to continue it, "
            "overwrite=True to replace it, or another out_dir")


def _resume(run: _Run) -> None:
    """Load the latest complete checkpoint of ``run.out_dir`` into the run (nothing there: start at 0)."""
    found = latest_checkpoint(run.out_dir)
    if found is None and any(_EPOCH_RE.match(f.name) for f in _run_files(Path(run.out_dir))):
        raise CheckpointError(f"{run.out_dir}: holds checkpoints but none is complete; refusing to restart at "
                              "epoch 0 over them (pass overwrite=True instead of resume=True to start over)")
    if found is None:
        return
    saved = load_checkpoint(found)["extra"].get("fit_config")
    if saved is None:
        log.warning("%s: written without its training configuration; cannot check that resuming "
                    "uses the same one", found)
    elif changes := _config_changes(saved, run.config):
        raise ResumeError(
            f"{found}: cannot resume with a different configuration: {'; '.join(changes)}. Resume "
            "with the original values, or start a new run (overwrite=True or another out_dir)")
    info = load_checkpoint(found, run.model, run.opt, run.sched, restore_rng=True)
    run.start = info["epoch"]
    # The stored lr came from the schedule of the interrupted run; recompute it from this
    # run's schedule (identical when the arguments are, different when e.g. epochs grew).
    sched = run.sched
    lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
    for group, lr_ in zip(run.opt.param_groups, lrs):
        group["lr"] = lr_
    sched._last_lr = lrs
    extra = info["extra"]
    run.history = {k: list(v) for k, v in extra.get("history", run.history).items()}
    for cb, state in zip(run.cbs, extra.get("callbacks", [])):
        if state is not None and hasattr(cb, "load_state_dict"):
            cb.load_state_dict(state)
    if run.scaler is not None and extra.get("amp_scaler") is not None:
        run.scaler.load_state_dict(extra["amp_scaler"])
    if saved is not None and saved.get("world_size", 1) != run.world:
        log.info("%s: resuming a run of %s rank(s) on %d", found, saved.get("world_size", 1), run.world)
    if run.show:
        tqdm.write(f"resumed from {info['path']} after epoch {run.start}")


def _warn_unsharded(run: _Run) -> None:
    """Under DDP an iterable of batches must be sharded by the caller; say so when it visibly is not."""
    data = run.train_data
    if run.world <= 1 or _is_tensor_pair(data) or _is_map_dataset(data) or not hasattr(data, "dataset"):
        return
    from torch.utils.data import DistributedSampler

    if not isinstance(getattr(data, "sampler", None), DistributedSampler):
        log.warning("fit: the training DataLoader has no DistributedSampler: each of the %d ranks iterates all "
                    "of it (pass the data set or (X, y) tensors and fit shards them, or use a "
                    "DistributedSampler)", run.world)


def _wrap(run: _Run) -> nn.Module:
    """The model ``DistributedDataParallel`` wraps on several ranks (rank 0's weights are broadcast), else itself."""
    if run.world <= 1:
        return run.model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(run.model, device_ids=[run.dev.index] if run.dev.type == "cuda" else None)


def _run_epoch(run: _Run, epoch: int) -> None:
    """One epoch: callbacks, training, the reduced metrics, evaluation, history, checkpoint."""
    t0 = time.perf_counter()
    for cb in run.cbs:
        if hasattr(cb, "on_epoch_start"):
            cb.on_epoch_start(epoch, run.epochs)
    lr_now = float(run.opt.param_groups[0]["lr"])
    sums, has_acc, has_extra = _train_epoch(run, epoch)
    run.sched.step()
    _broadcast_buffers(run)
    n_seen = float(sums[2])
    if n_seen == 0:
        raise ValueError(f"epoch {epoch}: the training data produced no batches")
    train_loss = float(sums[0]) / n_seen
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"training loss is {train_loss} in epoch {epoch}; try a lower learning rate")
    ev = None
    if run.eval_data is not None:
        ev = evaluate(run.model, run.eval_data, batch_size=run.eval_batch_size, device=run.dev,
                      loss_fn=None if run.loss_fn is F.cross_entropy else run.loss_fn, distributed=run.world > 1)
    row = {"epoch": epoch, "loss": train_loss, "train_accuracy": float(sums[1]) / n_seen if has_acc else None,
           "eval_loss": ev["loss"] if ev else None, "eval_accuracy": ev["accuracy"] if ev else None,
           "lr": lr_now, "seconds": time.perf_counter() - t0,
           "extra_loss": float(sums[3]) / n_seen if has_extra else None}
    for k, v in row.items():
        run.history.setdefault(k, []).append(v)
    for cb in run.cbs:
        if hasattr(cb, "on_epoch_end"):
            cb.on_epoch_end(epoch, dict(row))
    if run.show:
        msg = f"epoch {epoch + 1}/{run.epochs}  loss {train_loss:.4f}  lr {lr_now:.4g}"
        if row["train_accuracy"] is not None:
            msg += f"  train acc {row['train_accuracy']:.4f}"
        if ev:
            msg += f"  eval acc {ev['accuracy']:.4f}"
        tqdm.write(msg + f"  ({row['seconds']:.1f}s)")
    done = epoch + 1
    if run.out_dir is not None and (done % run.checkpoint_every == 0 or done == run.epochs):
        from prunekit.criteria.distributed import call_together

        # rank 0 writes; the others wait for it here (a failed write is raised on every rank)
        call_together(run.ctx, lambda: _save(run, done), "fit: checkpoint")


@torch.no_grad()
def _broadcast_buffers(run: _Run) -> None:
    """Rank 0's buffers on every rank. DDP broadcasts them before each forward pass, so after the
    epoch's last one each rank holds BatchNorm statistics of its own shard; evaluation, the
    checkpoint and the returned model all use rank 0's."""
    if run.world <= 1:
        return
    from prunekit.criteria.distributed import broadcast_tensor

    ctx = run.ctx
    for buf in run.model.buffers():
        broadcast_tensor(ctx, buf)


def _save(run: _Run, done: int) -> None:
    if run.rank != 0:
        return
    extra = dict(run.checkpoint_extra)
    extra.update(history=run.history, seed=run.seed, epochs=run.epochs, fit_config=run.config,
                 callbacks=[cb.state_dict() if hasattr(cb, "state_dict") else None for cb in run.cbs])
    if run.scaler is not None:
        extra["amp_scaler"] = run.scaler.state_dict()
    save_checkpoint(run.out_dir, run.model, run.opt, run.sched, epoch=done, extra=extra, keep_last=run.keep_last)
    atomic_write_bytes(Path(run.out_dir) / HISTORY, json.dumps(run.history, indent=1).encode("utf-8"))


def _train_epoch(run: _Run, epoch: int) -> tuple[torch.Tensor, bool, bool]:
    """Train one epoch; ``(sums over ranks [loss·n, correct, n, extra·n], has accuracy, has extra loss)``."""
    run.net.train()
    sums = torch.zeros(4, dtype=torch.float64, device=run.dev)
    flags = {"acc": True, "extra": False}
    batches = _Batches(run.train_data, batch_size=run.batch_size, seed=run.seed, epoch=epoch, shuffle=True,
                       rank=run.rank, world=run.world, pad=True, drop_last=run.drop_last)
    bar = tqdm(batches, total=_length(batches), desc=f"epoch {epoch + 1}/{run.epochs}", leave=False,
               disable=not run.show, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        loss = _train_step(run, batch, sums, flags)
        if run.show and step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    return _all_reduce(sums, run.world), flags["acc"], flags["extra"]


def _train_step(run: _Run, batch: Any, sums: torch.Tensor, flags: dict) -> torch.Tensor:
    """Forward, callbacks' extra loss, backward, optimizer step on one batch; adds to ``sums``."""
    x, y = _split(batch)
    x, y = _to(x, run.dev), _to(y, run.dev)
    run.opt.zero_grad(set_to_none=True)
    with (torch.autocast(run.dev.type, dtype=_AMP_DTYPES[run.amp]) if run.amp else contextlib.nullcontext()):
        out = run.net(x)
        loss = run.loss_fn(out, y)
    total = loss
    for cb in run.cbs:
        term = cb.extra_loss(run.model) if hasattr(cb, "extra_loss") else None
        if term is not None:
            total = total + term
            flags["extra"] = True
            sums[3] += term.detach().double() * len(y)
    if run.scaler is None:
        total.backward()
        _callback_gradients(run)
        run.opt.step()
    else:
        run.scaler.scale(total).backward()
        _callback_gradients(run, unscale=run.scaler.get_scale())
        run.scaler.step(run.opt)
        run.scaler.update()
    n = len(y)
    sums[0] += loss.detach().double() * n
    sums[2] += n
    if flags["acc"] and out.dim() == 2 and not y.is_floating_point() and y.dim() == 1:
        sums[1] += (out.detach().argmax(-1) == y).sum()
    else:
        flags["acc"] = False
    return loss


def _callback_gradients(run: _Run, unscale: float | None = None) -> None:
    """Average (and unscale) the gradients of the tensors callbacks train themselves (``parameters()``)."""
    if run.world <= 1 and unscale is None:
        return
    own = {id(p) for p in run.model.parameters()}
    tensors = [t for cb in run.cbs if callable(getattr(cb, "parameters", None))
               for t in cb.parameters() if isinstance(t, torch.Tensor) and id(t) not in own]
    if tensors:
        from prunekit.criteria.distributed import average_gradients

        average_gradients(tensors, run.ctx, unscale=unscale)
