"""The command line end to end: inspect, data synth, train → prune, and the quick demo."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit.cli import main


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


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo")]) == 0
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "SYNTHETIC" in report and "sosp-h" in report and "| dense |" in report
    assert (tmp_path / "demo" / "accuracy_vs_rate.png").stat().st_size > 1000
    rows = json.loads((tmp_path / "demo" / "results.json").read_text())["rows"]
    dense = rows[0]
    structured = [row for row in rows[1:] if row["method"] != "ctf"]
    assert {row["method"] for row in structured} == {"random", "l1", "taylor", "sosp-h"}
    for row in structured:
        assert row["achieved"]["macs"] >= 0.5 and row["macs"] <= 0.5 * dense["macs"]
        assert row["latency_ms"] > 0
    (ctf,) = [row for row in rows if row["method"] == "ctf"]
    assert ctf["achieved"]["weights"] == pytest.approx(0.9, abs=1e-3) and ctf["nonzero_params"] < 0.5 * dense["params"]
    assert "ctf (90% weights)" in report


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
