"""fit under DistributedDataParallel on two CPU ranks (gloo), resumption on any number of ranks,
mixed precision, and ``torchrun -m prunekit train`` end to end.

Why two ranks with batch 8 equal one process with batch 16: fit shuffles ``(X, y)`` with
``epoch_generator(seed, epoch)`` — the same order on every rank and in one process — and rank r
takes every second index from r (``DistributedSampler``'s split). Global step k therefore
trains on positions [16k, 16k + 16) of that order, exactly the batch of one process with
``batch_size=16``, and DDP's average of the two per-rank mean gradients is the gradient of the
mean over those 16 samples. With 64 samples (a multiple of 2 ranks), no BatchNorm and no
dropout, the two runs differ only by float rounding.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunekit.core._atomic import folder_lock
from prunekit.pipeline.checkpoint import load_checkpoint
from prunekit.pipeline.cli import main
from prunekit.pipeline.train import RUN_LOCK, ResumeError, fit

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

WORLD = 2
TIMEOUT_S = 90
KW = dict(epochs=2, lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="cosine", seed=11, progress=False)


def _data(n: int = 64, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 10, generator=g), torch.randint(0, 3, (n,), generator=g)


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))


def _state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class _Kill:
    """Kills the process (no clean-up, like SIGKILL) in epoch 2, after its first optimizer step."""

    def on_epoch_start(self, epoch, epochs):
        self.epoch, self.steps = epoch, 0

    def extra_loss(self, model):
        if self.epoch == 1 and self.steps == 1:
            os._exit(0)
        self.steps += 1
        return None


class _Records(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


# ---------------------------------------------------------------------------- the workers

def _first(rank: int, out: Path) -> dict:
    """Uninterrupted runs (tensors with checkpoints, a data set), then a run killed in epoch 2."""
    X, y = _data()
    res = {}
    model = _mlp(rank)  # different initialisations: DDP broadcasts rank 0's
    h = fit(model, (X, y), (X, y), batch_size=8, out_dir=out / "full", **KW)
    res["tensors"] = {"history": h, "state": _state(model)}
    model = _mlp(rank)
    h = fit(model, TensorDataset(X, y), (X, y), batch_size=8, **KW)
    res["dataset"] = {"history": h, "state": _state(model)}
    torch.save(res, out / f"first{rank}.pt")
    fit(_mlp(rank), (X, y), (X, y), batch_size=8, out_dir=out / "killed", callbacks=[_Kill()], **KW)
    raise AssertionError("not killed")


def _second(rank: int, out: Path) -> dict:
    """Resume the killed run on 2 ranks; a failure on one rank; an unsharded DataLoader."""
    X, y = _data()
    res = {}
    model = _mlp(rank + 7)  # whatever the initialisation: the checkpoint decides
    h = fit(model, (X, y), (X, y), batch_size=8, out_dir=out / "killed", resume=True, **KW)
    res["resumed"] = {"history": h, "state": _state(model)}
    # rank 0 finds the run folder locked (another run holds it); rank 1 must not wait forever
    with folder_lock(out / "locked", 0.0, name=RUN_LOCK) if rank == 0 else contextlib.nullcontext():
        try:
            fit(_mlp(0), (X, y), batch_size=8, out_dir=out / "locked", **KW)
            res["lock"] = None
        except Exception as exc:  # noqa: BLE001 - the type is what the test checks
            res["lock"] = type(exc).__name__
    records = _Records()
    logging.getLogger("prunekit").addHandler(records)
    try:
        h = fit(_mlp(0), DataLoader(TensorDataset(X, y), batch_size=8), **{**KW, "epochs": 1})
    finally:
        logging.getLogger("prunekit").removeHandler(records)
    res["unsharded"] = {"warnings": records.messages, "loss": h["loss"]}
    return res


def _worker(rank: int, phase: str, out: str, init_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    out = Path(out)
    try:
        if phase == "first":
            _first(rank, out)
        else:
            torch.save(_second(rank, out), out / f"second{rank}.pt")
    except Exception:  # noqa: BLE001 - reported to the test through the results file
        (out / f"{phase}{rank}.crash").write_text(traceback.format_exc())
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _spawn(phase: str, out: Path) -> None:
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    context = mp.start_processes(_worker, args=(phase, str(out), str(out / f"init-{phase}")), nprocs=WORLD,
                                 join=False, start_method=method)
    deadline = time.monotonic() + TIMEOUT_S
    for p in context.processes:  # exit codes aside: the killed phase ends without clean-up
        p.join(max(0.0, deadline - time.monotonic()))
    alive = [p for p in context.processes if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, f"phase {phase}: the ranks did not finish within {TIMEOUT_S} s"
    crashes = {p.name: p.read_text() for p in out.glob(f"{phase}*.crash")}
    assert not crashes, f"phase {phase} failed: {crashes}"


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit_ddp")
    _spawn("first", out)
    shutil.copytree(out / "killed", out / "killed-copy")  # for a resumption on one process
    _spawn("second", out)
    first = [torch.load(out / f"first{r}.pt", weights_only=False) for r in range(WORLD)]
    second = [torch.load(out / f"second{r}.pt", weights_only=False) for r in range(WORLD)]
    return {"first": first, "second": second, "out": out}


def _assert_close(actual: dict, wanted: dict) -> None:
    for k, v in wanted.items():
        torch.testing.assert_close(actual[k], v, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------- the checks

def test_two_ranks_equal_one_process_with_the_global_batch(ranks):
    a, b = (ranks["first"][r]["tensors"] for r in range(WORLD))
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k  # every rank ends with the same model
    assert a["history"]["loss"] == b["history"]["loss"]
    X, y = _data()
    single = _mlp(0)
    h = fit(single, (X, y), (X, y), batch_size=16, **KW)
    _assert_close(a["state"], _state(single))
    assert a["history"]["loss"] == pytest.approx(h["loss"], rel=1e-5)  # reduced over the ranks
    assert a["history"]["train_accuracy"] == h["train_accuracy"]
    assert a["history"]["eval_accuracy"] == h["eval_accuracy"]
    assert a["history"]["eval_loss"] == pytest.approx(h["eval_loss"], rel=1e-5)


def test_a_map_style_data_set_is_sharded_the_same_way(ranks):
    tensors, dataset = ranks["first"][0]["tensors"], ranks["first"][0]["dataset"]
    for k in tensors["state"]:
        assert torch.equal(tensors["state"][k], dataset["state"][k]), k
    assert tensors["history"]["loss"] == dataset["history"]["loss"]


def test_checkpoints_record_the_global_batch(ranks):
    info = load_checkpoint(ranks["out"] / "full")
    assert info["epoch"] == 2
    config = info["extra"]["fit_config"]
    assert (config["batch_size"], config["world_size"], config["global_batch_size"]) == (8, 2, 16)


def test_killed_after_epoch_1_and_resumed_on_two_ranks_is_identical(ranks):
    straight = ranks["first"][0]["tensors"]
    assert load_checkpoint(ranks["out"] / "killed-copy")["epoch"] == 1  # the kill came in epoch 2
    for r in range(WORLD):
        resumed = ranks["second"][r]["resumed"]
        for k in straight["state"]:
            assert torch.equal(resumed["state"][k], straight["state"][k]), (r, k)
        for key in ("epoch", "loss", "train_accuracy", "eval_loss", "eval_accuracy", "lr"):
            assert resumed["history"][key] == straight["history"][key], key


def test_resumed_on_one_process_with_the_same_global_batch(ranks):
    run = ranks["out"] / "killed-copy"
    X, y = _data()
    with pytest.raises(ResumeError, match=r"global_batch_size 16 -> 8 \(batch_size 8 × 1 rank"):
        fit(_mlp(5), (X, y), (X, y), batch_size=8, out_dir=run, resume=True, **KW)
    model = _mlp(5)
    h = fit(model, (X, y), (X, y), batch_size=16, out_dir=run, resume=True, **KW)
    straight = ranks["first"][0]["tensors"]
    _assert_close(_state(model), straight["state"])
    assert h["loss"] == pytest.approx(straight["history"]["loss"], rel=1e-5)


def test_a_failure_on_one_rank_is_raised_on_every_rank(ranks):
    assert ranks["second"][0]["lock"] == "FolderLockedError"
    assert ranks["second"][1]["lock"] == "RemoteRankError"


def test_an_unsharded_data_loader_is_warned_about(ranks):
    for r in range(WORLD):
        res = ranks["second"][r]["unsharded"]
        assert any("no DistributedSampler" in m for m in res["warnings"]), res["warnings"]
    assert ranks["second"][0]["unsharded"]["loss"] == ranks["second"][1]["unsharded"]["loss"]


# ---------------------------------------------------------------------------- mixed precision

def test_bf16_autocast_trains_close_to_float32():
    X, y = _data(64)
    h32 = fit(_mlp(0), (X, y), (X, y), batch_size=16, **KW)
    h16 = fit(_mlp(0), (X, y), (X, y), batch_size=16, amp="bf16", **KW)
    assert h16["loss"][-1] == pytest.approx(h32["loss"][-1], rel=0.05)
    assert h16["loss"] != h32["loss"]  # autocast did run in bfloat16
    with pytest.raises(ValueError, match="amp must be"):
        fit(_mlp(0), (X, y), batch_size=16, amp="fp8", **KW)


def test_fp16_with_grad_scaler_resumes_exactly(tmp_path):
    X, y = _data(64)
    straight = _mlp(0)
    h = fit(straight, (X, y), batch_size=16, amp="fp16", **{**KW, "epochs": 3})
    fit(_mlp(0), (X, y), batch_size=16, amp="fp16", out_dir=tmp_path, **{**KW, "epochs": 1})
    scaler = load_checkpoint(tmp_path)["extra"]["amp_scaler"]
    assert scaler["scale"] == 65536.0 and scaler["_growth_tracker"] == 4  # 4 steps without overflow
    resumed = _mlp(9)
    h2 = fit(resumed, (X, y), batch_size=16, amp="fp16", out_dir=tmp_path, resume=True, **{**KW, "epochs": 3})
    assert h2["loss"] == h["loss"]
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
    with pytest.raises(ResumeError, match="amp 'fp16' -> 'bf16'"):
        fit(_mlp(0), (X, y), batch_size=16, amp="bf16", out_dir=tmp_path, resume=True, **{**KW, "epochs": 4})


# ---------------------------------------------------------------------------- the command line

def _tiny_config(tmp_path: Path, batch_size: int, epochs: int = 1) -> Path:
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: mlp\n"
        "model_kwargs: {input_shape: [3, 8, 30], hidden: [16], num_classes: 8}\n"
        f"data: {{format: synthetic-sbu, seed: 0, fold: 2, length: 8, root: {tmp_path / 'sbu'}}}\n"
        f"epochs: {epochs}\nbatch_size: {batch_size}\nlr: 0.05\nseed: 2\ndevice: cpu\nweight_decay: 0.0\n"
        f"out_dir: {tmp_path / 'run'}\n")
    return config


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_device_option_is_checked_in_one_line(tmp_path, capsys):
    config = _tiny_config(tmp_path, 16)
    assert main(["train", str(config), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device" in err and "CUDA" in err and len(err.strip().splitlines()) == 1
    assert main(["prune", "resnet20", "--method", "l1", "--budget-macs", "0.3", "--device", "gpu"]) == 2
    assert "expected cpu, cuda, cuda:N, mps or auto" in capsys.readouterr().err
    assert main(["train", str(config), "--amp", "fp8"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_resumes_a_one_process_run_on_two_ranks(tmp_path):
    """Epoch 1 in this process (global batch 32), epoch 2 by ``torchrun --nproc_per_node 2 -m prunekit
    train CONFIG --resume`` (16 per rank) and, for reference, by this process again: the same model."""
    import prunekit
    from prunekit.pipeline.config import load_config
    from prunekit.pipeline.dataspec import load_data

    config = load_config(_tiny_config(tmp_path, 16 * WORLD))
    (xtr, ytr), (xte, yte), _ = load_data(config.data)  # generated once here, read by every rank
    assert len(xtr) % WORLD == 0  # so that two ranks and one process are exactly comparable
    options = {**config.fit_kwargs(), "out_dir": tmp_path / "run" / "checkpoints", "progress": False}
    fit(config.build_model(), (xtr, ytr), (xte, yte), **options)
    shutil.copytree(tmp_path / "run", tmp_path / "one")
    path = _tiny_config(tmp_path, 16, epochs=2)  # 16 per rank: the same global batch
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), "-m", "prunekit", "train", str(path), "--resume",
           "--device", "cpu"]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("test accuracy") == 1  # rank 0 alone prints
    info = load_checkpoint(tmp_path / "run" / "checkpoints")
    saved = info["extra"]["fit_config"]
    assert (info["epoch"], saved["world_size"], saved["global_batch_size"]) == (2, WORLD, 16 * WORLD)
    assert json.loads((tmp_path / "run" / "checkpoints" / "history.json").read_text())["epoch"] == [0, 1]
    reference = config.build_model()
    h = fit(reference, (xtr, ytr), (xte, yte), **{**options, "epochs": 2, "out_dir": tmp_path / "one" / "checkpoints"},
            resume=True)
    _assert_close(prunekit.load(tmp_path / "run" / "model").state_dict(), reference.state_dict())
    assert info["extra"]["history"]["loss"] == pytest.approx(h["loss"], rel=1e-5)
    assert info["extra"]["history"]["eval_accuracy"] == h["eval_accuracy"]
