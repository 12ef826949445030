"""Reliability under concurrent writers and SIGKILLs (issue 15, "What it must show").

Two stress runs, each with real processes (``multiprocessing``, ``forkserver`` start
method with torch and prunekit preloaded, so a process starts in milliseconds):

* **concurrent saves**: 4 processes share ONE model folder for ``--seconds`` seconds.
  Each alternately saves its own version with :func:`prunekit.save` and, after a
  random pause of at most ``--jitter-ms``, loads the folder back with
  :func:`prunekit.load` (``model=`` the dense template of
  ``tests/reliability/_worker.py``: ``Linear(384, 384) -> Linear(384, 8)``). A
  version is identifiable in both files:

  - the **spec** (``prunekit.json``): writer ``w`` saves with its own pruning plan,
    which removes ``w + 1`` hidden neurons, so the loaded model's hidden width
    ``383 - w`` names the writer whose spec was read (the spec's ``extra`` also holds
    ``{"writer", "version"}``);
  - the **weights** (``weights*.safetensors``): every parameter of version ``i`` of
    writer ``w`` equals ``(w + 1) * 100000 + i``.

  A load is *unloadable* when it raises (any exception; a weights/spec mix that
  ``load`` itself rejects, by checksum or shape, is counted here and classified),
  *mixed* when it succeeds but the weights are not one single value, or come from
  another writer than the spec (width), or carry a value no writer ever saved, or
  (when no writer switched versions during the load) disagree with the ``extra`` of
  the spec on disk. (A sabotaged ``save``, without lock and writing both files in
  place, makes 15-25 % of the loads fail here.) After the run the folder must load
  once more and hold no temporaries or unreferenced weight files (``_worker.leftovers``).

* **SIGKILLs during fit**: :func:`prunekit.pipeline.train.fit` trains a small MLP (with
  dropout, so the restored RNG state matters) for ``--epochs`` epochs with ``out_dir``
  checkpoints (``keep_last=3``) in a child process; the parent SIGKILLs it at a random
  time. The child reports each epoch's start and end (``on_epoch_end`` runs just before
  the checkpoint is written); half the kills come a delay uniform in ``[0, epoch time]``
  after the start of the child's first or second epoch (anywhere in an epoch), the other
  half a delay uniform in ``[0, write time]`` after the end of its first or second epoch
  (inside the checkpoint write); both times are medians measured on the reference run.
  The parent then checks the folder and starts the run again with ``resume=True``
  (about one epoch further each time); ``--kills`` times, then the last resume runs to
  the end. The same configuration and seed run once uninterrupted (the reference).
  After every kill: the latest checkpoint must load (else
  *unloadable*), must not be older than the last epoch the child reported starting
  (else *lost*), and its stored history must be a bit-exact prefix of the reference
  history with the reference configuration (else *mixed*). At the end the final
  weights (and optimizer state and history) are compared bit for bit with the
  reference.

Results: ``--out`` (JSON: machine, command, counts, wall times). Runtime: about
``--seconds`` + 20-60 s on 2 shared cores. At exit Python's resource tracker may
warn about leaked semaphores: those of the SIGKILLed fit processes (tqdm's lock), which
it then removes.

Usage:
    python benchmarks/bench_reliability.py [--seconds 60] [--jitter-ms 50] [--kills 50]
        [--epochs 0 (= 2 x kills + 20)] [--seed 0] [--out benchmarks/results/reliability.json]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests" / "reliability"))
import _worker  # noqa: E402  (the reliability tests' helper: template model, leftovers)

import prunekit  # noqa: E402
from prunekit.pipeline.checkpoint import load_checkpoint, latest_checkpoint  # noqa: E402
from prunekit.pipeline.train import fit, make_optimizer  # noqa: E402
from prunekit.core.measure import device_name  # noqa: E402

WRITERS = 4
SCALE = 100000  # weight value of version i of writer w: (w + 1) * SCALE + i (exact in float32 below 2**24)
FIT_SEED = 1234
FIT_KW = dict(lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine", batch_size=64, keep_last=3,
              progress=False)


# --------------------------------------------------------------------------- concurrent saves


def _plans() -> list[dict]:
    """Writer w's plan removes hidden neurons 0..w of the template (width 383 - w)."""
    model = _worker.template().eval()
    structures = prunekit.find_structures(model, torch.randn(1, _worker.SIZE))
    return [prunekit.PruningPlan.from_removed(structures, list(range(w + 1))).to_dict() for w in range(WRITERS)]


