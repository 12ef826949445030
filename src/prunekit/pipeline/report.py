"""Reports: Markdown tables, JSON results and plots (accuracy vs pruning rate, layer-wise ratios).

Example:
    >>> rows = [{"method": "dense", "achieved": {"macs": 0.0}, "accuracy": 0.9, "params": 10, "macs": 100,
    ...          "latency_ms": 1.0}]
    >>> print(markdown_table(rows).splitlines()[0])
    | method | MACs removed | accuracy | params | nonzero params | MACs | latency (ms, batch 1) |
"""
from __future__ import annotations

import json
import logging
from collections import defaultdict
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["markdown_table", "ctf_table", "latency_table", "plot_accuracy_vs_rate", "plot_ctf", "plot_layer_ratios",
           "plot_points_with_error", "write_report"]


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


def ctf_table(rows: list[dict]) -> str:
    """CTF against magnitude: weights removed, accuracy, what was removed as whole structures, latency.

    ``latency sparsified`` is the model after :func:`prunekit.sparsify` (sparse storage where it
    measured faster); ``structured`` is the share of the parameters removed as whole structures.
    """
    lines = ["| method | weights removed | accuracy | before fine-tune | nonzero params | structured | MACs "
             "| latency (ms, batch 16) | sparsified (ms) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        before = row.get("accuracy_before_finetune")
        sparse = row.get("latency_ms_sparsified")
        lines.append(f"| {row['method']} | {row['achieved'].get('weights', 0.0):.1%} | {row['accuracy']:.3f} | "
                     f"{'–' if before is None else f'{before:.3f}'} | {row['nonzero_params']:,} | "
                     f"{row.get('structured_params_removed', 0.0):.1%} | {row['macs']:,} | {row['latency_ms']:.2f} | "
                     f"{'–' if sparse is None else f'{sparse:.2f}'} |")
    return "\n".join(lines)


def latency_table(rows: list[dict]) -> str:
    """Plans under a MAC and a latency budget: MACs, accuracy, and latency predicted against measured.

    ``predicted`` is the latency model's (:meth:`prunekit.LatencyModel.predict`), ``measured`` the
    model timed now; ``saved`` = 1 − latency / dense latency (each against its own dense figure);
    ``measured / predicted`` is the latency model's error.
    """
    lines = ["| plan | MACs removed | accuracy | params | MACs | predicted (ms) | measured (ms) | predicted saved "
             "| measured saved | measured / predicted |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        budget = ", ".join(f"{v:.0%} of {k if k != 'macs' else 'MACs'}" for k, v in row.get("budget", {}).items())
        label = f"{row['method']} at {budget}" if budget else row["method"]
        ratio = row["measured_ms"] / row["predicted_ms"] if row["predicted_ms"] else float("inf")
        lines.append(f"| {label} | {row.get('achieved', {}).get('macs', 0.0):.1%} | {row['accuracy']:.3f} | "
                     f"{row['params']:,} | {row['macs']:,} | {row['predicted_ms']:.2f} | {row['measured_ms']:.2f} | "
                     f"{row['predicted_saved']:.1%} | {row['measured_saved']:.1%} | {ratio:.2f} |")
    return "\n".join(lines)


_warned_no_matplotlib = False


def _pyplot():
    """``matplotlib.pyplot`` (Agg backend), or ``None`` when the ``plot`` extra is not installed (warned once)."""
    global _warned_no_matplotlib
    try:
        import matplotlib
    except ImportError:
        if not _warned_no_matplotlib:
            log.warning("matplotlib is not installed: plots are skipped (tables and JSON are still written); "
                        "pip install 'prunekit[plot]' for them")
            _warned_no_matplotlib = True
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_accuracy_vs_rate(rows: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Accuracy against the fraction of MACs removed, one line per method (dense as a dashed level).

    Returns the path written, or ``None`` without matplotlib (the ``plot`` extra), as every plot here does.
    """
    plt = _pyplot()
    if plt is None:
        return None
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


def plot_ctf(rows: list[dict], path: str | Path, title: str = "") -> Path | None:
    """Two panels: accuracy against the fraction of weights removed, and against measured latency."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    series = defaultdict(list)
    for row in rows:
        if row["method"] == "dense":
            for ax in axes:
                ax.axhline(row["accuracy"], color="black", linestyle="--", label="dense")
            axes[1].plot([row["latency_ms"]], [row["accuracy"]], "k*", markersize=10)
        else:
            series[row["method"]].append((row["achieved"]["weights"], row["accuracy"], row["latency_ms"],
                                          row.get("latency_ms_sparsified")))
    for method, points in sorted(series.items()):
        points.sort()
        line, = axes[0].plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        axes[1].plot([p[2] for p in points], [p[1] for p in points], marker="o", color=line.get_color(),
                     label=f"{method} (dense layout)")
        sparse = [p for p in points if p[3] is not None]
        if sparse:
            axes[1].plot([p[3] for p in sparse], [p[1] for p in sparse], marker="s", linestyle=":",
                         color=line.get_color(), label=f"{method} (sparsified)")
    axes[0].set_xlabel("fraction of prunable weights removed")
    axes[1].set_xlabel("measured latency (ms, batch 16, CPU)")
    for ax in axes:
        ax.set_ylabel("test accuracy")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def plot_layer_ratios(ratios: dict[str, float], path: str | Path, title: str = "") -> Path | None:
    """Bar plot of layer-wise pruning ratios (fraction of each layer's structures removed)."""
    plt = _pyplot()
    if plt is None:
        return None
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


def plot_points_with_error(summary: dict[str, dict], path: str | Path) -> Path | None:
    """One point per entry: ``params_mean`` against ``mean`` accuracy with ``std`` error bars."""
    plt = _pyplot()
    if plt is None:
        return None
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


def _ctf_section(ctf_rows: list[dict] | None, out_dir: Path, meta: dict) -> list[str]:
    if not ctf_rows:
        return []
    c = meta.get("ctf", {})
    plot = plot_ctf(ctf_rows, out_dir / "ctf_vs_magnitude.png", "CTF against magnitude (SYNTHETIC SBU)")
    return ["## CTF against magnitude", "",
            f"Attention GCN {tuple(c.get('channels', ()))} trained {c.get('pretrain')} epochs, then each method "
            f"the same budget (`prunekit.ctf.run`): CTF learns its masks {c.get('mask_epochs')} epochs and "
            f"fine-tunes {c.get('finetune_epochs')}; global magnitude (|W|) prunes at once and fine-tunes "
            f"{c.get('mask_epochs', 0) + c.get('finetune_epochs', 0)}. "
            "One seed, one fold: this shows the pipeline and the shape of the curves, not a ranking "
            "(benchmarks/RESULTS.md has the statistics).", "", ctf_table(ctf_rows), "",
            "![CTF against magnitude](ctf_vs_magnitude.png)" if plot else "", ""]


def _latency_section(latency_rows: list[dict] | None, meta: dict) -> list[str]:
    m = meta.get("latency") or {}
    if not latency_rows and not m.get("error"):
        return []
    intro = (f"The same criterion ({m.get('method')}) removing {m.get('fraction', 0):.0%} of the MACs, and "
             f"{m.get('fraction', 0):.0%} of the latency a latency model predicts (`prunekit.LatencyModel.measure`: "
             f"every group thinned to 75 / 50 / 25 % of its width and timed, {m.get('classes')} classes of groups, "
             f"batch {m.get('batch_size')}, {m.get('threads')} thread(s), measured in "
             f"{m.get('model_seconds') or 0:.0f} s; `prunekit.select(..., Budget(latency=f), latency=lat)`), both "
             f"fine-tuned like the rows above (this part: {m.get('seconds') or 0:.0f} s). Measured: the dense model and both plans timed now in alternation, fastest pass, "
             "best of 3 rounds (the statistic the latency model is fitted on). At batch 1 a small network's "
             "per-group savings are close to the timing noise, so `measured / predicted` can be far from 1 "
             "(docs/selection.md).")
    if not latency_rows:
        return ["## Latency budget against MAC budget", "", intro, "", f"Not reached: {m['error']}", ""]
    return ["## Latency budget against MAC budget", "", intro, "", latency_table(latency_rows), ""]


def write_report(rows: list[dict], out_dir: str | Path, meta: dict, title: str, ctf_rows: list[dict] | None = None,
                 latency_rows: list[dict] | None = None) -> str:
    """Write ``report.md``, ``results.json`` and the plots (with matplotlib); return the tables.

    ``rows``: structured criteria at MAC budgets (:func:`markdown_table`); ``ctf_rows``: CTF
    against magnitude at several rates (:func:`ctf_table`, :func:`plot_ctf`); ``latency_rows``:
    plans at a MAC and a latency budget, predicted against measured latency (:func:`latency_table`,
    described by ``meta["latency"]``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = markdown_table(rows)
    plot = plot_accuracy_vs_rate(rows, out_dir / "accuracy_vs_rate.png", title)
    results = {"meta": meta, "rows": rows, **({"ctf_rows": ctf_rows} if ctf_rows else {}),
               **({"latency_rows": latency_rows} if latency_rows else {})}
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=str))
    synthetic = meta.get("data", {}).get("synthetic")
    text = [f"# {title}", "",
            "**Data: SYNTHETIC** (prunekit's generator, SBU on-disk format) — not the real SBU data set." if synthetic
            else "", "", "## Structured criteria at MAC budgets", "", table, "",
            f"Dense training {meta.get('epochs')} epochs; every pruned model fine-tuned {meta.get('finetune_epochs')} "
            f"epochs at lr 0.01; latency is the median of timed runs at batch 1 on {meta.get('threads')} CPU threads.",
            "", "![accuracy vs pruning rate](accuracy_vs_rate.png)" if plot else "", ""]
    text += _latency_section(latency_rows, meta)
    text += _ctf_section(ctf_rows, out_dir, meta)
    (out_dir / "report.md").write_text("\n".join(text))
    return (table + ("\n\n" + latency_table(latency_rows) if latency_rows else "")
            + ("\n\n" + ctf_table(ctf_rows) if ctf_rows else ""))
