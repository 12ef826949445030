"""Experiments: data from a spec, training from a config, pruning a checkpoint, and the demo.

The pipeline in one place::

    config ─► data ─► model ─► train ─► criterion ─► plan ─► materialize ─► fine-tune ─► measure ─► report

Example:
    >>> from prunekit.experiment import run_demo
    >>> rows = run_demo("runs/demo", quick=True)   # doctest: +SKIP
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from . import models
from .criteria import saliency
from .io import load, save
from .materialize import materialize
from .measure import count, time_in_rounds
from .plan import Budget, select
from .structures import find_structures
from .train import evaluate, fit

__all__ = ["load_data", "train_from_config", "prune_checkpoint", "prune_and_finetune", "ctf_and_finetune", "run_demo",
           "DEMO_METHODS"]

DEMO_METHODS = ("random", "l1", "l2", "taylor", "obd", "sosp-h", "sosp-i")


def _generate_atomically(root: Path, write) -> None:
    """Generate into a fresh sibling folder, then rename it to ``root``: a concurrent reader
    never sees a half-written tree, and of two concurrent generators the first rename wins."""
    import shutil
    import tempfile

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        write(staging)
        staging.rename(root)
    except OSError:
        if not root.exists():
            raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def load_data(spec: dict, cache: str | Path = "runs/data"):
    """``((X_train, y_train), (X_test, y_test), info)`` from a data spec.

    Formats: ``synthetic-sbu`` / ``synthetic-fpha`` (generated under ``cache`` if missing,
    labelled synthetic), ``sbu`` (``root``, ``fold``), ``fpha`` (``root``), ``digits``,
    ``idx`` (``root``: Fashion-MNIST/MNIST IDX files), ``cifar10`` (``root``).
    Skeleton specs accept ``length`` (frames, default 32) and ``velocity`` (bool); synthetic
    ones ``seed`` and ``difficulty`` (default :func:`prunekit.data.default_difficulty`).
    """
    from . import data

    kind = spec.get("format")
    if kind is None:
        raise ValueError(f"data spec {spec}: missing 'format'")
    if kind in ("synthetic-sbu", "synthetic-fpha", "sbu", "fpha"):
        layout = kind.replace("synthetic-", "")
        difficulty = float(spec.get("difficulty", data.default_difficulty(layout)))
        if kind in ("sbu", "fpha") and not spec.get("root"):
            raise ValueError(f"data spec {spec}: format {kind!r} needs 'root', the folder holding the data")
        root = Path(spec.get("root") or Path(cache) / f"{kind}-seed{spec.get('seed', 0)}-difficulty{difficulty:g}")
        if kind.startswith("synthetic") and not root.exists():
            writer = data.write_sbu if layout == "sbu" else data.write_fpha
            _generate_atomically(root, lambda folder: writer(folder, seed=int(spec.get("seed", 0)),
                                                             difficulty=difficulty))
        if layout == "sbu":
            train, test = data.load_sbu(root, fold=int(spec.get("fold", 1)))
        else:
            train, test = data.load_fpha(root)
        transform = data.default_transform(layout, length=int(spec.get("length", 32)),
                                           velocity=bool(spec.get("velocity", False)))
        info = {"format": kind, "root": str(root), "synthetic": bool(train.synthetic), "graph": layout,
                "classes": list(train.class_names), "fold": spec.get("fold", 1) if layout == "sbu" else None}
        return data.to_tensors(train, transform), data.to_tensors(test, transform), info
    if kind == "digits":
        (xtr, ytr), (xte, yte) = data.load_digits()
        prep = lambda x: torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0  # noqa: E731
        return (prep(xtr), torch.as_tensor(ytr)), (prep(xte), torch.as_tensor(yte)), {"format": kind, "classes": 10}
    if kind in ("idx", "fashion-mnist", "cifar10"):
        if not spec.get("root"):
            raise ValueError(f"data spec {spec}: format {kind!r} needs 'root', the folder holding the data")
        loader = data.load_cifar10 if kind == "cifar10" else data.load_idx
        (xtr, ytr), (xte, yte) = loader(spec["root"])

        def prep(x):
            x = torch.as_tensor(x, dtype=torch.float32) / 255.0
            return x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2) if x.shape[-1] == 3 else x
        return (prep(xtr), torch.as_tensor(ytr).long()), (prep(xte), torch.as_tensor(yte).long()), {"format": kind}
    raise ValueError(f"data spec: unknown format {kind!r}")


def _batches(X, y, batch_size: int):
    return [(X[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(X), batch_size)]


def train_from_config(path: str | Path, resume: bool = False, overwrite: bool = False) -> dict:
    """Train the model a YAML config describes; saves ``<out_dir>/model`` (safetensors + JSON).

    A run folder holding an earlier run is refused unless ``resume`` or ``overwrite``."""
    from .config import load_config

    config = load_config(path)
    config.check_device()  # before loading data: `device: cuda` on a CPU build is a config error
    out_dir = Path(config.out_dir or f"runs/{Path(path).stem}")
    for folder in (out_dir, out_dir / "checkpoints", out_dir / "model"):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{folder}: exists and is not a folder (out_dir of {path})")
    (xtr, ytr), (xte, yte), info = load_data(config.data)
    model = config.build_model()
    out_dir = Path(config.out_dir or f"runs/{Path(path).stem}")
    options = {**config.fit_kwargs(), "out_dir": out_dir / "checkpoints"}
    history = fit(model, (xtr, ytr), (xte, yte), resume=resume, overwrite=overwrite, **options)
    save(model, out_dir / "model", extra={"data": info, "config": str(path)})
    result = evaluate(model, (xte, yte))
    print(f"{config.model}: test accuracy {result['accuracy']:.4f} ({info.get('format')}); saved {out_dir / 'model'}")
    return {"history": history, "evaluation": result}


def prune_and_finetune(model, structures, train, test, method: str, budget: Budget, *, finetune_epochs: int,
                       lr: float, num_samples: int = 256, batch_size: int = 32, seed: int = 0) -> dict:
    """One row of a comparison: score, select, materialize, fine-tune, evaluate, count (latency: :func:`prunekit.measure.time_in_rounds`)."""
    xtr, ytr = train
    start = time.perf_counter()
    data = _batches(xtr[:num_samples], ytr[:num_samples], batch_size) if method not in ("l1", "l2", "random") else None
    options = {"seed": seed} if method == "random" else {}
    scores = saliency(model, structures, data, method, **options)
    plan = select(structures, scores, budget, method=method)
    pruned = materialize(model, plan, structures)
    prune_s = time.perf_counter() - start
    before = evaluate(pruned, test)["accuracy"]
    if finetune_epochs:
        fit(pruned, train, test, epochs=finetune_epochs, lr=lr, batch_size=batch_size, seed=seed, progress=False,
            weight_decay=5e-4)
    after = evaluate(pruned, test)
    counted = count(pruned, xtr[:1])
    return {"method": method, "budget": budget.to_dict(), "achieved": plan.achieved,
            "accuracy_before_finetune": before, "accuracy": after["accuracy"],
            "params": counted["params"], "macs": counted["macs"], "prune_seconds": prune_s,
            "plan": plan, "model": pruned}


def nonzero_params(model) -> int:
    """Parameters that are not exactly zero (what a sparse layout would store)."""
    return sum(int(torch.count_nonzero(p)) for p in model.parameters())


def ctf_and_finetune(model, train, test, rate: float, *, epochs: int, finetune_epochs: int, lr: float,
                     cost: str = "params", batch_size: int = 32, seed: int = 0, **ctf_options) -> dict:
    """One CTF row: learn the masks on a copy of ``model`` for ``epochs`` epochs, finalize at exactly
    ``rate``, materialize the structured part, fine-tune ``finetune_epochs`` epochs with the
    remaining zeros frozen, evaluate and count. ``model`` is not modified.

    Example:
        >>> import torch, prunekit
        >>> m = prunekit.models.create("attention_gcn", channels=(8, 8))
        >>> X, y = torch.randn(8, 3, 16, 30), torch.randint(0, 8, (8,))
        >>> row = ctf_and_finetune(m, (X, y), (X, y), 0.9, epochs=1, finetune_epochs=1, lr=0.05)
        >>> round(row["achieved"]["weights"], 3), row["nonzero_params"] < row["params"]
        (0.9, True)
    """
    from .ctf import CTF, FrozenZeros

    xtr, _ = train
    start = time.perf_counter()
    learner = copy.deepcopy(model).train()
    ctf = CTF(learner, rate, example_inputs=xtr[:2], cost=cost, **ctf_options)
    fit(learner, train, None, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=False,
        weight_decay=5e-4, callbacks=[ctf])
    plan = ctf.finalize()
    report = ctf.report()
    pruned = materialize(learner.eval(), plan)
    prune_s = time.perf_counter() - start
    before = evaluate(pruned, test)["accuracy"]
    if finetune_epochs:
        frozen = FrozenZeros(pruned)
        fit(pruned, train, None, epochs=finetune_epochs, lr=lr * 0.2, batch_size=batch_size, seed=seed,
            progress=False, weight_decay=5e-4)
        frozen.remove()
    counted = count(pruned.eval(), xtr[:1])
    return {"method": "ctf", "budget": {"weights": rate}, "accuracy_before_finetune": before,
            "achieved": {**plan.achieved, "weights": report["rate"]}, "accuracy": evaluate(pruned, test)["accuracy"],
            "params": counted["params"], "macs": counted["macs"], "nonzero_params": nonzero_params(pruned),
            "zeroed_by": report["zeroed_by"], "prune_seconds": prune_s, "plan": plan, "model": pruned}


def prune_checkpoint(checkpoint: str | Path, method: str, out: str | Path | None, budget: dict,
                     data_config: str | None = None, num_samples: int = 512, *, rate: float | None = None,
                     epochs: int | None = None, finetune_epochs: int = 2, lr: float | None = None,
                     cost: str = "params") -> dict:
    """``prunekit prune``: prune a saved model (or, with ``--method ctf``, a YAML config's model) and save it.

    * Criteria (``l1 … sosp-i``): load ``checkpoint``, score, :func:`select` under ``budget``,
      materialize, save.
    * ``method="ctf"``: ``checkpoint`` is a saved model (masks learned from its weights for
      ``epochs``, default 10) or a YAML training config (model built from it and trained with
      the masks from scratch for the config's ``epochs``); CTF removes ``rate`` of the
      prunable weights, then the result is fine-tuned ``finetune_epochs`` with its zeros frozen.
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
        (xtr, ytr), (xte, yte), _ = load_data(config.data)
        train, test = (xtr, ytr), (xte, yte)
    elif method not in ("l1", "l2", "random"):
        raise ValueError(f"method {method!r} needs data: pass --config naming the training data")
    out = Path(out) if out is not None else Path("runs") / f"{source.stem}_{method}"
    if method == "ctf":
        if rate is None:
            raise ValueError("--method ctf needs --rate (fraction of the prunable weights to remove)")
        model = config.build_model() if is_config else load(source)
        if is_config and epochs is None:
            epochs = config.epochs
        row = ctf_and_finetune(model, train, test, rate, epochs=epochs or 10, finetune_epochs=finetune_epochs,
                               lr=lr or config.lr, cost=cost, batch_size=config.batch_size, seed=config.seed)
        plan, pruned = row.pop("plan"), row.pop("model")
        summary = {"method": "ctf", "rate": row["achieved"]["weights"], "achieved": plan.achieved,
                   "remaining": plan.remaining, "accuracy": row["accuracy"], "params": row["params"],
                   "nonzero_params": row["nonzero_params"], "zeroed_by": row["zeroed_by"]}
    else:
        if budget == {}:
            raise ValueError("give a budget: --budget-macs, --budget-params or --budget-structures")
        model = load(source).eval()
        example = train[0][:1] if train else models.example_inputs(model, batch=1)
        structures = find_structures(model, example)
        data = _batches(train[0][:num_samples], train[1][:num_samples], 32) if train else None
        plan = select(structures, saliency(model, structures, data, method), Budget(**budget), method=method)
        pruned = materialize(model, plan, structures)
        summary = {"method": method, "achieved": plan.achieved, "remaining": plan.remaining}
        if test is not None:
            summary["accuracy"] = evaluate(pruned, test)["accuracy"]
    save(pruned, out, plan=plan)
    summary["saved"] = str(out)
    print(json.dumps(summary, indent=1))
    return summary


def run_demo(out_dir: str | Path = "runs/demo", quick: bool = False, seed: int = 0) -> list[dict]:
    """The main job: synthetic SBU-format data → attention GCN → every method at two MAC budgets → report.

    Writes ``report.md``, ``results.json`` and PNG plots under ``out_dir`` and prints the table.
    ``quick`` runs a reduced version (smaller model, fewer epochs, one budget) in about a minute.
    """
    from .report import write_report

    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    spec = {"format": "synthetic-sbu", "seed": seed, "fold": 1, "length": 24 if quick else 32}
    (xtr, ytr), (xte, yte), info = load_data(spec, cache=out_dir / "data")
    print(f"data: SYNTHETIC SBU-format, fold 1: {len(xtr)} train / {len(xte)} test sequences, input {tuple(xtr.shape[1:])}")
    channels = (16, 16, 32) if quick else (32, 32, 64, 64)
    model = models.create("attention_gcn", graph="sbu", num_classes=len(info["classes"]), channels=channels)
    epochs, finetune_epochs = (6, 1) if quick else (30, 6)
    fit(model, (xtr, ytr), (xte, yte), epochs=epochs, lr=0.05, batch_size=32, seed=seed, progress=not quick,
        weight_decay=5e-4)
    model.eval()
    dense_eval = evaluate(model, (xte, yte))
    dense_count = count(model, xtr[:1])
    rows = [{"method": "dense", "budget": {}, "achieved": {"macs": 0.0, "params": 0.0, "structures": 0.0},
             "accuracy": dense_eval["accuracy"], "params": dense_count["params"], "macs": dense_count["macs"]}]
    pruned_models = {0: model}
    print(f"dense attention GCN: accuracy {dense_eval['accuracy']:.3f}, {dense_count['params']} params")
    structures = find_structures(model, xtr[:1])
    budgets = (0.5,) if quick else (0.5, 0.7)
    methods = ("random", "l1", "taylor", "sosp-h") if quick else DEMO_METHODS
    for fraction in budgets:
        for method in methods:
            row = prune_and_finetune(model, structures, (xtr, ytr), (xte, yte), method, Budget(macs=fraction),
                                     finetune_epochs=finetune_epochs, lr=0.01, num_samples=128 if quick else 256,
                                     seed=seed)
            pruned_models[len(rows)] = row.pop("model")
            row["plan"] = row["plan"].to_dict()["removed"]
            rows.append(row)
            print(f"  {method:7s} -{fraction:.0%} MACs: accuracy {row['accuracy']:.3f} "
                  f"(before fine-tune {row['accuracy_before_finetune']:.3f})", flush=True)
    ctf_epochs = (2, 1) if quick else (8, 2)
    for rate in (0.9,):
        row = ctf_and_finetune(model, (xtr, ytr), (xte, yte), rate, epochs=ctf_epochs[0], finetune_epochs=ctf_epochs[1],
                               lr=0.05, seed=seed)
        pruned_models[len(rows)] = row.pop("model")
        row["plan"] = row["plan"].to_dict()["removed"]
        rows.append(row)
        print(f"  ctf     -{rate:.0%} weights: accuracy {row['accuracy']:.3f} "
              f"(before fine-tune {row['accuracy_before_finetune']:.3f}), {row['nonzero_params']} nonzero params",
              flush=True)
    for index, ms in time_in_rounds(pruned_models, xtr[:1], batch_size=1, repeats=10).items():
        rows[index]["latency_ms"] = ms
    meta = {"data": info, "epochs": epochs, "finetune_epochs": finetune_epochs, "seed": seed, "quick": quick,
            "seconds": time.perf_counter() - t0, "threads": torch.get_num_threads(), "torch": torch.__version__}
    table = write_report(rows, out_dir, meta, title="prunekit demo: attention GCN on SYNTHETIC SBU-format data")
    print(table)
    print(f"report: {out_dir / 'report.md'} ({meta['seconds']:.0f} s)")
    return rows