def _classify(model: torch.nn.Module) -> tuple[str, int | None, int | None]:
    """``("ok" | "mixed: ...", weights writer, version)`` of a loaded model."""
    width = model[0].weight.shape[0]
    spec_writer = _worker.SIZE - 1 - width
    values = torch.cat([p.detach().flatten() for p in model.parameters()]).unique()
    if values.numel() != 1:
        return f"mixed: {values.numel()} distinct weight values {values[:4].tolist()}", None, None
    v = float(values[0])
    w, i = int(v) // SCALE - 1, int(v) % SCALE
    if v != int(v) or not 0 <= w < WRITERS:
        return f"mixed: weight value {v} was never saved", None, None
    if w != spec_writer:
        return f"mixed: weights of writer {w} (version {i}) with the spec of writer {spec_writer}", w, i
    return "ok", w, i


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _error_kind(e: Exception) -> str:
    """What a failed load saw: a mix that load itself caught, a torn file, or something else."""
    msg = str(e)
    if "checksum mismatch" in msg or "has shape" in msg or "does not match the model" in msg:
        return "mix caught by load (checksum/shape)"
    if "invalid JSON" in msg or "unreadable safetensors" in msg or "not UTF-8" in msg:
        return "torn file"
    if "missing" in msg:
        return "missing file"
    return type(e).__name__


def _writer(w: int, plan: dict, folder: str, seconds: float, jitter_s: float, conn) -> None:
    torch.set_num_threads(1)
    rng = random.Random(w)
    folder = Path(folder)
    small = prunekit.materialize(_worker.template(), prunekit.PruningPlan.from_dict(plan))
    out = {"writer": w, "saves": 0, "save_errors": [], "loads": 0, "unloadable": 0, "mixed": 0, "errors": [],
           "unloadable_kinds": {}, "seen_other_writer": 0, "switched_during_load": 0, "save_s": 0.0, "load_s": 0.0}
    spec = folder / "prunekit.json"
    conn.send("ready")
    conn.recv()  # all writers start together
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        with torch.no_grad():
            for p in small.parameters():
                p.fill_((w + 1) * SCALE + i)
        t0 = time.perf_counter()
        try:
            prunekit.save(small, folder, extra={"writer": w, "version": i})
            out["saves"] += 1
        except Exception as e:  # noqa: BLE001 - every failure is a finding
            out["save_errors"].append(f"{type(e).__name__}: {e}"[:300])
        out["save_s"] += time.perf_counter() - t0
        time.sleep(rng.uniform(0.0, jitter_s))  # read at a random point of the other writers' saves
        t1 = time.perf_counter()
        before = _read(spec)
        try:
            loaded = prunekit.load(folder, model=_worker.template())
        except Exception as e:  # noqa: BLE001
            out["unloadable"] += 1
            kind = _error_kind(e)
            out["unloadable_kinds"][kind] = out["unloadable_kinds"].get(kind, 0) + 1
            out["errors"].append(f"{type(e).__name__}: {e}"[:300])
            loaded = None
        after = _read(spec)
        out["switched_during_load"] += after != before  # another writer switched versions meanwhile
        if loaded is not None:
            verdict, seen_w, seen_i = _classify(loaded)
            if verdict == "ok" and after == before:  # the spec read is the one on disk: its extra must agree
                try:
                    tag = json.loads(after)["extra"]
                except (ValueError, KeyError, TypeError):
                    tag = None
                if tag != {"writer": seen_w, "version": seen_i}:
                    verdict = f"mixed: weights of writer {seen_w} version {seen_i}, spec extra {tag}"
            if verdict != "ok":
                out["mixed"] += 1
                out["errors"].append(verdict)
            elif seen_w != w:
                out["seen_other_writer"] += 1
        out["loads"] += 1
        out["load_s"] += time.perf_counter() - t1
        i += 1
    out["errors"] = out["errors"][:10]
    out["save_errors"] = out["save_errors"][:10]
    conn.send(out)
    conn.close()


