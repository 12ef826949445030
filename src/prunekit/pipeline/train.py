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
CPU, ``nccl`` on CUDA), wraps the model in ``DistributedDataParallel``, gives
each rank every ``world``-th index of the shuffled order (padded like
``DistributedSampler`` so every rank runs the same number of steps), reduces the
metrics across ranks, and lets rank 0 alone write checkpoints and show progress.
``batch_size`` is per process. Iterables of batches are assumed to be sharded by
the caller (e.g. with a ``DistributedSampler``, whose ``set_epoch`` is called).

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
import random
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from prunekit.core._atomic import folder_lock
from prunekit.pipeline.checkpoint import (
    _EPOCH_RE,
    LATEST,
    CheckpointError,
    _atomic_write,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)

__all__ = ["fit", "evaluate", "Callback", "make_optimizer", "make_scheduler", "epoch_generator", "ResumeError"]

log = logging.getLogger("prunekit")

_RESERVED_EXTRA = ("history", "seed", "epochs", "callbacks", "fit_config")
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
                batch_size: int, drop_last: bool, seed: int, world: int) -> dict:
    """The resolved configuration a resumed run must share (JSON-friendly)."""
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
               world_size=int(world))
    return json.loads(json.dumps(cfg))


def _config_changes(saved: dict, now: dict) -> list[str]:
    return [f"{k} {saved[k]!r} -> {now[k]!r}" for k in now if k in saved and saved[k] != now[k]]


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
    progress: bool = True,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    callbacks: Iterable[Any] | None = None,
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
        batch_size: per process. ``drop_last`` drops an incomplete last batch.
        seed: seeds torch/numpy/python at the start and the per-epoch shuffling.
        device: ``None`` (the model's), ``"cpu"``, ``"cuda"``, ``"auto"``, ...
        out_dir: if given, rank 0 writes ``epoch-NNNN`` checkpoints atomically every
            ``checkpoint_every`` epochs and after the last (keeping the newest
            ``keep_last``), plus ``history.json``. ``checkpoint_extra`` (e.g. the
            model's registry name and arguments) is stored in each checkpoint's extra.
        resume: continue from the latest complete checkpoint in ``out_dir`` (model,
            optimizer, scheduler, RNG states, history, callback states); starts from
            scratch when the folder holds no checkpoint; raises :class:`ResumeError`
            naming each key whose value differs from the checkpointed run's, and
            :class:`~prunekit.pipeline.checkpoint.CheckpointError` when checkpoints exist but
            none is complete (never silently restarts at epoch 0).
        overwrite: start a new run in an ``out_dir`` that holds an earlier run's
            checkpoints, deleting them (without it, and without ``resume``, that raises
            ``FileExistsError``).
        progress: tqdm progress bars (rank 0 only).
        loss_fn: ``loss_fn(logits, targets)`` → batch-mean loss; default cross-entropy.
        callbacks: objects with any of the hooks of :class:`Callback`.

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
    dev = _resolve_device(device, model)
    model.to(dev)
    rank, world = _init_distributed(dev)
    run_lock = contextlib.ExitStack()
    if out_dir is not None and rank == 0:  # one run per folder at a time
        run_lock.enter_context(folder_lock(Path(out_dir), 0.0, name=RUN_LOCK, what="run"))
    with run_lock:
        return _fit_locked(**{k: v for k, v in locals().items() if k not in ("run_lock", "bad")})


def _fit_locked(*, model, train_data, eval_data, epochs, optimizer, lr, momentum, weight_decay, schedule,  # noqa: C901
                warmup_epochs, milestones, gamma, batch_size, eval_batch_size, drop_last, seed, device, out_dir,
                resume, overwrite, checkpoint_every, keep_last, checkpoint_extra, progress, loss_fn, callbacks,
                dev, rank, world) -> dict[str, list]:
    if out_dir is not None:
        earlier = _run_files(Path(out_dir))
        if earlier and overwrite:
            if rank == 0:
                log.info("%s: overwrite=True: deleting %d files of the earlier run", out_dir, len(earlier))
                for f in earlier:
                    f.unlink(missing_ok=True)
        elif earlier and not resume:
            raise FileExistsError(
                f"{out_dir}: holds an earlier run ({', '.join(f.name for f in earlier[:4])}"
                f"{', ...' if len(earlier) > 4 else ''}); pass resume=True to continue it, "
                "overwrite=True to replace it, or another out_dir")
    _seed_everything(seed)
    loss_fn = loss_fn or F.cross_entropy
    cbs = list(callbacks or [])
    show = progress and rank == 0

    opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else make_optimizer(
        model.parameters(), optimizer, lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = make_scheduler(opt, schedule, epochs=epochs, warmup_epochs=warmup_epochs,
                           milestones=milestones, gamma=gamma)

    config = _fit_config(opt, schedule, warmup_epochs, milestones, gamma, batch_size, drop_last, seed, world)
    history = _new_history()
    start = 0
    if resume:
        if out_dir is None:
            raise ValueError("resume=True needs out_dir")
        found = latest_checkpoint(out_dir)
        if found is None and any(_EPOCH_RE.match(f.name) for f in _run_files(Path(out_dir))):
            raise CheckpointError(f"{out_dir}: holds checkpoints but none is complete; refusing to restart at "
                                  "epoch 0 over them (pass overwrite=True instead of resume=True to start over)")
        if found is not None:
            saved = load_checkpoint(found)["extra"].get("fit_config")
            if saved is None:
                log.warning("%s: written without its training configuration; cannot check that resuming "
                            "uses the same one", found)
            elif changes := _config_changes(saved, config):
                raise ResumeError(
                    f"{found}: cannot resume with a different configuration: {'; '.join(changes)}. Resume "
                    "with the original values, or start a new run (overwrite=True or another out_dir)")
            info = load_checkpoint(found, model, opt, sched, restore_rng=True)
            start = info["epoch"]
            # The stored lr came from the schedule of the interrupted run; recompute it from this
            # run's schedule (identical when the arguments are, different when e.g. epochs grew).
            lrs = [base * fn(sched.last_epoch) for base, fn in zip(sched.base_lrs, sched.lr_lambdas)]
            for group, lr_ in zip(opt.param_groups, lrs):
                group["lr"] = lr_
            sched._last_lr = lrs
            extra = info["extra"]
            history = {k: list(v) for k, v in extra.get("history", history).items()}
            for cb, state in zip(cbs, extra.get("callbacks", [])):
                if state is not None and hasattr(cb, "load_state_dict"):
                    cb.load_state_dict(state)
            if show:
                tqdm.write(f"resumed from {info['path']} after epoch {start}")

    net: nn.Module = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)

    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        for cb in cbs:
            if hasattr(cb, "on_epoch_start"):
                cb.on_epoch_start(epoch, epochs)
        lr_now = float(opt.param_groups[0]["lr"])
        net.train()
        sums = torch.zeros(4, dtype=torch.float64, device=dev)  # loss*n, correct, n, extra*n
        has_acc = True
        has_extra = False
        batches = _Batches(train_data, batch_size=batch_size, seed=seed, epoch=epoch, shuffle=True,
                           rank=rank, world=world, pad=True, drop_last=drop_last)
        bar = tqdm(batches, total=_length(batches), desc=f"epoch {epoch + 1}/{epochs}", leave=False,
                   disable=not show, dynamic_ncols=True)
        for step, batch in enumerate(bar):
            x, y = _split(batch)
            x, y = _to(x, dev), _to(y, dev)
            opt.zero_grad(set_to_none=True)
            out = net(x)
            loss = loss_fn(out, y)
            total = loss
            for cb in cbs:
                term = cb.extra_loss(model) if hasattr(cb, "extra_loss") else None
                if term is not None:
                    total = total + term
                    has_extra = True
                    sums[3] += term.detach().double() * len(y)
            total.backward()
            opt.step()
            n = len(y)
            sums[0] += loss.detach().double() * n
            sums[2] += n
            if has_acc and out.dim() == 2 and not y.is_floating_point() and y.dim() == 1:
                sums[1] += (out.detach().argmax(-1) == y).sum()
            else:
                has_acc = False
            if show and step % 10 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        sched.step()
        sums = _all_reduce(sums, world)
        n_seen = float(sums[2])
        if n_seen == 0:
            raise ValueError(f"epoch {epoch}: the training data produced no batches")
        train_loss = float(sums[0]) / n_seen
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"training loss is {train_loss} in epoch {epoch}; "
                                     "try a lower learning rate")
        ev = None
        if eval_data is not None:
            ev = evaluate(model, eval_data, batch_size=eval_batch_size, device=dev,
                          loss_fn=None if loss_fn is F.cross_entropy else loss_fn, distributed=world > 1)
        row = {
            "epoch": epoch,
            "loss": train_loss,
            "train_accuracy": float(sums[1]) / n_seen if has_acc else None,
            "eval_loss": ev["loss"] if ev else None,
            "eval_accuracy": ev["accuracy"] if ev else None,
            "lr": lr_now,
            "seconds": time.perf_counter() - t0,
            "extra_loss": float(sums[3]) / n_seen if has_extra else None,
        }
        for k, v in row.items():
            history.setdefault(k, []).append(v)
        for cb in cbs:
            if hasattr(cb, "on_epoch_end"):
                cb.on_epoch_end(epoch, dict(row))
        if show:
            msg = f"epoch {epoch + 1}/{epochs}  loss {train_loss:.4f}  lr {lr_now:.4g}"
            if row["train_accuracy"] is not None:
                msg += f"  train acc {row['train_accuracy']:.4f}"
            if ev:
                msg += f"  eval acc {ev['accuracy']:.4f}"
            tqdm.write(msg + f"  ({row['seconds']:.1f}s)")

        done = epoch + 1
        if out_dir is not None and (done % checkpoint_every == 0 or done == epochs):
            if rank == 0:
                extra = dict(checkpoint_extra or {})
                extra.update(history=history, seed=seed, epochs=epochs, fit_config=config,
                             callbacks=[cb.state_dict() if hasattr(cb, "state_dict") else None for cb in cbs])
                save_checkpoint(out_dir, model, opt, sched, epoch=done, extra=extra, keep_last=keep_last)
                _atomic_write(Path(out_dir) / HISTORY, json.dumps(history, indent=1).encode("utf-8"))
            if world > 1:
                import torch.distributed as dist

                dist.barrier()
    return history
