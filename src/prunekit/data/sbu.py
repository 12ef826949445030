"""Reader for SBU Kinect Interaction v2.0 (clean version) and its 5-fold protocol.

Layout (``docs/data.md``): ``<set>/<action 01..08>/<seq>/skeleton_pos.txt``, possibly
under wrapper folders; every ``skeleton_pos.txt`` below ``root`` is found and its set,
action and sequence are taken from the last three folder names. Each line is one
frame: 91 comma-separated numbers, the frame number then person A's 15 joints
``(x, y, z)`` then person B's, read into ``[T, 2, 15, 3]`` float32.

The protocol is 5-fold cross-validation by set: fold ``k`` (1..5) lists the test
sets (:data:`SBU_FOLDS`), the other sets train. Report the mean over folds.

Example:
    >>> import tempfile
    >>> from prunekit.data.synth import write_sbu
    >>> root = tempfile.mkdtemp()
    >>> _ = write_sbu(root, seed=0, sequences_per_set_action=1)
    >>> train, test = load_sbu(root, fold=1)
    >>> len(train), len(test), test.groups(), train.synthetic
    (136, 32, ['s01s02', 's03s04', 's05s02', 's06s04'], True)
    >>> train[0].data.shape[1:]
    (2, 15, 3)
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .records import (
    DataFormatError, SkeletonDataset, SkeletonSequence, check_synthetic_complete, find_data_files, is_synthetic,
    parse_numeric_lines,
)

__all__ = ["load_sbu", "read_sbu_file", "SBU_CLASSES", "SBU_SETS", "SBU_FOLDS", "SBU_FILE"]

SBU_FILE = "skeleton_pos.txt"
SBU_CLASSES = (
    "approaching", "departing", "kicking", "punching", "pushing", "hugging", "shaking_hands", "exchanging",
)
SBU_SETS = (
    "s01s02", "s01s03", "s01s07", "s02s01", "s02s03", "s02s06", "s02s07", "s03s02", "s03s04", "s03s05",
    "s03s06", "s04s02", "s04s03", "s04s06", "s05s02", "s05s03", "s06s02", "s06s03", "s06s04", "s07s01",
    "s07s03",
)
#: Test sets of each fold of the official 5-fold cross-validation.
SBU_FOLDS = {
    1: ("s01s02", "s03s04", "s05s02", "s06s04"),
    2: ("s02s03", "s02s07", "s03s05", "s05s03"),
    3: ("s01s03", "s01s07", "s07s01", "s07s03"),
    4: ("s02s01", "s02s06", "s03s02", "s03s06"),
    5: ("s04s02", "s04s03", "s04s06", "s06s02", "s06s03"),
}
_COLUMNS = 1 + 2 * 15 * 3


def read_sbu_file(path: str | os.PathLike) -> np.ndarray:
    """Read one ``skeleton_pos.txt`` into float32 ``[T, 2, 15, 3]``.

    Raises :class:`DataFormatError` naming the file and line on an empty file, a line
    without 91 values, a non-numeric / NaN / infinite value or a non-integer frame number.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "skeleton_pos.txt")
        >>> _ = open(p, "w").write("1," + ",".join(["0.5"] * 90) + "\\n")
        >>> read_sbu_file(p).shape
        (1, 2, 15, 3)
    """
    values = parse_numeric_lines(path, sep=",", columns=_COLUMNS)
    frames = values[:, 0]
    bad = np.flatnonzero(frames != np.round(frames))
    if bad.size:
        line = _line_of_row(path, int(bad[0]))
        raise DataFormatError(f"frame number {frames[bad[0]]!r} is not an integer", path=path, line=line)
    return values[:, 1:].reshape(-1, 2, 15, 3).astype(np.float32)


def _line_of_row(path, row: int) -> int:
    """1-based line number of the ``row``-th non-blank line of a text file."""
    with open(path, "r", encoding="ascii") as fh:
        seen = -1
        for number, line in enumerate(fh, start=1):
            if line.strip():
                seen += 1
                if seen == row:
                    return number
    return row + 1  # pragma: no cover


def _find_files(root: Path) -> tuple[list[Path], list[tuple[str | None, tuple[str, str]]]]:
    """Files, and ``(set or None, (path, reason))`` for what the walk skipped (loops, folders named like files)."""
    files, walk_skips = find_data_files(root, SBU_FILE)
    skipped = []
    for path, reason in walk_skips:
        parents = Path(path).parents
        set_name = parents[2].name if len(parents) > 2 and Path(path).name == SBU_FILE else None
        skipped.append((set_name if set_name in SBU_SETS else None, (path, reason)))
    return files, skipped


def _parse_action(name: str) -> int | None:
    if name.isdigit() and 1 <= int(name) <= len(SBU_CLASSES):
        return int(name) - 1
    return None


def load_sbu(root: str | os.PathLike, fold: int | None = 1, *, errors: str = "raise"):
    """Load SBU Kinect Interaction from ``root`` for one cross-validation fold.

    Args:
        root: folder holding the set folders (wrapper folders are tolerated).
        fold: 1..5 returns ``(train, test)`` with fold ``fold``'s sets as the test
            sets (:data:`SBU_FOLDS`); ``None`` returns one dataset with everything.
        errors: ``"raise"`` (default) raises :class:`DataFormatError` on the first bad
            file; ``"skip"`` records each bad file with its error in ``.skipped`` and
            goes on. Bad folder names and duplicate sequences always raise. Folders
            named ``skeleton_pos.txt``, non-regular files, and symbolic links back to a
            folder already visited (loops) are never read and always listed in ``.skipped``.
            An interrupted synthetic tree (marker ``status: incomplete``) raises.

    Returns:
        ``(train, test)`` :class:`SkeletonDataset` pairs (graph ``"sbu"``: persons A then B,
        30 joints once merged), or one dataset when ``fold is None``. Sequences are in
        sorted (set, action, sequence) order; ``.synthetic`` is True when the tree was
        written by :func:`prunekit.data.synth.write_sbu`.

    Example:
        >>> import tempfile
        >>> from prunekit.data.synth import write_sbu
        >>> root = tempfile.mkdtemp()
        >>> _ = write_sbu(root, seed=1, sequences_per_set_action=1)
        >>> everything = load_sbu(root, fold=None)
        >>> len(everything), everything.class_counts()
        (168, [21, 21, 21, 21, 21, 21, 21, 21])
    """
    if fold is not None and fold not in SBU_FOLDS:
        raise ValueError(f"SBU fold must be one of 1..5 or None, got {fold!r}")
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataFormatError("SBU root folder does not exist", path=root)
    check_synthetic_complete(root)
    files, skipped = _find_files(root)  # skipped: (set or None for every set, (path, reason))
    if not files:
        extra = f"; skipped: {skipped[0][1][0]}: {skipped[0][1][1]}" if skipped else ""
        raise DataFormatError(f"no {SBU_FILE} found below this folder (empty or not an SBU root){extra}", path=root)

    sequences: list[tuple[tuple[str, int, str], SkeletonSequence]] = []
    seen: dict[tuple[str, int, str], Path] = {}
    set_parents: set[Path] = set()
    for path in files:
        seq_dir = path.parent
        action_dir = seq_dir.parent
        set_dir = action_dir.parent
        set_name = set_dir.name
        if set_name not in SBU_SETS:
            raise DataFormatError(f"unknown SBU set folder {set_name!r} (known: {', '.join(SBU_SETS)})", path=path)
        label = _parse_action(action_dir.name)
        if label is None:
            raise DataFormatError(f"unknown SBU action folder {action_dir.name!r} (expected 01..08)", path=path)
        key = (set_name, label, seq_dir.name)
        if key in seen:
            raise DataFormatError(f"duplicate sequence {set_name}/{action_dir.name}/{seq_dir.name}, also at "
                                  f"{seen[key]}", path=path)
        seen[key] = path
        set_parents.add(set_dir.parent)
        try:
            data = read_sbu_file(path)
        except DataFormatError as exc:
            if errors == "raise":
                raise
            skipped.append((set_name, (str(path), str(exc))))
            continue
        sequences.append((key, SkeletonSequence(data, label, set_name, str(path))))

    sequences.sort(key=lambda item: item[0])
    check_synthetic_complete(*sorted(set_parents))
    synthetic = is_synthetic(root, *sorted(set_parents))

    def make(keep_sets) -> SkeletonDataset:
        seqs = [s for (set_name, _, _), s in sequences if set_name in keep_sets]
        skips = [item for set_name, item in skipped if set_name is None or set_name in keep_sets]
        return SkeletonDataset(seqs, list(SBU_CLASSES), "sbu", skips, synthetic)

    if fold is None:
        return make(set(SBU_SETS))
    test_sets = set(SBU_FOLDS[fold])
    return make(set(SBU_SETS) - test_sets), make(test_sets)
