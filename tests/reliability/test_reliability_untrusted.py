"""Nothing in a file is trusted: sizes, dtypes, file references; only documented errors; exact dtypes."""
from __future__ import annotations

import json
import os
import time

import pytest
import torch

import prunekit
from prunekit.pipeline.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from prunekit.core.io import ModelFileError


def _mlp():
    torch.manual_seed(0)
    return prunekit.models.create("mlp", in_channels=1, num_classes=3, hidden=(16,), input_shape=(4, 4))


pytestmark = [pytest.mark.usefixtures("no_hang"), pytest.mark.hang_limit(20)]


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "model"
    prunekit.save(_mlp(), folder)
    return folder


def _edit_spec(folder, **fields):
    spec = json.loads((folder / "prunekit.json").read_text())
    spec.update(fields)
    (folder / "prunekit.json").write_text(json.dumps(spec))


def _plan(**over):
    plan = {"format": "prunekit.core.plan/1", "removed": [], "num_structures": 2, "signature": "x",
            "input_spec": [{"shape": [1, 1, 4, 4], "dtype": "float32"}], "entry_masks": {}}
    plan.update(over)
    return plan


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtype_round_trips_exactly(tmp_path, dtype):
    model = _mlp().to(dtype)
    model.register_buffer("scale", torch.full((3,), 1 / 3, dtype=dtype))
    prunekit.save(model, tmp_path / "m")
    model2 = _mlp()  # float32: the saved dtypes win
    model2.register_buffer("scale", torch.zeros(3))
    loaded = prunekit.load(tmp_path / "m", model=model2)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert b.dtype == dtype and torch.equal(a, b), name
    plain = _mlp().to(dtype)
    prunekit.save(plain, tmp_path / "p")
    rebuilt = prunekit.load(tmp_path / "p")  # from the registry, float32 by default
    assert all(v.dtype == dtype for v in rebuilt.state_dict().values())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), rebuilt.state_dict().values()))
    x = torch.randn(2, 1, 4, 4, dtype=dtype)
    assert torch.equal(plain(x), rebuilt(x))


@pytest.mark.parametrize("edit,field", [
    (lambda: {"arch": {"name": "mlp", "kwargs": {"in_channels": 1, "num_classes": 3, "hidden": [200000],
                                                 "input_shape": [100, 100]}}}, "arch.kwargs"),
    (lambda: {"plan": _plan(input_spec=[{"shape": [1, 3, 100000, 100000], "dtype": "float32"}])},
     r"plan.input_spec\[0\].shape"),
    (lambda: {"plan": _plan(entry_masks={"features.0.weight": {"shape": [100000, 100000], "zeros": []}})},
     r"plan.entry_masks.features.0.weight.shape"),
    (lambda: {"plan": _plan(removed=[5])}, "plan.removed"),
    (lambda: {"plan": _plan(num_structures=10 ** 12)}, "plan.num_structures"),
])
def test_oversized_declarations_are_refused_before_allocating(saved, edit, field):
    _edit_spec(saved, **edit())
    t0 = time.perf_counter()
    with pytest.raises(ModelFileError, match=rf"prunekit\.json: field '{field}"):
        prunekit.load(saved)
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("dtype", ["__class__", "cuda", "Tensor", "load", 5, None, "float33"])
def test_dtype_names_come_from_an_allow_list(saved, dtype):
    _edit_spec(saved, plan=_plan(input_spec=[{"shape": [1, 1, 4, 4], "dtype": dtype}]))
    with pytest.raises(ModelFileError, match=r"prunekit\.json: field 'plan.input_spec\[0\].dtype': unknown dtype"):
        prunekit.load(saved)


@pytest.mark.parametrize("bad", [
    lambda f: (f / "prunekit.json").write_bytes(b"\x80\xff\x00garbage" * 50),
    lambda f: (f / "prunekit.json").write_text('{"format": "prunekit.model/1", "weights_sha256": 5}'),
    lambda f: (f / "prunekit.json").write_text("[" * 100000),
    lambda f: _edit_spec(f, arch={"name": "nope"}),
    lambda f: _edit_spec(f, arch=[1, 2]),
    lambda f: _edit_spec(f, arch={"name": "mlp", "kwargs": {"hidden": "x"}}),
    lambda f: _edit_spec(f, weights_file="../model/weights.safetensors"),
    lambda f: _edit_spec(f, weights_file="/dev/zero"),
    lambda f: ((f / "prunekit.json").unlink(), os.mkfifo(f / "prunekit.json")),
])
def test_broken_specs_raise_only_model_file_error(saved, bad):
    bad(saved)
    with pytest.raises(ModelFileError, match=r"prunekit\.json"):
        prunekit.load(saved)


def test_weights_file_that_is_a_fifo_or_device_is_refused(saved):
    weights = saved / "weights.safetensors"
    weights.unlink()
    os.mkfifo(weights)
    with pytest.raises(ModelFileError, match=r"weights\.safetensors: cannot read: not a regular file"):
        prunekit.load(saved)
    weights.unlink()
    weights.symlink_to("/dev/zero")
    with pytest.raises(ModelFileError, match=r"weights\.safetensors: cannot read: not a regular file"):
        prunekit.load(saved)


# ----------------------------------------------------------------------- checkpoints


@pytest.fixture
def ckpt(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return save_checkpoint(tmp_path, model, opt, epoch=1)


def _edit_meta(js, **fields):
    meta = json.loads(js.read_text())
    meta.update(fields)
    js.write_text(json.dumps(meta))


@pytest.mark.parametrize("name", ["/etc/passwd", "../epoch-0001.safetensors", "sub/x.safetensors", ".hidden.safetensors",
                                  "epoch-0001.json", 7, None])
def test_checkpoint_tensor_references_must_be_plain_names(ckpt, name):
    _edit_meta(ckpt, tensors_file=name)
    with pytest.raises(CheckpointError, match=r"epoch-0001\.json: field 'tensors_file' must be a plain file name"):
        load_checkpoint(ckpt, torch.nn.Linear(3, 2))


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "folder"])
def test_checkpoint_tensor_file_must_be_a_regular_file(ckpt, kind):
    target = ckpt.parent / "other.safetensors"
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "dev_zero":
        target.symlink_to("/dev/zero")
    else:
        target.mkdir()
    _edit_meta(ckpt, tensors_file=target.name)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"other\.safetensors: tensor file named by epoch-0001\.json is not a "
                                              r"regular file"):
        load_checkpoint(ckpt, torch.nn.Linear(3, 2))
    assert time.perf_counter() - t0 < 1.0


@pytest.mark.parametrize("fields", [
    {"optimizer": {"state": {}, "param_groups": [{"params": {"__tuple__": 5}}]}},
    {"optimizer": {"__items__": [[1]]}},
    {"extra": {"__items__": [[[1, 2], 3]]}},
    {"model_keys": 17},
    {"epoch": "one"},
    {"rng": {"torch": 1, "numpy": 2, "python": 3}},
    {"tensors_bytes": -1},
])
def test_malformed_checkpoint_content_raises_checkpoint_error(ckpt, fields):
    _edit_meta(ckpt, **fields)
    model = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError, match=r"epoch-0001\.json"):
        load_checkpoint(ckpt, model, torch.optim.SGD(model.parameters(), lr=0.1), restore_rng=True)
