"""A run folder belongs to one run; resume is exact or refuses; a missing pointer never means epoch 0."""
from __future__ import annotations

import pytest
import torch

from prunekit.core._atomic import FolderLockedError, folder_lock
from prunekit.pipeline.checkpoint import CheckpointError, latest_checkpoint
from prunekit.pipeline.train import RUN_LOCK, ResumeError, fit


def _data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g)
    return X, (X[:, 0] > 0).long()


def _mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


KW = dict(batch_size=8, lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="cosine", seed=3, progress=False)


def test_a_new_run_in_a_used_folder_refuses_and_overwrite_clears_it(tmp_path):
    fit(_mlp(), _data(), epochs=3, out_dir=tmp_path, **KW)
    with pytest.raises(FileExistsError, match=r"holds an earlier run .*resume=True.*overwrite=True"):
        fit(_mlp(), _data(), epochs=1, out_dir=tmp_path, **KW)
    assert latest_checkpoint(tmp_path).name == "epoch-0003.json"  # untouched
    fit(_mlp(), _data(), epochs=1, out_dir=tmp_path, overwrite=True, **KW)
    assert sorted(p.name for p in tmp_path.glob("epoch-*")) == ["epoch-0001.json", "epoch-0001.safetensors"]
    assert latest_checkpoint(tmp_path).name == "epoch-0001.json"  # no later epochs of the old run left


def test_a_second_run_on_a_busy_folder_fails_clearly(tmp_path):
    with folder_lock(tmp_path, 0.0, name=RUN_LOCK):  # another fit holds the folder
        with pytest.raises(FolderLockedError, match=r"another run holds the lock"):
            fit(_mlp(), _data(), epochs=1, out_dir=tmp_path, **KW)
    assert latest_checkpoint(tmp_path) is None


@pytest.mark.parametrize("changes,named", [
    ({"lr": 0.2}, ["lr 0.1 -> 0.2"]),
    ({"momentum": 0.5, "weight_decay": 0.0}, ["momentum 0.9 -> 0.5", "weight_decay 0.0001 -> 0.0"]),
    ({"batch_size": 16, "schedule": "step"}, ["batch_size 8 -> 16", "schedule 'cosine' -> 'step'"]),
    ({"seed": 4}, ["seed 3 -> 4"]),
    ({"optimizer": "adam"}, ["optimizer 'SGD' -> 'Adam'"]),
])
def test_resume_with_a_changed_configuration_refuses_naming_each_key(tmp_path, changes, named):
    fit(_mlp(), _data(), epochs=1, out_dir=tmp_path, **KW)
    model = _mlp(5)
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(ResumeError, match="cannot resume with a different configuration") as err:
        fit(model, _data(), epochs=2, out_dir=tmp_path, resume=True, **{**KW, **changes})
    for text in named:
        assert text in str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing loaded
    assert latest_checkpoint(tmp_path).name == "epoch-0001.json"  # nothing trained


def test_missing_latest_pointer_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    straight = _mlp()
    h_straight = fit(straight, _data(), epochs=4, out_dir=tmp_path / "a", **KW)
    run = tmp_path / "b"
    fit(_mlp(), _data(), epochs=4, out_dir=run, **KW)
    (run / "latest").unlink()
    st = run / "epoch-0004.safetensors"
    st.write_bytes(st.read_bytes()[:-10])  # the newest checkpoint is torn too
    assert latest_checkpoint(run).name == "epoch-0003.json"
    resumed = _mlp(9)
    h = fit(resumed, _data(), epochs=4, out_dir=run, resume=True, **KW)
    assert h["epoch"] == [0, 1, 2, 3]  # resumed after epoch 3, not restarted at epoch 0
    assert h["loss"] == h_straight["loss"]
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))


def test_resume_refuses_to_restart_over_checkpoints_that_are_all_broken(tmp_path):
    fit(_mlp(), _data(), epochs=2, out_dir=tmp_path, **KW)
    (tmp_path / "latest").unlink()
    for st in tmp_path.glob("epoch-*.safetensors"):
        st.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="none is complete; refusing to restart at epoch 0"):
        fit(_mlp(), _data(), epochs=3, out_dir=tmp_path, resume=True, **KW)
    assert sorted(p.name for p in tmp_path.glob("epoch-*.json")) == ["epoch-0001.json", "epoch-0002.json"]
