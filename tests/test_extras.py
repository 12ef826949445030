"""Optional extras (issue 16): the core API needs neither matplotlib (extra ``plot``) nor PyYAML (extra ``yaml``)."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)


def test_import_prunekit_imports_neither_matplotlib_nor_yaml():
    done = _run("""
        import sys, json
        import prunekit, prunekit.criteria, prunekit.ctf, prunekit.core.plan
        import prunekit.pipeline.config, prunekit.pipeline.report  # both import their extra lazily
        print(json.dumps({name: name in sys.modules for name in ("matplotlib", "yaml", "prunekit.ctf")}))
    """)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"matplotlib": False, "yaml": False,
                                                                 "prunekit.ctf": True}


def test_core_api_runs_with_both_extras_missing():
    done = _run("""
        import sys
        sys.modules["matplotlib"] = None  # any import of them now raises ImportError
        sys.modules["yaml"] = None
        import torch, prunekit
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
        x = torch.randn(1, 6)
        structures = prunekit.find_structures(model, x)
        data = [(torch.randn(10, 6), torch.randint(0, 3, (10,)))]
        scores = prunekit.saliency(model, structures, data, "sosp-h")
        plan = prunekit.select(structures, scores, prunekit.Budget(structures=0.5))
        small = prunekit.materialize(model, plan)
        ctf = prunekit.CTF(model, rate=0.5, example_inputs=x)
        ctf.finalize()
        print(len(structures), prunekit.count(small, x)["params"], small[0].out_features,
              int((model[0].weight == 0).sum()), int((model[2].weight == 0).sum()))
    """)
    assert done.returncode == 0, done.stderr
    # 8 hidden units, half removed: 6*4+4 + 4*3+3 parameters; CTF zeroes half the 48 prunable weights, not the classifier
    assert done.stdout.split() == ["8", str(6 * 4 + 4 + 4 * 3 + 3), "4", "24", "0"]


@pytest.fixture
def no_matplotlib(monkeypatch):
    from prunekit.pipeline import report

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    monkeypatch.setattr(report, "_warned_no_matplotlib", False)
    return report


ROWS = [{"method": "dense", "achieved": {"macs": 0.0}, "accuracy": 0.9, "params": 10, "macs": 100, "latency_ms": 1.0},
        {"method": "l1", "achieved": {"macs": 0.5}, "accuracy": 0.8, "params": 6, "macs": 50, "latency_ms": 0.6}]


def test_report_without_matplotlib_writes_table_and_json_and_warns_once(tmp_path, caplog, no_matplotlib):
    report = no_matplotlib
    with caplog.at_level(logging.WARNING, logger="prunekit.pipeline.report"):
        table = report.write_report(ROWS, tmp_path, {"epochs": 1}, "t")
        assert report.plot_layer_ratios({"a": 0.5}, tmp_path / "r.png") is None
        assert report.plot_points_with_error({"a": {"params_mean": 1, "mean": 0.5, "std": 0.1}}, tmp_path / "p.png") \
            is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "prunekit[plot]" in warnings[0].getMessage()
    assert "| l1 | 50.0% | 0.800 |" in table
    assert (tmp_path / "report.md").read_text().count("| l1 | 50.0% |") == 1
    assert "accuracy_vs_rate.png" not in (tmp_path / "report.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["rows"][1]["accuracy"] == 0.8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md", "results.json"]


def test_report_with_matplotlib_writes_the_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from prunekit.pipeline.report import write_report

    write_report(ROWS, tmp_path, {"epochs": 1}, "t")
    assert (tmp_path / "accuracy_vs_rate.png").read_bytes()[:4] == b"\x89PNG"
    assert "![accuracy vs pruning rate](accuracy_vs_rate.png)" in (tmp_path / "report.md").read_text()


def test_cli_train_without_pyyaml_names_the_extra(tmp_path, monkeypatch, capsys):
    from prunekit.pipeline.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("model: mlp\nepochs: 1\n")
    monkeypatch.setitem(sys.modules, "yaml", None)
    assert main(["train", str(config)]) == 2
    err = capsys.readouterr().err
    assert "prunekit train: error:" in err and "pip install 'prunekit[yaml]'" in err


def test_pyproject_declares_the_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = " ".join(project["dependencies"]).lower()
    assert "matplotlib" not in core and "yaml" not in core and "tqdm" in core
    extras = project["optional-dependencies"]
    assert [d.split(">")[0] for d in extras["plot"]] == ["matplotlib"]
    assert [d.split(">")[0] for d in extras["yaml"]] == ["pyyaml"]

    def included(name: str) -> set[str]:  # the extras an extra pulls in through prunekit[...]
        refs = [d for d in extras[name] if d.startswith("prunekit[")]
        return {e.strip() for d in refs for e in d[len("prunekit["):-1].split(",")}

    assert {"plot", "yaml"} <= included("all")
    assert {"plot", "yaml"} <= included("test")  # make demo / make test install .[test]: plots and configs work
    assert "-e '.[test]'" in (ROOT / "Makefile").read_text()
