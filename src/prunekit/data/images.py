"""Readers for the image data sets prunekit's CNN experiments use offline.

* :func:`load_idx`: MNIST / Fashion-MNIST IDX files (plain or gzip), e.g. the files the
  Debian package ``dataset-fashion-mnist`` installs under ``/usr/share/datasets/fashion-mnist/``.
* :func:`load_cifar10`: CIFAR-10's python-pickle batches (``data_batch_1..5``,
  ``test_batch``). Unpickling can run arbitrary code, so the batches are *not*
  unpickled: :func:`~prunekit.data.plainpickle.parse_plain_pickle` interprets the
  opcode stream as plain data (dict, list, str, bytes, int and C-contiguous NumPy
  arrays whose declared size equals the bytes stored), never resolving or calling a
  global, so a malicious file can neither run code nor change process state. Each
  batch is capped at :data:`CIFAR_MAX_BATCH_BYTES` (``max_bytes``) and must be a
  regular file; the result is then checked to be a dict holding a uint8 array and
  integer labels.
* :func:`load_digits`: scikit-learn's bundled 8×8 digits, split reproducibly.

Every function returns ``((X_train, y_train), (X_test, y_test))`` NumPy arrays.

Example:
    >>> (X, y), (Xt, yt) = load_digits(test_fraction=0.25, seed=0)
    >>> X.shape, Xt.shape, X.dtype
    ((1347, 8, 8), (450, 8, 8), dtype('float32'))
"""
from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from ..core._atomic import read_regular_file
from .plainpickle import parse_plain_pickle
from .records import DataFormatError

__all__ = ["read_idx", "load_idx", "load_cifar10", "load_digits", "SafeUnpickler", "CIFAR10_CLASSES",
           "CIFAR_MAX_BATCH_BYTES"]

#: Size cap of one CIFAR pickle batch (a real CIFAR-10 batch is 31 MB, CIFAR-100's train file 158 MB).
CIFAR_MAX_BATCH_BYTES = 256 * 2**20

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

_IDX_DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataFormatError(f"cannot read file ({exc.strerror or exc})", path=path) from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataFormatError(f"corrupt or truncated gzip data ({exc})", path=path) from None
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (plain or gzip-compressed) into a native-endian NumPy array.

    Checks the magic number (two zero bytes, a known type code, the dimension count)
    and that the payload size equals the product of the header's dimensions; any
    mismatch raises :class:`DataFormatError` naming the file and the byte offset.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
        >>> _ = open(p, "wb").write(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 1, 9]))
        >>> read_idx(p).tolist()
        [7, 1, 9]
    """
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4:
        raise DataFormatError(f"file too short for an IDX header ({len(raw)} bytes)", path=path)
    magic = int.from_bytes(raw[:4], "big")
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise DataFormatError(f"bad IDX magic number 0x{magic:08x} at byte 0 (expected 0x0000TTNN: type code "
                              "08/09/0b/0c/0d/0e, NN dimensions)", path=path)
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataFormatError(f"header announces {ndim} dimensions but the file ends at byte {len(raw)}", path=path)
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        raise DataFormatError(f"payload from byte {header} holds {actual} bytes but the header shape {shape} of "
                              f"{dtype} needs {expected}", path=path)
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(folder: Path, prefix: str, kind: str, ndim: int) -> Path:
    names = []
    for sep in ("-", "."):
        for ext in ("", ".gz"):
            name = f"{prefix}-{kind}{sep}idx{ndim}-ubyte{ext}"
            names.append(name)
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(f"{folder}: no {prefix} {kind} IDX file (looked for {', '.join(names)})")


def load_idx(folder: str | os.PathLike):
    """Load an MNIST-style data set (MNIST, Fashion-MNIST) from the four IDX files in ``folder``.

    Looks for ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or ``.gz``
    (``train-images.idx3-ubyte`` spellings are accepted too). Images must be uint8 with
    3 dimensions (magic ``0x00000803``), labels uint8 with 1 (``0x00000801``), and the
    counts must agree; violations raise :class:`DataFormatError` naming the file.

    Returns:
        ``((X_train, y_train), (X_test, y_test))``: X uint8 ``[N, 28, 28]``, y uint8 ``[N]``.

    Example:
        >>> (X, y), (Xt, yt) = load_idx("/usr/share/datasets/fashion-mnist")  # doctest: +SKIP
        >>> X.shape, Xt.shape  # doctest: +SKIP
        ((60000, 28, 28), (10000, 28, 28))
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: IDX folder does not exist")
    out = []
    for prefix in ("train", "t10k"):
        img_path = _find_idx(folder, prefix, "images", 3)
        lab_path = _find_idx(folder, prefix, "labels", 1)
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataFormatError(f"expected uint8 images with 3 dimensions (magic 0x00000803), got {images.dtype} "
                                  f"with shape {images.shape}", path=img_path)
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise DataFormatError(f"expected uint8 labels with 1 dimension (magic 0x00000801), got {labels.dtype} "
                                  f"with shape {labels.shape}", path=lab_path)
        if len(images) != len(labels):
            raise DataFormatError(f"{len(labels)} labels but {len(images)} images in {img_path.name}", path=lab_path)
        out.append((images, labels))
    return tuple(out)


