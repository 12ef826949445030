"""Pairing rows across results files of different protocols."""
import json

import pytest

from benchmarks.pair_files import main, pair


def test_pairs_a_method_with_its_namesake_in_the_other_file(tmp_path, capsys):
    a = [{"method": "x", "seed": s, "rate": 0.9, "accuracy": 0.5 + 0.01 * s} for s in range(3)]
    b = [{"method": "x", "seed": s, "rate": 0.9, "accuracy": 0.5} for s in range(3)]
    b += [{"method": "y", "seed": s, "rate": 0.9, "accuracy": 0.52} for s in range(2)]
    b += [{"method": "y", "seed": 0, "rate": 0.5, "accuracy": 0.9}]  # another rate: never paired
    out = pair(a, b, "x", ["x", "y"], ["seed", "rate"], "accuracy")
    assert out["x"]["mean"] == pytest.approx(0.01) and (out["x"]["wins"], out["x"]["ties"]) == (2, 1)
    assert out["y"]["n"] == 2 and out["y"]["mean"] == pytest.approx(-0.015)
    (tmp_path / "a.json").write_text(json.dumps({"rows": a}))
    (tmp_path / "b.json").write_text(json.dumps({"rows": b}))
    main([str(tmp_path / "a.json"), "--against", str(tmp_path / "b.json"), "--method", "x", "--reference", "y",
          "--match", "seed", "rate"])
    assert "| x (A) − y (B) | -1.50 ± 0.50 | 1.50 / 2.00 | 2 | 0/0/2 |" in capsys.readouterr().out
    # --where keeps one rate on both sides: the rate-0.5 row of y is then the only reference, and no A row has it
    with pytest.raises(SystemExit, match="no pairs"):
        main([str(tmp_path / "a.json"), "--against", str(tmp_path / "b.json"), "--method", "x", "--reference", "y",
              "--match", "seed", "--where", "rate=0.5"])
    main([str(tmp_path / "a.json"), "--against", str(tmp_path / "b.json"), "--method", "x", "--reference", "x",
          "--match", "seed", "--where", "rate=0.9"])
    assert "| x (A) − x (B) | +1.00 ± 0.58 | 1.00 / 2.00 | 3 | 2/1/0 |" in capsys.readouterr().out
    mixed = pair(a, [{**r, "accuracy": 0.51} for r in b if r["method"] == "x"], "x", ["x"], ["seed"], "accuracy")
    assert mixed["x"]["mean"] == pytest.approx(0) and mixed["x"]["abs_mean"] == pytest.approx(0.02 / 3)  # |-1|, 0, |+1|
    renamed = [{**{k: v for k, v in r.items() if k != "method"}, "budget": r["method"]} for r in a]
    assert pair(renamed, renamed, "x", ["x"], ["seed"], "accuracy", by="budget")["x"]["n"] == 3
    with pytest.raises(SystemExit, match="no pairs"):
        main([str(tmp_path / "a.json"), "--against", str(tmp_path / "b.json"), "--method", "z", "--reference", "y"])
