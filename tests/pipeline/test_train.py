"""fit / evaluate: real numbers, exact interrupt-and-resume, callbacks, DDP across 2 processes."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.pipeline.checkpoint import latest_checkpoint
from prunekit.pipeline.train import Callback, epoch_generator, evaluate, fit


def _mlp(seed: int, dropout: float = 0.2) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))


def _random_data(n: int = 96, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 10, generator=g), torch.randint(0, 3, (n,), generator=g)


class _OneHot(nn.Module):
    """Predicts the class stored in each input (logits = one-hot of x)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x):
        return F.one_hot(x, self.k).float() * 3.0


# ----------------------------------------------------------------------- evaluate


def test_evaluate_confusion_matrix_and_per_class():
    true = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    pred = torch.tensor([0, 1, 0, 1, 2, 2, 2, 0, 2, 0])
    model = _OneHot(4)  # class 3 exists in the output but has no samples
    model.train()
    r = evaluate(model, (pred, true), batch_size=3)
    assert r["confusion_matrix"] == [[3, 1, 0, 0],
                                     [0, 1, 1, 0],
                                     [1, 0, 3, 0],
                                     [0, 0, 0, 0]]
    assert r["per_class_accuracy"] == [0.75, 0.5, 0.75, None]
    assert r["accuracy"] == 0.7 and r["num_samples"] == 10
    expected_loss = F.cross_entropy(F.one_hot(pred, 4).float() * 3.0, true).item()
    assert math.isclose(r["loss"], expected_loss, rel_tol=1e-6)
    assert model.training  # mode restored

    # The same through an iterable of batches, and with an explicit num_classes.
    loader = DataLoader(TensorDataset(pred, true), batch_size=4)
    assert evaluate(model, loader)["confusion_matrix"] == r["confusion_matrix"]
    with pytest.raises(ValueError, match="out of range"):
        evaluate(_OneHot(2), (pred.clamp(max=1), true))


def test_evaluate_refuses_empty_data():
    with pytest.raises(ValueError, match="no samples"):
        evaluate(_OneHot(2), (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)))


# ----------------------------------------------------------------------- training


def test_fit_learns_a_separable_problem():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (200,), generator=g)
    X = torch.randn(200, 2, generator=g) * 0.5 + (y[:, None].float() * 2 - 1) * 2.0
    model = _mlp(0, dropout=0.0)
    model[0] = nn.Linear(2, 16)
    before = evaluate(model, (X, y))
    h = fit(model, (X, y), (X, y), epochs=8, lr=0.1, batch_size=20, progress=False, seed=0)
    assert len(h["loss"]) == 8 and h["epoch"] == list(range(8))
    assert h["loss"][-1] < 0.2 * h["loss"][0]
    assert h["loss"][-1] < 0.1 < before["loss"]
    assert h["eval_accuracy"][-1] >= 0.98 and h["train_accuracy"][-1] >= 0.97
    assert all(s > 0 for s in h["seconds"]) and h["extra_loss"] == [None] * 8


def test_lr_schedule_in_history():
    X, y = _random_data(16)
    h = fit(_mlp(0), (X, y), epochs=5, lr=0.1, warmup_epochs=1, schedule="cosine", batch_size=8,
            progress=False)
    expected = [0.05] + [0.1 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in range(4)]
    assert h["lr"] == pytest.approx(expected, abs=1e-12)
    h = fit(_mlp(0), (X, y), epochs=4, lr=1.0, schedule="step", milestones=[1, 3], gamma=0.5,
            optimizer="adam", batch_size=8, progress=False)
    assert h["lr"] == pytest.approx([1.0, 0.5, 0.5, 0.25])


def test_shuffling_depends_on_seed_and_epoch_only():
    a = torch.randperm(50, generator=epoch_generator(3, 2))
    torch.randperm(50, generator=epoch_generator(3, 1))  # other epochs do not interfere
    assert torch.equal(a, torch.randperm(50, generator=epoch_generator(3, 2)))
    assert not torch.equal(a, torch.randperm(50, generator=epoch_generator(3, 3)))
    assert not torch.equal(a, torch.randperm(50, generator=epoch_generator(4, 2)))


# ----------------------------------------------------------------------- resume


