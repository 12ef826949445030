"""The command line end to end: inspect, data synth, train → prune, and the quick demo."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit.pipeline.cli import main


def test_inspect_lists_structures(capsys):
    assert main(["inspect", "resnet20", "--arg", "width=0.25"]) == 0
    out = capsys.readouterr().out
    assert "Structures(" in out and "channel" in out


def test_data_synth_writes_a_labelled_tree(tmp_path):
    assert main(["data", "synth", "--format", "fpha", "--out", str(tmp_path / "fpha"), "--seed", "1"]) == 0
    train, test = prunekit.data.load_fpha(tmp_path / "fpha")
    assert train.synthetic and len(train) > 0 and len(test) > 0


def test_prune_a_saved_model_with_a_budget(tmp_path, capsys):
    model = prunekit.models.create("resnet20", width=0.25)
    prunekit.save(model, tmp_path / "dense")
    assert main(["prune", str(tmp_path / "dense"), "--method", "l1", "--budget-macs", "0.4",
                 "--out", str(tmp_path / "small")]) == 0
    assert '"method": "l1"' in capsys.readouterr().out
    small = prunekit.load(tmp_path / "small")
    x = torch.randn(1, 3, 32, 32)
    assert prunekit.count(small, x)["macs"] <= 0.6 * prunekit.count(model, x)["macs"]
    # data-driven criteria refuse to run without data, with a message saying what to pass
    assert main(["prune", str(tmp_path / "dense"), "--method", "sosp-h", "--budget-macs", "0.4",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--config" in capsys.readouterr().err


def test_prune_with_a_temperature_scores_on_the_softened_loss():
    """``prune_model(..., temperature=T)`` (``--temperature``) selects with the scores of
    ``CrossEntropy(temperature=T)``; the data-free criteria refuse it."""
    from prunekit.criteria import CrossEntropy
    from prunekit.pipeline.commands import prune_model
    torch.manual_seed(0)
    model = prunekit.models.create("mlp", input_shape=(1, 8, 8), num_classes=10, width=0.25).eval()
    x, y = torch.randn(64, 1, 8, 8) * 4, torch.randint(0, 10, (64,))
    plans, summaries = {}, {}
    for t in (1.0, 4.0):
        plans[t], _, summaries[t] = prune_model(model, x[:1], "sosp-h", {"macs": 0.5}, train=(x, y), num_samples=64,
                                                temperature=t)
    assert summaries[4.0]["temperature"] == 4.0 and "temperature" not in summaries[1.0]
    structures = prunekit.find_structures(model, x[:1])
    scores = prunekit.saliency(model, structures, [(x[:32], y[:32]), (x[32:], y[32:])], "sosp-h",
                               loss=CrossEntropy(temperature=4.0))
    want = prunekit.select(structures, scores, prunekit.Budget(macs=0.5), method="sosp-h")
    assert sorted(plans[4.0].removed) == sorted(want.removed) != sorted(plans[1.0].removed)
    with pytest.raises(ValueError, match="--temperature applies to the loss-based criteria"):
        prune_model(model, x[:1], "l1", {"macs": 0.5}, temperature=4.0)


def test_group_norm_reaches_the_selection(tmp_path, capsys):
    """``--group-norm none`` selects on the raw scores (``select(..., group_norm=None)``), a plan other
    than the default per-group mean's; CTF, which does not select, refuses it."""
    from prunekit.pipeline.commands import prune_model
    model = prunekit.models.create("resnet20", width=0.25)
    prunekit.save(model, tmp_path / "dense")
    x = torch.randn(1, 3, 32, 32)
    structures = prunekit.find_structures(model, x)
    scores = prunekit.saliency(model, structures, None, "l1")
    removed = {}
    for norm in ("none", "mean"):
        assert main(["prune", str(tmp_path / "dense"), "--method", "l1", "--budget-macs", "0.4", "--group-norm", norm,
                     "--out", str(tmp_path / norm)]) == 0
        plan = prunekit.load(tmp_path / norm).prunekit_plan
        assert plan.meta["selection"]["group_norm"] == (None if norm == "none" else norm)
        want = prunekit.select(structures, scores, prunekit.Budget(macs=0.4), group_norm=plan.meta["selection"]["group_norm"])
        removed[norm] = sorted(plan.removed)
        assert removed[norm] == sorted(want.removed)
    assert removed["none"] != removed["mean"]
    with pytest.raises(ValueError, match="--group-norm applies to the criteria"):
        prune_model(model, x, "ctf", {}, rate=0.5, group_norm=None)
    assert main(["prune", str(tmp_path / "dense"), "--method", "l1", "--budget-macs", "0.4", "--group-norm", "raw"]) == 2
    assert "--group-norm: invalid choice: 'raw'" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "SYNTHETIC" in report and "sosp-h" in report and "| dense |" in report
    assert (tmp_path / "demo" / "accuracy_vs_rate.png").stat().st_size > 1000
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    rows, ctf_rows = results["rows"], results["ctf_rows"]
    dense = rows[0]
    assert {row["method"] for row in rows[1:]} == {"random", "l1", "taylor", "sosp-h"}
    for row in rows[1:]:
        assert row["achieved"]["macs"] >= 0.5 and row["macs"] <= 0.5 * dense["macs"]
        assert row["latency_ms"] > 0
    # part 1b: L1 at half the predicted latency next to L1 at half the MACs, predicted and measured
    assert "## Latency budget against MAC budget" in report and "| l1 at 50% of latency |" in report
    lat_rows = results["latency_rows"]
    assert [row["budget"] for row in lat_rows] == [{}, {"macs": 0.5}, {"latency": 0.5}]
    # the closed loop keeps the first plan whose *measured* saving (its own timings) lands in [0.5, 0.53];
    # the prediction and the demo's later timing of that plan may differ from it by the timing noise
    loop = lat_rows[2]["latency_loop"]
    in_window = [i for i, r in enumerate(loop["rounds"]) if 0.5 - 1e-9 <= r["measured_fraction"] <= 0.53 + 1e-9]
    assert loop["target"] == 0.5 and (not in_window or loop["chosen"] == in_window[0])
    assert lat_rows[2]["achieved"]["latency"] == pytest.approx(lat_rows[2]["predicted_saved"])
    # the row is the round the loop kept (how close its prediction is to 0.5 is the tables' accuracy on this
    # machine, not a property of the demo: once 39.6 % predicted for a plan measured at 51.3 %)
    assert lat_rows[2]["predicted_saved"] == pytest.approx(loop["rounds"][loop["chosen"]]["predicted_fraction"])
    # the demo's own later timing of the kept plan is one more sample of a loaded machine (once 20.7 % in CI
    # for a plan the loop measured near 47 %), so the test checks it is the ratio of the two timings it reports
    assert lat_rows[2]["measured_saved"] == pytest.approx(1 - lat_rows[2]["measured_ms"] / lat_rows[0]["measured_ms"])
    assert lat_rows[2]["achieved"]["macs"] > 0 and lat_rows[2]["macs"] < dense["macs"]
    assert all(row["predicted_ms"] > 0 and row["measured_ms"] > 0 for row in lat_rows)
    # part 2: CTF against magnitude at the same rate and budget, latency dense and sparsified
    assert "## CTF against magnitude" in report and (tmp_path / "demo" / "ctf_vs_magnitude.png").stat().st_size > 1000
    ctf_dense = ctf_rows[0]
    by_method = {row["method"]: row for row in ctf_rows[1:]}
    assert set(by_method) == {"ctf", "magnitude"}
    for row in by_method.values():
        assert row["achieved"]["weights"] == pytest.approx(0.9, abs=1e-3)
        assert row["nonzero_params"] < ctf_dense["params"]
        assert row["latency_ms"] > 0 and row["latency_ms_sparsified"] > 0
        assert row["epochs"] + row["finetune_epochs"] == 3  # the same budget: 2 + 1 and 0 + 3
    # both removed 90 % of the same prunable weights: the same number of nonzeros, up to the biases and
    # BatchNorm entries that leave with whole structures
    nonzeros = [row["nonzero_params"] for row in by_method.values()]
    assert max(nonzeros) - min(nonzeros) < 0.01 * ctf_dense["params"]


