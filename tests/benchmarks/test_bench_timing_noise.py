"""The timing-noise benchmark on a small network: both timings measured as often as asked."""
from types import SimpleNamespace

from benchmarks.bench_timing_noise import markdown, run_one


def test_both_timings_are_repeated_and_summarised():
    args = SimpleNamespace(macs=0.5, repeat=3, rounds=2, threads=1)
    row = run_one("mlp", 1, args)
    assert row["pairs"] == max(15, 2 * row["repeats_per_round"])
    for timing in ("rounds", "pairs_median_ratio", "pairs_fastest"):
        stats = row[timing]
        assert len(stats["values"]) == 3 and stats["min"] <= stats["mean"] <= stats["max"] < 1
    assert 0 < row["dense_round_ms"]["min"] <= row["dense_round_ms"]["max"]
    assert "| mlp | 1 |" in markdown({"rows": [row], "command": "x"})


def test_tables_are_measured_with_both_timings_and_scored_against_the_plans():
    from benchmarks.bench_timing_noise import run_tables

    args = SimpleNamespace(tables=2, rounds=1, threads=1)
    row = run_tables("mlp", 1, args)
    assert len(row["measured"]) == 2 and all(len(m) == 3 for m in row["measured"])
    for timing in ("rounds", "pairs"):
        part = row[timing]
        assert len(part["predicted"]) == 2 and all(len(p) == 3 for p in part["predicted"])
        assert 0 <= part["mean_abs_error"] <= part["max_abs_error"] and part["prediction_std"] >= 0
    text = markdown({"rows": [], "tables": [row], "command": "x"})
    assert "| mlp | 1 | pairs |" in text and "| mlp | 1 | rounds |" in text
