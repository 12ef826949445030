"""The latency benchmark on a small network: pass-by-pass timing, rotation timing, out-of-reach rows."""
import math

from benchmarks.bench_latency import markdown, run, summary


def test_rows_are_timed_in_pairs_and_beyond_the_limits_are_reported():
    result = run(batch_sizes=(1,), targets=(0.5,), rounds=1, name="mlp", loop_rounds=2, multiples=(8,), relax=0.95,
                 nohold=True)
    rows = {r["budget"]: r for r in result["rows"]}
    assert rows["latency-loop-nohold"]["loop_steps"] == [] and isinstance(rows["latency-loop"]["loop_steps"], list)
    # the MLP's selection limits stop below 50 % of its time: the loops say so, the relaxed loop runs
    assert {"latency-loop", "macs", "latency-loop-x8", "latency-loop-relaxed"} <= set(rows)
    assert rows["latency-loop"]["reachable"] is False and rows["latency-loop"]["max_group_ratio"] == 0.8
    assert rows["latency-loop-relaxed"]["max_group_ratio"] == 0.95
    assert rows["latency-loop-x8"]["multiple_of"] == 8
    for r in result["rows"]:
        # the headline figure: the plan timed pass by pass against the dense model (the median of the pairs'
        # ratios; on sub-millisecond passes the ratio of the median times can differ from it a lot), the
        # rotation kept beside it
        repeats = result["latency_models"]["mlp b1"]["repeats_used"]
        assert r["pairs"] == max(30, 2 * repeats) and 0 <= r["ratio_iqr"] and r["measured_reduction"] < 1
        assert math.isclose(r["measured_reduction_rotation"], 1 - r["pruned_ms_rotation"] / r["dense_ms_rotation"])
        assert math.isclose(r["ratio_measured_requested"], r["measured_reduction"] / 0.5)
        assert r["dense_ms_rotation"] == rows["macs"]["dense_ms_rotation"]  # one dense reference per batch size
        if "loop_rounds" in r:  # the round the loop kept is the plan of the row
            assert math.isclose(r["loop_rounds"][r["loop_chosen"]]["predicted_fraction"], r["predicted_reduction"])
            assert r["loop_stopped"] in ("window", "rounds", "limit", "granularity") and r["loop_dense_spread"] >= 0
    steps = result["latency_models"]["mlp b1"]["steps"]   # what multiple_of="auto" would choose
    # the 256-wide first hidden layer (the most MACs), probed at a quarter and half of its width
    assert steps["width"] == 256 and [p["width"] for p in steps["probes"]] == [64, 128]
    excess = max(p["excess"] for p in steps["probes"])
    assert steps["multiple_of"] == (8 if excess > steps["threshold"] else 1)
    macs = summary(result["rows"])
    assert {c["budget"]: c["out_of_reach"] for c in macs}["latency-loop"] == 1
    assert "latency-loop (out of reach)" in markdown(result)


def test_the_recorded_command_reruns_with_flags(tmp_path):
    from argparse import Namespace

    from benchmarks.bench_latency import _write
    part = {"model": "mlp", "rows": [], "latency_models": {}, "threads": 1, "timing": "-", "torch": "-"}
    args = Namespace(batch_sizes=[1, 64], targets=[0.5], relax=None, multiple_of=[], no_hold_ablation=True,
                     loop_rounds=6, out=str(tmp_path / "r.json"))
    assert _write([part], args, 1.0)["command"] == ("python benchmarks/bench_latency.py --batch-sizes 1 64 "
                                                     "--targets 0.5 --no-hold-ablation --loop-rounds 6")
    args.no_hold_ablation = False
    assert "--no-hold" not in _write([part], args, 1.0)["command"]


def test_a_step_shaped_bracket_is_counted_from_the_recorded_rounds():
    from benchmarks.bench_latency import step_bracket

    def rounds(*triples):  # (requested, predicted, measured)
        return [{"requested": r, "predicted_fraction": p, "measured_fraction": m} for r, p, m in triples]
    step = {"requested": 0.5, "loop_rounds": rounds((0.515, 0.52, 0.30), (0.56, 0.56, 0.45), (0.58, 0.58, 0.70))}
    assert step_bracket(step)  # 25 points measured for 2 predicted
    smooth = {"requested": 0.5, "loop_rounds": rounds((0.515, 0.52, 0.40), (0.65, 0.65, 0.60))}
    assert not step_bracket(smooth)  # 20 measured for 13 predicted: a slope, not a step
    assert not step_bracket({"requested": 0.5, "loop_rounds": rounds((0.5, 0.5, 0.3), (0.6, 0.6, 0.4))})  # no bracket