class SafeUnpickler:
    """Compatibility wrapper: ``SafeUnpickler(file, path=...).load()`` is :func:`parse_plain_pickle`.

    Not a :class:`pickle.Unpickler`: the stream is interpreted as plain data (dicts,
    lists, str, bytes, ints, contiguous NumPy arrays) and no global is ever resolved or
    called; see :mod:`prunekit.data.plainpickle`.

    Example:
        >>> import io, pickle, numpy as np
        >>> blob = pickle.dumps({"data": np.arange(3, dtype=np.uint8)})
        >>> SafeUnpickler(io.BytesIO(blob), path="x").load()["data"].tolist()
        [0, 1, 2]
        >>> SafeUnpickler(io.BytesIO(pickle.dumps(print)), path="x").load()  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        prunekit.data.records.DataFormatError: x: refusing to unpickle global 'builtins.print' ...
    """

    def __init__(self, file, *, path: str | os.PathLike, max_bytes: int | None = None):
        self.file = file
        self.path = path
        self.max_bytes = CIFAR_MAX_BATCH_BYTES if max_bytes is None else max_bytes

    def load(self):
        raw = self.file.read(self.max_bytes + 1)
        if len(raw) > self.max_bytes:
            raise DataFormatError(f"more than the {self.max_bytes} bytes allowed for a pickle batch", path=self.path)
        return parse_plain_pickle(raw, path=self.path)


def _read_cifar_batch(path: Path, max_bytes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    max_bytes = CIFAR_MAX_BATCH_BYTES if max_bytes is None else max_bytes
    try:
        raw = read_regular_file(path, max_bytes)
    except OSError as exc:
        raise DataFormatError(f"cannot read file ({exc.strerror or exc})", path=path) from None
    except ValueError as exc:  # not a regular file, or over the size cap
        raise DataFormatError(f"not read as a CIFAR-10 batch: {exc}", path=path) from None
    try:
        obj = parse_plain_pickle(raw, path=path)
    except DataFormatError as exc:
        raise DataFormatError(f"not a readable CIFAR-10 pickle batch: {exc.reason}", path=path) from None
    if not isinstance(obj, dict):
        raise DataFormatError(f"expected a dict batch, got {type(obj).__name__}", path=path)
    batch = {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in obj.items()}
    for key in ("data", "labels"):
        if key not in batch:
            raise DataFormatError(f"batch has no {key!r} entry (keys: {sorted(map(str, batch))})", path=path)
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(f"entry 'data' must be a uint8 array [N, 3072], got {desc}", path=path)
    labels = batch["labels"]
    try:
        labels = np.asarray(labels)
        ok = labels.ndim == 1 and labels.dtype.kind in "iu"
    except Exception:  # pragma: no cover - odd objects
        ok = False
    if not ok:
        raise DataFormatError("entry 'labels' must be a list of integers", path=path)
    if len(labels) != len(data):
        raise DataFormatError(f"entry 'labels' has {len(labels)} labels for {len(data)} images", path=path)
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise DataFormatError(f"labels must lie in 0..9, found {labels.min()}..{labels.max()}", path=path)
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(folder: str | os.PathLike, *, max_bytes: int | None = None):
    """Load CIFAR-10 from its python-pickle batches, safely (see :class:`SafeUnpickler`).

    ``folder`` holds ``data_batch_1`` .. ``data_batch_5`` and ``test_batch`` (or is the
    folder above ``cifar-10-batches-py``). Missing batches raise ``FileNotFoundError``;
    a batch that is not a dict with a uint8 ``data [N, 3072]`` and ``N`` labels in 0..9
    raises :class:`DataFormatError` naming the file.

    Returns:
        ``((X_train, y_train), (X_test, y_test))``: X uint8 ``[N, 3, 32, 32]`` (channels
        first, as stored), y int64 ``[N]``; :data:`CIFAR10_CLASSES` names the labels.

    Example:
        >>> (X, y), (Xt, yt) = load_cifar10("~/data/cifar-10-batches-py")  # doctest: +SKIP
        >>> X.shape, Xt.shape  # doctest: +SKIP
        ((50000, 3, 32, 32), (10000, 3, 32, 32))
    """
    folder = Path(folder).expanduser()
    if not (folder / "test_batch").is_file() and (folder / "cifar-10-batches-py").is_dir():
        folder = folder / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in names + ["test_batch"] if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: missing CIFAR-10 batch files {missing}")
    train = [_read_cifar_batch(folder / n, max_bytes) for n in names]
    test = _read_cifar_batch(folder / "test_batch", max_bytes)
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])), test


def load_digits(test_fraction: float = 0.2, seed: int = 0):
    """scikit-learn's 1,797 8×8 digits as float32 ``[N, 8, 8]`` (values 0..16), split stratified.

    Returns ``((X_train, y_train), (X_test, y_test))`` with y int64; the split is a
    deterministic function of ``seed``. Requires scikit-learn (an optional dependency).

    Example:
        >>> (X, y), (Xt, yt) = load_digits(test_fraction=0.2, seed=0)
        >>> len(X) + len(Xt), sorted(set(yt.tolist())) == list(range(10))
        (1797, True)
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("load_digits needs scikit-learn: pip install scikit-learn") from exc
    bunch = sk_load_digits()
    X = bunch.images.astype(np.float32)
    y = bunch.target.astype(np.int64)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=test_fraction, random_state=seed, stratify=y)
    return (X_tr, y_tr), (X_te, y_te)
