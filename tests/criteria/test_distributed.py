"""Saliencies and plans over two CPU ranks (gloo, spawned from pytest).

The data (8 samples) is split unevenly: rank 0 holds samples 0-4 in two batches (3 + 2), rank 1
samples 5-7 in one batch, one of whose targets is ``ignore_index`` (so rank 1 counts 2 targets for
3 samples: the reduction must weight ranks by their counts, not by samples or equally). For
``taylor``, ``obd``, ``sosp-h`` and ``sosp-i`` on a small CNN and a tiny transformer block, each rank's
scores equal one process over the union of the shards (≤ 1e-5 relative; in float64 they agree to
~1e-15), both ranks get bit-identical scores and select the identical plan. Also: ``num_samples``
counts samples over all ranks, an explicit ``group=``, ``group=False`` (local), ``broadcast_plan``,
``check_same_plan`` on different plans, an error on one rank raised on both (no hang), SOSP-I's ``Q``
refused on both when it does not fit on one (``max_q_bytes``), large sums reduced in place, and the
training helpers (``average_gradients``, ``call_together``).

One spawn (2 processes) serves every test of this module; the workers write their results to
files that the tests compare with single-process references computed here.
"""
from __future__ import annotations

import datetime
import os
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import prunekit
from tests.spawn import run_ranks
from prunekit.criteria import saliency, sosp_h_terms, sosp_i_pairwise
from prunekit.criteria import sosp as sosp_module
from prunekit.criteria.distributed import (
    RemoteRankError, average_gradients, call_together, reduce_sums, resolve_group,
)
from prunekit.criteria.sosp import SaliencyMemoryError, available_memory_bytes
from prunekit.core.plan import PlanMismatchError, PruningPlan, broadcast_plan, check_same_plan

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")

WORLD = 2
METHODS = ["taylor", "obd", "sosp-h", "sosp-i"]
MODELS = ["cnn", "transformer"]
RTOL = 1e-5
TIMEOUT_S = 120  # the whole spawn; the collectives time out after 60 s, so nothing hangs forever
SHARDS = {0: [(0, 3), (3, 5)], 1: [(5, 8)]}  # batches (start, stop) of each rank
IGNORED = 6  # the target of sample 6 (rank 1) is ignore_index


