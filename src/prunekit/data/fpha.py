"""Reader for FPHA (First-Person Hand Action Benchmark) hand poses and its 1:1 split.

Layout (``docs/data.md``)::

    root/data_split_action_recognition.txt
    root/Hand_pose_annotation_v1/Subject_<k>/<action>/<seq>/skeleton.txt   (or ..._v1_1)

``skeleton.txt`` holds one frame per line: 64 whitespace-separated numbers, the
zero-padded frame index then 21 joints ``(x, y, z)`` in millimetres, read into
``[T, 1, 21, 3]`` float32. The split file is ``Training N`` followed by ``N`` lines
``Subject_k/<action>/<seq> <label>``, then ``Test M`` and ``M`` lines; labels index
:data:`FPHA_CLASSES`.

Example:
    >>> import tempfile
    >>> from prunekit.data.synth import write_fpha
    >>> root = tempfile.mkdtemp()
    >>> _ = write_fpha(root, seed=0, sequences_per_subject_action=2, subjects=1)
    >>> train, test = load_fpha(root)
    >>> len(train), len(test), train.num_classes, train[0].data.shape[1:]
    (45, 45, 45, (1, 21, 3))
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from .records import (
    DataFormatError, SkeletonDataset, SkeletonSequence, check_synthetic_complete, find_data_files, is_synthetic,
    parse_numeric_lines,
)

__all__ = ["load_fpha", "read_fpha_file", "read_fpha_split", "FPHA_CLASSES", "FPHA_KNOWN_BAD", "FPHA_SPLIT_FILE",
           "FPHA_ANNOTATION_DIRS", "FPHA_FILE"]

FPHA_FILE = "skeleton.txt"
FPHA_SPLIT_FILE = "data_split_action_recognition.txt"
#: Accepted annotation folder names; when both exist the newer ``_v1_1`` is used.
FPHA_ANNOTATION_DIRS = ("Hand_pose_annotation_v1_1", "Hand_pose_annotation_v1")
FPHA_CLASSES = (
    "open_juice_bottle", "close_juice_bottle", "pour_juice_bottle", "open_peanut_butter", "close_peanut_butter",
    "prick", "sprinkle", "scoop_spoon", "put_sugar", "stir", "open_milk", "close_milk", "pour_milk", "drink_mug",
    "put_tea_bag", "put_salt", "open_liquid_soap", "close_liquid_soap", "pour_liquid_soap", "wash_sponge",
    "flip_sponge", "scratch_sponge", "squeeze_sponge", "open_soda_can", "use_flash", "write", "tear_paper",
    "squeeze_paper", "open_letter", "take_letter_from_enveloppe", "read_letter", "flip_pages", "use_calculator",
    "light_candle", "charge_cell_phone", "unfold_glasses", "clean_glasses", "open_wallet", "give_coin",
    "receive_coin", "give_card", "pour_wine", "toast_wine", "handshake", "high_five",
)
#: Sequences known to be bad (``docs/data.md``); skipped with ``skip_known_bad=True``.
FPHA_KNOWN_BAD = ("Subject_2/close_milk/4", "Subject_2/put_tea_bag/2", "Subject_4/flip_sponge/2")

_COLUMNS = 1 + 21 * 3
_SUBJECT = re.compile(r"^Subject_\d+$")
_HEADER = re.compile(r"^(Training|Test)\s+(\S+)$", re.IGNORECASE)


def read_fpha_file(path: str | os.PathLike) -> np.ndarray:
    """Read one FPHA ``skeleton.txt`` into float32 ``[T, 1, 21, 3]`` (millimetres).

    Raises :class:`DataFormatError` naming the file and line on an empty file, a line
    without 64 values, a non-numeric / NaN / infinite value or a non-integer frame index.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "skeleton.txt")
        >>> _ = open(p, "w").write("0000 " + " ".join(["1.5"] * 63) + "\\n")
        >>> read_fpha_file(p).shape
        (1, 1, 21, 3)
    """
    values = parse_numeric_lines(path, sep=None, columns=_COLUMNS)
    frames = values[:, 0]
    bad = np.flatnonzero(frames != np.round(frames))
    if bad.size:
        raise DataFormatError(f"frame index {frames[bad[0]]!r} is not an integer", path=path,
                              line=_line_of_row(path, int(bad[0])))
    return values[:, 1:].reshape(-1, 1, 21, 3).astype(np.float32)


def _line_of_row(path, row: int) -> int:
    with open(path, "r", encoding="ascii") as fh:
        seen = -1
        for number, line in enumerate(fh, start=1):
            if line.strip():
                seen += 1
                if seen == row:
                    return number
    return row + 1  # pragma: no cover


def read_fpha_split(path: str | os.PathLike) -> dict[str, list[tuple[str, int, int]]]:
    """Parse ``data_split_action_recognition.txt`` strictly.

    Returns ``{"train": [(entry, label, line), ...], "test": [...]}`` where ``entry`` is
    ``"Subject_k/<action>/<seq>"``. Raises :class:`DataFormatError` naming the file and
    line (and the entry) on a missing file, a missing or malformed header, header counts
    that do not match the entries, a malformed entry, an unknown action or subject, a
    label out of 0..44 or not matching the action, and duplicate entries.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "data_split_action_recognition.txt")
        >>> _ = open(p, "w").write("Training 1\\nSubject_1/prick/1 5\\nTest 1\\nSubject_2/prick/1 5\\n")
        >>> read_fpha_split(p)["test"]
        [('Subject_2/prick/1', 5, 4)]
    """
    path = str(path)
    if not os.path.isfile(path):
        raise DataFormatError("FPHA split file not found", path=path)
    try:
        with open(path, "r", encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"cannot read split file ({exc})", path=path) from None

    content = [(n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()]
    if not content:
        raise DataFormatError("split file is empty (expected a 'Training N' header)", path=path, line=1)
    out: dict[str, list[tuple[str, int, int]]] = {"train": [], "test": []}
    seen: dict[str, int] = {}
    index = 0
    for part, header in (("train", "Training"), ("test", "Test")):
        if index >= len(content):
            last = content[-1][0]
            raise DataFormatError(f"missing '{header} N' header (file ends)", path=path, line=last + 1)
        number, text = content[index]
        match = _HEADER.match(text)
        if not match or match.group(1).lower() != header.lower():
            raise DataFormatError(f"expected a '{header} N' header, got {text!r}", path=path, line=number)
        try:
            count = int(match.group(2))
            if count < 0:
                raise ValueError
        except ValueError:
            raise DataFormatError(f"header count {match.group(2)!r} is not a non-negative integer", path=path,
                                  line=number) from None
        header_line = number
        index += 1
        for k in range(count):
            if index >= len(content) or _HEADER.match(content[index][1]):
                raise DataFormatError(f"header '{header} {count}' announces {count} entries, found {k}",
                                      path=path, line=header_line)
            number, text = content[index]
            index += 1
            out[part].append(_parse_entry(path, number, text, seen))
    if index < len(content):
        number, text = content[index]
        raise DataFormatError(f"unexpected line after the {len(out['test'])} announced test entries: {text!r} "
                              "(header count smaller than the entries?)", path=path, line=number)
    return out


def _parse_entry(path: str, number: int, text: str, seen: dict[str, int]) -> tuple[str, int, int]:
    fields = text.split()
    if len(fields) != 2:
        raise DataFormatError(f"expected '<Subject_k/action/seq> <label>', got {text!r}", path=path, line=number)
    entry, label_text = fields
    parts = entry.strip("/").split("/")
    if len(parts) != 3 or not all(parts):
        raise DataFormatError("entry must be Subject_k/<action>/<seq>", path=path, line=number, entry=entry)
    subject, action, _ = parts
    if not _SUBJECT.match(subject):
        raise DataFormatError(f"unknown subject {subject!r} (expected Subject_<k>)", path=path, line=number,
                              entry=entry)
    if action not in FPHA_CLASSES:
        raise DataFormatError(f"unknown action {action!r}", path=path, line=number, entry=entry)
    try:
        label = int(label_text)
    except ValueError:
        raise DataFormatError(f"label {label_text!r} is not an integer", path=path, line=number,
                              entry=entry) from None
    if not 0 <= label < len(FPHA_CLASSES):
        raise DataFormatError(f"label {label} out of range 0..{len(FPHA_CLASSES) - 1}", path=path, line=number,
                              entry=entry)
    expected = FPHA_CLASSES.index(action)
    if label != expected:
        raise DataFormatError(f"label {label} does not match action {action!r} (label {expected})", path=path,
                              line=number, entry=entry)
    entry = "/".join(parts)
    if entry in seen:
        raise DataFormatError(f"duplicate entry (first on line {seen[entry]})", path=path, line=number, entry=entry)
    seen[entry] = number
    return entry, label, number


def _find_layout(root: Path, annotation: str | None) -> tuple[Path, Path]:
    """(split file, annotation folder) for ``root``."""
    split = None
    for folder in (root, root.parent):
        if (folder / FPHA_SPLIT_FILE).is_file():
            split = folder / FPHA_SPLIT_FILE
            break
    names = (annotation,) if annotation else FPHA_ANNOTATION_DIRS
    ann = None
    for name in names:
        if (root / name).is_dir():
            ann = root / name
            break
    if ann is None and annotation is None and any(_SUBJECT.match(p.name) for p in root.iterdir() if p.is_dir()):
        ann = root  # root is the annotation folder itself
    if split is None:
        if ann is None and not any(root.iterdir()):
            raise DataFormatError("FPHA root folder is empty", path=root)
        raise DataFormatError("FPHA split file not found (looked here and in the parent folder)",
                              path=root / FPHA_SPLIT_FILE)
    if ann is None:
        raise DataFormatError(f"no annotation folder {' or '.join(names)} in the FPHA root", path=root)
    return split, ann


def load_fpha(root: str | os.PathLike, *, skip_known_bad: bool = False, annotation: str | None = None,
              errors: str = "raise"):
    """Load FPHA hand poses from ``root`` with the official 1:1 split.

    Args:
        root: folder holding ``data_split_action_recognition.txt`` and
            ``Hand_pose_annotation_v1`` (or ``Hand_pose_annotation_v1_1``; the newer one
            wins when both are present, or name one with ``annotation``).
        skip_known_bad: skip :data:`FPHA_KNOWN_BAD`; each is recorded in ``.skipped``.
        annotation: force the annotation folder name.
        errors: ``"raise"`` (default) raises on the first bad ``skeleton.txt``;
            ``"skip"`` records it with its error in ``.skipped`` and goes on. Split file
            errors and split entries pointing at missing sequences always raise. A
            ``skeleton.txt`` that is a folder or not a regular file, and symbolic links back
            to a folder already visited (loops), are never read and always listed in
            ``.skipped``; an interrupted synthetic tree (marker ``status: incomplete``) raises.

    Returns:
        ``(train, test)`` :class:`SkeletonDataset` (graph ``"fpha"``, 45 classes in
        :data:`FPHA_CLASSES` order) in split-file order. Sequences present on disk but not
        listed in the split file are recorded in both datasets' ``.skipped``.

    Example:
        >>> import tempfile
        >>> from prunekit.data.synth import write_fpha
        >>> root = tempfile.mkdtemp()
        >>> _ = write_fpha(root, seed=0, sequences_per_subject_action=2, subjects=2)
        >>> train, test = load_fpha(root, skip_known_bad=True)
        >>> len(train) + len(test), [p.split("Hand_pose_annotation_v1/")[1] for p, _ in train.skipped + test.skipped]
        (179, ['Subject_2/put_tea_bag/2/skeleton.txt'])
    """
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError("FPHA root folder does not exist", path=root)
    check_synthetic_complete(root)
    split_path, ann = _find_layout(root, annotation)
    check_synthetic_complete(split_path.parent)
    split = read_fpha_split(split_path)

    listed: set[str] = set()
    results = {}
    for part in ("train", "test"):
        sequences: list[SkeletonSequence] = []
        skipped: list[tuple[str, str]] = []
        for entry, label, line in split[part]:
            listed.add(entry)
            path = ann.joinpath(*entry.split("/"), FPHA_FILE)
            if path.is_dir() or (path.exists() and not path.is_file()):
                kind = "a folder named like a data file, not a file" if path.is_dir() else "not a regular file"
                skipped.append((str(path), f"{kind} (listed in {split_path.name}, line {line})"))
                continue
            if not path.is_file():
                raise DataFormatError(f"split entry points at a missing sequence ({path} not found)",
                                      path=split_path, line=line, entry=entry)
            if skip_known_bad and entry in FPHA_KNOWN_BAD:
                skipped.append((str(path), "known bad sequence (docs/data.md), skip_known_bad=True"))
                continue
            try:
                data = read_fpha_file(path)
            except DataFormatError as exc:
                if errors == "raise":
                    raise
                skipped.append((str(path), str(exc)))
                continue
            sequences.append(SkeletonSequence(data, label, entry.split("/")[0], str(path)))
        results[part] = (sequences, skipped)

    reported = {p for part in results.values() for p, _ in part[1]}
    files, walk_skips = find_data_files(ann, FPHA_FILE)
    unlisted = [(p, reason) for p, reason in walk_skips if p not in reported]
    for path in files:
        rel = path.parent.relative_to(ann).as_posix()
        if rel not in listed:
            unlisted.append((str(path), f"not listed in {split_path.name}"))
    synthetic = is_synthetic(root, split_path.parent)
    return tuple(
        SkeletonDataset(results[part][0], list(FPHA_CLASSES), "fpha", results[part][1] + unlisted, synthetic)
        for part in ("train", "test"))
