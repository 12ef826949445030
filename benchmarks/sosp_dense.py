"""Dense networks for the SOSP benchmark, trained on their full training set until the test accuracy plateaus.

Two data sets, each with its own recipe (:data:`RECIPES`) and results store:

* ``fashion`` — CIFAR-style nets on the full Fashion-MNIST (60k / 10k): 15 epochs, lr 0.1, batch 128,
  store ``benchmarks/results/sosp_dense.json``;
* ``digits`` — the MLP (64 → 256 → 128 → 10) on scikit-learn's 8×8 handwritten digits (1,347 / 450,
  stratified split, seed 0; pixels / 16): 60 epochs, lr 0.05, batch 64, store
  ``benchmarks/results/sosp_digits_dense.json``: the fast sanity row (seconds per network);
* ``sbu`` — the skeleton GCN (``attention_gcn``, channels 32 32 64 64, 4 heads) on SYNTHETIC SBU
  (prunekit's generator, seed 0), fold 1 (264 / 67 sequences): 30 epochs, lr 0.05, batch 32,
  store ``benchmarks/results/sosp_gcn_dense.json``.

One checkpoint per (model, width, seed) under ``--cache`` (safetensors via ``prunekit.save``) and
its per-epoch test-accuracy curve in the store (a trained model is reused, never retrained).
SGD momentum 0.9, cosine schedule, weight decay 5e-4, no augmentation, one thread. A flag left
unset takes the data set's recipe.

    python benchmarks/sosp_dense.py --models resnet20 --width 0.5 --epochs 15 --seeds 0 1 2
    python benchmarks/sosp_dense.py --models attention_gcn --seeds 0 1 2
    python benchmarks/sosp_dense.py --models mlp --seeds 0 1 2 3 4 5 6 7 8 9
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
from benchmarks.bench_criteria_accuracy import create as create_skeleton  # noqa: E402
from benchmarks.store import Store, machine, merge  # noqa: E402
from prunekit.pipeline.dataspec import load_data  # noqa: E402
from prunekit.pipeline.train import evaluate, fit  # noqa: E402

FASHION = "/usr/share/datasets/fashion-mnist"
SBU = {"format": "synthetic-sbu", "seed": 0, "fold": 1}
DIGITS = {"source": "sklearn.datasets.load_digits", "test_fraction": 0.25, "split_seed": 0, "scale": "1/16"}
SKELETON = ("attention_gcn",)  # the models trained on SYNTHETIC SBU; the MLP on digits; every other one on Fashion-MNIST
RECIPES = {  # per data set: the dense training and where its rows go
    "fashion": {"width": 0.5, "epochs": 15, "lr": 0.1, "batch_size": 128, "out": "benchmarks/results/sosp_dense.json"},
    "sbu": {"width": 1.0, "epochs": 30, "lr": 0.05, "batch_size": 32, "out": "benchmarks/results/sosp_gcn_dense.json"},
    "digits": {"width": 1.0, "epochs": 60, "lr": 0.05, "batch_size": 64,
               "out": "benchmarks/results/sosp_digits_dense.json"},
}


def dataset_of(model: str) -> str:
    return "sbu" if model in SKELETON else "digits" if model == "mlp" else "fashion"


def load(model: str, fashion: str = FASHION, cache: str = "runs/data"):
    """``((X, y), (X_test, y_test), info)`` of the model's data set (``info`` is None for Fashion-MNIST)."""
    if dataset_of(model) == "sbu":
        return load_data(SBU, cache=cache)
    if dataset_of(model) == "digits":
        (X, y), (Xt, yt) = prunekit.data.load_digits(test_fraction=DIGITS["test_fraction"], seed=DIGITS["split_seed"])
        prep = lambda a: (torch.from_numpy(a) / 16.0).unsqueeze(1)  # noqa: E731
        return (prep(X), torch.from_numpy(y)), (prep(Xt), torch.from_numpy(yt)), None
    train, test, _ = load_data({"format": "idx", "root": fashion})
    return train, test, None


def dense_path(cache: Path, model: str, width: float, seed: int) -> Path:
    return Path(cache) / f"{model}_w{width:g}_seed{seed}"


def create(model: str, width: float, info: dict | None = None):
    if info is not None:
        assert width == 1.0, "the skeleton GCN is benchmarked at its full width"
        return create_skeleton(model, info)
    if dataset_of(model) == "digits":
        return prunekit.models.create(model, input_shape=(1, 8, 8), num_classes=10, width=width)
    return prunekit.models.create(model, in_channels=1, num_classes=10, width=width)


def recipe(args, models) -> dict:
    """The data set's recipe with every flag the command set taking precedence."""
    datasets = {dataset_of(m) for m in models}
    if len(datasets) != 1:
        raise SystemExit(f"one data set per run (its own protocol and store): {sorted(datasets)}")
    dataset = datasets.pop()
    return {"dataset": dataset, **{k: v if getattr(args, k, None) is None else getattr(args, k)
                                   for k, v in RECIPES[dataset].items()}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet20"])
    p.add_argument("--width", type=float, help="default: the data set's recipe (0.5 Fashion-MNIST, 1 SBU)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data", default=FASHION, help="Fashion-MNIST's IDX folder")
    p.add_argument("--data-cache", default="runs/data", help="where SYNTHETIC SBU is generated")
    p.add_argument("--cache", default="runs/sosp")
    p.add_argument("--out")
    p.add_argument("--merge", nargs="+", metavar="JSON", help="merge these result files into --out")
    args = p.parse_args(argv)
    if args.merge:
        merge(args.merge, key=("model", "width", "seed"), out=args.out, must_match=("protocol",)).save()
        return
    torch.set_num_threads(1)
    r = recipe(args, args.models)
    (X, y), (Xt, yt), info = load(args.models[0], args.data, args.data_cache)
    protocol = {"epochs": r["epochs"], "lr": r["lr"], "batch_size": r["batch_size"], "weight_decay": 5e-4,
                "schedule": "cosine", "train": len(X), "test": len(Xt), **({"data": SBU} if info else {}),
                **({"data": DIGITS} if r["dataset"] == "digits" else {})}
    store = Store(r["out"], key=("model", "width", "seed"), meta={"protocol": protocol, "machine": machine(1)},
                  resume=True, must_match=("protocol",))
    for name in args.models:
        for seed in args.seeds:
            path = dense_path(args.cache, name, r["width"], seed)
            if store.done(model=name, width=r["width"], seed=seed) and path.exists():
                continue
            torch.manual_seed(seed)
            model = create(name, r["width"], info)
            t0 = time.perf_counter()
            history = fit(model, (X, y), (Xt, yt), epochs=r["epochs"], lr=r["lr"], weight_decay=5e-4,
                          batch_size=r["batch_size"], seed=seed, progress=False)
            prunekit.save(model.eval(), path)
            curve = [round(a, 4) for a in history["eval_accuracy"]]
            seconds = time.perf_counter() - t0
            on_train = evaluate(model, (X, y))  # how close to zero the training loss went (what saliencies see)
            store.add({"model": name, "width": r["width"], "seed": seed, "curve": curve, "accuracy": curve[-1],
                       "train_accuracy": on_train["accuracy"], "train_loss": on_train["loss"], "seconds": seconds})
            print(name, seed, curve, flush=True)


if __name__ == "__main__":
    main()