def concurrent_saves(ctx, seconds: float, jitter_s: float, work: Path) -> dict:
    folder = work / "model"
    plans = _plans()
    procs, conns = [], []
    for w in range(WRITERS):
        r, s = ctx.Pipe()
        p = ctx.Process(target=_writer, args=(w, plans[w], str(folder), seconds, jitter_s, s))
        p.start()
        procs.append(p)
        conns.append(r)
    for r in conns:
        r.recv()
    for r in conns:
        r.send("go")
    t0 = time.perf_counter()
    per_writer = []
    for p, r in zip(procs, conns):
        per_writer.append(r.recv() if r.poll(seconds + 300) else {"writer": None, "crashed": True})
        p.join()
    wall = time.perf_counter() - t0
    final_ok, final = True, None
    try:
        final = _classify(prunekit.load(folder, model=_worker.template()))
        final_ok = final[0] == "ok"
    except Exception as e:  # noqa: BLE001
        final_ok, final = False, (f"{type(e).__name__}: {e}", None, None)
    res = {
        "processes": WRITERS, "seconds": seconds, "jitter_ms": round(1000 * jitter_s), "wall_s": round(wall, 1),
        "saves": sum(x.get("saves", 0) for x in per_writer),
        "save_errors": sum(len(x.get("save_errors", [])) for x in per_writer),
        "loads": sum(x.get("loads", 0) for x in per_writer),
        "unloadable": sum(x.get("unloadable", 0) for x in per_writer),
        "mixed": sum(x.get("mixed", 0) for x in per_writer),
        "unloadable_kinds": {k: sum(x.get("unloadable_kinds", {}).get(k, 0) for x in per_writer)
                             for k in sorted({k for x in per_writer for k in x.get("unloadable_kinds", {})})},
        "loads_seeing_another_writer": sum(x.get("seen_other_writer", 0) for x in per_writer),
        "loads_during_which_another_writer_switched": sum(x.get("switched_during_load", 0) for x in per_writer),
        "exit_codes": [p.exitcode for p in procs],
        "final_load": {"ok": final_ok, "verdict": final[0], "writer": final[1], "version": final[2]},
        "leftovers": _worker.leftovers("model", folder),
        "per_writer": per_writer,
    }
    for x in per_writer:
        x["save_ms"] = round(1000 * x.pop("save_s", 0.0) / max(x.get("saves", 0), 1), 1)
        x["load_ms"] = round(1000 * x.pop("load_s", 0.0) / max(x.get("loads", 0), 1), 1)
    res["mean_save_ms"] = round(sum(x["save_ms"] for x in per_writer) / len(per_writer), 1)
    res["mean_load_ms"] = round(sum(x["load_ms"] for x in per_writer) / len(per_writer), 1)
    return res


# --------------------------------------------------------------------------- kills during fit


def _mlp() -> torch.nn.Module:
    torch.manual_seed(FIT_SEED)  # the same initial weights in every process (a resume overwrites them)
    return torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Dropout(0.1),
                               torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    X = torch.randn(2048, 32, generator=g)
    teacher = torch.randn(32, 10, generator=g)
    return X, (X @ teacher + 0.5 * torch.randn(2048, 10, generator=g)).argmax(1)


