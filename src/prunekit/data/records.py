"""Record types shared by the skeleton readers, and the error every reader raises.

A :class:`SkeletonSequence` is one recorded action: an array ``[T, M, V, 3]`` of
``T`` frames, ``M`` persons (SBU: 2, FPHA: 1), ``V`` joints (SBU: 15 per person,
FPHA: 21) and ``(x, y, z)`` coordinates, its class label, its group (SBU set such
as ``"s01s02"``, FPHA subject such as ``"Subject_1"``) and the file it came from.
A :class:`SkeletonDataset` holds sequences plus the class names, the skeleton
:class:`~prunekit.data.graphs.Graph`, everything the reader skipped (never dropped
silently) and whether the tree on disk was written by the synthetic generator.

Example:
    >>> import numpy as np
    >>> seq = SkeletonSequence(np.zeros((4, 1, 21, 3), np.float32), 3, "Subject_1", "a/skeleton.txt")
    >>> ds = SkeletonDataset([seq], ["a", "b", "c", "d"], "fpha")
    >>> len(ds), ds.graph.num_joints, ds.class_counts()
    (1, 21, [0, 0, 0, 1])
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .graphs import Graph, get_graph

__all__ = ["DataFormatError", "SkeletonSequence", "SkeletonDataset", "SYNTHETIC_MARKER", "find_data_files",
           "synthetic_status", "check_synthetic_complete"]

#: File the synthetic generator writes at the root of every tree it produces. It is written
#: (atomically) *before* any data file with ``status: incomplete`` and rewritten with
#: ``status: complete`` after the last one, so an interrupted generation is recognised.
SYNTHETIC_MARKER = "SYNTHETIC_DATA.txt"
_MARKER_MAX_BYTES = 64 * 1024


class DataFormatError(ValueError):
    """A data file (or folder, or split entry) is not in the expected format.

    The message always starts with the offending file and, where one applies, the
    line number or the split entry, so a user can open the file at the right place.
    ``path``, ``line`` and ``entry`` are kept as attributes.

    Example:
        >>> err = DataFormatError("expected 91 values, got 90", path="s01s02/01/001/skeleton_pos.txt", line=7)
        >>> str(err)
        's01s02/01/001/skeleton_pos.txt, line 7: expected 91 values, got 90'
        >>> err.line
        7
    """

    def __init__(self, message: str, *, path: str | os.PathLike, line: int | None = None,
                 entry: str | None = None):
        self.path = str(path)
        self.line = line
        self.entry = entry
        self.reason = message
        where = self.path
        if line is not None:
            where += f", line {line}"
        if entry is not None:
            where += f", entry {entry!r}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # keep the keyword-only constructor picklable (multiprocessing)
        return (_rebuild_error, (self.reason, self.path, self.line, self.entry))


def _rebuild_error(message, path, line, entry):
    return DataFormatError(message, path=path, line=line, entry=entry)


@dataclass
class SkeletonSequence:
    """One action sequence.

    Attributes:
        data: float32 array ``[T, M, V, 3]`` (frames, persons, joints, xyz).
        label: class index into the dataset's ``class_names``.
        group: SBU set (``"s01s02"``) or FPHA subject (``"Subject_1"``).
        path: the file it was read from (or written to).

    Example:
        >>> import numpy as np
        >>> s = SkeletonSequence(np.zeros((30, 2, 15, 3), np.float32), 0, "s01s02", "x.txt")
        >>> s.num_frames, s.num_persons, s.num_joints
        (30, 2, 15)
    """

    data: np.ndarray
    label: int
    group: str
    path: str

    def __post_init__(self) -> None:
        arr = np.asarray(self.data)
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise ValueError(f"{self.path}: sequence data must be [T, M, V, 3], got shape {arr.shape}")
        self.data = arr.astype(np.float32, copy=False)
        self.label = int(self.label)

    @property
    def num_frames(self) -> int:
        return int(self.data.shape[0])

    @property
    def num_persons(self) -> int:
        return int(self.data.shape[1])

    @property
    def num_joints(self) -> int:
        return int(self.data.shape[2])


@dataclass
class SkeletonDataset:
    """A list of :class:`SkeletonSequence` with its class names and skeleton graph.

    Attributes:
        sequences: the sequences, in a deterministic (sorted path) order.
        class_names: ``class_names[label]`` names a class.
        graph: the :class:`~prunekit.data.graphs.Graph` a model should use (a name
            such as ``"sbu"`` is resolved on construction).
        skipped: ``(path, reason)`` for every sequence the reader did not load.
        synthetic: True when the tree carries the generator's ``SYNTHETIC_DATA.txt``.

    Example:
        >>> import numpy as np
        >>> seqs = [SkeletonSequence(np.zeros((5, 2, 15, 3)), i % 2, "s01s02", f"{i}") for i in range(3)]
        >>> ds = SkeletonDataset(seqs, ["approaching", "departing"], "sbu")
        >>> ds.labels().tolist(), ds.groups(), ds.graph.name
        ([0, 1, 0], ['s01s02'], 'sbu')
    """

    sequences: list[SkeletonSequence]
    class_names: list[str]
    graph: Graph | str
    skipped: list[tuple[str, str]] = field(default_factory=list)
    synthetic: bool = False

    def __post_init__(self) -> None:
        self.graph = get_graph(self.graph)
        self.sequences = list(self.sequences)
        self.class_names = list(self.class_names)
        for seq in self.sequences:
            if not 0 <= seq.label < len(self.class_names):
                raise DataFormatError(
                    f"label {seq.label} out of range 0..{len(self.class_names) - 1}", path=seq.path)

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, index: int) -> SkeletonSequence:
        return self.sequences[index]

    def __iter__(self):
        return iter(self.sequences)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def labels(self) -> np.ndarray:
        """Labels of all sequences as an int64 array ``[N]``."""
        return np.array([s.label for s in self.sequences], dtype=np.int64)

    def groups(self) -> list[str]:
        """Sorted distinct groups (SBU sets / FPHA subjects) present."""
        return sorted({s.group for s in self.sequences})

    def class_counts(self) -> list[int]:
        """Number of sequences per class, indexed by label."""
        counts = Counter(s.label for s in self.sequences)
        return [counts.get(i, 0) for i in range(len(self.class_names))]

    def group_counts(self) -> dict[str, int]:
        """Number of sequences per group."""
        return dict(sorted(Counter(s.group for s in self.sequences).items()))

    def lengths(self) -> np.ndarray:
        """Frame count of every sequence, int64 ``[N]``."""
        return np.array([s.num_frames for s in self.sequences], dtype=np.int64)

    def subset(self, keep) -> "SkeletonDataset":
        """A dataset with the sequences for which ``keep(seq)`` is true (same names, graph, flags)."""
        return SkeletonDataset([s for s in self.sequences if keep(s)], self.class_names, self.graph,
                               list(self.skipped), self.synthetic)

    def summary(self) -> str:
        """A one-line description: count, classes, groups, frame range, skipped, synthetic."""
        lengths = self.lengths()
        frames = f"{lengths.min()}-{lengths.max()} frames" if len(lengths) else "no frames"
        tag = " [SYNTHETIC]" if self.synthetic else ""
        return (f"{len(self)} sequences, {self.num_classes} classes, {len(self.groups())} groups, "
                f"{frames}, {len(self.skipped)} skipped, graph {self.graph.name!r}{tag}")


def is_synthetic(*folders: str | os.PathLike) -> bool:
    """True when any of ``folders`` holds the generator's marker file."""
    return any(Path(f, SYNTHETIC_MARKER).is_file() for f in folders if f is not None)


