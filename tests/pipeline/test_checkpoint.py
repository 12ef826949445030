"""Checkpoints: exact round trips, atomic writes, clear errors, nothing pickled."""
from __future__ import annotations

import json
import os
import random


import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import prunekit.pipeline.checkpoint as ck
from prunekit.pipeline.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def _trained(opt_name: str = "sgd", seed: int = 0):
    m = _model(seed)
    opt = (torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) if opt_name == "sgd"
           else torch.optim.Adam(m.parameters(), lr=1e-2, betas=(0.8, 0.99)))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(3):
        opt.zero_grad()
        m(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        sched.step()
    return m, opt, sched


def _assert_same(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), path
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}[{i}]")
    else:
        assert a == b, path


@pytest.fixture
def no_pickle(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("torch.save/torch.load must not be used")

    monkeypatch.setattr(torch, "save", refuse)
    monkeypatch.setattr(torch, "load", refuse)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_round_trip_is_exact(tmp_path, opt_name, no_pickle):
    m, opt, sched = _trained(opt_name)
    extra = {"acc": 0.5, "nested": {"t": torch.arange(3), "tup": (1, 2.5), 7: "int key"}, "none": None}
    path = save_checkpoint(tmp_path, m, opt, sched, epoch=3, extra=extra)
    assert path == tmp_path / "epoch-0003.json"
    assert (tmp_path / "epoch-0003.safetensors").exists()

    m2, opt2, sched2 = _trained(opt_name, seed=1)
    info = load_checkpoint(tmp_path, m2, opt2, sched2)
    assert info["epoch"] == 3 and info["path"] == path
    _assert_same(m.state_dict(), m2.state_dict())
    _assert_same(opt.state_dict(), opt2.state_dict())
    _assert_same(sched.state_dict(), sched2.state_dict())
    _assert_same(extra, info["extra"])


def test_files_are_json_and_safetensors(tmp_path):
    m, opt, sched = _trained("adam")
    save_checkpoint(tmp_path, m, opt, sched, epoch=1)
    meta = json.loads((tmp_path / "epoch-0001.json").read_text())
    assert meta["format"] == "prunekit.pipeline.checkpoint" and meta["epoch"] == 1
    assert meta["optimizer"]["param_groups"][0]["betas"] == {"__tuple__": [0.8, 0.99]}
    tensors = load_file(tmp_path / "epoch-0001.safetensors")
    assert torch.equal(tensors["model/0.weight"], m[0].weight)
    assert tensors["rng/torch"].dtype == torch.uint8
    assert any(k.startswith("optimizer/state/") and k.endswith("exp_avg") for k in tensors)
    assert (tmp_path / "latest").read_text().strip() == "epoch-0001.json"
    assert not list(tmp_path.glob("*.tmp"))


def test_tied_weights(tmp_path):
    m = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    m[1].weight = m[0].weight
    p = save_checkpoint(tmp_path / "tied.safetensors", m, epoch=0)
    m2 = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5, bias=False))
    load_checkpoint(p, m2)
    assert torch.equal(m2[0].weight, m[0].weight) and torch.equal(m2[1].weight, m[0].weight)


def test_rng_states_restore(tmp_path):
    torch.manual_seed(5); np.random.seed(5); random.seed(5)
    save_checkpoint(tmp_path, nn.Linear(1, 1), epoch=1)
    expected = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(9); np.random.seed(9); random.seed(9)
    load_checkpoint(tmp_path, restore_rng=True)
    got = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1])
    assert expected[2] == got[2]


