"""Cost of the saliency criteria: SOSP-H against one gradient pass, SOSP-I's time and memory, scaling.

* ``ratio = time(SOSP-H) / time(one gradient pass over the same samples)`` on ResNet-56
  and VGG-16 (3×32×32 inputs, 10 classes; goal ≤ 2.5, first-order scaling).
* SOSP-I's time and the memory of its pairwise matrix Q (|S|² float64) and the
  process's peak RSS increase.
* Every criterion's time against the number of structures (ResNet-20, width 0.5–4).

Timings are medians of ``--repeats`` runs, alternating methods, on the CPU.

Usage:
    python benchmarks/bench_sosp_cost.py [--samples 128] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import prunekit

METHODS = ("l1", "taylor", "obd", "sosp-h", "sosp-i")


def batches(samples: int, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (samples,), generator=g)
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, samples, batch)]


def gradient_pass(model, data):
    model.eval()
    for x, y in data:
        model.zero_grad(set_to_none=True)
        (F.cross_entropy(model(x), y) * len(x) / sum(len(b[0]) for b in data)).backward()
    model.zero_grad(set_to_none=True)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cost_rows(models, samples, batch, repeats):
    rows = []
    data = batches(samples, batch)
    for name in models:
        torch.manual_seed(0)
        model = prunekit.models.create(name, num_classes=10).eval()
        structures = prunekit.find_structures(model, data[0][0][:1])
        grad_s = timed(lambda: gradient_pass(model, data), repeats)
        row = {"model": name, "structures": len(structures), "samples": samples, "batch": batch,
               "gradient_pass_s": grad_s, "methods": {}}
        for method in METHODS:
            if method == "sosp-i" and len(structures) > 6000:
                continue
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            seconds = timed(lambda: prunekit.saliency(model, structures, data, method), 1 if method == "sosp-i" else repeats)
            rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            row["methods"][method] = {"seconds": seconds, "ratio_to_gradient": seconds / grad_s,
                                      "peak_rss_increase_mb": (rss_after - rss_before) / 1024}
        row["sosp_i_q_bytes"] = len(structures) ** 2 * 8
        rows.append(row)
        print(f"{name}: |S|={len(structures)} grad {grad_s:.2f}s " + ", ".join(
            f"{m} {v['ratio_to_gradient']:.2f}x" for m, v in row["methods"].items()), flush=True)
    return rows


def scaling_rows(widths, samples, batch):
    data = batches(samples, batch)
    rows = []
    for width in widths:
        model = prunekit.models.create("resnet20", num_classes=10, width=width).eval()
        structures = prunekit.find_structures(model, data[0][0][:1])
        row = {"width": width, "structures": len(structures), "gradient_pass_s": timed(lambda: gradient_pass(model, data), 1)}
        for method in METHODS:
            row[method] = timed(lambda: prunekit.saliency(model, structures, data, method), 1)
        rows.append(row)
        print(f"resnet20 width {width}: |S|={len(structures)} " + ", ".join(f"{m} {row[m]:.2f}s" for m in METHODS), flush=True)
    return rows


def plot_scaling(rows, path):
    from prunekit.pipeline.report import _pyplot
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["structures"] for r in rows]
    ax.plot(xs, [r["gradient_pass_s"] for r in rows], "k--", marker="x", label="one gradient pass")
    for method in METHODS:
        ax.plot(xs, [r[method] for r in rows], marker="o", label=method)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("number of structures (ResNet-20, width 0.5–4)")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--widths", default="0.5,1,2,4")
    parser.add_argument("--out", default="benchmarks/results/sosp_cost.json")
    args = parser.parse_args()
    result = {"benchmark": "sosp_cost", "threads": torch.get_num_threads(), "torch": torch.__version__,
              "cost": cost_rows(("resnet56", "vgg16"), args.samples, args.batch, args.repeats),
              "scaling": scaling_rows([float(w) for w in args.widths.split(",")], 64, args.batch)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    plot_scaling(result["scaling"], Path(args.out).with_name("sosp_scaling.png"))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
