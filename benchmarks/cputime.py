"""Thread CPU time of forward passes: the benchmarks' steadier figure on a shared machine."""
from __future__ import annotations

import time

import torch
from torch import nn


def cpu_times_ms(model: nn.Module, x, repeats: int, threads: int, warmup: int = 1) -> list[float]:
    """Thread CPU time (ms, ``time.thread_time``) of ``repeats`` forward passes after ``warmup``.

    Unlike wall time it does not count the time the thread waits while other processes run
    (with ``threads=1`` all the work runs on the calling thread)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            for _ in range(warmup):
                model(x)
            times = []
            for _ in range(repeats):
                t0 = time.thread_time()
                model(x)
                times.append(1e3 * (time.thread_time() - t0))
    finally:
        torch.set_num_threads(old)
    return times
