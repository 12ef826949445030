"""``prunekit prune --budget-latency``: a latency model measured on the example input, a plan under it,
and predicted against measured latency in the printed and saved summary (issue 14, item 4).

Real timings on tiny models (one thread); the assertions hold whatever the machine's speed: the
predicted saving is what the plan was selected for, and the measured figures are checked for
presence and consistency, not for accuracy.
"""
from __future__ import annotations

import json

import pytest
import torch

import prunekit
from prunekit.core.latency import LatencyModel
from prunekit.pipeline.cli import main

NET = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, width=32):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.fc = nn.Linear(2 * width, 4)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def build(width=32):
    torch.manual_seed(0)
    return Net(width)
'''

LATENCY_KEYS = {"batch_size", "threads", "device", "device_name", "statistic", "dense_predicted_ms", "predicted_ms",
                "dense_measured_ms", "measured_ms", "predicted_fraction", "measured_fraction", "fraction_error",
                "error", "measured_over_predicted", "multiple_of", "ratio_iqr"}


@pytest.fixture
def net(tmp_path, monkeypatch):
    path = tmp_path / "latnet.py"
    path.write_text(NET)
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))  # never the user's ~/.cache
    return path


def _build(path):
    import importlib.util
    spec = importlib.util.spec_from_file_location("latnet_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build()


def _summary(capsys, out):
    printed = json.loads(capsys.readouterr().out)
    assert json.loads((out / "summary.json").read_text()) == printed  # saved beside the model
    return printed


def test_budget_latency_end_to_end(net, tmp_path, capsys):
    out = tmp_path / "small"
    argv = ["prune", f"{net}:build", "--input-shape", "4,3,32,32", "--method", "l1", "--latency-threads", "1",
            "--latency-rounds", "1"]  # open loop: the latency model's plan as predicted
    assert main(argv + ["--budget-latency", "0.3", "--out", str(out)]) == 0
    summary = _summary(capsys, out)
    lat_report = summary["latency"]
    assert set(lat_report) == LATENCY_KEYS
    assert lat_report["batch_size"] == 4 and lat_report["threads"] == 1 and lat_report["device"] == "cpu"
    assert lat_report["predicted_fraction"] >= 0.3
    assert summary["achieved"]["latency"] == pytest.approx(lat_report["predicted_fraction"])
    assert lat_report["predicted_ms"] <= 0.7 * lat_report["dense_predicted_ms"] + 1e-9
    assert lat_report["measured_ms"] > 0 and lat_report["dense_measured_ms"] > 0
    assert lat_report["measured_over_predicted"] == pytest.approx(lat_report["measured_ms"] / lat_report["predicted_ms"])
    # the saving is the median of the pairs' ratios, the times the fastest passes (not derived from each other)
    assert lat_report["measured_fraction"] < 1 and lat_report["ratio_iqr"] >= 0
    # the latency model was cached (default place, under $PRUNEKIT_CACHE) and predicts what the summary says
    files = list((tmp_path / "cache" / "latency").glob("*_b4_t1_*.json"))
    assert len(files) == 1
    lat = LatencyModel.load(files[0])
    small = prunekit.load(out, model=_build(net))
    removed = small.prunekit_plan.removed
    assert lat.predict(removed) == pytest.approx(lat_report["predicted_ms"]) and lat.saved_fraction(removed) >= 0.3
    # the saved plan carries the prediction and the measurement; count shows them next to params and MACs
    x = torch.randn(4, 3, 32, 32)
    stats = prunekit.count(small, x)
    assert stats["macs"] == summary["remaining"]["macs"] < prunekit.count(_build(net), x)["macs"]
    assert stats["predicted_latency"]["predicted_ms"] == pytest.approx(lat_report["predicted_ms"])
    assert stats["predicted_latency"]["measured"]["measured_ms"] == pytest.approx(lat_report["measured_ms"])
    # combined with a MAC budget, from the cached latency model (not measured again): both are met
    mtime = files[0].stat().st_mtime_ns
    assert main(argv + ["--budget-latency", "0.5", "--budget-macs", "0.6", "--out", str(tmp_path / "smaller")]) == 0
    both = _summary(capsys, tmp_path / "smaller")
    assert both["achieved"]["latency"] >= 0.5 and both["achieved"]["macs"] >= 0.6
    assert files[0].stat().st_mtime_ns == mtime
    assert both["latency"]["dense_predicted_ms"] == lat_report["dense_predicted_ms"]
    # a cut the latency model says cannot be reached: one line, exit code 2
    assert main(argv + ["--budget-latency", "0.999", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "'latency': 0.999" in err and "cannot be met" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_budget_latency_closed_loop_by_default(net, tmp_path, capsys):
    """Without --latency-rounds the plan is timed and the request corrected (up to 6 plans); the summary
    has every round, and the plan kept is the one the rounds say (its measured saving re-timed)."""
    out = tmp_path / "small"
    assert main(["prune", f"{net}:build", "--input-shape", "4,3,32,32", "--method", "l1", "--latency-threads", "1",
                 "--budget-latency", "0.3", "--out", str(out)]) == 0
    report = _summary(capsys, out)["latency"]
    loop = report["loop"]
    assert loop["target"] == 0.3 and 1 <= len(loop["rounds"]) <= 6
    assert loop["rounds"][0]["requested"] == pytest.approx(0.3 + loop["tolerance"] / 2)  # the window's middle
    within = [i for i, r in enumerate(loop["rounds"]) if 0.3 <= r["measured_fraction"] <= 0.3 + loop["tolerance"]]
    # it stops at the first plan within, else when the rounds run out or no other plan lies between
    assert (loop["stopped"] == "window") == (within == [len(loop["rounds"]) - 1])
    assert loop["stopped"] == "window" or (loop["stopped"], len(loop["rounds"])) in {("rounds", 6)} \
        or (loop["stopped"] == "granularity" and not within)
    chosen = loop["rounds"][loop["chosen"]]
    lat_files = list((tmp_path / "cache" / "latency").glob("*.json"))
    lat = LatencyModel.load(lat_files[0])
    removed = prunekit.load(out, model=_build(net)).prunekit_plan.removed
    assert lat.saved_fraction(removed) == pytest.approx(chosen["predicted_fraction"])
    assert report["predicted_fraction"] == pytest.approx(chosen["predicted_fraction"])


def test_group_norm_reaches_the_closed_loop(net, tmp_path, monkeypatch, capsys):
    """``--budget-latency F --group-norm none`` hands ``group_norm=None`` to the closed loop (a spy that
    records the call and selects once, open loop, so nothing else is timed)."""
    from prunekit.pipeline import commands
    calls = []

    def spy(model, structures, scores, fraction, lat, example, **options):
        calls.append(options)
        keep = {k: options[k] for k in ("method", "multiple_of", "group_norm")}
        return prunekit.select(structures, scores, prunekit.Budget(latency=fraction), latency=lat, **keep)

    monkeypatch.setattr(commands, "select_to_latency", spy)
    out = tmp_path / "small"
    assert main(["prune", f"{net}:build", "--input-shape", "4,3,32,32", "--method", "l1", "--latency-threads", "1",
                 "--budget-latency", "0.3", "--group-norm", "none", "--out", str(out)]) == 0
    assert len(calls) == 1 and calls[0]["group_norm"] is None
    plan = prunekit.load(out, model=_build(net)).prunekit_plan
    assert plan.meta["selection"]["group_norm"] is None and plan.achieved["latency"] >= 0.3
    capsys.readouterr()


def test_latency_reported_with_another_budget_on_a_saved_registered_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRUNEKIT_CACHE", str(tmp_path / "cache"))
    model = prunekit.models.create("mlp", in_channels=1, num_classes=10, hidden=[64, 64], input_shape=[8, 8])
    prunekit.save(model, tmp_path / "dense")
    out = tmp_path / "small"
    assert main(["prune", str(tmp_path / "dense"), "--method", "l1", "--budget-macs", "0.3", "--latency-batch", "16",
                 "--latency-threads", "1", "--out", str(out)]) == 0
    summary = _summary(capsys, out)
    assert summary["achieved"]["macs"] >= 0.3 and "latency" in summary["achieved"]  # predicted, no target
    assert summary["latency"]["batch_size"] == 16 and summary["latency"]["threads"] == 1
    assert summary["latency"]["predicted_fraction"] == pytest.approx(summary["achieved"]["latency"])
    # without a latency option nothing is timed, as before
    assert main(["prune", str(tmp_path / "dense"), "--method", "l1", "--budget-macs", "0.3",
                 "--out", str(tmp_path / "plain")]) == 0
    plain = _summary(capsys, tmp_path / "plain")
    assert "latency" not in plain and "latency" not in plain["achieved"]


@pytest.mark.parametrize("extra, message", [
    (["--budget-latency", "0"], "argument --budget-latency: must be a fraction in (0, 1), got '0'"),
    (["--budget-latency", "1.5"], "argument --budget-latency: must be a fraction in (0, 1), got '1.5'"),
    (["--budget-latency", "nan"], "argument --budget-latency: must be a fraction in (0, 1)"),
    (["--budget-latency", "half"], "argument --budget-latency: expected a number, got 'half'"),
    (["--budget-latency", "0.5", "--latency-batch", "0"], "argument --latency-batch: must be >= 1, got 0"),
    (["--budget-latency", "0.5", "--latency-threads", "-2"], "argument --latency-threads: must be >= 1, got -2"),
    (["--method", "ctf", "--rate", "0.5", "--budget-latency", "0.5"],
     "--budget-latency, --latency-batch and --latency-threads apply to the criteria"),
    (["--method", "ctf", "--rate", "0.5", "--latency-batch", "8"], "not to --method ctf"),
    (["--budget-latency", "0.5", "--group-norm", "gaussian"], "group_norm='gaussian' makes scores negative"),
])
def test_bad_latency_options_are_one_line_errors(net, tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    argv = ["prune", f"{net}:build", "--input-shape", "1,3,8,8"] + (["--method", "l1"] if "--method" not in extra
                                                                    else []) + extra
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latnet.py"]  # nothing measured, cached or saved


def test_multiple_of_auto_is_chosen_by_the_step_probe(net, tmp_path, capsys):
    """``--multiple-of auto``: the latency model's step probe picks the multiple (8 or 1 on this machine),
    the plan keeps it, and the summary shows the probe; without a latency model it is refused."""
    out = tmp_path / "small"
    argv = ["prune", f"{net}:build", "--input-shape", "4,3,32,32", "--method", "l1", "--latency-threads", "1"]
    assert main(argv + ["--budget-latency", "0.3", "--latency-rounds", "1", "--multiple-of", "auto",
                        "--out", str(out)]) == 0
    report = _summary(capsys, out)["latency"]
    steps = report["steps"]
    # conv1 (its channels carry their own MACs and conv2's inputs: the most MACs), probed at 8 and 16
    assert steps["width"] == 32 and [p["width"] for p in steps["probes"]] == [8, 16]
    k = report["multiple_of"]
    assert k == steps["multiple_of"] == (8 if max(p["excess"] for p in steps["probes"]) > steps["threshold"] else 1)
    small = prunekit.load(out, model=_build(net))
    assert small.prunekit_plan.meta["selection"]["multiple_of"] == k
    widths = [small.conv1.out_channels, small.conv2.out_channels]
    assert all(w % k == 0 for w in widths) and widths != [32, 64]
    assert main(argv[:-2] + ["--budget-macs", "0.3", "--multiple-of", "auto", "--out", str(tmp_path / "x")]) == 2
    assert "--multiple-of auto chooses the multiple from timings" in capsys.readouterr().err
