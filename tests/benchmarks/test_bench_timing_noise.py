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
