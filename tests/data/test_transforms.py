"""Transforms: shapes, values, composition, and the default pipelines on loaded data."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prunekit.data import (
    CenterOn, Compose, MergePersons, NormalizeScale, Resample, SBUToMillimetres, SkeletonDataset, SkeletonSequence,
    ToTensor, default_transform, get_graph, load_sbu, to_tensors, write_sbu,
)


@pytest.fixture()
def sbu_array():
    return np.random.default_rng(0).uniform(0, 1, size=(40, 2, 15, 3)).astype(np.float32)


def test_center_on_torso_keeps_relative_positions(sbu_array):
    before = sbu_array.copy()
    out = CenterOn(2)(sbu_array)
    np.testing.assert_allclose(out[0, 0, 2], 0.0, atol=1e-7)
    assert not np.allclose(out[5, 0, 2], 0.0)  # only frame 0 is at the origin
    np.testing.assert_allclose(out[:, 1] - out[:, 0], sbu_array[:, 1] - sbu_array[:, 0], atol=1e-6)
    np.testing.assert_allclose(out - sbu_array, np.broadcast_to(-sbu_array[0, 0, 2], out.shape), atol=1e-6)
    np.testing.assert_array_equal(sbu_array, before)  # input untouched


def test_center_on_per_frame_and_other_person(sbu_array):
    out = CenterOn(0, per_frame=True)(sbu_array)
    np.testing.assert_allclose(out[:, 0, 0], 0.0, atol=1e-7)
    out = CenterOn(2, person=1, frame=3)(sbu_array)
    np.testing.assert_allclose(out[3, 1, 2], 0.0, atol=1e-7)


def test_normalize_scale_bone_and_std():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 1, 21, 3))
    x[:, 0, 3] = x[:, 0, 0] + np.array([0.0, 80.0, 0.0])  # wrist-MMCP bone of length 80
    out = NormalizeScale((0, 3))(x)
    np.testing.assert_allclose(np.linalg.norm(out[:, 0, 3] - out[:, 0, 0], axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(out * 80.0, x, atol=1e-12)
    assert NormalizeScale().reference(x) == pytest.approx(np.std(x))
    np.testing.assert_allclose(np.std(NormalizeScale()(x)), 1.0, atol=1e-12)
    zeros = np.zeros((4, 1, 21, 3))
    np.testing.assert_array_equal(NormalizeScale((0, 3))(zeros), zeros)  # degenerate: unchanged


def test_resample_endpoints_and_linear_values(sbu_array):
    out = Resample(32)(sbu_array)
    assert out.shape == (32, 2, 15, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], sbu_array[0], atol=1e-7)
    np.testing.assert_allclose(out[-1], sbu_array[-1], atol=1e-6)
    # output frame k sits at input position k * 39 / 31
    pos = 10 * 39 / 31
    lo = int(pos)
    np.testing.assert_allclose(out[10], sbu_array[lo] * (lo + 1 - pos) + sbu_array[lo + 1] * (pos - lo), atol=1e-6)
    up = Resample(79)(sbu_array)
    np.testing.assert_allclose(up[::2], sbu_array, atol=1e-6)  # 79 = 2 * 40 - 1: every other frame is original
    np.testing.assert_allclose(Resample(5)(sbu_array[:1]), np.repeat(sbu_array[:1], 5, axis=0))
    with pytest.raises(ValueError):
        Resample(0)


@settings(max_examples=40, deadline=None)
@given(t=st.integers(1, 50), length=st.integers(2, 64), seed=st.integers(0, 1000))
def test_resample_property_endpoints_and_bounds(t, length, seed):
    x = np.random.default_rng(seed).normal(size=(t, 1, 4, 3))
    out = Resample(length)(x)
    assert out.shape == (length, 1, 4, 3)
    np.testing.assert_allclose(out[0], x[0], atol=1e-12)
    np.testing.assert_allclose(out[-1], x[-1], atol=1e-12)
    assert (out <= x.max(axis=0) + 1e-12).all() and (out >= x.min(axis=0) - 1e-12).all()


def test_merge_persons_matches_graph_order(sbu_array):
    out = MergePersons()(sbu_array)
    assert out.shape == (40, 1, 30, 3)
    np.testing.assert_array_equal(out[:, 0, :15], sbu_array[:, 0])
    np.testing.assert_array_equal(out[:, 0, 15:], sbu_array[:, 1])
    graph = get_graph("sbu")
    assert graph.joint_names[2] == "A:torso" and graph.joint_names[15 + 2] == "B:torso"


def test_to_tensor_positions_and_velocity():
    x = np.random.default_rng(2).normal(size=(6, 1, 21, 3))
    t3 = ToTensor()(x)
    assert t3.shape == (3, 6, 21) and t3.dtype == torch.float32
    np.testing.assert_allclose(t3.numpy(), x[:, 0].transpose(2, 0, 1), atol=1e-6)
    t6 = ToTensor(velocity=True)(x)
    assert t6.shape == (6, 6, 21)
    np.testing.assert_allclose(t6[:3].numpy(), t3.numpy())
    assert torch.all(t6[3:, 0] == 0)
    np.testing.assert_allclose(t6[3:, 1:].numpy(), np.diff(x[:, 0], axis=0).transpose(2, 0, 1), atol=1e-5)
    with pytest.raises(ValueError, match="MergePersons"):
        ToTensor()(np.zeros((4, 2, 15, 3)))


def test_sbu_to_millimetres_formula():
    x = np.array([0.25, 0.75, 2.5]).reshape(1, 1, 1, 3)
    np.testing.assert_allclose(SBUToMillimetres()(x).ravel(), [1280 - 640, 960 - 1440, 3200.0])


def test_bad_shapes_rejected():
    for t in (CenterOn(0), Resample(4), MergePersons(), NormalizeScale(), ToTensor()):
        with pytest.raises(ValueError, match=r"\[T, M, V, 3\]"):
            t(np.zeros((4, 21, 3)))


def test_compose_and_default_transforms(sbu_array):
    pipeline = Compose([CenterOn(2), Resample(16), MergePersons(), ToTensor(velocity=True)])
    assert pipeline(sbu_array).shape == (6, 16, 30)
    assert "Resample(16)" in repr(pipeline)
    assert default_transform("sbu", length=20)(sbu_array).shape == (3, 20, 30)
    hand = np.random.default_rng(3).normal(size=(50, 1, 21, 3))
    out = default_transform("fpha", length=24, velocity=True)(hand)
    assert out.shape == (6, 24, 21)
    np.testing.assert_allclose(out[:3, 0, 0].numpy(), 0.0, atol=1e-6)  # wrist of frame 0 at the origin
    with pytest.raises(ValueError, match="unknown data set"):
        default_transform("ntu")


def test_to_tensors_stacks_and_checks_shapes():
    seqs = [SkeletonSequence(np.random.default_rng(t).normal(size=(t, 1, 21, 3)), t % 3, "Subject_1", f"s{t}")
            for t in (16, 40, 77)]
    ds = SkeletonDataset(seqs, ["a", "b", "c"], "fpha")
    X, y = to_tensors(ds, default_transform("fpha", length=32))
    assert X.shape == (3, 3, 32, 21) and X.dtype == torch.float32
    assert y.tolist() == [1, 1, 2] and y.dtype == torch.long
    with pytest.raises(ValueError, match="add Resample"):
        to_tensors(ds, Compose([ToTensor()]))
    with pytest.raises(ValueError, match="empty"):
        to_tensors(SkeletonDataset([], ["a"], "fpha"), ToTensor())


def test_default_sbu_pipeline_on_loaded_data(tmp_path):
    write_sbu(tmp_path, seed=0, sequences_per_set_action=1)
    train, test = load_sbu(tmp_path, fold=2)
    X, y = to_tensors(test, default_transform("sbu", length=32, velocity=True))
    assert X.shape == (len(test), 6, 32, 30) == (32, 6, 32, 30)
    assert y.tolist() == test.labels().tolist()
    np.testing.assert_allclose(X[:, :3, 0, 2].numpy(), 0.0, atol=1e-5)  # A's torso, frame 0, at the origin
    # neck-torso of person A has mean length 1 per sequence
    neck_torso = (X[:, :3, :, 1] - X[:, :3, :, 2]).norm(dim=1)
    assert torch.isfinite(X).all() and 0.8 < float(neck_torso.mean()) < 1.2
