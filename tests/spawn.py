"""Run a worker on several local ranks (gloo) from a test, and collect what each rank saved."""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp


def run_ranks(worker, out: Path, world: int, timeout_s: float, start_method: str = "spawn") -> list:
    """``worker(rank, out_dir, init_file)`` on ``world`` processes; each saves ``out/rank{r}.pt``
    (a dict; a ``"crash"`` key holds its traceback). Fails the test on a timeout or a crash."""
    context = mp.start_processes(worker, args=(str(out), str(out / "init")), nprocs=world, join=False,
                                 start_method=start_method)
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the {world} ranks did not finish within {timeout_s} s")
    finally:
        for p in context.processes:
            if p.is_alive():
                p.kill()
    results = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]
    for r, res in enumerate(results):
        assert "crash" not in res, f"rank {r} failed:\n{res['crash']}"
    return results
