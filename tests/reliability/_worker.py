"""Helper processes for the reliability tests (run as a script, never collected).

``write KIND FOLDER WRITER N``      save N versions whose every weight equals WRITER*1000+i.
``kills KIND FOLDER ROUNDS SEED``   fork a writer, SIGKILL it at fixed points of a write and
                                    after random delays; print one JSON line of findings.

KIND is ``model`` (prunekit.save), ``named`` (save_checkpoint to best.safetensors) or
``dir`` (save_checkpoint into a directory of epochs, keep_last=2).
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)

import prunekit.pipeline.checkpoint as ck  # noqa: E402
import prunekit.core.io as pio  # noqa: E402

SIZE = 384


def template() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(SIZE, SIZE), torch.nn.Linear(SIZE, 8))


def filled(value: float) -> torch.nn.Module:
    m = template()
    with torch.no_grad():
        for p in m.parameters():
            p.fill_(value)
    return m


def save(kind: str, folder: Path, value: int) -> None:
    if kind == "model":
        pio.save(filled(value), folder, extra={"value": value})
    elif kind == "named":
        ck.save_checkpoint(folder / "best.safetensors", filled(value), epoch=value)
    else:
        ck.save_checkpoint(folder, filled(value), epoch=value, keep_last=2)


def read(kind: str, folder: Path) -> int:
    """The value of the version a reader sees now; raises if unloadable or mixed."""
    if kind == "model":
        m = pio.load(folder, model=template())
        values = {float(v) for p in m.parameters() for v in p.detach().unique()}
        if len(values) != 1:
            raise AssertionError(f"mixed weights {sorted(values)[:4]}")
        return int(values.pop())
    m = template()
    info = ck.load_checkpoint(folder / "best.json" if kind == "named" else folder, m)
    values = {float(v) for p in m.parameters() for v in p.detach().unique()}
    if values != {float(info["epoch"])}:
        raise AssertionError(f"epoch {info['epoch']} but weights {sorted(values)[:4]}")
    return info["epoch"]


def leftovers(kind: str, folder: Path) -> list[str]:
    """Temporaries and unreferenced weight files left behind."""
    names = sorted(os.listdir(folder))
    out = [n for n in names if n.endswith(".tmp")]
    if kind == "model":
        out += [n for n in names if n.startswith("weights")][1:]
    elif kind == "named":
        out += [n for n in names if n.startswith("best") and n.endswith(".safetensors")][1:]
    return out


def write(kind: str, folder: Path, writer: int, n: int) -> None:
    for i in range(n):
        save(kind, folder, writer * 1000 + i)


def _child(kind: str, folder: Path, first: int, pipe_w: int, kill_at: tuple[str, int] | None) -> None:
    """Runs in a forked process: saves first, first+1, ... reporting each, until killed."""
    try:
        if kill_at is not None:
            what, k = kill_at
            calls = {"n": 0}
            if what == "temp":  # die half-way through writing the k-th temporary
                target = pio if kind == "model" else ck
                name = "write_temp" if kind == "model" else "_write_temp"
                real = getattr(target, name)

                def dying(final, data):
                    calls["n"] += 1
                    if calls["n"] == k:
                        tmp = final.parent / f".{final.name}.{os.getpid()}.{'0' * 16}.tmp"
                        tmp.write_bytes(data[: len(data) // 2])
                        os.kill(os.getpid(), signal.SIGKILL)
                    return real(final, data)

                setattr(target, name, dying)
            else:  # die right after the k-th rename
                real_replace = os.replace

                def replace(a, b):
                    real_replace(a, b)
                    calls["n"] += 1
                    if calls["n"] == k:
                        os.kill(os.getpid(), signal.SIGKILL)

                os.replace = replace
        value = first
        while True:
            save(kind, folder, value)
            os.write(pipe_w, f"{value}\n".encode())
            value += 1
            if kill_at is not None:
                break
    finally:
        os._exit(0)


def _run(kind: str, folder: Path, first: int, kill_at=None, delay: float | None = None) -> int:
    """Fork a writer, kill it; returns the last value it reported as saved (first-1 if none)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        _child(kind, folder, first, w, kill_at)
    os.close(w)
    if delay is not None:
        buf = b""
        while b"\n" not in buf:  # let it finish one save, then kill it somewhere in a later one
            chunk = os.read(r, 64)
            if not chunk:
                break
            buf += chunk
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    data = buf if delay is not None else b""
    while chunk := os.read(r, 4096):
        data += chunk
    os.close(r)
    done = [int(x) for x in data.split()]
    return done[-1] if done else first - 1


def kills(kind: str, folder: Path, rounds: int, seed: int) -> dict:
    rng = random.Random(seed)
    found = {"fixed": [], "random": [], "errors": [], "stale_seen": 0}

    def count_stale() -> None:
        found["stale_seen"] += len([n for n in os.listdir(folder) if n.endswith(".tmp")])

    save(kind, folder, 1)
    value = 1
    n_temp, n_replace, commit = {"model": (2, 2, 2), "named": (2, 2, 2), "dir": (3, 3, 3)}[kind]
    points = [("temp", k) for k in range(1, n_temp + 1)] + [("replace", k) for k in range(1, n_replace + 1)]
    for what, k in points:
        _run(kind, folder, value + 1, kill_at=(what, k))
        count_stale()
        try:
            seen = read(kind, folder)
        except Exception as e:  # noqa: BLE001
            found["errors"].append(f"{what}{k}: {type(e).__name__}: {e}")
            continue
        committed = what == "replace" and k >= commit
        found["fixed"].append([f"{what}{k}", value, seen, value + 1 if committed else value])
        value = seen
    for _ in range(rounds):
        last = _run(kind, folder, value + 1, delay=rng.uniform(0.0, 0.03))
        count_stale()
        try:
            seen = read(kind, folder)
        except Exception as e:  # noqa: BLE001
            found["errors"].append(f"random: {type(e).__name__}: {e}")
            continue
        found["random"].append([last, seen])
        value = max(seen, last)
    save(kind, folder, value + 1)  # a normal write cleans up after the killed ones
    found["final"] = read(kind, folder)
    found["expected_final"] = value + 1
    found["leftovers"] = leftovers(kind, folder)
    return found


if __name__ == "__main__":
    mode, kind, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if mode == "write":
        write(kind, folder, int(sys.argv[4]), int(sys.argv[5]))
    else:
        print(json.dumps(kills(kind, folder, int(sys.argv[4]), int(sys.argv[5]))))