def test_latest_pointer_and_keep_last(tmp_path):
    m = nn.Linear(2, 2)
    for e in (1, 2, 3):
        with torch.no_grad():
            m.weight.fill_(e)
        save_checkpoint(tmp_path, m, epoch=e, keep_last=2)
    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-0003.json"
    assert sorted(p.name for p in tmp_path.glob("epoch-*")) == [
        "epoch-0002.json", "epoch-0002.safetensors", "epoch-0003.json", "epoch-0003.safetensors"]
    m2 = nn.Linear(2, 2)
    assert load_checkpoint(tmp_path, m2)["epoch"] == 3
    assert torch.all(m2.weight == 3)
    assert load_checkpoint(tmp_path / "epoch-0002.safetensors", m2)["epoch"] == 2
    assert torch.all(m2.weight == 2)


# ----------------------------------------------------------------------- atomicity


def _save_pair(folder, value, **kw):
    m = nn.Linear(3, 2)
    with torch.no_grad():
        m.weight.fill_(value)
    return save_checkpoint(folder, m, epoch=int(value), **kw)


def _loaded_weight(path):
    m = nn.Linear(3, 2)
    load_checkpoint(path, m)
    return m.weight


def _fail_on_call(monkeypatch, name, n_ok, *, partial=False):
    """Make ``ck.<name>`` fail on call number ``n_ok + 1`` (optionally after writing half)."""
    real = getattr(ck, name) if hasattr(ck, name) else getattr(os, name)
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > n_ok:
            if partial:  # leave a half-written temp file behind, as a killed process would
                final, data = args
                (final.parent / f".{final.name}.crash.tmp").write_bytes(data[: len(data) // 2])
            raise OSError("simulated failure while writing")
        return real(*args, **kwargs)

    return flaky


@pytest.mark.parametrize("fail_at", ["tensors", "json", "replace_json", "latest"])
def test_failure_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch, fail_at):
    _save_pair(tmp_path, 1.0)
    if fail_at == "tensors":
        monkeypatch.setattr(ck, "_write_temp", _fail_on_call(monkeypatch, "_write_temp", 0, partial=True))
    elif fail_at == "json":
        monkeypatch.setattr(ck, "_write_temp", _fail_on_call(monkeypatch, "_write_temp", 1, partial=True))
    elif fail_at == "replace_json":  # tensors file renamed into place, then the process "dies"
        monkeypatch.setattr(ck.os, "replace", _fail_on_call(monkeypatch, "replace", 1))
    else:  # both files committed, the latest pointer not yet
        monkeypatch.setattr(ck, "_atomic_write", _fail_on_call(monkeypatch, "_atomic_write", 0))
    with pytest.raises(OSError, match="simulated"):
        _save_pair(tmp_path, 2.0)
    monkeypatch.undo()

    assert latest_checkpoint(tmp_path) == tmp_path / "epoch-0001.json"
    assert torch.all(_loaded_weight(tmp_path) == 1.0)
    # The next save succeeds and moves the pointer on.
    _save_pair(tmp_path, 2.0)
    assert torch.all(_loaded_weight(tmp_path) == 2.0)


def test_failure_overwriting_a_named_checkpoint_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "best.safetensors"
    _save_pair(target, 1.0)
    monkeypatch.setattr(ck, "_write_temp", _fail_on_call(monkeypatch, "_write_temp", 1, partial=True))
    with pytest.raises(OSError, match="simulated"):
        _save_pair(target, 2.0)
    monkeypatch.undo()
    assert torch.all(_loaded_weight(target) == 1.0)


# ----------------------------------------------------------------------- errors


def test_truncated_tensor_file_names_the_file(tmp_path):
    _save_pair(tmp_path, 1.0)
    st = tmp_path / "epoch-0001.safetensors"
    st.write_bytes(st.read_bytes()[:-20])
    with pytest.raises(CheckpointError, match=r"epoch-0001\.safetensors.*(corrupt|truncated)"):
        load_checkpoint(tmp_path, nn.Linear(3, 2))


def test_flipped_byte_is_detected(tmp_path):
    _save_pair(tmp_path, 1.0)
    st = tmp_path / "epoch-0001.safetensors"
    data = bytearray(st.read_bytes())
    data[-3] ^= 0xFF
    st.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"epoch-0001\.safetensors"):
        load_checkpoint(tmp_path, nn.Linear(3, 2))


