"""The bodies of ``prunekit train CONFIG`` and ``prunekit prune SAVED``: configs and saved models in, saved models out."""
from __future__ import annotations

import logging
from pathlib import Path

from .. import models
from ..core.io import load, save
from ..core.materialize import materialize
from ..core.plan import Budget, select
from ..core.structures import find_structures
from ..criteria import saliency
from ..ctf.protocol import run as run_ctf
from .dataspec import batches, load_data
from .train import _resolve_device, _to, evaluate, fit, rank_shard

__all__ = ["train_from_config", "prune_model", "prune_checkpoint"]
log = logging.getLogger(__name__)


def train_from_config(path: str | Path, resume: bool = False, overwrite: bool = False, *,
                      device: str | None = None, amp: str | None = None) -> dict:
    """Train the model a YAML config describes; saves ``<out_dir>/model`` (safetensors + JSON).

    A run folder holding an earlier run is refused unless ``resume`` or ``overwrite``.
    ``device`` overrides the config's; ``amp`` (``"bf16"``/``"fp16"``) is passed to :func:`fit`."""
    from .config import load_config

    config = load_config(path)
    if device is not None:
        config.device = device
    config.check_device()  # before loading data: `device: cuda` on a CPU build is a config error
    out_dir = Path(config.out_dir or f"runs/{Path(path).stem}")
    for folder in (out_dir, out_dir / "checkpoints", out_dir / "model"):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder}: exists and is not a folder (out_dir of {path})")
    (xtr, ytr), (xte, yte), info = load_data(config.data)
    model = config.build_model()
    out_dir = Path(config.out_dir or f"runs/{Path(path).stem}")
    options = {**config.fit_kwargs(), "out_dir": out_dir / "checkpoints", "amp": amp}
    history = fit(model, (xtr, ytr), (xte, yte), resume=resume, overwrite=overwrite, **options)
    save(model, out_dir / "model", extra={"data": info, "config": str(path)})
    result = evaluate(model, (xte, yte))
    log.info("%s: test accuracy %.4f (%s); saved %s", config.model, result["accuracy"], info.get("format"),
             out_dir / "model")
    return {"history": history, "evaluation": result, "saved": str(out_dir / "model"), "data": info}


def prune_model(model, example, method: str, budget: dict, *, train=None, test=None, num_samples: int = 512,
                rate: float | None = None, epochs: int | None = None, finetune_epochs: int = 2, lr: float = 0.05,
                cost: str = "params", batch_size: int = 32, seed: int = 0, device: str | None = None):
    """Prune ``model`` with a criterion under ``budget`` or with CTF at ``rate``: ``(plan, pruned, summary)``.

    Criteria (``l1 … sosp-i``) score on ``num_samples`` training samples (the data-free ones
    need none), :func:`select` under ``budget`` and materialize. ``method="ctf"`` learns the
    masks for ``epochs`` (default 10) on ``train`` and fine-tunes ``finetune_epochs``
    (:func:`prunekit.ctf.run`, the protocol of every CTF benchmark). ``device`` moves the model and
    the data there first. Under ``torchrun`` each rank scores its share of the samples
    (:func:`~prunekit.pipeline.train.rank_shard`; the criteria reduce the sums) or trains CTF with DDP.
    """
    if device is not None:
        dev = _resolve_device(device, model)
        model, example = model.to(dev), _to(example, dev)
        train, test = _to(train, dev), _to(test, dev)
    if method != "ctf" and train is None and method not in ("l1", "l2", "random"):
        raise ValueError(f"method {method!r} needs data: pass --config naming the training data")
    if method == "ctf":
        if rate is None:
            raise ValueError("--method ctf needs --rate (fraction of the prunable weights to remove)")
        if train is None:
            raise ValueError("--method ctf needs data: pass --config naming the training data")
        result = run_ctf(model, train, test, rate, epochs=epochs or 10, finetune_epochs=finetune_epochs,
                         lr=lr, cost=cost, batch_size=batch_size, seed=seed)
        summary = {"method": "ctf", "rate": result.rate_reached, "achieved": result.plan.achieved,
                   "remaining": result.plan.remaining, "accuracy": result.accuracy, "params": result.params,
                   "nonzero_params": result.nonzero_params, "zeroed_by": result.report["zeroed_by"]}
        return result.plan, result.model, summary
    if not budget:
        raise ValueError("give a budget: --budget-macs, --budget-params or --budget-structures")
    model = model.eval()
    structures = find_structures(model, example)
    data = batches(*rank_shard(train[0][:num_samples], train[1][:num_samples]), 32) if train is not None else None
    plan = select(structures, saliency(model, structures, data, method), Budget(**budget), method=method)
    pruned = materialize(model, plan, structures)
    summary = {"method": method, "achieved": plan.achieved, "remaining": plan.remaining}
    if test is not None:
        summary["accuracy"] = evaluate(pruned, test)["accuracy"]
    return plan, pruned, summary


def prune_checkpoint(checkpoint: str | Path, method: str, out: str | Path | None, budget: dict,
                     data_config: str | None = None, num_samples: int = 512, *, rate: float | None = None,
                     epochs: int | None = None, finetune_epochs: int = 2, lr: float | None = None,
                     cost: str = "params", device: str | None = None) -> dict:
    """``prunekit prune``: prune a saved model (or, with ``--method ctf``, a YAML config's model) and save it.

    ``checkpoint`` is a saved model folder, or (``method="ctf"`` only) a YAML training config
    whose model is built and trained with the masks from scratch for the config's ``epochs``.
    See :func:`prune_model` for what each method does; the summary says where it was saved.
    """
    from .config import load_config

    source = Path(checkpoint)
    is_config = source.suffix in (".yaml", ".yml")
    if is_config and method != "ctf":
        raise ValueError(f"{source}: a YAML config can be pruned only with --method ctf (which trains); "
                         "for a criterion, pass the folder of a trained model")
    config = load_config(data_config or source) if (data_config or is_config) else None
    train = test = None
    if config is not None:
        train, test, _ = load_data(config.data)
    elif method not in ("l1", "l2", "random"):
        raise ValueError(f"method {method!r} needs data: pass --config naming the training data")
    model = config.build_model() if is_config else load(source)
    if is_config and epochs is None:
        epochs = config.epochs
    example = train[0][:1] if train else models.example_inputs(model, batch=1)
    options = {"lr": lr or config.lr, "batch_size": config.batch_size, "seed": config.seed} if config else {}
    plan, pruned, summary = prune_model(model, example, method, budget, train=train, test=test,
                                        num_samples=num_samples, rate=rate, epochs=epochs,
                                        finetune_epochs=finetune_epochs, cost=cost, device=device, **options)
    out = Path(out) if out is not None else Path("runs") / f"{source.stem}_{method}"
    save(pruned, out, plan=plan)
    summary["saved"] = str(out)
    return summary
