"""Accuracy of pruning criteria after fine-tuning: prunekit vs Torch-Pruning (Fashion-MNIST; synthetic SBU GCN).

Per seed (seed = dense-training seed; one dense model shared by every criterion):
train the dense model, then for every criterion and MAC budget (fraction of MACs
removed) prune it once and fine-tune it with the same budget (epochs, lr, data).

prunekit criteria: sosp-h, sosp-i, taylor, obd, l1, random, ranked globally by
``prunekit.select(..., Budget(macs=f))`` and materialized.
Torch-Pruning (1.6.1) criteria, run through Torch-Pruning itself:
``tp.pruner.MetaPruner(model, x, importance=imp, pruning_ratio=r, global_pruning=True,
ignored_layers=[classifier])`` with GroupMagnitudeImportance, GroupTaylorImportance
(loss.backward() summed over the pruning batches before ``step()``) and
GroupHessianImportance (``imp.zero_grad()`` then per-sample ``loss_i.backward();
imp.accumulate_grad(model)``). TP's ratio is a channel ratio, not a MAC fraction, so
``pruning_ratio`` is binary-searched on deep copies for the smallest ratio whose pruned
model (``prunekit.count``) has at least the target MAC fraction removed.

Both sides use the same pruning samples (first ``--prune-samples`` of the training
set, model in eval mode), the same fine-tuning (SGD, cosine, ``--ft-epochs`` on a
fixed training subset) and the same test subset. Latency: ``prunekit.measure_latency``
(median of ``--repeats``) at batch 1 and 64 on the CPU.

Results are written after every (model, seed) to ``--out`` (JSON) and a Markdown table
next to it (``.md``).

Usage (the command of the committed results is in the .md file):
    python benchmarks/bench_criteria_accuracy.py --models vgg11 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import prunekit
import prunekit.pipeline.train as T

PK_METHODS = ("sosp-h", "sosp-i", "taylor", "obd", "l1", "random")
TP_METHODS = ("tp-magnitude", "tp-taylor", "tp-hessian")
WIDTHS = {"resnet20": 0.5, "vgg11": 0.25, "attention_gcn": 1.0}
CLASSIFIER = {"resnet20": "fc", "vgg11": "classifier", "attention_gcn": "fc"}


def create(name, info):
    """The benchmark's models: CIFAR-style nets on 1×28×28 Fashion-MNIST, the attention GCN on skeletons."""
    if info is not None:
        return prunekit.models.create(name, graph=info["graph"], num_classes=len(info["classes"]))
    return prunekit.models.create(name, in_channels=1, num_classes=10, width=WIDTHS[name])


def load_skeletons(fold):
    """SYNTHETIC SBU (prunekit's generator, seed 0), fold ``fold``: train = fine-tune set, test."""
    from prunekit.pipeline.dataspec import load_data as load_spec
    train, test, info = load_spec({"format": "synthetic-sbu", "seed": 0, "fold": fold})
    return train, train, test, info
MEAN, STD = 0.2860, 0.3530


def load_data(folder, n_train, n_ft, n_test):
    (X, y), (Xt, yt) = prunekit.data.load_idx(folder)
    prep = lambda a: ((torch.from_numpy(a.astype(np.float32)) / 255.0 - MEAN) / STD).unsqueeze(1)
    X, Xt = prep(X), prep(Xt)
    y, yt = torch.from_numpy(y.astype(np.int64)), torch.from_numpy(yt.astype(np.int64))
    g = torch.Generator().manual_seed(1234)  # fixed subsets, identical for every seed and criterion
    perm = torch.randperm(len(X), generator=g)
    tr = perm[:n_train] if n_train else perm
    ft = perm[:n_ft]
    te = torch.randperm(len(Xt), generator=g)[:n_test] if n_test else torch.arange(len(Xt))
    return (X[tr], y[tr]), (X[ft], y[ft]), (Xt[te], yt[te])


def block_pruner():
    """A Torch-Pruning pruner that removes a :class:`~prunekit.core.blocks.PrunableBlock`'s units
    through the block's own methods (what Torch-Pruning lacks for graph convolutions)."""
    import torch_pruning as tp

    class BlockPruner(tp.pruner.BasePruningFunc):
        def prune_out_channels(self, layer, idxs):
            layer.prune_out_channels(sorted(int(i) for i in idxs))
            return layer

        def prune_in_channels(self, layer, idxs):
            layer.prune_in_channels(sorted(int(i) for i in idxs))
            return layer

        def get_out_channels(self, layer):
            return layer.out_channels

        def get_in_channels(self, layer):
            return layer.in_channels

    return BlockPruner()