class _Interrupt(Callback):
    """Raises KeyboardInterrupt at batch ``batch`` of epoch ``epoch`` (a simulated kill)."""

    def __init__(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.batch, self.current, self.seen = epoch, batch, -1, 0

    def on_epoch_start(self, epoch, epochs):
        self.current, self.seen = epoch, 0

    def extra_loss(self, model):
        if self.current == self.epoch and self.seen == self.batch:
            raise KeyboardInterrupt
        self.seen += 1
        return None


def _data_variant(kind: str):
    X, y = _random_data()
    if kind == "tensors":
        return (X, y)
    if kind == "dataset":
        return TensorDataset(X, y)
    return DataLoader(TensorDataset(X, y), batch_size=16, shuffle=True)  # shuffles from the global RNG


@pytest.mark.parametrize("kind,interrupt_batch", [("tensors", 0), ("tensors", 3), ("dataset", 2), ("loader", 2)])
def test_interrupt_and_resume_is_exact(tmp_path, kind, interrupt_batch):
    kw = dict(epochs=3, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-3, schedule="cosine",
              batch_size=16, seed=7, progress=False)
    X, y = _random_data(48, seed=1)

    straight = _mlp(0)
    h_straight = fit(straight, _data_variant(kind), (X, y), out_dir=tmp_path / "a", **kw)

    # Run 1 is killed during epoch 1 (after the epoch-0 checkpoint); run 2 is a fresh process:
    # a differently initialised model and a new optimizer, resumed from the checkpoint.
    killed = _mlp(0)
    with pytest.raises(KeyboardInterrupt):
        fit(killed, _data_variant(kind), (X, y), out_dir=tmp_path / "b",
            callbacks=[_Interrupt(1, interrupt_batch)], **kw)
    assert latest_checkpoint(tmp_path / "b").name == "epoch-0001.json"
    resumed = _mlp(123)
    torch.manual_seed(999)  # whatever the new process did to the RNG before
    h_resumed = fit(resumed, _data_variant(kind), (X, y), out_dir=tmp_path / "b", resume=True, **kw)

    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert h_resumed["loss"] == h_straight["loss"]
    assert h_resumed["eval_accuracy"] == h_straight["eval_accuracy"]
    assert h_resumed["lr"] == h_straight["lr"]
    # Every stored tensor (weights, momentum buffers, RNG state) of the final checkpoints agrees.
    ta = load_file(tmp_path / "a" / "epoch-0003.safetensors")
    tb = load_file(tmp_path / "b" / "epoch-0003.safetensors")
    assert ta.keys() == tb.keys() and any(k.endswith("momentum_buffer") for k in ta)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    hist = json.loads((tmp_path / "b" / "history.json").read_text())
    assert hist["loss"] == h_straight["loss"]


def test_checkpoint_every_and_resume_of_a_finished_run(tmp_path):
    X, y = _random_data(32)
    kw = dict(epochs=5, batch_size=16, progress=False, out_dir=tmp_path, checkpoint_every=2, keep_last=2)
    h = fit(_mlp(0), (X, y), **kw)
    assert sorted(p.name for p in tmp_path.glob("epoch-*.json")) == ["epoch-0004.json", "epoch-0005.json"]
    m = _mlp(5)
    h2 = fit(m, (X, y), resume=True, **kw)  # nothing left to do: loads the final weights
    assert h2["loss"] == h["loss"]
    fresh = fit(_mlp(0), (X, y), epochs=1, batch_size=16, progress=False, out_dir=tmp_path / "new", resume=True)
    assert len(fresh["loss"]) == 1  # resume with no checkpoint starts from scratch


# ----------------------------------------------------------------------- callbacks


class _Recorder(Callback):
    def __init__(self, weight: float = 0.0) -> None:
        self.weight, self.events, self.epochs_done = weight, [], 0

    def on_epoch_start(self, epoch, epochs):
        self.events.append(("start", epoch, epochs))

    def extra_loss(self, model):
        if not self.weight:
            return None
        return self.weight * sum(p.pow(2).sum() for p in model.parameters())

    def on_epoch_end(self, epoch, metrics):
        self.events.append(("end", epoch, round(metrics["lr"], 6)))
        self.epochs_done += 1

    def state_dict(self):
        return {"epochs_done": self.epochs_done}

    def load_state_dict(self, d):
        self.epochs_done = d["epochs_done"]


def test_callbacks_hooks_penalty_and_state(tmp_path):
    X, y = _random_data(32)
    rec = _Recorder(weight=0.5)
    plain = _mlp(0, dropout=0.0)
    penalised = _mlp(0, dropout=0.0)
    kw = dict(epochs=2, batch_size=8, lr=0.1, schedule="constant", progress=False)
    fit(plain, (X, y), **kw)
    h = fit(penalised, (X, y), callbacks=[rec], out_dir=tmp_path, **kw)
    assert rec.events == [("start", 0, 2), ("end", 0, 0.1), ("start", 1, 2), ("end", 1, 0.1)]
    assert all(v > 0 for v in h["extra_loss"])
    norm = lambda m: sum(p.pow(2).sum() for p in m.parameters()).item()  # noqa: E731
    assert norm(penalised) < 0.8 * norm(plain)  # the extra term reached the gradients

    rec2 = _Recorder(weight=0.5)
    fit(_mlp(1, dropout=0.0), (X, y), callbacks=[rec2], out_dir=tmp_path, resume=True,
        **{**kw, "epochs": 3})
    assert rec2.epochs_done == 3 and rec2.events == [("start", 2, 3), ("end", 2, 0.1)]


def test_progress_bars_and_errors(tmp_path, capsys):
    X, y = _random_data(16)
    fit(_mlp(0), (X, y), (X, y), epochs=1, batch_size=8, progress=True)
    captured = capsys.readouterr()
    assert "epoch 1/1  loss" in captured.out + captured.err
    with pytest.raises(ValueError, match="resume=True needs out_dir"):
        fit(_mlp(0), (X, y), epochs=1, resume=True, progress=False)
    with pytest.raises(ValueError, match="reserved"):
        fit(_mlp(0), (X, y), epochs=1, out_dir=tmp_path, checkpoint_extra={"history": 1}, progress=False)
    with pytest.raises(FloatingPointError, match="training loss is nan in epoch 0"):
        fit(_mlp(0), (X * float("nan"), y), epochs=1, progress=False)


# ----------------------------------------------------------------------- distributed


def _ddp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        X, y = _random_data(64, seed=3)
        model = _mlp(rank, dropout=0.0)  # different inits: DDP must broadcast rank 0's
        h = fit(model, (X, y), (X, y), epochs=2, lr=0.1, momentum=0.9, batch_size=8, seed=11,
                out_dir=os.path.join(out, "run"), progress=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, f"rank{rank}.safetensors"))
        Path(out, f"history{rank}.json").write_text(json.dumps(h))
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_agree(tmp_path):
    import torch.distributed as dist
    import torch.multiprocessing as mp

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    # fork: the children inherit the imported modules instead of re-importing torch (seconds each).
    ctx = mp.start_processes(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=False,
                             start_method="fork" if "fork" in mp.get_all_start_methods() else "spawn")
    deadline = time.monotonic() + 60
    while not ctx.join(timeout=1):  # raises if a worker failed
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP workers did not finish within 60 s")
    w0 = load_file(tmp_path / "rank0.safetensors")
    w1 = load_file(tmp_path / "rank1.safetensors")
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    h0 = json.loads((tmp_path / "history0.json").read_text())
    h1 = json.loads((tmp_path / "history1.json").read_text())
    assert h0["loss"] == h1["loss"] and h0["eval_accuracy"] == h1["eval_accuracy"]

    # One process with the combined batch (2 x 8) sees the same samples per step: same result
    # up to float summation order.
    X, y = _random_data(64, seed=3)
    single = _mlp(0, dropout=0.0)
    hs = fit(single, (X, y), (X, y), epochs=2, lr=0.1, momentum=0.9, batch_size=16, seed=11, progress=False)
    for k, v in single.state_dict().items():
        torch.testing.assert_close(w0[k], v, rtol=1e-5, atol=1e-6)
    assert h0["loss"] == pytest.approx(hs["loss"], rel=1e-5)
    assert h0["eval_accuracy"] == hs["eval_accuracy"]
    # Only rank 0 wrote checkpoints; they hold the common weights.
    assert latest_checkpoint(tmp_path / "run").name == "epoch-0002.json"
    ck = load_file(tmp_path / "run" / "epoch-0002.safetensors")
    assert all(torch.equal(ck[f"model/{k}"], w0[k]) for k in w0)
    assert not list((tmp_path / "run").glob("*.tmp"))


def test_extending_a_finished_run_follows_the_new_schedule(tmp_path):
    X, y = _random_data(32)
    kw = dict(batch_size=16, lr=0.1, schedule="cosine", progress=False, out_dir=tmp_path)
    fit(_mlp(0), (X, y), epochs=2, **kw)  # ends with lr 0 for a third epoch under the old schedule
    m = _mlp(0)
    h = fit(m, (X, y), epochs=4, resume=True, **kw)
    assert h["lr"][2] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 2 / 4)))
    assert h["lr"][3] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 3 / 4)))
