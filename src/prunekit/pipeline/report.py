"""Reports: Markdown tables, JSON results and plots (accuracy vs pruning rate, layer-wise ratios).

Example:
    >>> rows = [{"method": "dense", "achieved": {"macs": 0.0}, "accuracy": 0.9, "params": 10, "macs": 100,
    ...          "latency_ms": 1.0}]
    >>> print(markdown_table(rows).splitlines()[0])
    | method | MACs removed | accuracy | params | nonzero params | MACs | latency (ms, batch 1) |
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

__all__ = ["markdown_table", "plot_accuracy_vs_rate", "plot_layer_ratios", "plot_points_with_error", "write_report"]


def markdown_table(rows: list[dict]) -> str:
    """One line per row: method, MACs removed, accuracy, params (stored and nonzero), MACs, measured latency.

    Entry-wise methods (CTF) leave zeros in kept weights: ``nonzero params`` shows them, while
    ``params`` and ``MACs`` count what a dense layout stores and computes.
    """
    lines = ["| method | MACs removed | accuracy | params | nonzero params | MACs | latency (ms, batch 1) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        removed = row.get("achieved", {}).get("macs", 0.0)
        method = row["method"]
        if "weights" in row.get("budget", {}):
            method += f" ({row['budget']['weights']:.0%} weights)"
        lines.append(f"| {method} | {removed:.1%} | {row['accuracy']:.3f} | {row['params']:,} | "
                     f"{row.get('nonzero_params', row['params']):,} | {row['macs']:,} | {row['latency_ms']:.2f} |")
    return "\n".join(lines)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_accuracy_vs_rate(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Accuracy against the fraction of MACs removed, one line per method (dense as a dashed level)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    series = defaultdict(list)
    for row in rows:
        if row["method"] == "dense":
            ax.axhline(row["accuracy"], color="black", linestyle="--", label="dense")
        else:
            series[row["method"]].append((row["achieved"]["macs"], row["accuracy"]))
    for method, points in sorted(series.items()):
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    ax.set_xlabel("fraction of MACs removed")
    ax.set_ylabel("test accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_layer_ratios(ratios: dict[str, float], path: str | Path, title: str = "") -> Path:
    """Bar plot of layer-wise pruning ratios (fraction of each layer's structures removed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(ratios)), 4))
    names = list(ratios)
    ax.bar(range(len(names)), [ratios[n] for n in names])
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("fraction pruned")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_points_with_error(summary: dict[str, dict], path: str | Path) -> Path:
    """One point per entry: ``params_mean`` against ``mean`` accuracy with ``std`` error bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    for label, item in summary.items():
        ax.errorbar([item["params_mean"]], [item["mean"]], yerr=[item["std"]], marker="o", capsize=4, label=label)
    ax.set_xlabel("parameters after pruning")
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def write_report(rows: list[dict], out_dir: str | Path, meta: dict, title: str) -> str:
    """Write ``report.md``, ``results.json`` and ``accuracy_vs_rate.png``; return the Markdown table."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    plot_accuracy_vs_rate(rows, out_dir / "accuracy_vs_rate.png", title)
    (out_dir / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    synthetic = meta.get("data", {}).get("synthetic")
    text = [f"# {title}", "",
            "**Data: SYNTHETIC** (prunekit's generator, SBU on-disk format) — not the real SBU data set." if synthetic
            else "", "", table, "",
            f"Dense training {meta.get('epochs')} epochs; every pruned model fine-tuned {meta.get('finetune_epochs')} "
            f"epochs at lr 0.01; latency is the median of timed runs at batch 1 on {meta.get('threads')} CPU threads.",
            "", "![accuracy vs pruning rate](accuracy_vs_rate.png)", ""]
    (out_dir / "report.md").write_text("\n".join(text))
    return table
