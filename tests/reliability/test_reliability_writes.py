"""Writes that cannot tear or mix: concurrent writer processes, SIGKILLs, locks, temporaries, umask."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit.core._atomic import FolderLockedError, folder_lock
from prunekit.pipeline.checkpoint import load_checkpoint, save_checkpoint

from tests.reliability import _worker

WORKER = Path(_worker.__file__)


@pytest.mark.parametrize("kind", ["model", "named"])
def test_two_writer_processes_never_expose_a_mixed_or_unloadable_version(tmp_path, kind):
    """Two processes write 20 versions each into one folder while this process keeps reading."""
    _worker.save(kind, tmp_path, 0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    writers = [subprocess.Popen([sys.executable, str(WORKER), "write", kind, str(tmp_path), str(w), "20"],
                                env=env, stderr=subprocess.PIPE) for w in (1, 2)]
    seen, failures = set(), []
    while any(p.poll() is None for p in writers):
        try:
            seen.add(_worker.read(kind, tmp_path))
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            failures.append(f"{type(e).__name__}: {e}")
    errs = [p.stderr.read().decode() for p in writers]
    assert [p.returncode for p in writers] == [0, 0], errs
    assert failures == []
    final = _worker.read(kind, tmp_path)
    assert final in (1019, 2019)  # the last version of one of the writers, whole
    assert seen <= {0} | {w * 1000 + i for w in (1, 2) for i in range(20)} and len(seen) >= 2
    assert _worker.leftovers(kind, tmp_path) == []


@pytest.mark.parametrize("kind", ["model", "named", "dir"])
def test_sigkill_at_any_point_of_a_write_keeps_the_previous_version(tmp_path, kind):
    """A writer is SIGKILLed at each step of a write and after random delays (8 rounds)."""
    out = subprocess.run([sys.executable, str(WORKER), "kills", kind, str(tmp_path), "8", "3"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["errors"] == []
    assert len(found["fixed"]) >= 4
    for point, before, seen, expected in found["fixed"]:
        assert seen == expected, (point, before, seen)
    assert len(found["random"]) == 8
    for last_reported, seen in found["random"]:
        assert seen in (last_reported, last_reported + 1)  # the in-flight write lands whole or not at all
    assert found["stale_seen"] >= 2  # killed writers left temporaries behind ...
    assert found["final"] == found["expected_final"]
    assert found["leftovers"] == []  # ... and the next write removed them


def test_a_second_writer_waits_then_fails_clearly(tmp_path):
    model = torch.nn.Linear(3, 2)
    prunekit.save(model, tmp_path)
    with folder_lock(tmp_path, 1.0):  # another writer holds the folder
        t0 = time.perf_counter()
        with pytest.raises(FolderLockedError, match=r"another writer holds the lock .prunekit.lock"):
            prunekit.save(model, tmp_path, lock_timeout=0.3)
        with pytest.raises(FolderLockedError):
            save_checkpoint(tmp_path / "c.safetensors", model, epoch=1, lock_timeout=0.3)
        assert 0.5 < time.perf_counter() - t0 < 3
    prunekit.save(model, tmp_path, lock_timeout=0.3)  # free again
    assert torch.equal(prunekit.load(tmp_path, model=torch.nn.Linear(3, 2)).weight, model.weight)


def test_stale_temporaries_of_dead_writers_are_removed_live_ones_kept(tmp_path):
    prunekit.save(torch.nn.Linear(3, 2), tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".weights.safetensors.{dead.pid}.{'a' * 16}.tmp"
    live = tmp_path / f".weights.safetensors.{os.getppid()}.{'b' * 16}.tmp"
    old_legacy = tmp_path / ".prunekit.json.x1y2z3"  # written by an older prunekit, long ago
    for f in (stale, live, old_legacy):
        f.write_bytes(b"x" * 1000)
    os.utime(old_legacy, (time.time() - 7200,) * 2)
    prunekit.save(torch.nn.Linear(3, 2), tmp_path)
    assert not stale.exists() and not old_legacy.exists()
    assert live.exists()  # its writer may still be running


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_files_respect_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        prunekit.save(torch.nn.Linear(3, 2), tmp_path / "m")
        save_checkpoint(tmp_path / "c", torch.nn.Linear(3, 2), epoch=1)
    finally:
        os.umask(old)
    files = [f for f in (tmp_path / "m").iterdir()] + [f for f in (tmp_path / "c").iterdir()]
    assert len(files) >= 5
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~umask, f.name


def test_overwriting_a_named_checkpoint_replaces_it_as_one_unit(tmp_path):
    target = tmp_path / "best.safetensors"
    for v in (1.0, 2.0, 3.0):
        m = torch.nn.Linear(3, 2)
        with torch.no_grad():
            m.weight.fill_(v)
        save_checkpoint(target, m, epoch=int(v))
        files = sorted(p.name for p in tmp_path.glob("best*"))
        assert len(files) == 2 and "best.json" in files  # one json + the one tensor file it names
        got = torch.nn.Linear(3, 2)
        assert load_checkpoint(target, got)["epoch"] == int(v)
        assert torch.all(got.weight == v)
        tensors = tmp_path / next(f for f in files if f.endswith(".safetensors"))
        assert load_checkpoint(tensors, torch.nn.Linear(3, 2))["epoch"] == int(v)  # by its tensor file too