def synthetic_status(folder: str | os.PathLike) -> str | None:
    """``"complete"``, ``"incomplete"`` or ``None`` (no marker) for a synthetic tree's root.

    A marker without a ``status:`` line (written by versions that wrote it last) counts
    as complete; an unreadable or oversized marker as incomplete.

    Example:
        >>> import tempfile
        >>> synthetic_status(tempfile.mkdtemp()) is None
        True
    """
    path = Path(folder, SYNTHETIC_MARKER)
    if not path.is_file():
        return None
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MARKER_MAX_BYTES + 1)
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return "incomplete"
    if len(raw) > _MARKER_MAX_BYTES:
        return "incomplete"
    for line in text.splitlines():
        if line.startswith("status:"):
            return "complete" if line.split(":", 1)[1].strip() == "complete" else "incomplete"
    return "complete"


def check_synthetic_complete(*folders: str | os.PathLike) -> None:
    """Raise :class:`DataFormatError` when one of ``folders`` holds an interrupted synthetic tree."""
    for folder in folders:
        if folder is not None and synthetic_status(folder) == "incomplete":
            raise DataFormatError("incomplete synthetic tree: its generation was interrupted, so files may be "
                                  "missing or truncated; regenerate it with `prunekit data synth --overwrite`",
                                  path=Path(folder, SYNTHETIC_MARKER))


