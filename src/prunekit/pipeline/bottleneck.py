"""Bottleneck detection and expand-pruning (SOSP paper, "expand-pruning").

1. Prune a trained network with a global criterion (SOSP-H by default) and read the
   layer-wise pruning ratios: ``ratio(group) = removed members / members``.
2. Groups whose ratio is low are bottlenecks — the criterion wants to keep them. prunekit's
   rule **[ours]**: a block is a bottleneck when its ratio is below
   ``cutoff × overall ratio`` (default ``cutoff = 0.5``), the overall ratio being the
   fraction of all structures removed.
3. Widen bottleneck blocks ×2 (baseline: every block ×1.1), train the widened network,
   prune it back to the original pruned network's parameter count, and compare accuracy
   at equal parameters.

Methods see structures and groups only; the architecture supplies how a block is
widened (:data:`WIDENERS`).

Example:
    >>> import torch, prunekit
    >>> model = prunekit.models.create("attention_gcn", channels=(8, 8, 16)).eval()
    >>> s = prunekit.find_structures(model, prunekit.models.example_inputs(model, batch=1))
    >>> plan = prunekit.select(s, prunekit.saliency(model, s, None, "l1"), prunekit.Budget(structures=0.5))
    >>> ratios = layer_ratios(s, plan)
    >>> sorted(ratios)[0]
    'blocks.0.gcn:head'
"""
from __future__ import annotations

import logging

from ..models.gcn import skeleton_gcn_block_of, widen_skeleton_gcn
from ..core.plan import PruningPlan
from ..core.structures import Structures

__all__ = ["layer_ratios", "find_bottlenecks", "widen_bottlenecks", "widen_uniform", "WIDENERS", "expand_pruning"]

log = logging.getLogger(__name__)

# architecture name -> (block of a layer name, widen(kwargs, {block: factor}))
WIDENERS = {
    "attention_gcn": (skeleton_gcn_block_of, widen_skeleton_gcn),
    "stgcn": (skeleton_gcn_block_of, widen_skeleton_gcn),
}


def layer_ratios(structures: Structures, plan: PruningPlan) -> dict[str, float]:
    """Fraction of each group's structures the plan removes, keyed ``"<root>:<kind>"``."""
    removed = set(plan.removed)
    ratios = {}
    for group in structures.groups:
        kind = structures[group.members[0]].kind
        ratios[f"{group.root}:{kind}"] = sum(m in removed for m in group.members) / len(group.members)
    return dict(sorted(ratios.items()))


def find_bottlenecks(structures: Structures, plan: PruningPlan, cutoff: float = 0.5,
                     kinds: tuple = ("unit", "channel", "neuron")) -> list[str]:
    """Groups (of the given kinds) pruned less than ``cutoff ×`` the overall structure ratio. [ours]"""
    overall = len(plan.removed) / max(len(structures), 1)
    ratios = layer_ratios(structures, plan)
    return [name for name, ratio in ratios.items()
            if name.rsplit(":", 1)[1] in kinds and ratio < cutoff * overall]


def widen_bottlenecks(arch: dict, bottlenecks: list[str], factor: float = 2.0) -> dict:
    """The registered architecture ``arch`` (``{"name", "kwargs"}``) with bottleneck blocks widened."""
    if arch["name"] not in WIDENERS:
        raise ValueError(f"bottleneck expansion: no widening rule for architecture {arch['name']!r}; "
                         f"known: {sorted(WIDENERS)}")
    block_of, widen = WIDENERS[arch["name"]]
    blocks = {block_of(name.rsplit(":", 1)[0]) for name in bottlenecks} - {None}
    return {"name": arch["name"], "kwargs": widen(arch["kwargs"], {b: factor for b in blocks})}


def widen_uniform(arch: dict, factor: float = 1.1) -> dict:
    """The baseline: every block widened by ``factor``."""
    if arch["name"] not in WIDENERS:
        raise ValueError(f"bottleneck expansion: no widening rule for architecture {arch['name']!r}")
    _, widen = WIDENERS[arch["name"]]
    n = len(arch["kwargs"].get("channels", (32, 32, 64, 64)))
    return {"name": arch["name"], "kwargs": widen(arch["kwargs"], {b: factor for b in range(n)})}


BOTTLENECK_KEYS = ("arch", "data", "seeds", "epochs", "finetune", "prune_fraction", "cutoff", "factor", "uniform",
                   "method", "out_dir", "group_norm")


