"""``prunekit prune --multiple-of K``: the saved pruned model keeps every group whole or a multiple of K."""
from __future__ import annotations

import torch
from torch import nn

import prunekit
from prunekit.pipeline.cli import main

USER_MODEL = '''
from torch import nn


def build():
    """Convolutions 13 and 22 wide: neither a multiple of 4."""
    return nn.Sequential(nn.Conv2d(3, 13, 3, padding=1), nn.ReLU(), nn.Conv2d(13, 22, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(22, 5))
'''


def _conv_widths(model) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_prune_a_saved_model_keeping_multiples(tmp_path, capsys):
    prunekit.save(prunekit.models.create("resnet20", width=0.5), tmp_path / "dense")   # 8/16/32 channels
    assert main(["prune", str(tmp_path / "dense"), "--method", "l1", "--budget-macs", "0.4", "--multiple-of", "4",
                 "--out", str(tmp_path / "small")]) == 0
    assert '"method": "l1"' in capsys.readouterr().out
    small = prunekit.load(tmp_path / "small")
    widths = _conv_widths(small)
    assert all(w % 4 == 0 for w in widths) and sum(widths) < sum(_conv_widths(prunekit.models.create(
        "resnet20", width=0.5)))
    assert small.prunekit_plan.meta["selection"]["multiple_of"] == 4
    assert small.prunekit_plan.achieved["macs"] >= 0.4
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_prune_a_user_model_keeping_multiples(tmp_path, capsys):
    (tmp_path / "net.py").write_text(USER_MODEL)
    ref = f"{tmp_path / 'net.py'}:build"
    for k, out in ((1, "plain"), (4, "fours")):
        assert main(["prune", ref, "--input-shape", "1,3,8,8", "--method", "l1", "--budget-macs", "0.3",
                     "--multiple-of", str(k), "--out", str(tmp_path / out)]) == 0
    capsys.readouterr()
    import importlib.util
    spec = importlib.util.spec_from_file_location("prunekit_cli_multiple_of_net", tmp_path / "net.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plain = _conv_widths(prunekit.load(tmp_path / "plain", model=module.build()))
    fours = prunekit.load(tmp_path / "fours", model=module.build())
    assert any(w % 4 for w in plain)                         # not vacuous: without it, odd widths
    assert all(w % 4 == 0 for w in _conv_widths(fours)), _conv_widths(fours)
    assert fours.prunekit_plan.meta["selection"]["multiple_of"] == 4
    assert fours(torch.randn(1, 3, 8, 8)).shape == (1, 5)


def test_bad_multiple_of_and_ctf_are_refused(tmp_path, capsys):
    prunekit.save(prunekit.models.create("resnet20", width=0.25), tmp_path / "dense")
    for bad in ("0", "-4", "2.5", "eight"):
        assert main(["prune", str(tmp_path / "dense"), "--method", "l1", "--budget-macs", "0.3",
                     "--multiple-of", bad]) == 2
        assert "--multiple-of" in capsys.readouterr().err
    (tmp_path / "net.py").write_text(USER_MODEL)   # CTF learns masks: --multiple-of is for the criteria
    assert main(["prune", f"{tmp_path / 'net.py'}:build", "--input-shape", "1,3,8,8", "--method", "ctf",
                 "--rate", "0.5", "--multiple-of", "4"]) == 2
    assert "--multiple-of applies to the criteria" in capsys.readouterr().err
