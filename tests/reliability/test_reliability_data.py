"""Readers and synthetic data: symlink loops, folders named like data files, interrupted generation.

Rows of issue 15: "prunekit data synth killed mid-write: read later as real data, rerun
refuses, no --overwrite"; "two symlinks to a parent folder: the SBU/FPHA readers walk
forever"; "a directory named skeleton_pos.txt: the sequence is dropped silently".
"""
from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from prunekit.pipeline.cli import main
from prunekit.data import SYNTHETIC_MARKER, DataFormatError, load_fpha, load_sbu, write_fpha, write_sbu
from prunekit.data import synth as synth_module
from prunekit.data.fpha import read_fpha_split
from prunekit.data.records import synthetic_status


pytestmark = [pytest.mark.usefixtures("no_hang")]


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _same(a, b) -> bool:
    return [s.path for s in a] == [s.path for s in b] and all(np.array_equal(x.data, y.data) for x, y in zip(a, b))


# ----------------------------------------------------------------------------- symlink loops
def test_sbu_two_symlinks_to_a_parent_folder(tmp_path):
    root = tmp_path / "sbu"
    write_sbu(root, seed=0, sequences_per_set_action=1)
    clean = load_sbu(root, fold=1)
    links = [root / "s01s02" / "up", root / "s03s04" / "01" / "back_to_root"]
    os.symlink("..", links[0])
    os.symlink(root, links[1])
    start = time.perf_counter()
    train, test = load_sbu(root, fold=1)
    assert time.perf_counter() - start < 30
    assert _same(train, clean[0]) and _same(test, clean[1])  # nothing lost, nothing doubled
    for ds in (train, test):
        reported = {path: reason for path, reason in ds.skipped}
        assert set(reported) == {str(p) for p in links}
        assert all("already visited" in reason for reason in reported.values())


def test_fpha_symlink_loop_in_annotation_folder(tmp_path):
    root = tmp_path / "fpha"
    write_fpha(root, seed=0, subjects=1, sequences_per_subject_action=1)
    clean = load_fpha(root)
    ann = root / "Hand_pose_annotation_v1"
    os.symlink(ann, ann / "Subject_1" / "loop")
    os.symlink("../..", ann / "Subject_1" / "prick" / "loop2")
    train, test = load_fpha(root)
    assert _same(train, clean[0]) and _same(test, clean[1])
    assert sorted(p for p, _ in train.skipped) == sorted([str(ann / "Subject_1" / "loop"),
                                                          str(ann / "Subject_1" / "prick" / "loop2")])
    assert all("already visited" in reason for _, reason in train.skipped)


# ----------------------------------------------------------------------------- folders named like data files
def test_sbu_folder_named_skeleton_pos_is_reported(tmp_path):
    root = tmp_path / "sbu"
    write_sbu(root, seed=0, sequences_per_set_action=1)
    target = root / "s01s02" / "03" / "001" / "skeleton_pos.txt"  # s01s02 is a fold-1 test set
    saved = target.read_text()
    target.unlink()
    target.mkdir()
    (target / "frame.txt").write_text(saved)
    train, test = load_sbu(root, fold=1)
    assert len(test) == 31 and len(train) == 136  # the other 167 sequences are all there
    assert [p for p, _ in test.skipped] == [str(target)]
    assert "a folder named like a data file, not a file" in test.skipped[0][1]
    assert train.skipped == []
    # errors="raise" does not raise for it either: it is not a bad file, it is not a file
    assert [p for p, _ in load_sbu(root, fold=None, errors="raise").skipped] == [str(target)]


def test_sbu_fifo_named_skeleton_pos_is_reported_not_read(tmp_path):
    root = tmp_path / "sbu"
    write_sbu(root, seed=0, sequences_per_set_action=1)
    target = root / "s02s03" / "05" / "001" / "skeleton_pos.txt"
    target.unlink()
    os.mkfifo(target)
    everything = load_sbu(root, fold=None)
    assert len(everything) == 167
    assert everything.skipped == [(str(target), "not a regular file (a FIFO, socket, device or broken link)")]


