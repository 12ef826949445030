"""Synthetic generator: determinism, labelling, structure, skeleton geometry, difficulty."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from prunekit.data import (
    DEFAULT_DIFFICULTY, FPHA_DEFAULT_DIFFICULTY, SBUToMillimetres, default_transform, get_graph, load_fpha, load_sbu,
    synth_main, to_tensors, write_fpha, write_sbu,
)
from prunekit.data.synth import _count


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _bone_lengths(data: np.ndarray, bones) -> np.ndarray:
    """[T, B] bone lengths of the first person."""
    return np.stack([np.linalg.norm(data[:, 0, i] - data[:, 0, j], axis=-1) for i, j in bones], axis=1)


def test_fpha_deterministic_per_seed(tmp_path):
    write_fpha(tmp_path / "a", seed=4, subjects=1, sequences_per_subject_action=1)
    write_fpha(tmp_path / "b", seed=4, subjects=1, sequences_per_subject_action=1)
    write_fpha(tmp_path / "c", seed=5, subjects=1, sequences_per_subject_action=1)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_sbu_deterministic_per_seed(tmp_path):
    a = write_sbu(tmp_path / "a", seed=2, sequences_per_set_action=1)
    b = write_sbu(tmp_path / "b", seed=2, sequences_per_set_action=1)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert all(np.array_equal(x.data, y.data) for x, y in zip(a, b))


def test_marker_and_synthetic_flag(tmp_path):
    write_fpha(tmp_path, seed=0, subjects=1, sequences_per_subject_action=1)
    text = (tmp_path / "SYNTHETIC_DATA.txt").read_text()
    assert text.startswith("# SYNTHETIC DATA") and "NOT the real FPHA" in text
    assert "seed: 0" in text and f"difficulty: {FPHA_DEFAULT_DIFFICULTY}" in text and "sequences: 45" in text
    train, test = load_fpha(tmp_path)
    assert train.synthetic and test.synthetic and "[SYNTHETIC]" in train.summary()


def test_refuses_to_mix_with_other_data(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        write_sbu(tmp_path / "real", seed=0, sequences_per_set_action=1)
    with pytest.raises(ValueError, match="may be real data"):
        write_sbu(tmp_path / "real", seed=0, sequences_per_set_action=1, overwrite=True)
    assert (tmp_path / "real" / "x.txt").read_text() == "mine"


def test_overwrite_replaces_an_earlier_synthetic_tree(tmp_path):
    write_fpha(tmp_path, seed=0, subjects=2, sequences_per_subject_action=1)
    write_fpha(tmp_path, seed=0, subjects=1, sequences_per_subject_action=1, overwrite=True)
    train, test = load_fpha(tmp_path)
    assert len(train) + len(test) == 45 and train.skipped == []  # no stale Subject_2 left behind


def test_sequence_count_options():
    rng = np.random.default_rng(0)
    draws = [_count((1, 3), rng) for _ in range(200)]
    assert set(draws) == {1, 2, 3}
    assert _count(2, rng) == 2
    with pytest.raises(ValueError):
        _count((3, 1), rng)
    with pytest.raises(ValueError):
        _count(-1, rng)


def test_fpha_odd_counts_split_one_to_one(tmp_path):
    train, test = write_fpha(tmp_path, seed=1, subjects=2, sequences_per_subject_action=(1, 3))
    assert abs(len(train) - len(test)) <= 1
    lines = (tmp_path / "data_split_action_recognition.txt").read_text().splitlines()
    assert lines[0] == f"Training {len(train)}" and lines[len(train) + 1] == f"Test {len(test)}"


def test_sbu_structure_lengths_and_ranges(tmp_path):
    written = write_sbu(tmp_path, seed=0, sequences_per_set_action=(1, 3))
    assert 21 * 8 <= len(written) <= 21 * 8 * 3
    lengths = np.array([s.num_frames for s in written])
    assert lengths.min() >= 20 and lengths.max() <= 60 and lengths.std() > 5
    values = np.concatenate([s.data.reshape(-1, 3) for s in written])
    assert values[:, :2].min() > -0.2 and values[:, :2].max() < 1.2  # x, y about [0, 1]
    assert 1.0 < values[:, 2].min() and values[:, 2].max() < 4.0  # z within the SBU format's 0-7.8 (docs/data.md)
    # actors alternate: both persons move in every class
    assert len({s.label for s in written}) == 8


def test_fpha_lengths_and_units(tmp_path):
    train, test = write_fpha(tmp_path, seed=0, subjects=2, sequences_per_subject_action=2)
    lengths = np.array([s.num_frames for s in train + test])
    assert lengths.min() >= 16 and lengths.max() <= 120 and lengths.std() > 10
    values = np.concatenate([s.data.reshape(-1, 3) for s in train + test])
    assert np.abs(values[:, :2]).max() < 400 and 150 < values[:, 2].min() and values[:, 2].max() < 900  # mm


def test_motions_live_on_the_real_skeletons_sbu(tmp_path):
    """Without noise, every bone keeps its length over time: joints come from forward kinematics."""
    written = write_sbu(tmp_path, seed=0, sequences_per_set_action=1, difficulty=0.0)
    bones = get_graph("sbu-single").bones
    per_participant = {}
    for seq in written:
        mm = SBUToMillimetres()(seq.data)
        lengths = _bone_lengths(mm, bones)
        assert (lengths.std(axis=0) < 0.05).all()  # 6-decimal rounding only (~0.003 mm)
        per_participant[seq.group[:3]] = lengths.mean(axis=0)[1]  # neck-torso of person A
    # per-participant body size: the seven participants differ
    assert len({round(v) for v in per_participant.values()}) == 7


def test_motions_live_on_the_real_skeletons_fpha(tmp_path):
    train, test = write_fpha(tmp_path, seed=0, subjects=2, sequences_per_subject_action=1, difficulty=0.0)
    bones = get_graph("fpha").bones
    sizes = {}
    for seq in train + test:
        lengths = _bone_lengths(seq.data, bones)
        assert (lengths.std(axis=0) < 1e-3).all()
        sizes.setdefault(seq.group, lengths.mean(axis=0))
    assert not np.allclose(sizes["Subject_1"], sizes["Subject_2"], rtol=0.01)


def _nearest_centroid(train, test, name) -> float:
    t = default_transform(name, length=32)
    X, y = to_tensors(train, t)
    Xt, yt = to_tensors(test, t)
    X, Xt = X.flatten(1), Xt.flatten(1)
    mu, sd = X.mean(0), X.std(0) + 1e-6
    X, Xt = (X - mu) / sd, (Xt - mu) / sd
    centroids = torch.stack([X[y == c].mean(0) for c in range(train.num_classes)])
    return float((torch.cdist(Xt, centroids).argmin(1) == yt).float().mean())


def test_difficulty_knob_orders_accuracy(tmp_path):
    accuracy = {}
    for d in (0.0, DEFAULT_DIFFICULTY, 1.5):
        root = tmp_path / str(d)
        write_fpha(root, seed=0, subjects=2, sequences_per_subject_action=2, difficulty=d)
        accuracy[d] = _nearest_centroid(*load_fpha(root), "fpha")
    chance = 1 / 45
    assert accuracy[0.0] > accuracy[DEFAULT_DIFFICULTY] > accuracy[1.5]
    assert accuracy[0.0] > 0.7 and accuracy[DEFAULT_DIFFICULTY] > 10 * chance and accuracy[DEFAULT_DIFFICULTY] < 0.9


def test_sbu_default_is_learnable_not_trivial(tmp_path):
    write_sbu(tmp_path, seed=0, sequences_per_set_action=1)
    acc = _nearest_centroid(*load_sbu(tmp_path, fold=1), "sbu")
    assert 3 / 8 < acc < 0.95


def test_synth_main(tmp_path):
    msg = synth_main("sbu", tmp_path / "s", seed=0, sequences_per_set_action=1)
    assert msg.startswith("wrote SYNTHETIC SBU data: 168 sequences in 21 sets, seed 0")
    assert len(load_sbu(tmp_path / "s", fold=None)) == 168
    msg = synth_main("all", tmp_path / "all", seed=1, sequences_per_set_action=1, subjects=1)
    assert msg.splitlines()[0].startswith("wrote SYNTHETIC SBU data: 168 sequences")
    assert msg.splitlines()[1].startswith("wrote SYNTHETIC FPHA data: 90 sequences (45 train / 45 test), seed 1")
    assert (tmp_path / "all" / "fpha" / "SYNTHETIC_DATA.txt").is_file()
    with pytest.raises(TypeError, match="unknown options"):
        synth_main("all", tmp_path / "x", seed=0, colour="red")
    with pytest.raises(ValueError, match="unknown synthetic format"):
        synth_main("ntu", tmp_path / "n", seed=0)
