"""The allocator benchmark: fresh processes per regime, alternating, aggregated per plan."""
from types import SimpleNamespace

import pytest

from benchmarks import bench_allocator
from prunekit.core import allocator


def test_regimes_alternate_and_each_plan_is_aggregated_over_processes(monkeypatch):
    calls = []

    def fake_spawn(args, name, b, regime, rotate):  # the default regime saves more and scatters more
        calls.append((regime, rotate))
        base = {"default": 0.4, "pinned": 0.2}[regime]
        return {str(f): {"saving": base + f / 10 + (0.05 * rotate if regime == "default" else 0.0),
                         "dense_ms": 10.0, "faults": [100.0 if regime == "default" else 0.0, 0.0],
                         "allocator": regime} for f in args.macs}
    monkeypatch.setattr(bench_allocator, "_spawn", fake_spawn)
    args = SimpleNamespace(models=["mlp"], batch_sizes=[4], macs=[0.3, 0.5], processes=3, pairs=2, threads=1)
    rows = bench_allocator.run(args)["rows"]
    assert calls == [("default", 0), ("pinned", 0), ("pinned", 1), ("default", 1), ("default", 2), ("pinned", 2)]
    by = {(r["regime"], r["macs"]): r for r in rows}
    assert by[("pinned", 0.5)]["saving"]["mean"] == pytest.approx(0.25) and by[("pinned", 0.5)]["saving"]["std"] == 0
    assert by[("default", 0.3)]["saving"]["values"] == pytest.approx([0.43, 0.48, 0.53])
    assert by[("default", 0.3)]["faults_dense"] == 100.0 and by[("pinned", 0.3)]["faults_dense"] == 0.0
    assert "| mlp | 4 | 30% | default | 48.0% ± 5.0% [43.0%, 53.0%] | 100, 0 |" in bench_allocator.markdown(
        {"meta": {"command": "c"}, "rows": rows})


def test_one_process_times_every_plan_against_the_dense_model():
    out = bench_allocator.child("mlp", 2, [0.3, 0.5], pairs=2, rotate=1, threads=1)
    assert set(out) == {"0.3", "0.5"}
    for timed in out.values():
        assert timed["saving"] < 1 and timed["dense_ms"] > 0 and len(timed["faults"]) == 2
        assert timed["allocator"] == allocator.regime()
