"""Dense networks for the SOSP benchmark, trained on the full Fashion-MNIST until the test accuracy plateaus.

One checkpoint per (model, width, seed) under ``--cache`` (safetensors via ``prunekit.save``) and
its per-epoch curve in ``benchmarks/results/sosp_dense.json`` (one results store; a trained
model is reused, never retrained). SGD momentum 0.9, cosine schedule, batch 128, weight decay
5e-4, no augmentation, one thread.

    python benchmarks/sosp_dense.py --models resnet20 --width 0.5 --epochs 15 --seeds 0 1 2
    python benchmarks/sosp_dense.py --merge A.json B.json --out benchmarks/results/sosp_dense.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import prunekit  # noqa: E402
from benchmarks.store import Store, machine, merge  # noqa: E402
from prunekit.pipeline.dataspec import load_data  # noqa: E402
from prunekit.pipeline.train import fit  # noqa: E402

FASHION = "/usr/share/datasets/fashion-mnist"


def dense_path(cache: Path, model: str, width: float, seed: int) -> Path:
    return Path(cache) / f"{model}_w{width:g}_seed{seed}"


def create(model: str, width: float):
    return prunekit.models.create(model, in_channels=1, num_classes=10, width=width)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20"])
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data", default=FASHION)
    p.add_argument("--cache", default="runs/sosp")
    p.add_argument("--out", default="benchmarks/results/sosp_dense.json")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="merge these result files into --out")
    args = p.parse_args(argv)
    if args.merge:
        merge(args.merge, key=("model", "width", "seed"), out=args.out, must_match=("protocol",)).save()
        return
    torch.set_num_threads(1)
    (X, y), (Xt, yt), _ = load_data({"format": "idx", "root": args.data})
    protocol = {"epochs": args.epochs, "lr": args.lr, "batch_size": 128, "weight_decay": 5e-4,
                "schedule": "cosine", "train": len(X), "test": len(Xt)}
    store = Store(args.out, key=("model", "width", "seed"), meta={"protocol": protocol, "machine": machine(1)},
                  resume=True, must_match=("protocol",))
    for name in args.models:
        for seed in args.seeds:
            path = dense_path(args.cache, name, args.width, seed)
            if store.done(model=name, width=args.width, seed=seed) and path.exists():
                continue
            torch.manual_seed(seed)
            model = create(name, args.width)
            t0 = time.perf_counter()
            history = fit(model, (X, y), (Xt, yt), epochs=args.epochs, lr=args.lr, weight_decay=5e-4,
                          batch_size=128, seed=seed, progress=False)
            prunekit.save(model.eval(), path)
            curve = [round(a, 4) for a in history["eval_accuracy"]]
            store.add({"model": name, "width": args.width, "seed": seed, "curve": curve, "accuracy": curve[-1],
                       "seconds": time.perf_counter() - t0})
            print(name, seed, curve, flush=True)


if __name__ == "__main__":
    main()