def load_bottleneck_config(path) -> dict:
    """Read an expand-pruning YAML config (keys: ``BOTTLENECK_KEYS``; ``arch`` and ``data`` required).

    Errors name the file and the offending key.

    Example:
        >>> load_bottleneck_config("configs/bottleneck/synthetic_sbu.yaml")["method"]  # doctest: +SKIP
        'sosp-h'
    """
    from .config import require_yaml

    yaml = require_yaml()

    with open(path) as handle:
        config = yaml.safe_load(handle) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(config).__name__}")
    unknown = sorted(set(config) - set(BOTTLENECK_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known: {list(BOTTLENECK_KEYS)}")
    for key in ("arch", "data"):
        if key not in config:
            raise ValueError(f"{path}: missing key {key!r}")
    if not isinstance(config["arch"], dict) or "name" not in config["arch"]:
        raise ValueError(f"{path}: 'arch' must be a mapping with 'name' and 'kwargs'")
    from .. import models
    if config["arch"]["name"] not in models.names():
        raise ValueError(f"{path}: unknown architecture {config['arch']['name']!r}; known: {models.names()}")
    config["arch"].setdefault("kwargs", {})
    return config


def expand_pruning(arch: dict, data_spec: dict, *, seeds=(0, 1, 2), epochs: int = 20, finetune: int = 6,
                   prune_fraction: float = 0.5, cutoff: float = 0.5, factor: float = 2.0, uniform: float = 1.1,
                   method: str = "sosp-h", out_dir=None, cache="runs/data", group_norm: str | None = None) -> dict:
    """The full expand-pruning experiment, per seed:

    train ``arch`` → prune ``prune_fraction`` of its parameters with ``method`` → layer ratios
    → widen bottlenecks ×``factor`` and, as the baseline, every block ×``uniform`` → train
    both → prune each back to the original pruned parameter count → fine-tune every pruned
    network ``finetune`` epochs → accuracy at equal parameters (mean ± std over seeds).
    Writes ``results.json`` and plots under ``out_dir`` when given. Every prune is :func:`prunekit.select`
    with its collapse guard and ``max_group_ratio`` default, ranking the raw scores across groups
    (``group_norm=None``, as the SOSP paper does): select's group-normalised default thins every group
    nearly alike and the detection then finds no bottleneck (measured: ``benchmarks/RESULTS.md`` §6.0).
    """
    import json
    import statistics
    from pathlib import Path

    import torch

    from .. import models
    from .dataspec import load_data
    from .oneshot import prune_and_finetune
    from ..core.measure import count
    from ..core.plan import Budget
    from ..core.structures import find_structures
    from .train import fit

    train_data, test_data, _ = load_data(data_spec, cache=cache)
    example = train_data[0][:1]

    def train(a, seed):
        torch.manual_seed(seed)
        model = models.create(a["name"], **a["kwargs"])
        fit(model, train_data, test_data, epochs=epochs, lr=0.05, batch_size=32, seed=seed, progress=False,
            weight_decay=5e-4)
        return model.eval()

    def prune_to(model, params_target, seed):
        structures = find_structures(model, example)
        budget = Budget(params=1 - params_target / structures.total_params)
        row = prune_and_finetune(model, structures, train_data, test_data, method, budget,
                                 finetune_epochs=finetune, lr=0.01, seed=seed,
                                 select_options={"group_norm": group_norm})
        return row, structures

    runs = []
    for seed in seeds:
        dense = train(arch, seed)
        dense_params = count(dense, example)["params"]
        original, structures = prune_to(dense, dense_params * (1 - prune_fraction), seed)
        ratios = layer_ratios(structures, original["plan"])
        bottlenecks = find_bottlenecks(structures, original["plan"], cutoff=cutoff)
        result = {"seed": seed, "dense_params": dense_params, "ratios": ratios, "bottlenecks": bottlenecks,
                  "original": {"arch": arch["kwargs"].get("channels"), "accuracy": original["accuracy"],
                               "params": original["params"]}}
        for label, wide_arch in ((f"expand_x{factor:g}", widen_bottlenecks(arch, bottlenecks, factor)),
                                 (f"uniform_x{uniform:g}", widen_uniform(arch, uniform))):
            wide = train(wide_arch, seed)
            row, _ = prune_to(wide, original["params"], seed)
            result[label] = {"arch": wide_arch["kwargs"].get("channels"), "accuracy": row["accuracy"],
                             "params": row["params"], "wide_params": count(wide, example)["params"]}
        runs.append(result)
        log.info("bottleneck run: %s", json.dumps({k: v for k, v in result.items() if k != "ratios"}))
    labels = [k for k in runs[0] if isinstance(runs[0][k], dict) and "accuracy" in runs[0][k]]
    summary = {}
    for label in labels:
        accs = [r[label]["accuracy"] for r in runs]
        summary[label] = {"mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                          "params_mean": statistics.mean(r[label]["params"] for r in runs)}
    out = {"arch": arch, "data": data_spec, "epochs": epochs, "finetune": finetune, "cutoff": cutoff,
           "method": method, "group_norm": group_norm, "train_size": len(train_data[1]),
           "test_size": len(test_data[1]), "runs": runs, "summary": summary}
    if out_dir is not None:
        from .report import plot_layer_ratios, plot_points_with_error
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "results.json").write_text(json.dumps(out, indent=1, default=str))
        plot_layer_ratios(runs[0]["ratios"], out_dir / "layer_ratios.png",
                          f"{method} layer-wise pruning ratios ({prune_fraction:.0%} params), seed {seeds[0]}")
        plot_points_with_error(summary, out_dir / "accuracy_vs_params.png")
    return out