def test_train_from_config_then_prune_with_sosp(tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(
        "model: attention_gcn\n"
        "model_kwargs: {graph: sbu, channels: [4, 8], num_heads: 2, key_dim: 2}\n"
        f"data: {{format: synthetic-sbu, seed: 0, fold: 2, length: 8, root: {tmp_path / 'sbu'}}}\n"
        "epochs: 1\nbatch_size: 64\nlr: 0.05\ndevice: cpu\n"
        f"out_dir: {tmp_path / 'run'}\n")
    assert main(["train", str(config)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["train", str(config), "--resume"]) == 0  # nothing left to do: resumes at the end
    capsys.readouterr()
    assert main(["train", str(config)]) == 2  # a second run into the same folder is refused, in one line
    err = capsys.readouterr().err
    assert "--overwrite" in err or "overwrite" in err and len(err.strip().splitlines()) == 1
    assert main(["train", str(config), "--overwrite"]) == 0
    assert main(["prune", str(tmp_path / "run" / "model"), "--method", "sosp-h", "--budget-params", "0.3",
                 "--config", str(config), "--num-samples", "64", "--out", str(tmp_path / "pruned")]) == 0
    out = capsys.readouterr().out
    assert '"accuracy"' in out
    pruned = prunekit.load(tmp_path / "pruned")
    assert pruned.prunekit_plan.achieved["params"] >= 0.3


def _tiny_config(tmp_path) -> Path:
    config = tmp_path / "tiny_ctf.yaml"
    config.write_text(
        "model: attention_gcn\n"
        "model_kwargs: {graph: sbu, channels: [4, 8], num_heads: 2, key_dim: 2}\n"
        f"data: {{format: synthetic-sbu, seed: 0, fold: 2, length: 8, root: {tmp_path / 'sbu'}}}\n"
        "epochs: 2\nbatch_size: 64\nlr: 0.05\ndevice: cpu\n")
    return config


def test_prune_with_ctf_from_a_config_hits_the_rate_and_saves(tmp_path, capsys):
    config = _tiny_config(tmp_path)
    out = tmp_path / "ctf"
    assert main(["prune", "--method", "ctf", "--rate", "0.9", "--finetune", "1", str(config), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.rfind("\n{") + 1:])
    assert summary["method"] == "ctf" and summary["rate"] == pytest.approx(0.9, abs=1e-3)
    pruned = prunekit.load(out)
    assert pruned.prunekit_plan.method == "ctf"
    # 90 % of the prunable weights (dim >= 2, not the classifier, not the graph biases) are gone:
    # zero in the saved model or removed physically with their structures
    dense = prunekit.models.create("attention_gcn", graph="sbu", channels=[4, 8], num_heads=2, key_dim=2)
    names = [n for n, p in dense.named_parameters() if p.dim() >= 2 and n.endswith(".weight") and n != "fc.weight"]
    params = dict(pruned.named_parameters())
    total = sum(dense.get_parameter(n).numel() for n in names)
    kept = sum(int(torch.count_nonzero(params[n])) for n in names)
    assert 1 - kept / total >= 0.9 - 1 / total
    assert summary["nonzero_params"] < summary["params"]


def test_prune_with_ctf_needs_a_rate_and_criteria_refuse_a_config(tmp_path, capsys):
    config = _tiny_config(tmp_path)
    assert main(["prune", "--method", "ctf", str(config)]) == 2
    assert "--rate" in capsys.readouterr().err
    assert main(["prune", "--method", "l1", "--budget-macs", "0.5", str(config)]) == 2
    assert "--method ctf" in capsys.readouterr().err


# ---------------------------------------------------------------- a user's own model

USER_MODEL = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width=8, classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


class TwoInputs(nn.Module):
    """Token ids and float features: several inputs, an integer dtype."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.proj = nn.Linear(4, 8)
        self.hidden = nn.Linear(8, 16)
        self.out = nn.Linear(16, 2)

    def forward(self, ids, feats):
        return self.out(torch.relu(self.hidden(self.emb(ids) + self.proj(feats))))


def build(width=8):
    torch.manual_seed(0)
    return Net(width=width)


def broken():
    raise RuntimeError("no GPU here")
'''


@pytest.fixture
def user_model(tmp_path, monkeypatch):
    """``tmp_path/prunekit_cli_user.py``, importable as a module too."""
    path = tmp_path / "prunekit_cli_user.py"
    path.write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "prunekit_cli_user", raising=False)
    return path


def _load_user(path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("prunekit_cli_user_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_inspect_a_user_model_by_file_path_with_weights(user_model, tmp_path, capsys):
    from safetensors.torch import save_file
    model = _load_user(user_model).build(width=4)
    save_file(model.state_dict(), tmp_path / "net.safetensors")
    assert main(["inspect", f"{user_model}:build", "--arg", "width=4", "--weights", str(tmp_path / "net.safetensors"),
                 "--input-shape", "1,3,16,16"]) == 0
    out = capsys.readouterr().out
    assert "Structures(Net" in out and "conv1" in out and "conv2" in out and "frozen:" in out
    # strict: a file of another width names the first mismatching key, in one line
    assert main(["inspect", f"{user_model}:build", "--weights", str(tmp_path / "net.safetensors"),
                 "--input-shape", "1,3,16,16"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "net.safetensors") in err and "'conv1.weight'" in err and err.count("\n") == 1


def test_inspect_by_import_path_with_several_integer_and_float_inputs(user_model, capsys):
    assert main(["inspect", "prunekit_cli_user:TwoInputs", "--input-shape", "2,5", "--input-shape", "2,5,4",
                 "--input-dtype", "long", "--input-dtype", "float"]) == 0
    out = capsys.readouterr().out
    assert "Structures(TwoInputs" in out and "hidden" in out


def test_prune_a_user_model_then_a_folder_saved_from_one(user_model, tmp_path, capsys):
    module = _load_user(user_model)
    x = torch.randn(1, 3, 16, 16)
    # by reference: random-initialised factory output, pruned and saved
    assert main(["prune", "prunekit_cli_user:build", "--input-shape", "1,3,16,16", "--method", "l1",
                 "--budget-macs", "0.4", "--out", str(tmp_path / "small")]) == 0
    assert '"method": "l1"' in capsys.readouterr().out
    small = prunekit.load(tmp_path / "small", model=module.build())
    assert prunekit.count(small, x)["macs"] <= 0.6 * prunekit.count(module.build(), x)["macs"]
    # the pruned folder inspects with --model (its input shape comes from the plan) ...
    assert main(["inspect", str(tmp_path / "small"), "--model", "prunekit_cli_user:build"]) == 0
    assert "Structures(Net" in capsys.readouterr().out
    # ... and says what to pass without it
    assert main(["inspect", str(tmp_path / "small")]) == 2
    err = capsys.readouterr().err
    assert "--model" in err and "built by prunekit_cli_user:build" in err
    # a dense model the user saved with prunekit.save: rebuilt with --model, pruned, reloadable
    dense = module.build()
    prunekit.save(dense, tmp_path / "dense")
    assert main(["prune", str(tmp_path / "dense"), "--model", f"{user_model}:build", "--input-shape", "1,3,16,16",
                 "--method", "l2", "--budget-params", "0.3", "--out", str(tmp_path / "dense_l2")]) == 0
    pruned = prunekit.load(tmp_path / "dense_l2", model=module.build())
    assert prunekit.count(pruned, x)["params"] <= 0.7 * prunekit.count(dense, x)["params"]
    assert main(["prune", str(tmp_path / "dense"), "--method", "l1", "--budget-macs", "0.3"]) == 2
    assert "--model" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["inspect", "missing_file.py:build", "--input-shape", "1,3,8,8"], "missing_file.py: no such file"),
    (["inspect", "{path}:nothing", "--input-shape", "1,3,8,8"], "has no attribute 'nothing'"),
    (["inspect", "{path}:broken", "--input-shape", "1,3,8,8"], "RuntimeError: no GPU here"),
    (["inspect", "prunekit_cli_no_such_module:build"], "No module named"),
    (["inspect", "{path}:build"], "--input-shape"),
    (["inspect", "{path}:build", "--input-shape", "1,3,x,8"], "expected comma-separated integers"),
    (["inspect", "{path}:build", "--input-shape", "1,3,8,8", "--weights", "w.pt"], "w.pt: no such file"),
    (["inspect", "{path}:build", "--input-shape", "1,3,8,8", "--weights", "{path}"], "safetensors files only"),
    (["inspect", "no_such_model"], "unknown model"),
    (["prune", "{path}:build", "--input-shape", "1,3,8,8", "--method", "taylor", "--budget-macs", "0.5"], "--config"),
])
def test_errors_are_one_line_with_exit_code_2(user_model, capsys, argv, message):
    argv = [a.replace("{path}", str(user_model)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_version_comes_from_the_package_metadata(capsys):
    from importlib.metadata import version
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"prunekit {version('prunekit')}" == f"prunekit {prunekit.__version__}"


def test_every_argument_has_help_text():
    import argparse

    from prunekit.pipeline.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert choice.help, f"{path} {choice.dest}: no help"
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}")
                continue
            yield path, action

    missing = [f"{path} {'/'.join(a.option_strings) or a.dest}" for path, a in walk(build_parser(), "prunekit")
               if not (a.help or "").strip()]
    assert missing == []


@pytest.mark.parametrize("argv, message", [
    (["prune", "resnet20", "--method", "l1", "--budget-macs", "0.5", "--num-samples", "-5"],
     "argument --num-samples: must be >= 1, got -5"),
    (["prune", "--method", "ctf", "--rate", "0.5", "--epochs", "0", "c.yaml"], "argument --epochs: must be >= 1, got 0"),
    (["prune", "--method", "ctf", "--rate", "0.5", "--epochs", "-3", "c.yaml"], "argument --epochs: must be >= 1"),
    (["prune", "--method", "ctf", "--rate", "0.5", "--finetune", "-1", "c.yaml"], "argument --finetune: must be >= 0"),
    (["prune", "--method", "ctf", "--rate", "1.0", "c.yaml"], "argument --rate: must be a fraction in [0, 1)"),
    (["prune", "resnet20", "--method", "l1", "--budget-params", "-0.1"], "argument --budget-params: must be a fraction"),
    (["inspect", "resnet20", "--input-high", "0"], "argument --input-high: must be >= 1, got 0"),
    (["demo", "--seed", "-1"], "argument --seed: must be >= 0, got -1"),
    (["data", "synth", "--format", "sbu", "--out", "x", "--difficulty", "nan"], "argument --difficulty"),
    (["prune", "resnet20", "--method", "l1", "--budget-macs", "0.5", "--epochs", "ten"], "expected an integer"),
    (["prune", "resnet20", "--method", "sosp-h", "--budget-macs", "0.5", "--temperature", "0"],
     "argument --temperature: must be a finite number > 0, got '0'"),
])
def test_counts_and_fractions_are_checked_before_any_work(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_data_synth_overwrite(tmp_path, capsys):
    out = str(tmp_path / "sbu")
    assert main(["data", "synth", "--format", "fpha", "--out", out, "--seed", "1"]) == 0
    assert main(["data", "synth", "--format", "fpha", "--out", out, "--seed", "2"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "synth", "--format", "fpha", "--out", out, "--seed", "2", "--overwrite"]) == 0
    assert "seed: 2" in (tmp_path / "sbu" / "SYNTHETIC_DATA.txt").read_text()


def test_unexpected_errors_are_one_line_too(monkeypatch, capsys):
    import prunekit.pipeline.cli as cli

    def boom(args):
        raise KeyError("internal")
    monkeypatch.setattr(cli, "cmd_inspect", boom)
    monkeypatch.delenv("PRUNEKIT_TRACEBACK", raising=False)
    assert main(["inspect", "resnet20"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "internal error: KeyError" in err and "PRUNEKIT_TRACEBACK=1" in err


# ------------------------------------------------------------------ prunekit export

UNEXPORTABLE = '''
import torch
from torch import nn


class Gate(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), Gate())

    def forward(self, x):
        return self.body(x)
'''


def _pruned_resnet_folder(tmp_path):
    torch.manual_seed(0)
    model = prunekit.models.create("resnet20", width=0.25).eval()
    x = torch.randn(1, 3, 32, 32)
    structures = prunekit.find_structures(model, x)
    plan = prunekit.select(structures, prunekit.saliency(model, structures, None, method="l1"),
                           prunekit.Budget(macs=0.5))
    prunekit.save(prunekit.materialize(model, plan, structures), tmp_path / "small", plan=plan)
    return tmp_path / "small"


def test_export_a_pruned_folder_to_onnx_and_torch_export(tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    folder = _pruned_resnet_folder(tmp_path)
    small = prunekit.load(folder).eval()
    x = torch.randn(3, 3, 32, 32)  # the plan records batch 1: the exported batch is dynamic
    with torch.no_grad():
        want = small(x).numpy()
    assert main(["export", str(folder), "--onnx", str(tmp_path / "small.onnx")]) == 0
    assert f"wrote {tmp_path / 'small.onnx'}" in capsys.readouterr().out
    session = ort.InferenceSession(str(tmp_path / "small.onnx"), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert abs(got - want).max() <= 1e-4
    assert main(["export", str(folder), "--torch-export", str(tmp_path / "small.pt2"), "--static-batch"]) == 0
    program = torch.export.load(tmp_path / "small.pt2").module()
    with torch.no_grad():
        assert (program(x[:1]) - small(x[:1])).abs().max() <= 1e-4


@pytest.mark.parametrize("argv, message", [
    (["export", "resnet20", "--onnx", "{tmp}"], "is a folder"),
    (["export", "resnet20", "--torch-export", "{tmp}/a_file/m.pt2"], "a_file is not a folder"),
    (["export", "{unexportable}:Net", "--input-shape", "2,4", "--torch-export", "{tmp}/m.pt2"],
     "could not trace Net in module body.1 (Gate)"),
    (["export", "resnet20", "--torch-export", "{tmp}/m.pt2", "--opset", "17"], "--opset applies to --onnx only"),
    (["export", "resnet20", "--onnx", "a.onnx", "--torch-export", "b.pt2"], "not allowed with argument"),
    (["export", "resnet20"], "one of the arguments --onnx --torch-export is required"),
])
def test_export_errors_are_one_line(tmp_path, capsys, argv, message):
    (tmp_path / "unexportable.py").write_text(UNEXPORTABLE)
    (tmp_path / "a_file").write_text("")
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{unexportable}", str(tmp_path / "unexportable.py"))
            for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "unexportable.py"]  # nothing written