def test_fpha_folder_named_skeleton_is_reported(tmp_path):
    root = tmp_path / "fpha"
    write_fpha(root, seed=0, subjects=1, sequences_per_subject_action=2)
    ann = root / "Hand_pose_annotation_v1"
    listed = ann / "Subject_1" / "prick" / "1" / "skeleton.txt"
    listed.unlink()
    listed.mkdir()
    unlisted = ann / "Subject_1" / "prick" / "9" / "skeleton.txt"
    unlisted.mkdir(parents=True)
    train, test = load_fpha(root)
    assert len(train) + len(test) == 89
    split = read_fpha_split(root / "data_split_action_recognition.txt")
    owner = train if any(entry == "Subject_1/prick/1" for entry, _, _ in split["train"]) else test
    reasons = dict(owner.skipped)
    assert "a folder named like a data file, not a file" in reasons[str(listed)]
    assert "line" in reasons[str(listed)]  # names the split file line
    for ds in (train, test):  # the unlisted one is reported in both, the listed one once only
        paths = [p for p, _ in ds.skipped]
        assert paths.count(str(unlisted)) == 1 and paths.count(str(listed)) == (1 if ds is owner else 0)


# ----------------------------------------------------------------------------- interrupted generation
class _Killed(BaseException):
    pass


@pytest.mark.parametrize("fmt, after", [("sbu", 1), ("sbu", 100), ("fpha", 1), ("fpha", 60)])
def test_interrupted_synth_is_incomplete_not_real(tmp_path, monkeypatch, fmt, after):
    """A generation stopped after ``after`` files: refused by the readers, refused by a plain
    rerun, replaced by --overwrite with exactly the tree an uninterrupted run writes."""
    out = tmp_path / "tree"
    real = synth_module._format_rows
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > after:
            raise _Killed()
        return real(*args, **kwargs)

    monkeypatch.setattr(synth_module, "_format_rows", dying)
    kwargs = {"sequences_per_set_action": 1} if fmt == "sbu" else {"subjects": 1}
    with pytest.raises(_Killed):
        synth_module.synth_main(fmt, out, seed=3, **kwargs)
    monkeypatch.setattr(synth_module, "_format_rows", real)
    assert synthetic_status(out) == "incomplete"
    loader = (lambda: load_sbu(out, fold=None)) if fmt == "sbu" else (lambda: load_fpha(out))
    with pytest.raises(DataFormatError, match="incomplete synthetic tree") as info:
        loader()
    assert str(info.value).startswith(str(out / SYNTHETIC_MARKER))
    args = ["data", "synth", "--format", fmt, "--out", str(out), "--seed", "3"]
    assert _cli(args) == (2, "interrupted (incomplete) synthetic tree")
    write = write_sbu if fmt == "sbu" else write_fpha
    write(out, seed=3, overwrite=True, **kwargs)
    write(tmp_path / "fresh", seed=3, **kwargs)
    assert synthetic_status(out) == "complete" and _digest(out) == _digest(tmp_path / "fresh")
    assert loader() is not None


def _cli(argv) -> tuple[int, str]:
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    text = err.getvalue()
    assert "Traceback" not in text and len(text.strip().splitlines()) <= 1, text
    for words in ("interrupted (incomplete) synthetic tree", "an earlier synthetic tree"):
        if words in text:
            return code, words
    return code, text.strip()


def test_synth_killed_with_sigkill_then_overwrite(tmp_path):
    """The real thing: `prunekit data synth` SIGKILLed at random points of its write."""
    rng = random.Random(15)
    fresh = tmp_path / "fresh"
    assert main(["data", "synth", "--format", "fpha", "--out", str(fresh), "--seed", "1"]) == 0
    killed = 0
    for attempt in range(6):
        out = tmp_path / f"run{attempt}"
        proc = subprocess.Popen([sys.executable, "-m", "prunekit.pipeline.cli", "data", "synth", "--format", "fpha",
                                 "--out", str(out), "--seed", "1"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (out / SYNTHETIC_MARKER).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode != -signal.SIGKILL:  # finished before the kill: a complete tree
            assert synthetic_status(out) == "complete"
            continue
        killed += 1
        status = synthetic_status(out)
        if status is None:  # killed before the marker: the folder holds no data file at all
            assert not any(p.name == "skeleton.txt" for p in out.rglob("*")) if out.exists() else True
            continue
        if status == "incomplete":
            with pytest.raises(DataFormatError, match="incomplete synthetic tree"):
                load_fpha(out)
            assert main(["data", "synth", "--format", "fpha", "--out", str(out), "--seed", "1"]) == 2
        assert main(["data", "synth", "--format", "fpha", "--out", str(out), "--seed", "1", "--overwrite"]) == 0
        assert _digest(out) == _digest(fresh)
        assert load_fpha(out)[0].synthetic
    assert killed >= 1


def test_overwrite_never_touches_real_data(tmp_path):
    real = tmp_path / "real"
    (real / "s01s02").mkdir(parents=True)
    (real / "s01s02" / "keep.txt").write_text("mine")
    assert _cli(["data", "synth", "--format", "sbu", "--out", str(real), "--overwrite"])[0] == 2
    assert (real / "s01s02" / "keep.txt").read_text() == "mine"