class _Report:
    """Tells the parent when an epoch starts (the checkpoint of the one before is then complete)
    and when its training and evaluation end (its checkpoint is written next)."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def on_epoch_start(self, epoch: int, epochs: int) -> None:
        self.conn.send(("start", epoch, time.monotonic()))

    def on_epoch_end(self, epoch: int, metrics: dict) -> None:
        self.conn.send(("end", epoch, time.monotonic()))


def _fit_child(out_dir: str, epochs: int, resume: bool, conn) -> None:
    torch.set_num_threads(1)
    fit(_mlp(), _data(), epochs=epochs, seed=FIT_SEED, out_dir=out_dir, resume=resume,
        callbacks=[_Report(conn)], **FIT_KW)
    conn.send("done")
    conn.close()


def _recv(r, timeout: float | None):
    """The next message from a child, or ``None`` on timeout or when the child is gone."""
    if not r.poll(timeout):
        return None
    try:
        return r.recv()
    except (EOFError, OSError):
        return None


def _run_child(ctx, out_dir: Path, epochs: int, resume: bool, kill_after: tuple[str, int, float] | None) -> dict:
    """Start a fit process; with ``kill_after=(event, n, s)``, SIGKILL it ``s`` seconds after the n-th
    ``event`` (``"start"`` or ``"end"`` of an epoch)."""
    r, s = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_fit_child, args=(str(out_dir), epochs, resume, s))
    t0 = time.perf_counter()
    p.start()
    s.close()
    events: dict[str, list] = {"start": [], "end": []}
    done = False

    def take(msg) -> None:
        nonlocal done
        if msg == "done":
            done = True
        elif msg is not None:
            events[msg[0]].append((int(msg[1]), float(msg[2])))

    killed = False
    if kill_after is not None:
        event, n, delay = kill_after
        while len(events[event]) < n and not done:
            msg = _recv(r, 300)
            if msg is None:
                break
            take(msg)
        if len(events[event]) == n:
            time.sleep(delay)
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
                killed = True
    else:
        while (msg := _recv(r, None)) is not None:
            take(msg)
    p.join()
    while (msg := _recv(r, 0)) is not None:
        take(msg)
    r.close()
    return {"exitcode": p.exitcode, "killed": killed and p.exitcode == -signal.SIGKILL, "done": done,
            "started": [e for e, _ in events["start"]], "events": events, "wall_s": time.perf_counter() - t0}


def _state_bytes(tensors) -> bytes:
    return b"".join(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes() for t in tensors)


def _final_state(out_dir: Path) -> dict:
    model = _mlp()
    opt = make_optimizer(model.parameters(), "sgd", lr=FIT_KW["lr"], momentum=FIT_KW["momentum"],
                         weight_decay=FIT_KW["weight_decay"])
    info = load_checkpoint(out_dir, model, opt)
    weights = list(model.state_dict().values())
    momenta = [opt.state[p]["momentum_buffer"] for g in opt.param_groups for p in g["params"]]
    return {"epoch": info["epoch"], "weights": weights, "momenta": momenta, "history": info["extra"]["history"],
            "fit_config": info["extra"]["fit_config"]}


def _check_after_kill(out_dir: Path, ref: dict, run: dict) -> dict:
    """Unloadable / lost / mixed verdicts on the folder a killed fit left behind."""
    v = {"unloadable": None, "lost": None, "mixed": None, "epoch": None,
         "stale_tmp": len([n for n in os.listdir(out_dir) if n.endswith(".tmp")]),
         "no_latest_pointer": not (out_dir / "latest").exists()}
    try:
        path = latest_checkpoint(out_dir)
        if path is None:
            if run["started"] and max(run["started"]) > 0:
                v["lost"] = f"no checkpoint although epoch {max(run['started'])} had started"
            v["epoch"] = 0
            return v
        info = load_checkpoint(path, _mlp())
    except Exception as e:  # noqa: BLE001
        v["unloadable"] = f"{type(e).__name__}: {e}"[:300]
        return v
    e = v["epoch"] = info["epoch"]
    last = max(run["started"], default=0)
    if e < last or e > last + 1:
        v["lost"] = f"latest checkpoint is epoch {e}, but epoch {last} was the last to start"
    hist, extra = info["extra"].get("history", {}), info["extra"]
    if hist.get("epoch") != list(range(e)) or hist.get("loss") != ref["history"]["loss"][:e] \
            or hist.get("lr") != ref["history"]["lr"][:e] or extra.get("fit_config") != ref["fit_config"]:
        v["mixed"] = f"epoch {e}: history/config differ from the uninterrupted run's first {e} epochs"
    return v


def kills_during_fit(ctx, kills: int, epochs: int, seed: int, work: Path) -> dict:
    rng = random.Random(seed)
    ref_dir, run_dir = work / "fit_reference", work / "fit_killed"
    t0 = time.perf_counter()
    ref_run = _run_child(ctx, ref_dir, epochs, False, None)
    ref_wall = time.perf_counter() - t0
    if ref_run["exitcode"] != 0:
        raise RuntimeError(f"the uninterrupted fit failed (exit code {ref_run['exitcode']})")
    ref = _final_state(ref_dir)
    starts, ends = dict(ref_run["events"]["start"]), dict(ref_run["events"]["end"])
    epoch_s = statistics.median(starts[e + 1] - starts[e] for e in range(epochs - 1))  # checkpoint included
    write_s = statistics.median(starts[e + 1] - ends[e] for e in range(epochs - 1))  # checkpoint + history
    t0 = time.perf_counter()
    rounds, counts = [], {"unloadable": 0, "lost": 0, "mixed": 0, "child_errors": 0}
    failures: list[str] = []
    resume = False
    for k in range(kills):
        # half the kills anywhere in an epoch, half inside the checkpoint write that ends it
        target = ("start", rng.randint(1, 2), rng.uniform(0.0, epoch_s)) if rng.random() < 0.5 else \
            ("end", rng.randint(1, 2), rng.uniform(0.0, write_s))
        run = _run_child(ctx, run_dir, epochs, resume, target)
        resume = True
        if not run["killed"]:
            if run["done"] and run["exitcode"] == 0:
                failures.append(f"kill {k}: the run finished before the kill (raise --epochs)")
            else:
                counts["child_errors"] += 1
                failures.append(f"kill {k}: the child exited with code {run['exitcode']} before the kill")
            break
        v = _check_after_kill(run_dir, ref, run)
        for key in ("unloadable", "lost", "mixed"):
            if v[key]:
                counts[key] += 1
                failures.append(f"kill {k}: {key}: {v[key]}")
        rounds.append({"target": f"{target[2]:.4f} s after epoch {target[0]} #{target[1]}",
                       "resumed_at": run["started"][0] if run["started"] else None,
                       "epochs_started": len(run["started"]), "checkpoint_after_kill": v["epoch"],
                       "stale_tmp": v["stale_tmp"], "no_latest_pointer": v["no_latest_pointer"]})
        if v["unloadable"]:
            break
    last = _run_child(ctx, run_dir, epochs, True, None)
    killed_wall = time.perf_counter() - t0
    if last["exitcode"] != 0 or not last["done"]:
        counts["child_errors"] += 1
        failures.append(f"final resume exited with code {last['exitcode']}")
        final = None
    else:
        final = _final_state(run_dir)
    same = final is not None and final["epoch"] == ref["epoch"]
    weights_equal = same and _state_bytes(final["weights"]) == _state_bytes(ref["weights"])
    momenta_equal = same and _state_bytes(final["momenta"]) == _state_bytes(ref["momenta"])
    history_equal = same and final["history"]["loss"] == ref["history"]["loss"] \
        and final["history"]["train_accuracy"] == ref["history"]["train_accuracy"]
    leftover = sorted(n for n in os.listdir(run_dir) if n.endswith(".tmp"))
    return {
        "kills_requested": kills, "kills": len(rounds), "epochs": epochs,
        "model": "MLP 32-128-128-10 with Dropout(0.1), 2048 samples, batch 64, SGD momentum, cosine, keep_last=3",
        "epoch_s": round(epoch_s, 4), "checkpoint_write_s": round(write_s, 4),
        "kills_aimed_at_a_checkpoint_write": sum(" end " in r["target"] for r in rounds),
        "reference_wall_s": round(ref_wall, 1), "killed_run_wall_s": round(killed_wall, 1),
        **counts,
        "killed_in_first_epoch_of_segment": sum(r["epochs_started"] == 1 for r in rounds),
        "epochs_lost_to_kills": sum(r["epochs_started"] - (r["checkpoint_after_kill"] - r["resumed_at"])
                                    for r in rounds if r["resumed_at"] is not None
                                    and r["checkpoint_after_kill"] is not None),
        "kills_leaving_a_temporary": sum(r["stale_tmp"] > 0 for r in rounds),
        "kills_leaving_no_latest_pointer": sum(r["no_latest_pointer"] for r in rounds),
        "max_stale_tmp_after_a_kill": max((r["stale_tmp"] for r in rounds), default=0),
        "epochs_at_kills": [min((r["checkpoint_after_kill"] for r in rounds), default=None),
                            max((r["checkpoint_after_kill"] for r in rounds), default=None)],
        "final_resume_started_at": last["started"][0] if last["started"] else None,
        "final_epoch": final["epoch"] if final else None,
        "weights_bit_identical": weights_equal,
        "momentum_bit_identical": momenta_equal,
        "history_identical": history_equal,
        "weights_sha256": hashlib.sha256(_state_bytes(final["weights"])).hexdigest() if final else None,
        "reference_weights_sha256": hashlib.sha256(_state_bytes(ref["weights"])).hexdigest(),
        "reference_final_loss": ref["history"]["loss"][-1],
        "tmp_left_after_final_run": leftover,
        "failures": failures[:20],
        "rounds": rounds,
    }


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="duration of the concurrent-save run")
    ap.add_argument("--jitter-ms", type=float, default=50.0,
                    help="random pause (uniform, at most this) between a writer's save and its load")
    ap.add_argument("--kills", type=int, default=50, help="SIGKILLs during fit")
    ap.add_argument("--epochs", type=int, default=0, help="fit epochs (0: 2 x kills + 20)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "reliability.json")
    a = ap.parse_args()
    epochs = a.epochs or 2 * a.kills + 20
    command = "python " + " ".join(shlex.quote(x) for x in
                                   [os.path.relpath(sys.argv[0], ROOT) if Path(sys.argv[0]).exists() else sys.argv[0],
                                    *sys.argv[1:]])
    print(command, flush=True)
    torch.set_num_threads(1)
    ctx = mp.get_context("forkserver")
    # torch._dynamo is imported lazily by the first optimizer (2 s per process otherwise)
    ctx.set_forkserver_preload(["torch", "torch._dynamo", "prunekit", "prunekit.pipeline.train", "_worker"])
    work = Path(tempfile.mkdtemp(prefix="prunekit-reliability-"))
    t0 = time.perf_counter()
    try:
        saves = concurrent_saves(ctx, a.seconds, a.jitter_ms / 1000, work)
        print(f"saves: {saves['saves']} saves, {saves['loads']} loads by {WRITERS} processes in "
              f"{saves['wall_s']} s: {saves['unloadable']} unloadable, {saves['mixed']} mixed, "
              f"{saves['loads_seeing_another_writer']} loads saw another writer's version, "
              f"{saves['loads_during_which_another_writer_switched']} overlapped another writer's switch; "
              f"final load {saves['final_load']['verdict']}; leftovers {saves['leftovers']}", flush=True)
        fits = kills_during_fit(ctx, a.kills, epochs, a.seed, work)
        print(f"fit: {fits['kills']} SIGKILLs over {fits['epochs']} epochs: {fits['unloadable']} unloadable, "
              f"{fits['mixed']} mixed, {fits['lost']} lost, {fits['child_errors']} child errors; final weights "
              f"bit-identical: {fits['weights_bit_identical']} (momentum {fits['momentum_bit_identical']}, "
              f"history {fits['history_identical']})", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {
        "command": command,
        "machine": {"cpu": device_name("cpu"), "cpus": os.cpu_count(),
                    "note": "project CPU box, 2 cores shared with other work",
                    "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "prunekit": prunekit.__version__, "start_method": "forkserver", "threads_per_process": 1},
        "wall_s": round(time.perf_counter() - t0, 1),
        "concurrent_saves": saves,
        "kills_during_fit": fits,
        "all_zero": saves["unloadable"] == saves["mixed"] == saves["save_errors"] == 0 and saves["final_load"]["ok"]
        and not saves["leftovers"] and fits["kills"] == a.kills
        and fits["unloadable"] == fits["mixed"] == fits["lost"] == fits["child_errors"] == 0
        and fits["weights_bit_identical"],
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"all counts zero and bit-identical: {result['all_zero']}; wrote {a.out} ({result['wall_s']} s)")


if __name__ == "__main__":
    main()
