"""CTF under DistributedDataParallel on two CPU ranks (gloo, forked from pytest).

CTF is built on each rank before the model is wrapped in DDP (the parametrizations must exist
when DDP collects the parameters). Its learnable thresholds are *buffers* trained by CTF's own
Adam, so DDP does not average their gradients: every rank would step them with the gradient
of its own shard. ``fit`` averages the gradients of a callback's ``parameters()`` after each
backward, so with ``fit`` the thresholds, masks, frozen state and the final plan are
bit-identical on both ranks, and equal (to float rounding) to one process with the global batch.

A plain training loop (no ``fit``, no averaging by the user) gets the same: CTF's
``_update_thresholds`` averages the threshold gradients over the ranks itself
(``test_plain_loop_without_averaging_*``; it failed before CTF did).
"""
from __future__ import annotations

import datetime
import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import prunekit
from tests.spawn import run_ranks
from prunekit.core.plan import check_same_plan
from prunekit.criteria.distributed import average_gradients, resolve_group
from prunekit.ctf import CTF
from prunekit.pipeline.train import fit

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

WORLD = 2
TIMEOUT_S = 90
N, PER_RANK = 32, 8  # 32 samples, batch 8 per rank: global batch 16, 2 steps per epoch
LAM = 0.01  # a weak budget penalty: the thresholds follow the data (the shard), not only the budget


class SmallCNN(nn.Module):
    """No BatchNorm and no dropout: two ranks and one process with the global batch take the same steps."""

    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 8, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(8, 12), nn.Linear(12, 4)

    def forward(self, x):
        x = F.relu(self.conv2(F.relu(self.conv1(x)))).mean(dim=(2, 3))
        return self.fc2(F.relu(self.fc1(x)))


def _case(name):
    """(model, X, y), identical on every process."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "cnn":
        return SmallCNN(), torch.randn(N, 3, 6, 6, generator=g), torch.randint(0, 4, (N,), generator=g)
    model = prunekit.models.create("attention_gcn", channels=(4, 8), num_heads=2, key_dim=2)
    return model, torch.randn(N, 3, 8, 30, generator=g), torch.randint(0, 8, (N,), generator=g)


def _fit_ctf(name, batch_size, epochs=4):
    """CTF (rate 0.8; 3 soft epochs, then the hard phase) trained by ``fit``: what each rank records."""
    model, X, y = _case(name)
    ctf = CTF(model, rate=0.8, example_inputs=X[:2], lam=LAM)
    fit(model, (X, y), epochs=epochs, batch_size=batch_size, lr=0.05, seed=5, callbacks=[ctf], progress=False)
    out = {"thresholds": ctf.thresholds(), "masks": {k: v.clone() for k, v in ctf.masks().items()},
           "kept": ctf.kept_fraction(), "frozen": ctf.frozen, "history": [dict(r) for r in ctf.history]}
    plan = ctf.finalize()
    out["plan"] = plan.to_dict()
    out["rate"] = ctf.report()["rate"]
    out["weights"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return out, plan


def _plain_loop(average: bool):
    """DDP and CTF in a loop of one's own (no fit): the thresholds each rank ends with."""
    from torch.nn.parallel import DistributedDataParallel

    model, X, y = _case("cnn")
    ctf = CTF(model, rate=0.8, example_inputs=X[:2], hard=0.0, lam=LAM)
    net = DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    rank = dist.get_rank()
    for epoch in range(2):
        ctf.step(epoch, 2)
        for start in range(0, N, PER_RANK * WORLD):
            sel = slice(start + rank * PER_RANK, start + (rank + 1) * PER_RANK)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(X[sel]), y[sel]) + ctf.penalty()
            loss.backward()
            if average:
                average_gradients(ctf.parameters(), resolve_group())
            opt.step()
    return ctf.thresholds()


def _worker(rank, out_dir, init_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    results = {}
    try:
        for name in ("attention_gcn", "cnn"):
            results[name], plan = _fit_ctf(name, PER_RANK)
            check_same_plan(plan)  # raises PlanMismatchError on both ranks if they differ
            results[name]["checked"] = True
        results["plain"] = _plain_loop(average=False)
        results["plain-averaged"] = _plain_loop(average=True)
    except Exception:  # noqa: BLE001 - reported to the test through the results file
        results["crash"] = traceback.format_exc()
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("ctf_ddp")
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    return run_ranks(_worker, out, WORLD, TIMEOUT_S, start_method=method)


@pytest.mark.parametrize("name", ["attention_gcn", "cnn"])
def test_fit_keeps_thresholds_masks_and_plan_identical_on_every_rank(ranks, name):
    a, b = ranks[0][name], ranks[1][name]
    assert a["checked"] and b["checked"]  # check_same_plan passed on both
    assert a["thresholds"] == b["thresholds"]  # bit-identical floats
    assert a["masks"].keys() == b["masks"].keys()
    assert all(torch.equal(a["masks"][k], b["masks"][k]) for k in a["masks"])
    assert a["frozen"] and b["frozen"]  # the hard phase (epoch 3 of 4) froze the same masks
    assert a["kept"] == b["kept"] and a["history"] == b["history"]
    assert a["plan"] == b["plan"] and a["plan"]["removed"]
    assert a["rate"] == b["rate"] == pytest.approx(0.8, abs=2e-3)
    for k in a["weights"]:
        assert torch.equal(a["weights"][k], b["weights"][k]), k


def test_two_ranks_equal_one_process_with_the_global_batch(ranks):
    single, plan = _fit_ctf("cnn", PER_RANK * WORLD)
    ddp = ranks[0]["cnn"]
    for layer, by_granularity in single["thresholds"].items():
        for g, value in by_granularity.items():
            assert ddp["thresholds"][layer][g] == pytest.approx(value, rel=1e-4, abs=1e-6), (layer, g)
    assert ddp["plan"]["removed"] == single["plan"]["removed"]
    assert all(torch.equal(ddp["masks"][k], single["masks"][k]) for k in single["masks"])
    for k, v in single["weights"].items():
        torch.testing.assert_close(ddp["weights"][k], v, rtol=1e-4, atol=1e-5)


def test_plain_loop_with_averaged_threshold_gradients_agrees(ranks):
    assert ranks[0]["plain-averaged"] == ranks[1]["plain-averaged"]


def test_plain_loop_without_averaging_keeps_thresholds_identical(ranks):
    assert ranks[0]["plain"] == ranks[1]["plain"]
