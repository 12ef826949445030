"""Experiment layer: data specs (synthetic generation into a cache) and errors."""
import threading
from pathlib import Path

import pytest

from prunekit.data.synth import SYNTHETIC_MARKER
from prunekit.pipeline.dataspec import load_data


def test_synthetic_spec_difficulty_gets_its_own_cache_folder(tmp_path):
    (xtr, ytr), (xte, _), info = load_data({"format": "synthetic-sbu", "seed": 3, "fold": 2, "length": 8,
                                            "difficulty": 0.2}, cache=tmp_path)
    root = tmp_path / "synthetic-sbu-seed3-difficulty0.2"
    assert info["root"] == str(root) and info["synthetic"]
    assert "difficulty: 0.2\n" in (root / SYNTHETIC_MARKER).read_text()
    assert xtr.shape[1:] == (3, 8, 30) and len(xtr) + len(xte) > 0 and int(ytr.max()) < 8
    assert [p.name for p in tmp_path.iterdir()] == [root.name]  # no staging folder left behind


def test_synthetic_spec_sequences_sets_the_size_and_its_own_folder(tmp_path):
    spec = {"format": "synthetic-fpha", "seed": 1, "length": 8}
    (small, _), _, _ = load_data({**spec, "sequences": 1}, cache=tmp_path)
    (large, _), _, info = load_data({**spec, "sequences": [3, 3]}, cache=tmp_path)
    assert len(large) == 3 * len(small)  # sequences per (subject, action), the split unchanged
    assert info["root"].endswith("-n3-3") and "sequences_per_subject_action: (3, 3)" in \
        (Path(info["root"]) / SYNTHETIC_MARKER).read_text()
    for bad in (0, [2, 1], "4", [1, 2, 3]):
        with pytest.raises(ValueError, match="'sequences' must be"):
            load_data({**spec, "sequences": bad}, cache=tmp_path)
    with pytest.raises(ValueError, match="synthetic formats only"):
        load_data({"format": "sbu", "root": str(tmp_path), "sequences": 2}, cache=tmp_path)


def test_concurrent_generation_never_exposes_a_half_written_tree(tmp_path):
    results, errors = [], []

    def load():
        try:
            results.append(load_data({"format": "synthetic-sbu", "seed": 0, "fold": 1, "length": 8},
                                     cache=tmp_path)[0][0].shape)
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 2 and results[0] == results[1]
    assert [p.name for p in tmp_path.iterdir()] == ["synthetic-sbu-seed0-difficulty0.65"]


def test_unknown_or_missing_format_is_named():
    with pytest.raises(ValueError, match="missing 'format'"):
        load_data({"seed": 0})


def test_fpha_spec_can_skip_the_known_bad_sequences(tmp_path):
    from prunekit.data import load_fpha

    spec = {"format": "synthetic-fpha", "seed": 0, "length": 8}
    (X, _), (Xt, _), info = load_data(spec, cache=tmp_path)
    (Xs, _), (Xts, _), _ = load_data({**spec, "skip_known_bad": True}, cache=tmp_path)
    train, test = load_fpha(info["root"], skip_known_bad=True)
    assert len(train.skipped) >= 1 and len(test.skipped) >= 1  # the generator writes some of them
    assert (len(X) - len(Xs), len(Xt) - len(Xts)) == (len(train.skipped), len(test.skipped))
