"""Do CTF's learned masks reach the budget themselves? ``moved`` before / after (issue 11, item 1).

``ctf.report()["rank_fix"]["moved"]`` counts the prunable entries whose final state (after
``finalize``) differs from the learned masks' binary state ``ψ > ½`` when they froze: what
the rank fix, not the masks, decided. Goal: ``moved ≤ 1 %`` of ``prunable`` at every rate.

Protocol (small enough for 2 shared cores, one thread):

* Synthetic task: 8 classes, each a fixed random smooth template; a sample is its class's
  template times a random gain plus Gaussian noise (train 256 / test 256 samples, data seed 0).
* Models: ``cnn`` – a tiny conv net (1→16→32→32 channels, 3×3, BatchNorm, 12×12 inputs);
  ``gcn`` – :func:`prunekit.models.attention_gcn` with channels (8, 16) on SBU-shaped
  skeleton inputs ``[3, 16 frames, 30 joints]``.
* ``fit`` protocol (the library's, :func:`prunekit.ctf.run` as in ``benchmarks/bench_ctf.py``,
  without fine-tuning): a dense model trained ``--pretrain`` epochs, then
  :func:`prunekit.pipeline.train.fit` with the CTF callback for ``--epochs`` epochs (SGD momentum
  0.9, cosine, lr 0.05, batch 32, no weight decay; CTF's defaults: the last quarter with frozen
  masks), then ``finalize`` and ``materialize``. ``loop`` protocol (a user's own loop): the same
  dense start, a plain SGD loop that calls ``ctf.step`` each epoch and adds
  ``ctf.penalty()`` to every batch's loss (SGD momentum 0.9, weight decay 5e-4, constant lr 0.025).
* ``before``: CTF with the earlier defaults (``threshold_control=False, settle=0``: the budget
  is carried by the Adam step on the thresholds, annealed with ``τ / τ_start``, and the
  weights are differentiated through ``ψ(Ŵ)`` to the end); ``after``: the current defaults
  (the budget controller and the settle phase, see :class:`prunekit.ctf.CTF`). In the
  ``loop`` protocol both configurations get the budget ramp, which :meth:`CTF.step` now
  advances (before, only ``fit``'s ``on_epoch_start`` did: a custom loop aimed at the final
  target from its first step).
* Per model, protocol, rate and seed: kept share at the freeze (``ψ > ½`` just before the
  masks froze), ``moved / prunable``, the rate reached, test accuracy of the dense start and
  after ``finalize`` (no fine-tuning).

Command (the one that wrote ``benchmarks/results/ctf_moved.json``)::

    python benchmarks/bench_ctf_moved.py --seeds 0 1 2 --rates 0.5 0.9 0.98 0.99 \\
        --models cnn gcn --protocols fit loop --configs before after
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

import prunekit
from prunekit.ctf import CTF, run
from prunekit.pipeline.train import evaluate, fit

CONFIGS = {
    "before": {"threshold_control": False, "settle": 0.0},  # the earlier defaults
    "after": {},  # the current defaults
}
BATCH = 32
CLASSES = 8


class TinyCNN(nn.Module):
    def __init__(self, classes: int = CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, classes)

    def forward(self, x):
        return self.fc(self.features(x))


def make_model(name: str, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if name == "cnn":
        return TinyCNN()
    return prunekit.models.create("attention_gcn", graph="sbu", channels=(8, 16), num_heads=4)


def make_data(name: str, n_train: int = 256, n_test: int = 256, seed: int = 0, noise: float = 1.0):
    """Class templates (smoothed random fields) × gain + noise; returns ``(Xtr, ytr, Xte, yte)``."""
    g = torch.Generator().manual_seed(seed)
    shape = (1, 12, 12) if name == "cnn" else (3, 16, 30)
    raw = torch.randn(CLASSES, *shape, generator=g)
    smooth = torch.nn.functional.avg_pool2d(raw, 3, stride=1, padding=1) * 2.0
    n = n_train + n_test
    y = torch.randint(0, CLASSES, (n,), generator=g)
    gain = 0.5 + torch.rand(n, 1, 1, 1, generator=g)
    X = smooth[y] * gain + noise * torch.randn(n, *shape, generator=g)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


class FreezeProbe:
    """Callback: the binary kept share ``ψ > ½`` at the end of every soft epoch (the last one is the freeze)."""

    def __init__(self, ctf: CTF):
        self.ctf, self.kept = ctf, None

    def on_epoch_end(self, epoch, metrics):
        if not self.ctf.frozen:
            self.kept = self.ctf.kept_fraction()["binary"]


def run_fit(model, rate, config, seed, args, data) -> dict:
    """The library's protocol, :func:`prunekit.ctf.run` without fine-tuning: ``fit`` with the CTF callback."""
    Xtr, ytr, Xte, yte = data
    result = run(model, (Xtr, ytr), (Xte, yte), rate, epochs=args.epochs, finetune_epochs=0, lr=args.lr,
                 batch_size=BATCH, seed=seed, **CONFIGS[config])
    soft = [r for r in result.history["masks"] if not r["frozen"]]  # the last soft epoch ends at the freeze
    return {"kept_at_freeze": soft[-1]["binary"], "report": result.report, "accuracy": result.accuracy,
            "seconds": result.seconds}


