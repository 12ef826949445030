"""Every CLI error case of issue 15 is one line on stderr, exit code 2, no traceback, nothing touched.

Rows: "CLI: data without root, bad model_kwargs, config is a directory, --out is a file,
device: cuda on a CPU build, --arg without =: raw tracebacks"; "CLI --epochs 0 (ctf),
--num-samples -5: runs 10 epochs; silently drops the last 5 samples"; "YAML lr: .nan,
.inf; unknown keys inside data:; protocol: '1:1' in a shipped config".
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from prunekit.pipeline.cli import main

BASE = """model: mlp
model_kwargs: {in_channels: 1, num_classes: 10, hidden: [8], input_shape: [8, 8]}
data: {format: digits}
epochs: 1
device: cpu
out_dir: OUT
"""


def _tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def _config(tmp_path, name, text) -> str:
    path = tmp_path / name
    path.write_text(text.replace("OUT", str(tmp_path / "run")))
    return str(path)


CASES = {
    "data without root": (["train", "{cfg:data: {format: digits}=data: {format: cifar10}}"],
                          "needs 'data.root'"),
    "sbu data without root": (["train", "{cfg:data: {format: digits}=data: {format: sbu, fold: 1}}"],
                              "needs 'data.root'"),
    "bad model_kwargs": (["train", "{cfg:hidden: [8]=hidden: [8], colour: red}"],
                         "cfg.yaml:2: cannot build model 'mlp' from key 'model_kwargs'"),
    "config is a directory": (["train", "{dir}"], "is a folder, not a YAML config file"),
    "ctf config is a directory": (["prune", "--method", "ctf", "--rate", "0.5", "{dir}"],
                                  "is a folder, not a YAML config file"),
    "config is binary garbage": (["train", "{garbage}"], "not UTF-8 text"),
    "train out_dir is a file": (["train", "{cfg:out_dir: OUT=out_dir: FILE}"], "exists and is not a folder"),
    "prune --out is a file": (["prune", "resnet20", "--arg", "width=0.25", "--method", "l1", "--budget-macs", "0.5",
                               "--out", "{file}"], "exists and is not a folder"),
    "data synth --out is a file": (["data", "synth", "--format", "sbu", "--out", "{file}"],
                                   "exists and is not a folder"),
    "device cuda on a CPU build": (["train", "{cfg:device: cpu=device: cuda:7}"], "cfg.yaml:5: key 'device'"),
    "--arg without =": (["inspect", "resnet20", "--arg", "width"], "--arg expects key=value, got 'width'"),
    "--epochs 0 (ctf)": (["prune", "--method", "ctf", "--rate", "0.5", "--epochs", "0", "{cfg}"],
                         "argument --epochs: must be >= 1, got 0"),
    "--num-samples -5": (["prune", "resnet20", "--method", "taylor", "--budget-macs", "0.5", "--num-samples", "-5",
                          "--config", "{cfg}"], "argument --num-samples: must be >= 1, got -5"),
    "--finetune -1": (["prune", "--method", "ctf", "--rate", "0.5", "--finetune", "-1", "{cfg}"],
                      "argument --finetune: must be >= 0"),
    "--rate nan": (["prune", "--method", "ctf", "--rate", "nan", "{cfg}"], "must be a fraction in [0, 1)"),
    "--budget-macs 1.5": (["prune", "resnet20", "--method", "l1", "--budget-macs", "1.5"], "fraction in [0, 1)"),
    "--seed -1": (["data", "synth", "--format", "sbu", "--out", "{tmp}/s", "--seed", "-1"], "must be >= 0"),
    "--difficulty inf": (["data", "synth", "--format", "sbu", "--out", "{tmp}/s", "--difficulty", "inf"],
                         "finite number >= 0"),
    "lr .nan": (["train", "{cfg:lr: .nan\n}"], "cfg.yaml:7: key 'lr' must be a finite number"),
    "gamma .inf": (["train", "{cfg:gamma: .inf\n}"], "cfg.yaml:7: key 'gamma' must be a finite number"),
    "unknown key inside data": (["train", "{cfg:data: {format: digits}=data:\n  format: sbu\n  root: x\n  folds: 2}"],
                                "cfg.yaml:6: unknown key 'data.folds' (did you mean 'fold'?)"),
    "duplicate key": (["train", "{cfg:lr: 0.1\nlr: 0.2\n}"], "duplicate key 'lr'"),
    "fpha protocol other than 1:1": (["train", "{cfg:data: {format: digits}=data: {format: fpha, root: x, "
                                      "protocol: '2:1'}}"], "must be '1:1'"),
}


def _expand(tmp_path, argv):
    out = []
    (tmp_path / "dir.yaml").mkdir(exist_ok=True)
    (tmp_path / "afile").write_text("keep me")
    (tmp_path / "garbage.yaml").write_bytes(b"model: mlp\n\xff\xfe\x00binary")
    for arg in argv:
        if arg.startswith("{cfg"):
            text = BASE
            if ":" in arg:
                edit = arg[5:-1]
                if "=" in edit:
                    old, new = edit.split("=", 1)
                    assert old in text
                    text = text.replace(old, new.replace("FILE", str(tmp_path / "afile")))
                else:
                    text = text + edit
            arg = _config(tmp_path, "cfg.yaml", text)
        arg = (arg.replace("{dir}", str(tmp_path / "dir.yaml")).replace("{file}", str(tmp_path / "afile"))
               .replace("{garbage}", str(tmp_path / "garbage.yaml")).replace("{tmp}", str(tmp_path)))
        out.append(arg)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_cli_error_is_one_line_exit_2_and_touches_nothing(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU build, even on a GPU machine
    argv, words = CASES[case]
    argv = _expand(tmp_path, argv)
    before = _tree(tmp_path)
    code = main(argv)
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, (case, err)
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err, err
    assert _tree(tmp_path) == before  # nothing created, nothing changed (no run folder, no runs/)


def test_a_case_through_the_real_command_has_no_traceback(tmp_path):
    """The same as a user runs it: a separate process, stderr one line, exit status 2."""
    (tmp_path / "dir.yaml").mkdir()
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(BASE.replace("hidden: [8]", "hidden: [8], colour: red").replace("OUT", str(tmp_path / "r")))
    for argv in (["train", str(tmp_path / "dir.yaml")], ["train", str(cfg)],
                 ["prune", "--method", "ctf", "--rate", "0.5", "--epochs", "0", str(cfg)]):
        proc = subprocess.run([sys.executable, "-m", "prunekit.pipeline.cli", *argv], capture_output=True, text=True,
                              timeout=300, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_the_shipped_fpha_config_declares_a_known_protocol():
    from prunekit.pipeline.config import load_config

    root = Path(__file__).resolve().parents[2] / "configs"
    assert load_config(root / "fpha_stgcn.yaml").data["protocol"] == "1:1"
