"""FPHA reader: round trip with the generator, the 1:1 split, known-bad sequences, malformed input."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from prunekit.data import DataFormatError, FPHA_CLASSES, load_fpha, read_fpha_file, read_fpha_split, write_fpha

# Copied by hand from docs/data.md (label order 0..44).
DATA_MD_CLASSES = """open_juice_bottle close_juice_bottle pour_juice_bottle open_peanut_butter close_peanut_butter
prick sprinkle scoop_spoon put_sugar stir open_milk close_milk pour_milk drink_mug put_tea_bag put_salt
open_liquid_soap close_liquid_soap pour_liquid_soap wash_sponge flip_sponge scratch_sponge squeeze_sponge
open_soda_can use_flash write tear_paper squeeze_paper open_letter take_letter_from_enveloppe read_letter
flip_pages use_calculator light_candle charge_cell_phone unfold_glasses clean_glasses open_wallet give_coin
receive_coin give_card pour_wine toast_wine handshake high_five""".split()
KNOWN_BAD = ["Subject_2/close_milk/4", "Subject_2/put_tea_bag/2", "Subject_4/flip_sponge/2"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("fpha")
    train, test = write_fpha(root, seed=5, sequences_per_subject_action=2)
    return root, train, test


def _entry(path: str) -> str:
    return "/".join(Path(path).parts[-4:-1])


def test_class_order_matches_data_md():
    assert list(FPHA_CLASSES) == DATA_MD_CLASSES and len(DATA_MD_CLASSES) == 45


def test_round_trip(tree):
    root, w_train, w_test = tree
    train, test = load_fpha(root)
    for got, exp in ((train, w_train), (test, w_test)):
        assert [s.path for s in got] == [s.path for s in exp]
        for a, b in zip(got, exp):
            assert a.label == b.label and a.group == b.group
            assert a.data.shape == b.data.shape and a.data.shape[1:] == (1, 21, 3)
            # 4 decimals of millimetre values up to ~1000: float32 spacing there is 6e-5
            np.testing.assert_allclose(a.data, b.data, rtol=0, atol=1.5e-4)
        assert got.class_names == DATA_MD_CLASSES
        assert got.graph.name == "fpha" and got.graph.num_joints == 21
        assert got.synthetic is True and got.skipped == []


def test_split_is_one_to_one_and_follows_the_file(tree):
    root, _, _ = tree
    train, test = load_fpha(root)
    assert len(train) == len(test) == 6 * 45
    assert train.class_counts() == [6] * 45 == test.class_counts()
    assert train.group_counts() == {f"Subject_{k}": 45 for k in range(1, 7)} == test.group_counts()
    split = read_fpha_split(root / "data_split_action_recognition.txt")
    lines = (root / "data_split_action_recognition.txt").read_text().splitlines()
    assert lines[0] == "Training 270" and lines[271] == "Test 270" and len(lines) == 542
    assert [e for e, _, _ in split["train"]] == [_entry(s.path) for s in train]
    assert [e for e, _, _ in split["test"]] == [_entry(s.path) for s in test]
    assert not {_entry(s.path) for s in train} & {_entry(s.path) for s in test}
    for entry, label, _ in split["train"] + split["test"]:
        assert DATA_MD_CLASSES[label] == entry.split("/")[1]


def test_skip_known_bad(tree):
    root, _, _ = tree
    train, test = load_fpha(root, skip_known_bad=True)
    skipped = train.skipped + test.skipped
    # close_milk/4 does not exist with 2 sequences per subject and action
    assert sorted(_entry(p) for p, _ in skipped) == KNOWN_BAD[1:]
    assert all("known bad" in reason for _, reason in skipped)
    assert len(train) + len(test) == 540 - 2
    loaded = {_entry(s.path) for s in train} | {_entry(s.path) for s in test}
    assert not loaded & set(KNOWN_BAD)


def test_accepts_v1_1_annotation_folder(tree, tmp_path):
    root, w_train, _ = tree
    shutil.copytree(root / "Hand_pose_annotation_v1" / "Subject_1", tmp_path / "Hand_pose_annotation_v1_1" /
                    "Subject_1")
    entries = [f"{_entry(s.path)} {s.label}" for s in w_train if s.group == "Subject_1"]
    (tmp_path / "data_split_action_recognition.txt").write_text(
        f"Training {len(entries)}\n" + "\n".join(entries) + "\nTest 0\n")
    train, test = load_fpha(tmp_path)
    assert len(train) == 45 and len(test) == 0 and train.synthetic is False
    assert "Hand_pose_annotation_v1_1" in train[0].path


# ----------------------------------------------------------------------------- small hand-made trees
def _frames(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [f"{i:04d} " + " ".join(f"{v:.4f}" for v in rng.normal(0, 100, 63)) for i in range(n)]


def _make(root: Path, train_entries, test_entries, files=None, header=None) -> Path:
    """Write a tiny FPHA tree; returns the split file."""
    files = files if files is not None else {e.split()[0]: _frames() for e in train_entries + test_entries}
    for entry, lines in files.items():
        folder = root / "Hand_pose_annotation_v1" / entry
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "skeleton.txt").write_text("".join(line + "\n" for line in lines))
    split = root / "data_split_action_recognition.txt"
    if header is None:
        header = (f"Training {len(train_entries)}", f"Test {len(test_entries)}")
    split.write_text("\n".join([header[0], *train_entries, header[1], *test_entries]) + "\n")
    return split


TRAIN = ["Subject_1/prick/1 5", "Subject_1/stir/1 9"]
TEST = ["Subject_2/prick/1 5"]


def test_small_tree_loads(tmp_path):
    _make(tmp_path, TRAIN, TEST)
    train, test = load_fpha(tmp_path)
    assert train.labels().tolist() == [5, 9] and test.labels().tolist() == [5]
    assert [s.group for s in train] == ["Subject_1", "Subject_1"] and test[0].group == "Subject_2"
    first = _frames()[0].split()
    np.testing.assert_allclose(train[0].data[0, 0, 0], [float(v) for v in first[1:4]], atol=1e-4)
    np.testing.assert_allclose(train[0].data[0, 0, 20], [float(v) for v in first[61:64]], atol=1e-4)


@pytest.mark.parametrize("train_entries, test_entries, header, line, words", [
    (TRAIN, TEST, ("Training 3", "Test 1"), 1, "header 'Training 3' announces 3 entries, found 2"),
    (TRAIN, TEST, ("Training 1", "Test 1"), 3, "expected a 'Test N' header"),
    (TRAIN, TEST, ("Training 2", "Test 2"), 4, "header 'Test 2' announces 2 entries, found 1"),
    (TRAIN, TEST + ["Subject_3/prick/1 5"], ("Training 2", "Test 1"), 6, "unexpected line after the 1"),
    (TRAIN, TEST, ("Train 2", "Test 1"), 1, "expected a 'Training N' header"),
    (TRAIN, TEST, ("Training two", "Test 1"), 1, "header count 'two' is not a non-negative integer"),
    (["Subject_1/prick/1 45", TRAIN[1]], TEST, None, 2, "label 45 out of range 0..44"),
    (["Subject_1/prick/1 -1", TRAIN[1]], TEST, None, 2, "label -1 out of range"),
    (["Subject_1/prick/1 6", TRAIN[1]], TEST, None, 2, "label 6 does not match action 'prick' (label 5)"),
    (["Subject_1/prick/1 five", TRAIN[1]], TEST, None, 2, "label 'five' is not an integer"),
    (["Subject_1/dance/1 5", TRAIN[1]], TEST, None, 2, "unknown action 'dance'"),
    (["Person_1/prick/1 5", TRAIN[1]], TEST, None, 2, "unknown subject 'Person_1'"),
    (["Subject_1/prick 5", TRAIN[1]], TEST, None, 2, "entry must be Subject_k/<action>/<seq>"),
    (["Subject_1/prick/1", TRAIN[1]], TEST, None, 2, "expected '<Subject_k/action/seq> <label>'"),
    (TRAIN, [TRAIN[0]], None, 5, "duplicate entry (first on line 2)"),
])
def test_malformed_split_names_file_and_line(tmp_path, train_entries, test_entries, header, line, words):
    files = {"Subject_1/prick/1": _frames(), "Subject_1/stir/1": _frames(), "Subject_2/prick/1": _frames()}
    split = _make(tmp_path, train_entries, test_entries, files=files, header=header)
    with pytest.raises(DataFormatError) as info:
        load_fpha(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{split}, line {line}")
    assert words in message
    assert info.value.line == line


def test_split_entry_pointing_at_missing_sequence(tmp_path):
    split = _make(tmp_path, TRAIN, TEST, files={"Subject_1/prick/1": _frames(), "Subject_1/stir/1": _frames()})
    with pytest.raises(DataFormatError) as info:
        load_fpha(tmp_path)
    assert str(info.value).startswith(f"{split}, line 5, entry 'Subject_2/prick/1': split entry points at a "
                                      "missing sequence")
    assert info.value.entry == "Subject_2/prick/1"


def test_missing_split_file(tmp_path):
    _make(tmp_path, TRAIN, TEST)
    (tmp_path / "data_split_action_recognition.txt").unlink()
    with pytest.raises(DataFormatError, match="data_split_action_recognition.txt: FPHA split file not found"):
        load_fpha(tmp_path)


def test_empty_split_file(tmp_path):
    split = _make(tmp_path, TRAIN, TEST)
    split.write_text("\n\n")
    with pytest.raises(DataFormatError, match=r"line 1: split file is empty"):
        load_fpha(tmp_path)


def test_empty_root_and_missing_root(tmp_path):
    with pytest.raises(DataFormatError, match="FPHA root folder is empty") as info:
        load_fpha(tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(DataFormatError, match="does not exist"):
        load_fpha(tmp_path / "nope")


def test_missing_annotation_folder(tmp_path):
    (tmp_path / "data_split_action_recognition.txt").write_text("Training 0\nTest 0\n")
    with pytest.raises(DataFormatError, match="no annotation folder"):
        load_fpha(tmp_path)


def _set(frames, row, col, value):
    tokens = frames[row].split()
    tokens[col] = value
    frames[row] = " ".join(tokens)


@pytest.mark.parametrize("mutate, line, words", [
    (lambda f: f.__setitem__(1, f[1] + " 1.0"), 2, "expected 64 values, got 65"),
    (lambda f: f.__setitem__(2, " ".join(f[2].split()[:40])), 3, "expected 64 values, got 40"),
    (lambda f: _set(f, 0, 7, "x"), 1, "value 8 ('x') is not a number"),
    (lambda f: _set(f, 1, 3, "NaN"), 2, "NaN/inf"),
    (lambda f: _set(f, 2, 0, "0002.5"), 3, "frame index"),
])
def test_malformed_skeleton_names_file_and_line(tmp_path, mutate, line, words):
    frames = _frames()
    mutate(frames)
    _make(tmp_path, TRAIN, TEST, files={"Subject_1/prick/1": _frames(), "Subject_1/stir/1": frames,
                                        "Subject_2/prick/1": _frames()})
    path = tmp_path / "Hand_pose_annotation_v1" / "Subject_1" / "stir" / "1" / "skeleton.txt"
    with pytest.raises(DataFormatError) as info:
        load_fpha(tmp_path)
    assert str(info.value).startswith(f"{path}, line {line}: ")
    assert words in str(info.value)
    # errors="skip" records the same message and keeps the others
    train, test = load_fpha(tmp_path, errors="skip")
    assert [s.label for s in train] == [5] and len(test) == 1
    assert train.skipped == [(str(path), str(info.value))]


def test_empty_skeleton_file(tmp_path):
    _make(tmp_path, TRAIN, TEST, files={"Subject_1/prick/1": [], "Subject_1/stir/1": _frames(),
                                        "Subject_2/prick/1": _frames()})
    with pytest.raises(DataFormatError, match=r"prick/1/skeleton.txt, line 1: file is empty"):
        load_fpha(tmp_path)


def test_unlisted_sequences_are_reported(tmp_path):
    _make(tmp_path, TRAIN, TEST, files={"Subject_1/prick/1": _frames(), "Subject_1/stir/1": _frames(),
                                        "Subject_2/prick/1": _frames(), "Subject_3/stir/7": _frames()})
    train, test = load_fpha(tmp_path)
    extra = str(tmp_path / "Hand_pose_annotation_v1" / "Subject_3" / "stir" / "7" / "skeleton.txt")
    assert train.skipped == test.skipped == [(extra, "not listed in data_split_action_recognition.txt")]


def test_read_fpha_file_shape(tmp_path):
    path = tmp_path / "skeleton.txt"
    path.write_text("\n".join(_frames(5)) + "\n")
    assert read_fpha_file(path).shape == (5, 1, 21, 3)