def tp_prune(model, x, batches, method, target, classifier, iters):
    """Prune ``model`` (not modified) with Torch-Pruning to >= ``target`` MACs removed."""
    import torch_pruning as tp

    from prunekit.core.blocks import PrunableBlock
    base = copy.deepcopy(model).eval()
    # graph convolutions / attention blocks: Torch-Pruning gets prunekit's rule for them (alone it garbles them)
    custom = {type(m): block_pruner() for m in base.modules() if isinstance(m, PrunableBlock)}
    if method == "tp-magnitude":
        imp = tp.importance.GroupMagnitudeImportance()
    elif method == "tp-taylor":
        imp = tp.importance.GroupTaylorImportance()
        base.zero_grad()
        for xb, yb in batches:
            F.cross_entropy(base(xb), yb).backward()
    elif method == "tp-hessian":
        imp = tp.importance.GroupHessianImportance()
        imp.zero_grad()
        for xb, yb in batches:
            for i in range(len(xb)):
                base.zero_grad()
                F.cross_entropy(base(xb[i:i + 1]), yb[i:i + 1]).backward()
                imp.accumulate_grad(base)
    else:
        raise ValueError(method)
    dense_macs = prunekit.count(base, x)["macs"]

    def trial(ratio):
        # deep-copy model and importance together so imp's parameter-keyed state maps to the copy;
        # Parameter.__deepcopy__ drops .grad, so gradients are copied by name.
        m, im = copy.deepcopy((base, imp))
        grads = {n: p.grad for n, p in base.named_parameters()}
        for n, p in m.named_parameters():
            if grads[n] is not None:
                p.grad = grads[n].clone()
        pruner = tp.pruner.MetaPruner(m, x, importance=im, pruning_ratio=ratio, global_pruning=True,
                                      ignored_layers=[getattr(m, classifier)], customized_pruners=custom or None)
        pruner.step()
        m.zero_grad(set_to_none=True)
        return m, 1 - prunekit.count(m, x)["macs"] / dense_macs

    lo, hi, best, errors, reached = 0.0, 0.99, None, [], {}
    for _ in range(iters):
        mid = (lo + hi) / 2
        try:
            m, removed = trial(mid)
        except Exception as exc:  # noqa: BLE001 - recorded, search goes lower
            errors.append(f"ratio {mid:.4f}: {type(exc).__name__}: {exc}"[:300])
            hi = mid
            continue
        reached[mid] = removed
        if removed >= target:
            best, hi = (m, removed, mid), mid
        else:
            lo = mid
    if best is None:  # the ratio -> MACs map need not be monotone (GCN: 0.9 removes 73 %, 0.99 none)
        most = max(reached.items(), key=lambda kv: kv[1]) if reached else None
        where = f"; the most any tried ratio removed: {most[1]:.1%} (ratio {most[0]:.3f})" if most else ""
        raise RuntimeError(f"Torch-Pruning never reached {target:.0%} MACs removed{where}; errors: {errors[:3]}")
    return best[0], {"tp_pruning_ratio": best[2], "tp_errors": errors}


def latency(model, x, repeats, on=True):
    if not on:
        return None, None
    r = prunekit.measure_latency(model, x, batch_sizes=[1, 64], repeats=repeats, threads=torch.get_num_threads())
    return r["batches"][1]["median_ms"], r["batches"][64]["median_ms"]


def summarize(rows):
    keys = ("acc_before_ft", "acc", "macs_removed", "params", "macs", "latency_b1_ms", "latency_b64_ms")
    groups = {}
    for r in rows:
        if r.get("error"):
            continue
        groups.setdefault((r["model"], r["method"], r["budget"]), []).append(r)
    out = []
    for (model, method, budget), rs in groups.items():
        s = {"model": model, "method": method, "budget": budget, "n_seeds": len(rs)}
        for k in keys:
            v = np.array([r[k] for r in rs if r.get(k) is not None], dtype=float)
            if len(v) == 0:
                s[k + "_mean"] = s[k + "_std"] = float("nan")
                continue
            s[k + "_mean"], s[k + "_std"] = float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
        out.append(s)
    return out