class SmallCNN(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 3, 3, stride=2)  # 5×5 → 2×2
        self.fc1 = nn.Linear(12, 5)
        self.fc2 = nn.Linear(5, classes)

    def forward(self, x):
        x = self.conv2(torch.relu(self.bn(self.conv1(x))))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class TinyBlock(nn.Module):
    """Pre-norm attention (q, k, v viewed as heads) + MLP, mean over tokens, classifier."""

    def __init__(self, dim=6, heads=2, head_dim=3, mlp=5, classes=3):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, inner), nn.Linear(dim, inner), nn.Linear(dim, inner)
        self.proj = nn.Linear(inner, dim)
        self.fc1, self.fc2 = nn.Linear(dim, mlp), nn.Linear(mlp, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        n, t, _ = x.shape
        h = self.norm1(x)
        q, k, v = (p(h).view(n, t, self.heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        attn = (q @ k.transpose(-2, -1) * self.head_dim ** -0.5).softmax(dim=-1)
        x = x + self.proj((attn @ v).transpose(1, 2).reshape(n, t, -1))
        x = x + self.fc2(F.gelu(self.fc1(self.norm2(x))))
        return self.head(x.mean(dim=1))


def _case(name):
    """(model, structures, inputs [8, ...], targets [8]) — the same on every process."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(3)
    if name == "cnn":
        model = SmallCNN()
        with torch.no_grad():
            model.bn.running_mean.uniform_(-0.5, 0.5, generator=gen)
            model.bn.running_var.uniform_(0.5, 1.5, generator=gen)
        inputs = torch.randn(8, 2, 5, 5, generator=gen)
    else:
        model = TinyBlock()
        inputs = torch.randn(8, 4, 6, generator=gen)
    model = model.double().eval()
    inputs = inputs.double()
    targets = torch.randint(0, 3, (8,), generator=gen)
    targets[IGNORED] = -100
    structures = prunekit.find_structures(model, inputs[:1])
    return model, structures, inputs, targets


def _batches(inputs, targets, ranges):
    return [(inputs[a:b], targets[a:b]) for a, b in ranges]


# ---------------------------------------------------------------------------- the workers

def _worker(rank, out_dir, init_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    results = {}
    try:
        for name in MODELS:
            model, structures, inputs, targets = _case(name)
            shard = _batches(inputs, targets, SHARDS[rank])
            for method in METHODS:
                results[(name, method)] = saliency(model, structures, shard, method)
            results[(name, "sosp-h-terms")] = sosp_h_terms(model, structures, shard)
            stats = sosp_i_pairwise(model, structures, shard)
            results[(name, "Q")], results[(name, "Q-samples")] = stats.Q, stats.num_samples
            # num_samples counts over all ranks: 6 → 3 on each rank
            results[(name, "taylor-6")] = saliency(model, structures, shard, "taylor", num_samples=6)
            results[(name, "Q-6-samples")] = sosp_i_pairwise(model, structures, shard, num_samples=6).num_samples
            # num_samples=1: rank 1's share is 0 (it still takes part in the reduction)
            results[(name, "obd-1")] = saliency(model, structures, shard, "obd", num_samples=1)
            # an explicit group, and group=False (this rank alone)
            pair = dist.new_group([0, 1])
            results[(name, "sosp-h-group")] = saliency(model, structures, shard, "sosp-h", group=pair)
            results[(name, "obd-local")] = saliency(model, structures, shard, "obd", group=False)
            # one plan: from the reduced scores, without any broadcast
            plan = prunekit.select(structures, results[(name, "sosp-h")], prunekit.Budget(structures=0.3))
            check_same_plan(plan)
            results[(name, "plan")] = plan.to_dict()

        model, structures, inputs, targets = _case("cnn")
        shard = _batches(inputs, targets, SHARDS[rank])
        # different plans on the two ranks: check_same_plan raises on both
        local = saliency(model, structures, shard, "taylor", group=False)
        local_plan = prunekit.select(structures, local if rank == 0 else -local, prunekit.Budget(structures=0.3))
        try:
            check_same_plan(local_plan)
            results["mismatch"] = None
        except PlanMismatchError as exc:
            results["mismatch"] = str(exc)
        # rank 0 decides, rank 1 receives (passing nothing)
        received = broadcast_plan(local_plan if rank == 0 else None, src=0, structures=structures)
        check_same_plan(received)
        results["broadcast"] = received.to_dict()
        results["local-plan"] = local_plan.to_dict()
        # an error on one rank (a class index out of range on rank 1) is raised on both, nobody hangs
        bad = [(x, torch.full_like(y, 7) if rank == 1 else y) for x, y in shard]
        try:
            saliency(model, structures, bad, "sosp-h")
            results["error"] = None
        except Exception as exc:  # noqa: BLE001 - the type is what the test checks
            results["error"] = type(exc).__name__
        # different structures on the two ranks: a clear error, not a wrong sum
        try:
            saliency(model, list(structures)[: len(structures) - rank], shard, "taylor")
            results["sizes"] = None
        except ValueError as exc:
            results["sizes"] = str(exc)
        # the collectives still work after the errors
        results["after"] = saliency(model, structures, shard, "taylor")
        _memory_and_helpers(rank, results, model, structures, shard)
    except Exception:  # noqa: BLE001 - reported to the test through the results file
        results["crash"] = traceback.format_exc()
    finally:
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
        dist.destroy_process_group()


def _memory_and_helpers(rank, results, model, structures, shard):
    """SOSP-I's Q refused on one rank; in-place reduction; gradient averaging; call_together."""
    try:  # max_q_bytes stands for rank 1's memory: 64 bytes hold no Q
        saliency(model, structures, shard, "sosp-i", max_q_bytes=64 if rank == 1 else None)
        results["q-refused"] = None
    except Exception as exc:  # noqa: BLE001 - the type is what the test checks
        results["q-refused"] = (type(exc).__name__, str(exc))
    ctx = resolve_group(None)
    big = torch.full((1 << 16,), float(rank + 1), dtype=torch.float64)  # large float64 sums: in place
    ptr = big.data_ptr()
    (summed,) = reduce_sums(ctx, lambda: [big], "test")
    results["in-place"] = (summed is big, summed.data_ptr() == ptr, float(summed[0]), float(summed[-1]))
    t, u = torch.zeros(3, requires_grad=True), torch.zeros(2, requires_grad=True)
    if rank == 1:
        t.grad = torch.tensor([2.0, 4.0, 6.0])  # a gradient on rank 1 only; u has none anywhere
    results["average"] = (average_gradients([t, u], ctx), t.grad.tolist(), u.grad)
    w = torch.zeros(2, requires_grad=True)
    w.grad = torch.tensor([1.0, float("inf")]) if rank == 0 else torch.tensor([1.0, 1.0])
    results["average-inf"] = (average_gradients([w], ctx), w.grad)
    try:
        call_together(ctx, lambda: 1 // rank, "a step that fails on rank 0")
        results["together"] = None
    except Exception as exc:  # noqa: BLE001 - the type is what the test checks
        results["together"] = type(exc).__name__
    results["together-ok"] = call_together(ctx, lambda: rank * 10, "a step")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """The results of both ranks (``[results_rank0, results_rank1]``)."""
    out = tmp_path_factory.mktemp("dist")
    return run_ranks(_worker, out, WORLD, TIMEOUT_S, start_method="spawn")


def _close(actual, wanted):
    torch.testing.assert_close(actual, wanted, rtol=RTOL, atol=1e-12 * (1 + float(wanted.abs().max())))


# ---------------------------------------------------------------------------- the checks

@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_each_rank_equals_one_process_over_the_union(ranks, name, method):
    model, structures, inputs, targets = _case(name)
    union = _batches(inputs, targets, SHARDS[0] + SHARDS[1])
    wanted = saliency(model, structures, union, method)
    for r in range(WORLD):
        _close(ranks[r][(name, method)], wanted)
    assert torch.equal(ranks[0][(name, method)], ranks[1][(name, method)])  # bit-identical: one plan


@pytest.mark.parametrize("name", MODELS)
def test_signed_terms_q_and_sample_counts_are_global(ranks, name):
    model, structures, inputs, targets = _case(name)
    union = _batches(inputs, targets, SHARDS[0] + SHARDS[1])
    terms = sosp_h_terms(model, structures, union)
    stats = sosp_i_pairwise(model, structures, union)
    for r in range(WORLD):
        for key in terms:
            _close(ranks[r][(name, "sosp-h-terms")][key], terms[key])
        _close(ranks[r][(name, "Q")], stats.Q)
        assert ranks[r][(name, "Q-samples")] == 8
        assert ranks[r][(name, "Q-6-samples")] == 6
        # num_samples=6 over 2 ranks: the first 3 samples of each shard
        _close(ranks[r][(name, "taylor-6")],
               saliency(model, structures, _batches(inputs, targets, [(0, 3), (5, 8)]), "taylor"))
        _close(ranks[r][(name, "obd-1")], saliency(model, structures, _batches(inputs, targets, [(0, 1)]), "obd"))


@pytest.mark.parametrize("name", MODELS)
def test_explicit_group_and_local(ranks, name):
    model, structures, inputs, targets = _case(name)
    for r in range(WORLD):
        assert torch.equal(ranks[r][(name, "sosp-h-group")], ranks[r][(name, "sosp-h")])
        local = saliency(model, structures, _batches(inputs, targets, SHARDS[r]), "obd")
        assert torch.equal(ranks[r][(name, "obd-local")], local)


@pytest.mark.parametrize("name", MODELS)
def test_both_ranks_select_the_same_plan(ranks, name):
    assert ranks[0][(name, "plan")] == ranks[1][(name, "plan")]
    assert ranks[0][(name, "plan")]["removed"]


def test_check_same_plan_raises_on_different_plans(ranks):
    assert ranks[0]["local-plan"]["removed"] != ranks[1]["local-plan"]["removed"]
    for r in range(WORLD):
        assert ranks[r]["mismatch"] is not None and "different pruning plans" in ranks[r]["mismatch"]
        assert "broadcast_plan" in ranks[r]["mismatch"]


def test_broadcast_plan_delivers_rank_0s_plan(ranks):
    for r in range(WORLD):
        assert ranks[r]["broadcast"] == ranks[0]["local-plan"]


def test_an_error_on_one_rank_is_raised_on_every_rank(ranks):
    assert ranks[1]["error"] == "ValueError"  # its own: a class index out of range
    assert ranks[0]["error"] == "RemoteRankError"
    for r in range(WORLD):
        assert ranks[r]["sizes"] is not None and "same structures" in ranks[r]["sizes"]
    assert torch.equal(ranks[0]["after"], ranks[1]["after"])


def test_q_that_does_not_fit_on_one_rank_is_refused_on_every_rank(ranks):
    model, structures, _, _ = _case("cnn")
    n = len(structures)
    name, message = ranks[1]["q-refused"]
    assert name == "SaliencyMemoryError"
    assert f"{n}×{n} pairwise matrix Q" in message and f"{n * n * 8} bytes" in message
    assert "only 64 bytes" in message and "max_q_bytes" in message
    assert "fewer structures" in message and "sosp-h" in message
    assert ranks[0]["q-refused"][0] == "RemoteRankError"


def test_large_sums_are_reduced_in_place(ranks):
    for r in range(WORLD):
        assert ranks[r]["in-place"] == (True, True, 3.0, 3.0)  # 1 + 2, in the caller's own buffer


def test_gradients_averaged_over_ranks(ranks):
    for r in range(WORLD):
        finite, t_grad, u_grad = ranks[r]["average"]
        assert finite and t_grad == [1.0, 2.0, 3.0] and u_grad is None  # (0 + [2, 4, 6]) / 2; none stays none
        finite, w_grad = ranks[r]["average-inf"]
        assert not finite and w_grad is None  # an overflow on one rank drops the step on both


def test_call_together_raises_on_every_rank(ranks):
    assert ranks[0]["together"] == "ZeroDivisionError"
    assert ranks[1]["together"] == "RemoteRankError"
    assert [ranks[r]["together-ok"] for r in range(WORLD)] == [0, 10]


# ---------------------------------------------------------------------------- not initialized

@pytest.mark.parametrize("method", METHODS)
def test_nothing_changes_without_torch_distributed(method):
    assert not dist.is_initialized()
    model, structures, inputs, targets = _case("cnn")
    data = _batches(inputs, targets, SHARDS[0] + SHARDS[1])
    assert torch.equal(saliency(model, structures, data, method), saliency(model, structures, data, method,
                                                                            group=False))
    with pytest.raises(ValueError, match="not initialized"):
        saliency(model, structures, data, method, group=object())


def test_plan_helpers_without_torch_distributed():
    model, structures, inputs, targets = _case("cnn")
    scores = saliency(model, structures, None, "l1")
    plan = prunekit.select(structures, scores, prunekit.Budget(structures=0.3))
    again = prunekit.select(structures, scores.clone(), prunekit.Budget(structures=0.3))
    assert plan.to_dict() == again.to_dict()  # deterministic on identical scores
    assert broadcast_plan(plan) is plan
    check_same_plan(plan)
    with pytest.raises(ValueError, match="no plan"):
        broadcast_plan(None)
    assert isinstance(PruningPlan.from_json(plan.to_json()), PruningPlan)


def test_q_is_refused_up_front_when_the_memory_probe_says_it_does_not_fit(monkeypatch):
    model, structures, inputs, targets = _case("cnn")
    n = len(structures)
    consumed = []

    def data():
        consumed.append(1)
        yield inputs, targets

    monkeypatch.setattr(sosp_module, "available_memory_bytes", lambda device: n * n * 8 - 1)
    with pytest.raises(SaliencyMemoryError, match=r"of the available RAM / ranks on this machine") as err:
        saliency(model, structures, data(), "sosp-i")
    assert f"{n * n * 8} bytes" in str(err.value) and f"only {n * n * 8 - 1} bytes" in str(err.value)
    assert not consumed  # refused before any pass
    monkeypatch.setattr(sosp_module, "available_memory_bytes", lambda device: n * n * 8)
    assert saliency(model, structures, [(inputs, targets)], "sosp-i").shape == (n,)  # exactly fits
    wanted = saliency(model, structures, [(inputs, targets)], "sosp-i")
    assert torch.equal(saliency(model, structures, [(inputs, targets)], "sosp-i", max_q_bytes=n * n * 8), wanted)


def test_available_memory_probe(monkeypatch):
    free = available_memory_bytes("cpu")
    assert free is None or free > 0
    if free is not None:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four ranks share this machine's RAM
        assert available_memory_bytes("cpu") == pytest.approx(free / 4, rel=0.2)
    assert available_memory_bytes("meta") is None
    t = torch.zeros(2, requires_grad=True)
    t.grad = torch.tensor([4.0, 8.0])
    assert average_gradients([t], None, unscale=4.0) and t.grad.tolist() == [1.0, 2.0]
    assert call_together(None, lambda: "x", "alone") == "x"
    assert issubclass(RemoteRankError, RuntimeError)
