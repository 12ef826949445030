"""The accuracy-at-equal-latency benchmark end to end on a tiny ResNet-20 and random images."""
import json
from types import SimpleNamespace

import pytest
import torch

import prunekit
from benchmarks import bench_latency_accuracy as bench
from benchmarks.sosp_dense import dense_path


@pytest.fixture
def tiny_setup(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = prunekit.models.create("resnet20", in_channels=1, num_classes=10, width=0.25)
    prunekit.save(model.eval(), dense_path(tmp_path / "cache", "resnet20", 0.25, 0))
    g = torch.Generator().manual_seed(0)
    train = (torch.randn(96, 1, 28, 28, generator=g), torch.randint(0, 10, (96,), generator=g))
    test = (torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g))
    monkeypatch.setattr(bench, "load_dataset", lambda model, root: (train, test, None))
    return tmp_path


def test_both_plans_are_timed_pass_by_pass_tuned_and_paired(tiny_setup):
    out = tiny_setup / "acc.json"
    bench.main(["--seeds", "0", "--targets", "0.3", "--width", "0.25", "--batch", "2", "--rounds", "1",
                "--loop-rounds", "2", "--match-steps", "2", "--pairs", "5", "--ft-samples", "64",
                "--batch-size", "32", "--cache", str(tiny_setup / "cache"), "--out", str(out)])
    result = json.loads(out.read_text())
    rows = {r["plan"]: r for r in result["rows"]}
    assert set(rows) == {"latency", "macs"}
    for row in rows.values():
        assert row["pairs"] == 5 and row["ratio_iqr"] >= 0
        assert row["measured_saving"] < 1 and 0 <= row["accuracy"] <= 1 and row["dense_ms"] > 0
        assert 0 < row["macs_removed"] < 1 and row["widths"] and min(row["widths"]) >= 1
    assert rows["latency"]["search"], "the loop's rounds are stored"
    assert len(rows["macs"]["search"]) <= 2
    assert rows["macs"]["search_ratio"] in [t["ratio_to_latency_plan"] for t in rows["macs"]["search"]]
    assert rows["macs"]["search_saving"] is None and rows["latency"]["search_saving"] is not None
    assert rows["macs"]["macs_over_latency_ms"] == rows["latency"]["macs_over_latency_ms"] > 0
    assert result["meta"]["protocol"]["pairs"] == 5
    cell = result["summary"]["0.3"]
    assert cell["latency_minus_macs_accuracy"]["n"] == 1
    assert cell["macs_over_latency_ms"]["mean"] == pytest.approx(rows["latency"]["macs_over_latency_ms"])
    assert cell["latency"]["measured_over_requested"] == [round(rows["latency"]["measured_saving"] / 0.3, 3)]
    assert (tiny_setup / "acc.md").exists()


def test_the_criterion_and_group_norm_reach_both_plans(tiny_setup):
    out = tiny_setup / "acc_taylor.json"
    bench.main(["--seeds", "0", "--targets", "0.3", "--width", "0.25", "--batch", "2", "--rounds", "1",
                "--loop-rounds", "2", "--match-steps", "2", "--pairs", "5", "--ft-samples", "64", "--ft-epochs", "0",
                "--criterion", "taylor", "--group-norm", "none", "--prune-samples", "64",
                "--cache", str(tiny_setup / "cache"), "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["meta"]["scores"] == "taylor"
    assert result["meta"]["protocol"]["group_norm"] == "none" and result["meta"]["protocol"]["prune_samples"] == 64
    rows = {r["plan"]: r for r in result["rows"]}
    assert rows["latency"]["selection"]["group_norm"] is None and rows["macs"]["selection"]["group_norm"] is None
    assert rows["latency"]["selection"]["order"] == "score per predicted ms saved"
    assert "taylor scores, group_norm none" in (tiny_setup / "acc_taylor.md").read_text()


def test_a_seed_without_a_trained_network_is_refused_before_any_work(tiny_setup, capsys):
    out = tiny_setup / "acc.json"
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--seeds", "0", "3", "--width", "0.25", "--cache", str(tiny_setup / "cache"), "--out", str(out)])
    assert exit_.value.code == 2 and not out.exists()
    assert "seed(s) [3]: train them first with python benchmarks/sosp_dense.py --models resnet20 --width 0.25" \
        in capsys.readouterr().err


def test_the_mac_plan_is_matched_to_the_latency_plan_timed_against_it(monkeypatch):
    """On a fake clock (time proportional to MACs) the bisection lands the MAC plan's time within
    ``match`` of the rival's, and moves g the right way on each side."""
    torch.manual_seed(0)
    model = prunekit.models.create("resnet20", in_channels=1, num_classes=10, width=0.25).eval()
    x = torch.randn(1, 1, 28, 28)
    s = prunekit.find_structures(model, x)
    scores = prunekit.saliency(model, s, None, method="l1")
    rival = prunekit.materialize(model, prunekit.select(s, scores, prunekit.Budget(macs=0.4)), s).eval()

    def fake_paired(reference, candidate, *args, **kwargs):
        return {"ratio": prunekit.count(candidate, x)["macs"] / prunekit.count(reference, x)["macs"]}
    monkeypatch.setattr(bench, "time_paired", fake_paired)
    args = SimpleNamespace(match=0.03, match_steps=10, batch=2, pairs=3)
    for goal in (0.1, 0.4, 0.8):  # the bisection starts below, at and above the rival's cut
        plan, tried, ratio = bench.matched_mac_plan(model, s, scores, rival, x, goal, args, {})
        assert abs(ratio - 1) <= 0.03 and len(tried) <= 10
        assert prunekit.count(prunekit.materialize(model, plan, s), x)["macs"] == pytest.approx(
            ratio * prunekit.count(rival, x)["macs"])
        for before, after in zip(tried, tried[1:]):  # slower than the rival: more MACs cut next
            assert (after["macs"] > before["macs"]) == (before["ratio_to_latency_plan"] > 1)