def test_corrupt_json_names_the_file(tmp_path):
    _save_pair(tmp_path, 1.0)
    js = tmp_path / "epoch-0001.json"
    js.write_text(js.read_text()[:40])
    with pytest.raises(CheckpointError, match=r"epoch-0001\.json: corrupt or truncated"):
        load_checkpoint(tmp_path, nn.Linear(3, 2))


def test_mismatched_pair_is_detected(tmp_path):
    _save_pair(tmp_path, 1.0)
    _save_pair(tmp_path, 2.0)
    os.replace(tmp_path / "epoch-0001.safetensors", tmp_path / "epoch-0002.safetensors")
    with pytest.raises(CheckpointError, match=r"epoch-0002\.safetensors.*mismatched"):
        load_checkpoint(tmp_path, nn.Linear(3, 2))


def test_missing_files_and_pointer(tmp_path):
    with pytest.raises(CheckpointError, match="no 'latest' pointer"):
        load_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"nothing\.json: checkpoint metadata file does not exist"):
        load_checkpoint(tmp_path / "nothing.json")
    _save_pair(tmp_path, 1.0)
    (tmp_path / "epoch-0001.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"epoch-0001\.safetensors: tensor file .* does not exist"):
        load_checkpoint(tmp_path)
    (tmp_path / "latest").write_text("epoch-0099.json\n")
    with pytest.raises(CheckpointError, match=r"latest: points to 'epoch-0099\.json'"):
        load_checkpoint(tmp_path)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.json").write_text('{"hello": 1}')
    with pytest.raises(CheckpointError, match=r"x\.json: not a prunekit checkpoint"):
        load_checkpoint(tmp_path / "x.json")


def test_shape_mismatch_names_the_parameter(tmp_path):
    _save_pair(tmp_path, 1.0)
    with pytest.raises(CheckpointError, match=r"epoch-0001\.safetensors: parameter 'weight' has shape \(2, 3\) "
                                              r"in the checkpoint but \(2, 4\)"):
        load_checkpoint(tmp_path, nn.Linear(4, 2))


def test_missing_key_names_the_key(tmp_path):
    _save_pair(tmp_path, 1.0)
    with pytest.raises(CheckpointError, match=r"epoch-0001\.safetensors: model keys do not match "
                                              r"\(missing from checkpoint: 0\.weight, 0\.bias.*not in model: weight, bias"):
        load_checkpoint(tmp_path, nn.Sequential(nn.Linear(3, 2)))
    # strict=False loads what fits (still shape-checked).
    m = nn.Linear(3, 2, bias=False)
    load_checkpoint(tmp_path, m, strict=False)
    assert torch.all(m.weight == 1.0)


def test_optimizer_shape_mismatch_names_the_parameter(tmp_path):
    m, opt, _ = _trained("sgd")
    save_checkpoint(tmp_path, m, opt, epoch=1)
    other = nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    opt2 = torch.optim.SGD(other.parameters(), lr=0.1, momentum=0.9)
    with pytest.raises(CheckpointError, match=r"optimizer state 'momentum_buffer' of parameter '#0'"):
        load_checkpoint(tmp_path, None, opt2)
    small = nn.Linear(4, 3)
    with pytest.raises(CheckpointError, match="optimizer state has 6 parameters, the optimizer has 2"):
        load_checkpoint(tmp_path, None, torch.optim.SGD(small.parameters(), lr=0.1))
    with pytest.raises(CheckpointError, match="holds no scheduler state"):
        load_checkpoint(tmp_path, None, None, torch.optim.lr_scheduler.StepLR(opt2, 1))


def test_unstorable_extra_is_refused(tmp_path):
    with pytest.raises(TypeError, match=r"'extra/f'"):
        save_checkpoint(tmp_path, nn.Linear(1, 1), epoch=0, extra={"f": object()})
    assert latest_checkpoint(tmp_path) is None
