"""The bodies of ``prunekit train CONFIG`` and ``prunekit prune SAVED``: configs and saved models in, saved models out."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import models
from ..core.io import load, save
from ..core.materialize import materialize
from ..core.latency_loop import select_to_latency
from ..core.plan import DEFAULT_GROUP_NORM, Budget, broadcast_plan, check_latency_group_norm, select
from ..core.structures import find_structures
from ..criteria import CRITERIA, CrossEntropy, needs_data, saliency
from ..ctf.protocol import run as run_ctf
from .dataspec import batches, load_data
from .train import _resolve_device, _to, evaluate, fit, rank_shard

__all__ = ["train_from_config", "prune_model", "prune_checkpoint", "write_summary"]
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
                cost: str = "params", batch_size: int = 32, seed: int = 0, device: str | None = None,
                multiple_of: int | str = 1, latency_batch: int | None = None, latency_threads: int | None = None,
                latency_rounds: int = 6, temperature: float = 1.0, group_norm: str | None = DEFAULT_GROUP_NORM):
    """Prune ``model`` with a criterion under ``budget`` or with CTF at ``rate``: ``(plan, pruned, summary)``.

    Criteria (``l1 … sosp-i``) score on ``num_samples`` training samples (the data-free ones
    need none), :func:`select` under ``budget`` and materialize; ``temperature`` ``T`` scores the
    loss-based ones on the cross-entropy of ``logits / T`` (:class:`prunekit.criteria.CrossEntropy`;
    1 = the plain loss). ``method="ctf"`` learns the
    masks for ``epochs`` (default 10) on ``train`` and fine-tunes ``finetune_epochs``
    (:func:`prunekit.ctf.run`, the protocol of every CTF benchmark). ``device`` moves the model and
    the data there first. Under ``torchrun`` each rank scores its share of the samples
    (:func:`~prunekit.pipeline.train.rank_shard`; the criteria reduce the sums) or trains CTF with DDP.
    ``multiple_of`` goes to :func:`select` (criteria only); ``"auto"`` lets the latency model's step
    probe choose it (:func:`prunekit.core.latency.probe_steps`; needs a latency budget or batch).
    ``group_norm`` goes to :func:`select` too (``None``: the raw scores, ranked across groups).

    **Latency.** ``budget={"latency": f}`` (``--budget-latency``), or ``latency_batch`` /
    ``latency_threads`` with any budget, first measures a :class:`prunekit.LatencyModel` of the
    model on its device at batch ``latency_batch`` (default: the example's) with ``latency_threads``
    (default: the current count), cached on disk (``$PRUNEKIT_CACHE/latency``), and selects with it;
    ``summary["latency"]`` then holds the predicted and measured latency of the dense model and
    the plan, timed alike (:func:`_latency_report`). A latency budget alone is met on the measured
    model: :func:`prunekit.select_to_latency` times up to ``latency_rounds`` plans and corrects the
    request by the shortfall (``1``: the latency model's plan as predicted). Under ``torchrun`` rank 0 measures and
    selects, and the other ranks receive its plan (:func:`prunekit.broadcast_plan`).
    """
    if device is not None:
        dev = _resolve_device(device, model)
        model, example = model.to(dev), _to(example, dev)
        train, test = _to(train, dev), _to(test, dev)
    if train is None and needs_data(method):
        raise ValueError(f"method {method!r} needs data: pass --config naming the training data")
    if temperature != 1.0 and not needs_data(method):
        loss_based = ", ".join(sorted(name for name, c in CRITERIA.items() if c.needs_data))
        raise ValueError(f"--temperature applies to the loss-based criteria ({loss_based}), not to --method {method}")
    if "latency" in budget:  # select's own check, before the latency model is measured
        check_latency_group_norm(group_norm)
    if method == "ctf":
        _refuse_selection_options(budget, multiple_of, group_norm, latency_batch, latency_threads)
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
        raise ValueError("give a budget: --budget-macs, --budget-params, --budget-structures or --budget-latency")
    model = model.eval()
    structures = find_structures(model, example)
    data = batches(*rank_shard(train[0][:num_samples], train[1][:num_samples]), 32) if train is not None else None
    loss = {"loss": CrossEntropy(temperature=temperature)} if temperature != 1.0 else {}
    scores = saliency(model, structures, data, method, **loss)  # every rank: the criteria reduce over the ranks
    timed = "latency" in budget or latency_batch is not None or latency_threads is not None
    chunk = _selection_multiple(multiple_of, timed)
    lat = (_latency_model(model, example, structures, latency_batch, latency_threads, multiple_of)
           if timed and _rank0() else None)
    if timed and lat is None:
        plan = None
    elif set(budget) == {"latency"} and latency_rounds > 1:  # closed loop: the plan is timed and corrected
        plan = select_to_latency(model, structures, scores, budget["latency"], lat, example, rounds=latency_rounds,
                                 method=method, multiple_of=chunk, group_norm=group_norm)
    else:
        plan = select(structures, scores, Budget(**budget), method=method, multiple_of=chunk, latency=lat,
                      group_norm=group_norm)
    if timed:  # the latency model is rank 0's own measurement: its plan goes to every rank
        plan = broadcast_plan(plan, src=0, structures=structures)
    pruned = materialize(model, plan, structures)
    summary = {"method": method, "achieved": plan.achieved, "remaining": plan.remaining,
               **({"temperature": temperature} if temperature != 1.0 else {})}
    if lat is not None:
        summary["latency"] = _latency_report(lat, model, plan, example, structures)
    if test is not None:
        summary["accuracy"] = evaluate(pruned, test)["accuracy"]
    return plan, pruned, summary


def _refuse_selection_options(budget: dict, multiple_of, group_norm, latency_batch, latency_threads) -> None:
    """CTF learns its masks: the options of :func:`select` are errors with ``--method ctf``."""
    if multiple_of != 1:
        raise ValueError("--multiple-of applies to the criteria (select), not to --method ctf")
    if group_norm != DEFAULT_GROUP_NORM:
        raise ValueError("--group-norm applies to the criteria (select), not to --method ctf")
    if "latency" in budget or latency_batch is not None or latency_threads is not None:
        raise ValueError("--budget-latency, --latency-batch and --latency-threads apply to the criteria "
                         "(select), not to --method ctf")


def _selection_multiple(multiple_of: int | str, timed: bool) -> int | None:
    """``select``'s ``multiple_of``: the number given, or for ``"auto"`` ``None`` (the latency model's
    choice: rank 0's; the other ranks get its plan), refused without a latency model to choose it."""
    if multiple_of != "auto":
        return multiple_of
    if not timed:
        raise ValueError("--multiple-of auto chooses the multiple from timings on the device: give "
                         "--budget-latency or --latency-batch, or a number")
    return None


def _rank0() -> bool:
    from .train import _world

    return _world()[0] == 0


def _latency_model(model, example, structures, batch: int | None, threads: int | None, multiple_of: int | str = 1):
    """:meth:`prunekit.LatencyModel.measure` of ``model`` on its device (or its cached tables), its
    widths sampled at ``multiple_of`` (``"auto"``: chosen by its step probe)."""
    from ..core.latency import LatencyModel
    from ..core.measure import _model_device

    lat = LatencyModel.measure(model, example, structures, batch_size=batch, threads=threads,
                               device=_model_device(model), multiple_of=multiple_of)
    log.info("latency model: dense %.3f ms at batch %d, %d thread(s) on %s (%s), widths in multiples of %d",
             lat.dense_ms, lat.batch_size, lat.threads, lat.device, lat.device_name, lat.multiple_of)
    return lat


def _latency_report(lat, model, plan, example, structures) -> dict:
    """Predicted against measured latency of the dense model and ``plan`` (:meth:`LatencyModel.check`).

    Both are timed now, pass by pass, at the latency model's batch size, threads and device;
    ``measured_fraction`` is one minus the median of the pairs' time ratios (``ratio_iqr``: their
    spread), the times use the latency model's statistic (fastest pass by default, the one its
    tables are fitted on):

        measured_over_predicted = T_pruned / T̂_pruned,   error = T̂_pruned / T_pruned − 1

    The measured figures are also recorded in the plan (``plan.meta["latency"]["measured"]``),
    so a saved model carries both.
    """
    check = lat.check(model, plan, example, structures)
    predicted, measured = check["predicted_ms"], check["measured_ms"]
    report = {"batch_size": lat.batch_size, "threads": lat.threads, "device": lat.device,
              "device_name": lat.device_name, "statistic": lat.settings.get("statistic", "min_ms"),
              "dense_predicted_ms": lat.dense_ms, "predicted_ms": predicted,
              "dense_measured_ms": check["dense_ms"], "measured_ms": measured,
              "predicted_fraction": check["predicted_fraction"], "measured_fraction": check["measured_fraction"],
              "fraction_error": check["fraction_error"], "error": check["error"], "ratio_iqr": check["ratio_iqr"],
              "measured_over_predicted": measured / predicted if predicted else float("inf"),
              "multiple_of": lat.multiple_of}
    if "steps" in lat.measured:  # --multiple-of auto: the step probe that chose it
        report["steps"] = lat.measured["steps"]
    if "latency_loop" in plan.meta:  # the closed loop's rounds: requested, predicted and measured fractions
        report["loop"] = plan.meta["latency_loop"]
    plan.meta.setdefault("latency", {})["measured"] = {
        k: report[k] for k in ("dense_measured_ms", "measured_ms", "measured_fraction", "statistic")}
    log.info("latency at batch %d, %d thread(s): dense %.3f ms, pruned %.3f ms predicted / %.3f ms measured",
             lat.batch_size, lat.threads, check["dense_ms"], predicted, measured)
    return report


def write_summary(out: str | Path, summary: dict) -> Path:
    """``OUT/summary.json``: what ``prunekit prune`` printed, beside the saved model (rank 0 only)."""
    from ..core._atomic import atomic_write_bytes

    path = Path(out) / "summary.json"
    if _rank0():
        atomic_write_bytes(path, (json.dumps(summary, indent=1) + "\n").encode())
    return path


def prune_checkpoint(checkpoint: str | Path, method: str, out: str | Path | None, budget: dict,
                     data_config: str | None = None, num_samples: int = 512, *, rate: float | None = None,
                     epochs: int | None = None, finetune_epochs: int = 2, lr: float | None = None,
                     cost: str = "params", device: str | None = None, multiple_of: int | str = 1,
                     latency_batch: int | None = None, latency_threads: int | None = None,
                     latency_rounds: int = 6, temperature: float = 1.0,
                     group_norm: str | None = DEFAULT_GROUP_NORM) -> dict:
    """``prunekit prune``: prune a saved model (or, with ``--method ctf``, a YAML config's model) and save it.

    ``checkpoint`` is a saved model folder, or (``method="ctf"`` only) a YAML training config
    whose model is built and trained with the masks from scratch for the config's ``epochs``.
    See :func:`prune_model` for what each method does (and the latency options); the summary says
    where it was saved, and is written there too (``summary.json``).
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
    elif needs_data(method):
        raise ValueError(f"method {method!r} needs data: pass --config naming the training data")
    model = config.build_model() if is_config else load(source)
    if is_config and epochs is None:
        epochs = config.epochs
    example = train[0][:1] if train else models.example_inputs(model, batch=1)
    options = {"lr": lr or config.lr, "batch_size": config.batch_size, "seed": config.seed} if config else {}
    plan, pruned, summary = prune_model(model, example, method, budget, train=train, test=test,
                                        num_samples=num_samples, rate=rate, epochs=epochs,
                                        finetune_epochs=finetune_epochs, cost=cost, device=device,
                                        multiple_of=multiple_of, latency_batch=latency_batch,
                                        latency_threads=latency_threads, latency_rounds=latency_rounds,
                                        temperature=temperature, group_norm=group_norm, **options)
    out = Path(out) if out is not None else Path("runs") / f"{source.stem}_{method}"
    save(pruned, out, plan=plan)
    summary["saved"] = str(out)
    write_summary(out, summary)
    return summary
