"""Image readers on tiny fixtures written in the real formats (IDX, CIFAR-10 pickle batches)."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest

from prunekit.data import DataFormatError, load_cifar10, load_digits, load_idx, read_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    dtype = {0x08: ">u1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(dtype).tobytes()


def _write_idx_set(folder: Path, gz: bool, sep: str = "-", n_train=5, n_test=3):
    rng = np.random.default_rng(0)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        arrays[prefix] = (images, labels)
        for kind, arr, nd in (("images", images, 3), ("labels", labels, 1)):
            data = _idx_bytes(arr)
            name = f"{prefix}-{kind}{sep}idx{nd}-ubyte"
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz, sep", [(False, "-"), (True, "-"), (False, ".")])
def test_load_idx_round_trip(tmp_path, gz, sep):
    arrays = _write_idx_set(tmp_path, gz, sep)
    (X, y), (Xt, yt) = load_idx(tmp_path)
    assert X.shape == (5, 28, 28) and Xt.shape == (3, 28, 28) and X.dtype == np.uint8 and y.dtype == np.uint8
    np.testing.assert_array_equal(X, arrays["train"][0])
    np.testing.assert_array_equal(y, arrays["train"][1])
    np.testing.assert_array_equal(Xt, arrays["t10k"][0])
    np.testing.assert_array_equal(yt, arrays["t10k"][1])


def test_read_idx_other_dtypes(tmp_path):
    arr = np.arange(-6, 6, dtype=np.int32).reshape(3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(arr, 0x0C))
    out = read_idx(tmp_path / "a")
    np.testing.assert_array_equal(out, arr)
    assert out.dtype == np.dtype("int32")
    (tmp_path / "b").write_bytes(_idx_bytes(np.array([1.5, -2.25]), 0x0E))
    assert read_idx(tmp_path / "b").tolist() == [1.5, -2.25]


def test_bad_magic_names_file(tmp_path):
    _write_idx_set(tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34" + bad.read_bytes()[2:])
    with pytest.raises(DataFormatError, match=r"bad IDX magic number 0x12340803") as info:
        load_idx(tmp_path)
    assert str(info.value).startswith(str(bad))


def test_wrong_type_code_for_images(tmp_path):
    _write_idx_set(tmp_path, gz=False)
    bad = tmp_path / "t10k-images-idx3-ubyte"
    bad.write_bytes(_idx_bytes(np.zeros((3, 28, 28)), 0x0D))
    with pytest.raises(DataFormatError, match="expected uint8 images") as info:
        load_idx(tmp_path)
    assert str(info.value).startswith(str(bad))


def test_truncated_payload_names_file(tmp_path):
    _write_idx_set(tmp_path, gz=False)
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:-10])
    with pytest.raises(DataFormatError, match=r"payload from byte 16 holds 3910 bytes but the header shape "
                                              r"\(5, 28, 28\) of uint8 needs 3920") as info:
        load_idx(tmp_path)
    assert str(info.value).startswith(str(bad))


def test_truncated_header_and_gzip(tmp_path):
    (tmp_path / "h").write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataFormatError, match="announces 3 dimensions"):
        read_idx(tmp_path / "h")
    (tmp_path / "s").write_bytes(b"\x00")
    with pytest.raises(DataFormatError, match="too short"):
        read_idx(tmp_path / "s")
    data = gzip.compress(_idx_bytes(np.zeros(100, np.uint8)))
    (tmp_path / "g.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFormatError, match="gzip") as info:
        read_idx(tmp_path / "g.gz")
    assert str(tmp_path / "g.gz") in str(info.value)


def test_label_count_mismatch(tmp_path):
    _write_idx_set(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx_bytes(np.zeros(4, np.uint8)))
    with pytest.raises(DataFormatError, match="4 labels but 5 images"):
        load_idx(tmp_path)


def test_missing_idx_file(tmp_path):
    _write_idx_set(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k labels"):
        load_idx(tmp_path)


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_real_fashion_mnist_if_installed():
    (X, y), (Xt, yt) = load_idx(FASHION)
    assert X.shape == (60000, 28, 28) and Xt.shape == (10000, 28, 28)
    assert np.bincount(y).tolist() == [6000] * 10 and np.bincount(yt).tolist() == [1000] * 10


# ----------------------------------------------------------------------------- CIFAR-10
def _cifar_batch(n, seed, byte_keys=True):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    key = (lambda s: s.encode()) if byte_keys else (lambda s: s)
    return {key("batch_label"): key(f"batch {seed}"), key("labels"): labels, key("data"): data,
            key("filenames"): [key(f"img_{i}.png") for i in range(n)]}


def _write_cifar(folder: Path, protocol=2, byte_keys=True):
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batch = _cifar_batch(4, i, byte_keys)
        batches[name] = batch
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return batches


@pytest.mark.parametrize("protocol, byte_keys", [(2, True), (4, False), (5, True)])
def test_load_cifar10_round_trip(tmp_path, protocol, byte_keys):
    batches = _write_cifar(tmp_path, protocol, byte_keys)
    (X, y), (Xt, yt) = load_cifar10(tmp_path)
    k = (lambda s: s.encode()) if byte_keys else (lambda s: s)
    assert X.shape == (20, 3, 32, 32) and Xt.shape == (4, 3, 32, 32) and X.dtype == np.uint8
    assert y.tolist() == sum((batches[f"data_batch_{i}"][k("labels")] for i in range(1, 6)), [])
    assert yt.tolist() == batches["test_batch"][k("labels")]
    raw = batches["data_batch_2"][k("data")]
    np.testing.assert_array_equal(X[4, 0].ravel(), raw[0, :1024])  # red plane first, row-major
    np.testing.assert_array_equal(X[4, 2, 31, 31], raw[0, 3071])


def test_load_cifar10_parent_folder(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    _write_cifar(tmp_path / "cifar-10-batches-py")
    assert load_cifar10(tmp_path)[1][0].shape == (4, 3, 32, 32)


class _Exploit:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):  # unpickling with the plain pickle module would create the file
        return (open, (self.target, "w"))


def test_cifar10_refuses_code_execution(tmp_path):
    _write_cifar(tmp_path)
    sentinel = tmp_path / "pwned"
    batch = _cifar_batch(4, 0)
    batch[b"batch_label"] = _Exploit(str(sentinel))
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataFormatError, match=r"refusing to unpickle global 'io.open'") as info:
        load_cifar10(tmp_path)
    assert str(info.value).startswith(str(tmp_path / "data_batch_3"))
    assert not sentinel.exists()


@pytest.mark.parametrize("mutate, words", [
    (lambda b: b.__setitem__(b"data", b[b"data"].astype(np.float32)), "must be a uint8 array [N, 3072]"),
    (lambda b: b.__setitem__(b"data", b[b"data"][:, :100]), "must be a uint8 array [N, 3072]"),
    (lambda b: b.__setitem__(b"labels", b[b"labels"][:3]), "has 3 labels for 4 images"),
    (lambda b: b.__setitem__(b"labels", [0, 1, 2, 10]), "labels must lie in 0..9"),
    (lambda b: b.pop(b"labels"), "batch has no 'labels' entry"),
])
def test_cifar10_malformed_batches(tmp_path, mutate, words):
    _write_cifar(tmp_path)
    batch = _cifar_batch(4, 9)
    mutate(batch)
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataFormatError) as info:
        load_cifar10(tmp_path)
    assert str(info.value).startswith(f"{tmp_path / 'test_batch'}: ") and words in str(info.value)


def test_cifar10_not_a_pickle_and_missing(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_1").write_bytes(b"garbage")
    with pytest.raises(DataFormatError, match="not a readable CIFAR-10 pickle batch"):
        load_cifar10(tmp_path)
    (tmp_path / "data_batch_5").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_5"):
        load_cifar10(tmp_path)


def test_load_digits_split():
    (X, y), (Xt, yt) = load_digits(test_fraction=0.2, seed=0)
    assert X.shape == (1437, 8, 8) and Xt.shape == (360, 8, 8) and X.dtype == np.float32
    assert X.max() == 16 and X.min() == 0
    assert np.bincount(yt).min() >= 35  # stratified
    (X2, _), _ = load_digits(test_fraction=0.2, seed=0)
    np.testing.assert_array_equal(X, X2)
    with pytest.raises(ValueError):
        load_digits(test_fraction=1.0)
