"""The steady host allocator: pinned, freed activations are reused instead of faulted in again."""
import json
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from prunekit.core import allocator
from prunekit.core.measure import measure_latency, time_paired

# 40 MiB blocks: above glibc's largest moving mmap threshold (32 MiB), so by default every
# round maps them afresh and faults every page (10 240 per block); pinned, the heap keeps them.
PATTERN = """
import json, sys, torch
from prunekit.core import allocator
regime = allocator.pin() if sys.argv[1] == "pin" else allocator.regime()
faults = []
for _ in range(6):
    before = allocator.minor_faults()
    blocks = [torch.ones(10 << 20) for _ in range(4)]
    del blocks
    faults.append(allocator.minor_faults() - before)
print(json.dumps({"regime": regime, "faults": faults}))
"""


def _run(mode: str, **env) -> dict:
    out = subprocess.run([sys.executable, "-c", PATTERN, mode], check=True, capture_output=True, text=True,
                         env={**os.environ, **env})
    return json.loads(out.stdout)


glibc = pytest.mark.skipif(allocator._libc() is None, reason="the C library is not glibc")


@glibc
def test_pinned_allocator_stops_faulting_freed_blocks_in_again():
    default, pinned = _run("none"), _run("pin")
    one_round = 4 * (40 << 20) // 4096
    assert default["regime"] == "default" and pinned["regime"] == "pinned"
    assert sum(default["faults"][3:]) >= 3 * 0.9 * one_round  # every round faults its blocks in
    assert sum(pinned["faults"][3:]) < one_round / 2  # reused: at most a stray block


@glibc
def test_opt_out_leaves_the_allocator_alone():
    out = _run("pin", PRUNEKIT_MALLOC="default")
    assert out["regime"] == "PRUNEKIT_MALLOC=default"
    assert sum(out["faults"][3:]) >= 3 * 0.9 * (4 * (40 << 20) // 4096)


def test_cpu_timings_pin_and_report_the_regime_and_faults():
    a, b = nn.Linear(64, 64), nn.Linear(64, 8)
    paired = time_paired(a, b, torch.randn(4, 64), pairs=4)
    assert paired["allocator"] == allocator.regime()
    if allocator._libc() is not None and "PRUNEKIT_MALLOC" not in os.environ:
        assert paired["allocator"] == "pinned"
    assert len(paired["faults_per_pass"]) == 2 and all(f >= 0 for f in paired["faults_per_pass"])
    assert measure_latency(a, torch.randn(4, 64), repeats=2)["allocator"] == allocator.regime()


def test_pin_sets_the_allocator_once_per_process(monkeypatch):
    first = allocator.pin()
    monkeypatch.setattr(allocator, "_libc", lambda: pytest.fail("mallopt called again"))
    assert allocator.pin() == first == allocator.regime()


def test_time_paired_counts_each_models_faults_per_pass(monkeypatch):
    from prunekit.core import measure as measure_module
    big, small = nn.Linear(30, 30), nn.Linear(30, 15)
    counter = {"faults": 0}

    def faulting_call(model, inputs):  # the big model faults 3 pages a pass, the small one none
        counter["faults"] += 3 if model is big else 0
        return model(inputs)
    monkeypatch.setattr(measure_module, "call_model", faulting_call)
    monkeypatch.setattr(allocator, "minor_faults", lambda: counter["faults"])
    r = time_paired(big, small, torch.randn(2, 30), pairs=5, warmup=2)
    assert r["faults_per_pass"] == [3.0, 0.0]  # warm-up passes fault too, but are not counted
    assert counter["faults"] == 3 * (5 + 2)
