"""A steady host allocator for CPU timing: glibc's malloc pinned to keep the memory it frees.

By default glibc returns large freed blocks to the operating system (``mmap`` above a
threshold it moves as the program runs, heap trimming above another), so a forward pass can
page-fault its activations in again on every pass, as many as the process's history decides:
timings, and a pruned model's saving, then do not reproduce (``docs/selection.md``, "The host
allocator"; ``benchmarks/bench_allocator.py``).

:func:`pin` sets ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` (``mallopt``) so that freed
blocks are kept and reused: after the warm-up passes a forward pass faults (almost) no pages, as
under jemalloc or tcmalloc, the allocators recommended for serving on CPU. It is process-wide and
stays for the rest of the process (glibc cannot go back to its moving thresholds); the cost is
memory the process keeps instead of returning. prunekit's CPU timings call it
(:func:`~prunekit.core.measure.measure_latency`, :func:`~prunekit.core.measure.time_paired`);
``PRUNEKIT_MALLOC=default`` in the environment leaves the allocator alone. Elsewhere than
glibc (macOS, musl) it does nothing and says so.

Example:
    >>> regime() in ("pinned", "default", "not glibc", "PRUNEKIT_MALLOC=default")
    True
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import resource

log = logging.getLogger(__name__)

__all__ = ["pin", "regime", "minor_faults"]

#: ``mallopt`` parameters (``malloc.h``)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3

#: blocks up to this size come from the heap (glibc's ceiling is 32 MiB on some versions: then that)
MMAP_THRESHOLD = 1 << 30
FALLBACK_MMAP_THRESHOLD = 32 << 20

#: the heap is trimmed only when this much is free at its top
TRIM_THRESHOLD = 1 << 30

_state = {"regime": None}


def _libc():
    """The C library when it is glibc (for ``mallopt``), else ``None``."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):
        return None
    version.restype = ctypes.c_char_p
    return libc if version() else None


def pin() -> str:
    """Pin glibc's malloc for steady timing (once per process); the regime now in force.

    Returns ``"pinned"``, ``"PRUNEKIT_MALLOC=default"`` (the user opted out), ``"not glibc"``
    (nothing to do) or ``"default"`` (``mallopt`` refused; logged).
    """
    if _state["regime"] is not None:
        return _state["regime"]
    if os.environ.get("PRUNEKIT_MALLOC", "").strip().lower() == "default":
        _state["regime"] = "PRUNEKIT_MALLOC=default"
        return _state["regime"]
    libc = _libc()
    if libc is None:
        _state["regime"] = "not glibc"
        return _state["regime"]
    mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) or libc.mallopt(M_MMAP_THRESHOLD, FALLBACK_MMAP_THRESHOLD)
    trim_ok = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    if mmap_ok and trim_ok:
        _state["regime"] = "pinned"
        log.debug("glibc malloc pinned for timing: freed blocks are kept (mmap and trim thresholds raised)")
    else:
        _state["regime"] = "default"
        log.warning("glibc refused mallopt (mmap threshold %s, trim threshold %s): CPU timings may page-fault "
                    "activations in every pass and depend on the process's history", bool(mmap_ok), bool(trim_ok))
    return _state["regime"]


def regime() -> str:
    """The allocator regime CPU timings run under: what :func:`pin` returned, ``"default"`` before it."""
    return _state["regime"] or "default"


def minor_faults() -> int:
    """Minor page faults of this process so far (``getrusage``): differences count a pass's faults.

    Example:
        >>> minor_faults() >= 0
        True
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
