"""SBU reader: round trip with the generator, the 5-fold protocol of docs/data.md, malformed input."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from prunekit.data import DataFormatError, SBU_CLASSES, SBU_SETS, load_sbu, read_sbu_file, write_sbu

# Copied by hand from docs/data.md, not from the package, so the test checks the constants.
DATA_MD_SETS = ("s01s02 s01s03 s01s07 s02s01 s02s03 s02s06 s02s07 s03s02 s03s04 s03s05 s03s06 s04s02 s04s03 "
                "s04s06 s05s02 s05s03 s06s02 s06s03 s06s04 s07s01 s07s03").split()
DATA_MD_FOLDS = {
    1: {"s01s02", "s03s04", "s05s02", "s06s04"},
    2: {"s02s03", "s02s07", "s03s05", "s05s03"},
    3: {"s01s03", "s01s07", "s07s01", "s07s03"},
    4: {"s02s01", "s02s06", "s03s02", "s03s06"},
    5: {"s04s02", "s04s03", "s04s06", "s06s02", "s06s03"},
}
DATA_MD_CLASSES = ["approaching", "departing", "kicking", "punching", "pushing", "hugging", "shaking_hands",
                   "exchanging"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("sbu")
    written = write_sbu(root, seed=3, sequences_per_set_action=(1, 2))
    return root, written


def _line(values) -> str:
    return ",".join(str(v) for v in values)


def _good_rows(n=3, start=1):
    rng = np.random.default_rng(0)
    return [[start + i] + list(np.round(rng.uniform(0, 1, 90), 6)) for i in range(n)]


def _write_one(root: Path, lines, set_name="s01s02", action="04", seq="001") -> Path:
    folder = root / set_name / action / seq
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "skeleton_pos.txt"
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_round_trip_everything(tree):
    root, written = tree
    ds = load_sbu(root, fold=None)
    assert len(ds) == len(written) > 21 * 8
    assert [s.path for s in ds] == [s.path for s in written]
    for got, exp in zip(ds, written):
        assert got.label == exp.label and got.group == exp.group
        assert got.data.dtype == np.float32 and got.data.shape == exp.data.shape
        assert got.data.shape[1:] == (2, 15, 3)
        # the text holds 6 decimals; float32 keeps ~7 significant digits of values < 8
        np.testing.assert_allclose(got.data, exp.data, rtol=0, atol=1e-6)
    assert ds.class_names == DATA_MD_CLASSES == list(SBU_CLASSES)
    assert ds.graph.name == "sbu" and ds.graph.num_joints == 30
    assert ds.synthetic is True and ds.skipped == []


def test_counts_per_class_and_set(tree):
    root, written = tree
    ds = load_sbu(root, fold=None)
    expected_class = [sum(s.label == c for s in written) for c in range(8)]
    assert ds.class_counts() == expected_class
    assert all(21 <= n <= 42 for n in expected_class)
    expected_sets = {name: sum(s.group == name for s in written) for name in DATA_MD_SETS}
    assert ds.group_counts() == expected_sets
    assert all(8 <= n <= 16 for n in expected_sets.values())
    assert ds.groups() == sorted(DATA_MD_SETS) == sorted(SBU_SETS)


@pytest.mark.parametrize("fold", [1, 2, 3, 4, 5])
def test_folds_follow_data_md(tree, fold):
    root, written = tree
    train, test = load_sbu(root, fold=fold)
    assert set(test.groups()) == DATA_MD_FOLDS[fold]
    assert set(train.groups()) == set(DATA_MD_SETS) - DATA_MD_FOLDS[fold]
    assert len(train) + len(test) == len(written)
    assert len(test) == sum(s.group in DATA_MD_FOLDS[fold] for s in written)
    assert not {s.path for s in train} & {s.path for s in test}


def test_folds_partition_all_sets():
    union = set().union(*DATA_MD_FOLDS.values())
    assert union == set(DATA_MD_SETS) and sum(len(v) for v in DATA_MD_FOLDS.values()) == 21


def test_bad_fold_number(tree):
    with pytest.raises(ValueError, match="fold"):
        load_sbu(tree[0], fold=6)


def test_wrapper_folder_and_marker_below_root(tmp_path):
    inner = tmp_path / "SBU-Kinect-Interaction" / "Clean"
    written = write_sbu(inner, seed=1, sequences_per_set_action=1)
    ds = load_sbu(tmp_path, fold=None)
    assert len(ds) == len(written) == 168
    assert ds.synthetic is True
    assert ds[0].group == "s01s02" and ds[0].label == 0


def test_file_format_as_written(tree):
    root, written = tree
    first = Path(written[0].path).read_text().splitlines()
    fields = first[0].split(",")
    assert len(fields) == 91 and fields[0].isdigit()
    frames = [int(line.split(",")[0]) for line in first]
    assert frames == list(range(frames[0], frames[0] + len(frames)))
    assert len(fields[1].split(".")[1]) == 6


def test_frame_numbers_need_not_start_at_one_and_blank_lines(tmp_path):
    rows = _good_rows(3, start=57)
    path = _write_one(tmp_path, [_line(r) for r in rows[:2]] + ["", _line(rows[2]), "   "])
    data = read_sbu_file(path)
    assert data.shape == (3, 2, 15, 3)
    np.testing.assert_allclose(data[2, 1, 14], rows[2][-3:], atol=1e-6)
    np.testing.assert_allclose(data[0, 0, 0], rows[0][1:4], atol=1e-6)
    ds = load_sbu(tmp_path, fold=None)
    assert len(ds) == 1 and ds.synthetic is False and ds[0].label == 3 and ds[0].group == "s01s02"


def test_trailing_separator_tolerated(tmp_path):
    rows = _good_rows(2)
    path = _write_one(tmp_path, [_line(r) + "," for r in rows])
    assert read_sbu_file(path).shape == (2, 2, 15, 3)


@pytest.mark.parametrize("mutate, line, words", [
    (lambda rows: rows.__setitem__(2, rows[2][:-1]), 3, "expected 91 values, got 90"),
    (lambda rows: rows.__setitem__(1, rows[1] + [0.5]), 2, "expected 91 values, got 92"),
    (lambda rows: rows[1].__setitem__(17, "abc"), 2, "value 18 ('abc') is not a number"),
    (lambda rows: rows[2].__setitem__(5, "nan"), 3, "NaN/inf"),
    (lambda rows: rows[0].__setitem__(90, "inf"), 1, "NaN/inf"),
    (lambda rows: rows[1].__setitem__(0, 2.5), 2, "frame number"),
])
def test_malformed_lines_name_file_and_line(tmp_path, mutate, line, words):
    rows = _good_rows(3)
    mutate(rows)
    path = _write_one(tmp_path, [_line(r) for r in rows])
    with pytest.raises(DataFormatError) as info:
        load_sbu(tmp_path, fold=None)
    message = str(info.value)
    assert message.startswith(f"{path}, line {line}: ")
    assert words in message
    assert info.value.line == line and info.value.path == str(path)


def test_empty_file(tmp_path):
    path = _write_one(tmp_path, [])
    with pytest.raises(DataFormatError, match=r"line 1: file is empty") as info:
        load_sbu(tmp_path, fold=None)
    assert str(path) in str(info.value)


def test_empty_root(tmp_path):
    (tmp_path / "unrelated").mkdir()
    with pytest.raises(DataFormatError, match="no skeleton_pos.txt found") as info:
        load_sbu(tmp_path, fold=1)
    assert str(tmp_path) in str(info.value)


def test_missing_root(tmp_path):
    with pytest.raises(DataFormatError, match="does not exist"):
        load_sbu(tmp_path / "nope")


@pytest.mark.parametrize("set_name, action, words", [
    ("s09s01", "01", "unknown SBU set folder 's09s01'"),
    ("s01s02", "09", "unknown SBU action folder '09'"),
    ("s01s02", "approach", "unknown SBU action folder 'approach'"),
])
def test_unknown_folder_names(tmp_path, set_name, action, words):
    path = _write_one(tmp_path, [_line(r) for r in _good_rows(2)], set_name=set_name, action=action)
    with pytest.raises(DataFormatError, match=words) as info:
        load_sbu(tmp_path, fold=None)
    assert str(info.value).startswith(str(path))


def test_duplicate_sequence_in_two_wrappers(tmp_path):
    lines = [_line(r) for r in _good_rows(2)]
    _write_one(tmp_path / "copy1", lines)
    _write_one(tmp_path / "copy2", lines)
    with pytest.raises(DataFormatError, match="duplicate sequence s01s02/04/001"):
        load_sbu(tmp_path, fold=None)


def test_errors_skip_records_bad_files(tmp_path):
    good = _write_one(tmp_path, [_line(r) for r in _good_rows(2)], set_name="s01s02")
    bad_rows = _good_rows(2)
    bad_rows[1] = bad_rows[1][:50]
    bad = _write_one(tmp_path, [_line(r) for r in bad_rows], set_name="s03s04")
    train, test = load_sbu(tmp_path, fold=1, errors="skip")
    assert len(train) == 0 and [s.path for s in test] == [str(good)]
    assert test.skipped == [(str(bad), f"{bad}, line 2: expected 91 values, got 50")]
    assert train.skipped == []
    with pytest.raises(ValueError, match="errors"):
        load_sbu(tmp_path, errors="ignore")


def test_generated_tree_is_complete(tree):
    root, written = tree
    for set_name in DATA_MD_SETS:
        for action in range(1, 9):
            seqs = sorted(p.name for p in (root / set_name / f"{action:02d}").iterdir())
            assert 1 <= len(seqs) <= 2 and seqs[0] == "001"


def test_copy_without_marker_is_not_synthetic(tree, tmp_path):
    root, _ = tree
    shutil.copytree(root / "s01s02", tmp_path / "s01s02")
    ds = load_sbu(tmp_path, fold=None)
    assert ds.synthetic is False and ds.groups() == ["s01s02"]
