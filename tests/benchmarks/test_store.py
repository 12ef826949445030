"""The benchmarks' results store: resume, replace, merge, refusals, paired statistics."""
import json
import math

import pytest

from benchmarks.store import Store, merge, paired, stats


def test_rows_survive_a_restart_and_a_rerun_row_replaces_the_old_one(tmp_path):
    path = tmp_path / "r.json"
    first = Store(path, key=("method", "seed"), meta={"protocol": {"epochs": 2}})
    first.add({"method": "a", "seed": 0, "accuracy": 0.5})
    first.add({"method": "a", "seed": 1, "accuracy": 0.6})
    again = Store(path, key=("method", "seed"), meta={"protocol": {"epochs": 2}}, resume=True, must_match=("protocol",))
    assert again.done(method="a", seed=1) and not again.done(method="b", seed=0)
    again.add({"method": "a", "seed": 1, "accuracy": 0.7})
    saved = json.loads(path.read_text())
    assert [(r["seed"], r["accuracy"]) for r in saved["rows"]] == [(0, 0.5), (1, 0.7)]
    assert "command" in saved["meta"] and not list(tmp_path.glob(".*"))  # no temporary left behind
    fresh = Store(path, key=("method", "seed"))  # without resume: starts empty
    assert fresh.rows == []


def test_resume_under_another_protocol_is_refused(tmp_path):
    path = tmp_path / "r.json"
    Store(path, key=("seed",), meta={"protocol": {"epochs": 2}}).add({"seed": 0})
    with pytest.raises(ValueError, match="cannot resume, protocol differs"):
        Store(path, key=("seed",), meta={"protocol": {"epochs": 3}}, resume=True, must_match=("protocol",))


def test_merge_takes_a_repeated_row_from_the_last_file_and_checks_the_protocol(tmp_path):
    a, b, c = (tmp_path / f"{n}.json" for n in "abc")
    Store(a, key=("seed",), meta={"protocol": 1}).add({"seed": 0, "x": 1})
    Store(b, key=("seed",), meta={"protocol": 1}).add({"seed": 0, "x": 2})
    store = merge([a, b], key=("seed",), out=tmp_path / "m.json", must_match=("protocol",))
    assert store.rows == [{"seed": 0, "x": 2}]
    Store(c, key=("seed",), meta={"protocol": 2}).add({"seed": 1, "x": 3})
    with pytest.raises(ValueError, match="cannot merge, protocol differs"):
        merge([a, c], key=("seed",), out=tmp_path / "m.json", must_match=("protocol",))


def test_paired_differences_match_a_hand_computation():
    rows = [{"m": "ref", "seed": s, "acc": v} for s, v in enumerate([0.9, 0.8, 0.7])]
    rows += [{"m": "other", "seed": s, "acc": v} for s, v in enumerate([0.85, 0.8, 0.75])]
    rows += [{"m": "other", "seed": 9, "acc": 0.1}]  # no reference row for seed 9: not paired
    got = paired(rows, "acc", "m", "ref", match=("seed",))["other"]
    diffs = [0.05, 0.0, -0.05]
    assert got["n"] == 3 and (got["wins"], got["ties"], got["losses"]) == (1, 1, 1)
    assert got["mean"] == pytest.approx(sum(diffs) / 3, abs=1e-12)
    assert got["sem"] == pytest.approx(0.05 / math.sqrt(3))
    assert stats([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(math.sqrt(2)), "sem": pytest.approx(1.0), "n": 2}