def run_loop(model, rate, config, seed, args, data) -> dict:
    """A user's own loop: :meth:`CTF.step` each epoch, :meth:`CTF.penalty` on every batch, then finalize."""
    Xtr, ytr, Xte, yte = data
    ctf = CTF(model, rate, example_inputs=Xtr[:2], **CONFIGS[config])
    probe = FreezeProbe(ctf)
    start = time.perf_counter()
    torch.manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=args.lr / 2, momentum=0.9, weight_decay=5e-4)
    for epoch in range(args.epochs):
        ctf.step(epoch, args.epochs)
        model.train()
        order = torch.randperm(len(Xtr))
        for i in range(0, len(Xtr), BATCH):
            idx = order[i:i + BATCH]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx]) + ctf.penalty()
            loss.backward()
            opt.step()
        probe.on_epoch_end(epoch, {})
    seconds = time.perf_counter() - start
    if not ctf.frozen:  # hard=0 or a loop that never froze: the state finalize starts from
        probe.kept = ctf.kept_fraction()["binary"]
    ctf.finalize()
    return {"kept_at_freeze": probe.kept, "report": ctf.report(), "accuracy": evaluate(model, (Xte, yte))["accuracy"],
            "seconds": seconds}


def run_one(model_name, protocol, config, rate, seed, args, data, dense_state):
    model = make_model(model_name, seed)
    model.load_state_dict(dense_state)
    out = (run_fit if protocol == "fit" else run_loop)(model, rate, config, seed, args, data)
    rf = out["report"]["rank_fix"]
    return {"model": model_name, "protocol": protocol, "config": config, "rate": rate, "seed": seed,
            "kept_at_freeze": out["kept_at_freeze"], "target_keep": 1 - rate,
            "moved": rf["moved"], "prunable": rf["prunable"], "moved_share": rf["moved"] / rf["prunable"],
            "dropped": rf["dropped"], "revived": rf["revived"], "rate_reached": out["report"]["rate"],
            "accuracy": out["accuracy"], "seconds": out["seconds"]}


def summarize(rows):
    out = {}
    for r in rows:
        key = f'{r["model"]}/{r["protocol"]}/{r["config"]}/{r["rate"]}'
        out.setdefault(key, []).append(r)
    summary = {}
    for key, rs in out.items():
        mean = lambda k: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        summary[key] = {"kept_at_freeze": mean("kept_at_freeze"), "target_keep": rs[0]["target_keep"],
                        "moved_share_mean": mean("moved_share"), "moved_share_max": max(r["moved_share"] for r in rs),
                        "accuracy_mean": mean("accuracy"), "dense_accuracy_mean": mean("dense_accuracy"),
                        "runs": len(rs)}
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["cnn", "gcn"], choices=["cnn", "gcn"])
    parser.add_argument("--protocols", nargs="+", default=["fit", "loop"], choices=["fit", "loop"])
    parser.add_argument("--configs", nargs="+", default=["before", "after"], choices=list(CONFIGS))
    parser.add_argument("--rates", type=float, nargs="+", default=[0.5, 0.9, 0.98, 0.99])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain", type=int, default=15)
    parser.add_argument("--epochs", type=int, default=8, help="epochs with CTF (the last quarter frozen)")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--out", default="benchmarks/results/ctf_moved.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    command = "python benchmarks/bench_ctf_moved.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(command, flush=True)
    rows = []
    for model_name in args.models:
        data = make_data(model_name)
        for seed in args.seeds:
            dense = make_model(model_name, seed)
            fit(dense, data[:2], epochs=args.pretrain, lr=args.lr, batch_size=BATCH, progress=False, seed=seed)
            dense_acc = evaluate(dense, data[2:])["accuracy"]
            state = {k: v.clone() for k, v in dense.state_dict().items()}
            for protocol in args.protocols:
                for config in args.configs:
                    for rate in args.rates:
                        row = run_one(model_name, protocol, config, rate, seed, args, data, state)
                        row["dense_accuracy"] = dense_acc
                        rows.append(row)
                        print(f'{model_name:4s} {protocol:4s} {config:6s} r={rate:<5} seed={seed} '
                              f'kept@freeze={row["kept_at_freeze"]:.4f} (target {1 - rate:.4f}) '
                              f'moved={row["moved_share"] * 100:6.2f}% acc={row["accuracy"]:.3f} '
                              f'(dense {dense_acc:.3f}) {row["seconds"]:.1f}s', flush=True)
    result = {"command": command, "settings": vars(args), "configs": CONFIGS,
              "torch": torch.__version__, "python": platform.python_version(),
              "rows": rows, "summary": summarize(rows)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")
    for key, s in result["summary"].items():
        print(f'{key:28s} kept@freeze {s["kept_at_freeze"]:.4f} / {s["target_keep"]:.4f}  moved mean '
              f'{s["moved_share_mean"] * 100:.2f}% max {s["moved_share_max"] * 100:.2f}%  acc {s["accuracy_mean"]:.3f} '
              f'(dense {s["dense_accuracy_mean"]:.3f})')


if __name__ == "__main__":
    main()