def find_data_files(root: str | os.PathLike, filename: str) -> tuple[list[Path], list[tuple[str, str]]]:
    """Every regular file named ``filename`` below ``root``, and what was skipped on the way.

    Symbolic links to folders are followed, but each real folder is entered once: a link
    back to a folder already visited (a loop, or a second link to the same folder) is
    not followed and is reported. An entry named ``filename`` that is a folder, a FIFO,
    a device or a broken link is reported too. Returns ``(sorted files, [(path, reason)])``.

    Example:
        >>> import tempfile, os
        >>> root = tempfile.mkdtemp()
        >>> os.makedirs(os.path.join(root, "a", "skeleton.txt"))
        >>> os.symlink(root, os.path.join(root, "a", "up"))
        >>> files, skipped = find_data_files(root, "skeleton.txt")
        >>> files, [reason.split(":")[0] for _, reason in skipped]
        ([], ['a folder named like a data file, not a file', 'link to a folder already visited'])
    """
    found: list[Path] = []
    skipped: list[tuple[str, str]] = []
    visited: set[tuple[int, int]] = set()
    todo = [Path(root)]
    while todo:
        folder = todo.pop()
        try:
            st = folder.stat()
            key = (st.st_dev, st.st_ino)
            if key in visited:
                skipped.append((str(folder), "link to a folder already visited: not followed (a symlink loop, or a "
                                             "second link to the same folder)"))
                continue
            visited.add(key)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skipped.append((str(folder), f"cannot read folder ({exc.strerror or exc})"))
            continue
        subfolders = []
        for entry in entries:
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
            except OSError:  # pragma: no cover - racing deletions
                is_dir = is_file = False
            if entry.name == filename:
                if is_file:
                    found.append(Path(entry.path))
                elif is_dir:
                    skipped.append((entry.path, f"a folder named like a data file, not a file: {filename} must be "
                                                "a regular file"))
                else:
                    skipped.append((entry.path, "not a regular file (a FIFO, socket, device or broken link)"))
            elif is_dir:
                subfolders.append(Path(entry.path))
        todo.extend(reversed(subfolders))
    return sorted(found), skipped


def parse_numeric_lines(path: str | os.PathLike, *, sep: str | None, columns: int) -> np.ndarray:
    """Parse a text file of numeric rows into float64 ``[rows, columns]`` with exact error positions.

    ``sep=None`` splits on whitespace; otherwise on ``sep`` (surrounding whitespace and a
    single trailing separator are tolerated). Blank lines are ignored. Raises
    :class:`DataFormatError` naming the file and line for an empty file, a wrong value
    count, a non-numeric value or a NaN / infinite value.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "t.txt")
        >>> _ = open(p, "w").write("1,2,3\\n4,5,6\\n")
        >>> parse_numeric_lines(p, sep=",", columns=3).tolist()
        [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    """
    path = str(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DataFormatError(f"cannot read file ({exc.strerror or exc})", path=path) from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataFormatError(f"non-text byte 0x{raw[exc.start]:02x} in a numeric file", path=path,
                              line=line) from None
    numbers: list[int] = []
    rows: list[list[str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if sep is None:
            fields = stripped.split()
        else:
            if stripped.endswith(sep):
                stripped = stripped[: -len(sep)]
            fields = stripped.split(sep)
        if len(fields) != columns:
            raise DataFormatError(f"expected {columns} values, got {len(fields)}", path=path, line=number)
        rows.append(fields)
        numbers.append(number)
    if not rows:
        raise DataFormatError("file is empty (no frames)", path=path, line=1)
    try:
        values = np.array(rows, dtype=np.float64)
    except ValueError:
        values = None
    if values is None:  # find the first bad value, for the message
        for number, fields in zip(numbers, rows):
            for col, value in enumerate(fields, start=1):
                try:
                    float(value)
                except ValueError:
                    raise DataFormatError(f"value {col} ({value.strip()!r}) is not a number", path=path,
                                          line=number) from None
        raise DataFormatError("could not parse numbers", path=path)  # pragma: no cover
    finite = np.isfinite(values)
    if not finite.all():
        row, col = np.argwhere(~finite)[0]
        raise DataFormatError(f"value {col + 1} is {rows[row][col].strip()!r} (NaN/inf not allowed)", path=path,
                              line=numbers[row])
    return values