def markdown(result):
    lines = [f"# Criteria accuracy on {result['dataset']}", "", "Command: `" + result["command"] + "`", "",
             f"Machine: {result['machine']}, torch {result['torch']}, {result['threads']} threads; "
             f"torch_pruning {result['torch_pruning']}.", "", "Scale: " + json.dumps(result["config"]), "",
             "Mean ± std over seeds (sample std). acc = test accuracy (%) after fine-tuning; "
             "acc0 = before fine-tuning; latency = median ms on the CPU "
             f"(seeds {result['config']['latency_seeds'] or 'all'} only).", "",
             "| model | budget | method | n | acc0 (%) | acc (%) | MACs removed | params | MACs | lat b1 (ms) | lat b64 (ms) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    order = {m: i for i, m in enumerate(("dense",) + PK_METHODS + TP_METHODS)}
    for s in sorted(result["summary"], key=lambda s: (s["model"], s["budget"], order.get(s["method"], 99))):
        f = lambda k, sc=1.0, d=2: f"{s[k + '_mean'] * sc:.{d}f} ± {s[k + '_std'] * sc:.{d}f}"
        lines.append(f"| {s['model']} | {s['budget']:.0%} | {s['method']} | {s['n_seeds']} | {f('acc_before_ft', 100)} | "
                     f"{f('acc', 100)} | {f('macs_removed', 100, 1)}% | {s['params_mean']:.0f} ± {s['params_std']:.0f} | "
                     f"{s['macs_mean'] / 1e6:.3f}M ± {s['macs_std'] / 1e6:.3f}M | {f('latency_b1_ms', 1, 3)} | "
                     f"{f('latency_b64_ms', 1, 2)} |")
    errs = [r for r in result["rows"] if r.get("error")]
    if errs:
        lines += ["", "Failures:"] + [f"- {r['model']} seed {r['seed']} {r['method']} {r['budget']:.0%}: {r['error']}"
                                     for r in errs]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20", "vgg11"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--budgets", nargs="+", type=float, default=[0.5, 0.7])
    p.add_argument("--methods", nargs="+", default=list(PK_METHODS + TP_METHODS))
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist",
                   help="IDX folder of Fashion-MNIST, or 'synthetic-sbu' (attention GCN, SYNTHETIC SBU fold 1)")
    p.add_argument("--fold", type=int, default=1, help="synthetic-sbu: the fold")
    p.add_argument("--train-samples", type=int, default=0, help="dense-training subset (0 = all 60k)")
    p.add_argument("--dense-epochs", type=int, default=2)
    p.add_argument("--prune-samples", type=int, default=512)
    p.add_argument("--ft-samples", type=int, default=10000)
    p.add_argument("--ft-epochs", type=int, default=1)
    p.add_argument("--test-samples", type=int, default=0, help="test subset (0 = all 10k)")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--ft-lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--tp-iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--latency-seeds", nargs="+", type=int, default=None,
                   help="seeds whose rows get latency measured (default: all; others record null)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/criteria_accuracy.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    import torch_pruning as tp

    t_start = time.perf_counter()
    if a.data == "synthetic-sbu":
        train, ft, test, data_info = load_skeletons(a.fold)
    else:
        (train, ft, test), data_info = load_data(a.data, a.train_samples, a.ft_samples, a.test_samples), None
    prune_batches = [(train[0][i:i + 128], train[1][i:i + 128]) for i in range(0, min(a.prune_samples, len(train[0])), 128)]
    x = test[0][:1]
    result = {"benchmark": "criteria_accuracy",
              "dataset": "SYNTHETIC SBU (prunekit generator, seed 0)" if data_info else "Fashion-MNIST", "command": "python " + " ".join(shlex.quote(s) for s in sys.argv),
              "machine": f"{platform.machine()} {platform.processor()}".strip(), "threads": a.threads,
              "torch": torch.__version__, "torch_pruning": getattr(tp, "__version__", "?"),
              "config": {k: v for k, v in vars(a).items() if k != "out"} | {
                  "widths": {m: WIDTHS[m] for m in a.models}, "n_train": len(train[0]), "n_ft": len(ft[0]),
                  "n_test": len(test[0]), "normalise": [MEAN, STD], "optimizer": "sgd momentum 0.9, cosine"},
              "rows": [], "summary": []}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        result["summary"] = summarize(result["rows"])
        result["elapsed_s"] = time.perf_counter() - t_start
        out.write_text(json.dumps(result, indent=1))
        out.with_suffix(".md").write_text(markdown(result))

    evaluate = lambda m: T.evaluate(m, test, batch_size=512)["accuracy"]
    for seed in a.seeds:
        for name in a.models:
            t0 = time.perf_counter()
            lat_on = a.latency_seeds is None or seed in a.latency_seeds
            torch.manual_seed(seed)
            dense = create(name, data_info)
            T.fit(dense, train, None, epochs=a.dense_epochs, lr=a.lr, batch_size=a.batch_size, seed=seed,
                  progress=False, weight_decay=a.weight_decay)
            dense.eval()
            dc = prunekit.count(dense, x)
            acc = evaluate(dense)
            l1_, l64 = latency(dense, x, a.repeats, lat_on)
            print(f"[{time.perf_counter() - t_start:.0f}s] {name} seed {seed} dense acc {acc:.4f} "
                  f"({time.perf_counter() - t0:.0f}s)", flush=True)
            for budget in a.budgets:
                result["rows"].append({"model": name, "seed": seed, "method": "dense", "budget": budget,
                                       "macs_removed": 0.0, "acc_before_ft": acc, "acc": acc, "params": dc["params"],
                                       "macs": dc["macs"], "latency_b1_ms": l1_, "latency_b64_ms": l64})
            structures = prunekit.find_structures(dense, x)
            for method in a.methods:
                t1 = time.perf_counter()
                scores, info = None, {}
                try:
                    if method in PK_METHODS:
                        opts = {"seed": seed} if method == "random" else {}
                        scores = prunekit.saliency(dense, structures, prune_batches, method, **opts)
                except Exception as exc:  # noqa: BLE001
                    scores = exc
                sal_s = time.perf_counter() - t1
                for budget in a.budgets:
                    t2 = time.perf_counter()
                    row = {"model": name, "seed": seed, "method": method, "budget": budget}
                    try:
                        if method in PK_METHODS:
                            if isinstance(scores, Exception):
                                raise scores
                            plan = prunekit.select(structures, scores, prunekit.Budget(macs=budget), method=method)
                            pruned = prunekit.materialize(dense, plan, structures)
                        else:
                            pruned, info = tp_prune(dense, x, prune_batches, method, budget, CLASSIFIER[name],
                                                    a.tp_iters)
                        prune_s = time.perf_counter() - t2 + sal_s
                        pruned.eval()
                        c = prunekit.count(pruned, x)
                        acc0 = evaluate(pruned)
                        T.fit(pruned, ft, None, epochs=a.ft_epochs, lr=a.ft_lr, batch_size=a.batch_size, seed=seed,
                              progress=False, weight_decay=a.weight_decay)
                        pruned.eval()
                        acc1 = evaluate(pruned)
                        b1, b64 = latency(pruned, x, a.repeats, lat_on)
                        row.update({"macs_removed": 1 - c["macs"] / dc["macs"], "acc_before_ft": acc0, "acc": acc1,
                                    "params": c["params"], "macs": c["macs"], "latency_b1_ms": b1,
                                    "latency_b64_ms": b64, "prune_s": prune_s,
                                    "total_s": time.perf_counter() - t2 + sal_s, **info})
                        print(f"[{time.perf_counter() - t_start:.0f}s] {name} s{seed} {method:12s} -{budget:.0%}: "
                              f"removed {row['macs_removed']:.3f} acc {acc0:.4f} -> {acc1:.4f} "
                              f"({row['total_s']:.0f}s)", flush=True)
                    except Exception as exc:  # noqa: BLE001 - recorded as a failure row
                        row["error"] = f"{type(exc).__name__}: {exc}"[:500]
                        print(f"{name} s{seed} {method} -{budget:.0%}: FAILED {row['error']}", flush=True)
                    result["rows"].append(row)
                    sal_s = 0.0
            save()
    save()
    print(f"wrote {out} and {out.with_suffix('.md')} in {time.perf_counter() - t_start:.0f}s")


if __name__ == "__main__":
    main()
