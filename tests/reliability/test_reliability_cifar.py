"""CIFAR batches are read without pickle semantics: malicious pickles change nothing, allocate nothing.

Row of issue 15: "CIFAR restricted unpickler: BUILD on an allowed function changes process
state, a stride-0 ndarray turns 114 bytes into 307 MB, _reconstruct without BUILD hands back
uninitialised memory". Each case asserts the documented error (DataFormatError naming the
file), that NumPy is untouched and that the good batches still load.
"""
from __future__ import annotations

import codecs
import pickle
import struct
import time
import tracemalloc

import numpy as np
import pytest
from numpy._core import multiarray, numeric

from prunekit.data import DataFormatError, load_cifar10
from prunekit.data.plainpickle import parse_plain_pickle


# ----------------------------------------------------------------------------- pickle builders
def _u(text: str) -> bytes:  # BINUNICODE
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _b(raw: bytes) -> bytes:  # BINBYTES
    return b"B" + struct.pack("<I", len(raw)) + raw


def _int(v: int) -> bytes:  # BININT, or LONG1 beyond 32 bits
    if -2**31 <= v < 2**31:
        return b"J" + struct.pack("<i", v)
    raw = v.to_bytes(9, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tuple(*parts: bytes) -> bytes:
    return b"(" + b"".join(parts) + b"t"


_DTYPE_U1 = (_glob("numpy", "dtype") + _tuple(_u("u1"), b"\x89", b"\x88") + b"R"
             + _tuple(_int(3), _u("|"), b"N", b"N", b"N", _int(-1), _int(-1), _int(0)) + b"b")


def _reconstructed(shape: tuple, raw: bytes, *, build=True, fortran=False) -> bytes:
    body = (_glob("numpy._core.multiarray", "_reconstruct") + _tuple(_glob("numpy", "ndarray"), _tuple(_int(0)),
                                                                     _b(b"b")) + b"R")
    if build:
        body += _tuple(_int(1), _tuple(*[_int(v) for v in shape]), _DTYPE_U1, b"\x88" if fortran else b"\x89",
                       _b(raw)) + b"b"
    return body


def _batch_stream(data_part: bytes, labels: list[int]) -> bytes:
    labels_part = b"]" + b"(" + b"".join(_int(v) for v in labels) + b"e"
    return b"\x80\x02}(" + _u("data") + data_part + _u("labels") + labels_part + b"u."


def _write_good(folder, n=4):
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in rng.integers(0, 10, size=n)]}
        batches[name] = batch
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    return batches


def _numpy_state():
    objs = {"np.frombuffer": np.frombuffer, "numeric._frombuffer": numeric._frombuffer,
            "multiarray._reconstruct": multiarray._reconstruct, "np.ndarray": np.ndarray, "np.dtype": np.dtype,
            "codecs.encode": codecs.encode}
    state = {}
    for label, obj in objs.items():
        attrs = {a: getattr(obj, a, None) for a in ("__qualname__", "__name__", "__module__", "__doc__")}
        attrs["__dict__"] = dict(getattr(obj, "__dict__", {}) or {})
        state[label] = attrs
    return state


def _assert_refused_and_nothing_lost(tmp_path, blob, words, batches):
    before_numpy = _numpy_state()
    before_files = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    (tmp_path / "data_batch_2").write_bytes(blob)
    with pytest.raises(DataFormatError) as info:
        load_cifar10(tmp_path)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'data_batch_2'}: "), message
    assert words in message, message
    assert _numpy_state() == before_numpy  # no process-state side effect
    # nothing lost: the other files are byte-identical, and restoring the batch loads everything again
    for name, raw in before_files.items():
        if name != "data_batch_2":
            assert (tmp_path / name).read_bytes() == raw
    (tmp_path / "data_batch_2").write_bytes(before_files["data_batch_2"])
    (X, y), (Xt, yt) = load_cifar10(tmp_path)
    np.testing.assert_array_equal(X[4:8].reshape(4, -1), batches["data_batch_2"][b"data"])
    assert yt.tolist() == batches["test_batch"][b"labels"]


# ----------------------------------------------------------------------------- the cases
@pytest.mark.parametrize("target", [
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
])
def test_build_on_an_allowed_global_changes_nothing(tmp_path, target):
    batches = _write_good(tmp_path)
    state = b"}" + _u("__qualname__") + _u("pwned") + b"s"
    blob = b"\x80\x02" + _glob(*target) + state + b"b."
    _assert_refused_and_nothing_lost(tmp_path, blob, "BUILD on a global", batches)
    assert numeric._frombuffer.__qualname__ == "_frombuffer"
    assert np.frombuffer.__qualname__ == "frombuffer"


def test_setstate_dict_on_a_built_array_refused(tmp_path):
    batches = _write_good(tmp_path)
    array = _reconstructed((1, 3072), bytes(3072))
    blob = _batch_stream(array + b"}" + _u("shape") + _u("x") + b"s" + b"b", [0])
    _assert_refused_and_nothing_lost(tmp_path, blob, "BUILD on a ndarray", batches)


@pytest.mark.parametrize("strides", [(0, 0), (0, 1)])
def test_stride_zero_ndarray_refused_quickly(tmp_path, strides):
    """The 114-byte file that made a 307 MB array through numpy.ndarray(shape, dtype, buffer, 0, strides)."""
    batches = _write_good(tmp_path)
    call = (_glob("numpy", "ndarray") + _tuple(_tuple(_int(100000), _int(3072)), _u("u1"), _b(b"\x07"), _int(0),
                                              _tuple(*[_int(s) for s in strides])) + b"R")
    blob = _batch_stream(call, [0])
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(DataFormatError, match="REDUCE calls global 'numpy.ndarray'"):
        parse_plain_pickle(blob, path="x")
    elapsed = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 1 << 20, (elapsed, peak)
    _assert_refused_and_nothing_lost(tmp_path, blob, "numpy.ndarray", batches)


@pytest.mark.parametrize("shape", [(100000, 3072), (2**40, 2**40), (0x7FFFFFFF, 3072)])
def test_huge_declared_array_refused_quickly(tmp_path, shape):
    batches = _write_good(tmp_path)
    blob = _batch_stream(_reconstructed(shape, b"\x01" * 114), [0])
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(DataFormatError, match=r"array declares shape .* but holds 114 bytes"):
        parse_plain_pickle(blob, path="x")
    elapsed, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert elapsed < 1.0 and peak < 1 << 20, (elapsed, peak)
    _assert_refused_and_nothing_lost(tmp_path, blob, "array declares shape", batches)


def test_huge_frombuffer_declaration_refused(tmp_path):
    batches = _write_good(tmp_path)
    call = (_glob("numpy._core.numeric", "_frombuffer")
            + _tuple(_b(b"\x00" * 10), _DTYPE_U1, _tuple(_int(10**6), _int(3072)), _u("C")) + b"R")
    blob = _batch_stream(call, [0])
    _assert_refused_and_nothing_lost(tmp_path, blob, "array declares shape (1000000, 3072)", batches)


def test_reconstruct_without_build_refused(tmp_path):
    """Would hand back uninitialised memory as images."""
    batches = _write_good(tmp_path)
    blob = _batch_stream(_reconstructed((1, 3072), b"", build=False), [0])
    _assert_refused_and_nothing_lost(tmp_path, blob, "never initialised by its BUILD", batches)


@pytest.mark.parametrize("blob, words", [
    (pickle.dumps({"data": np.zeros((2, 3072), np.uint8, order="F"), "labels": [0, 1]}, protocol=2),
     "Fortran-ordered arrays are not read"),
    (pickle.dumps({"data": np.zeros(2, dtype=object), "labels": [0, 1]}, protocol=2), "not a plain numeric dtype"),
    (pickle.dumps({"data": np.zeros(2, dtype=[("a", "u1")]), "labels": [0, 1]}, protocol=2), "not a plain"),
    (pickle.dumps({"data": {1, 2}, "labels": [0, 1]}, protocol=4), "EMPTY_SET"),
    (b"\x80\x02" + _glob("builtins", "eval") + _tuple(_u("1+1")) + b"R.", "refusing to unpickle global 'builtins.eval'"),
    (b"\x80\x02" + _glob("os", "system") + b".", "refusing to unpickle global 'os.system'"),
    (b"\x80\x02(" + _glob("numpy", "ndarray") + b"o.", "(OBJ)"),
    (b"\x80\x02" + _u("x") + b"Q.", "BINPERSID"),
    (b"\x80\x02\x82\x01.", "EXT1"),
    (b"\x80\x02}" + _u("data"), "truncated"),
    (b"\x80\x02" + b"(" * 40 + b"l" * 40 + b".", "nested deeper than"),
    (b"\x80\x02" + _u("x") + b"\x85" * 50000 + b".", "nested deeper than"),
])
def test_other_malicious_or_broken_streams(tmp_path, blob, words):
    batches = _write_good(tmp_path)
    _assert_refused_and_nothing_lost(tmp_path, blob, words, batches)


def test_out_of_band_buffers_refused(tmp_path):
    batches = _write_good(tmp_path)
    blob = pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0]}, protocol=5,
                        buffer_callback=lambda _: False)
    _assert_refused_and_nothing_lost(tmp_path, blob, "NEXT_BUFFER", batches)


def test_size_cap_and_non_regular_files(tmp_path):
    batches = _write_good(tmp_path, n=4)
    size = (tmp_path / "data_batch_1").stat().st_size
    with pytest.raises(DataFormatError, match=rf"{size} bytes, more than the 1000 allowed") as info:
        load_cifar10(tmp_path, max_bytes=1000)
    assert str(info.value).startswith(str(tmp_path / "data_batch_1"))
    big = tmp_path / "data_batch_3"
    saved = big.read_bytes()
    with open(big, "r+b") as fh:  # a sparse 300 MB file: refused from its size, never read
        fh.truncate(300 * 2**20)
    start = time.perf_counter()
    with pytest.raises(DataFormatError, match="more than the 268435456 allowed"):
        load_cifar10(tmp_path)
    assert time.perf_counter() - start < 2.0
    big.write_bytes(saved)
    assert load_cifar10(tmp_path)[0][0].shape == (20, 3, 32, 32)
    assert batches


def test_python2_style_stream_and_all_protocols_read(tmp_path):
    """The real CIFAR-10 files were written by Python 2 cPickle: BINSTRING keys and data."""
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    sbin = lambda raw: b"T" + struct.pack("<i", len(raw)) + raw  # noqa: E731  BINSTRING
    array = (_glob("numpy.core.multiarray", "_reconstruct") + b"q\x01"
             + _tuple(_glob("numpy", "ndarray"), _tuple(b"K\x00"), b"U\x01b") + b"R"
             + _tuple(b"K\x01", _tuple(b"K\x03", b"M\x00\x0c"),
                      _glob("numpy", "dtype") + _tuple(b"U\x02u1", b"K\x00", b"K\x01") + b"R"
                      + _tuple(b"K\x03", b"U\x01|", b"N", b"N", b"N", _int(-1), _int(-1), b"K\x00") + b"b",
                      b"\x89", sbin(data.tobytes())) + b"b")
    blob = (b"\x80\x02}q\x00(" + b"U\x04data" + array + b"U\x06labels" + b"]q\x02(K\x01K\x02K\x03e"
            + b"U\x0bbatch_label" + sbin(b"training batch 1 of 5")
            + b"U\tfilenames]q\x03(U\x05a.pngU\x05b.pnge" + b"u.")
    out = parse_plain_pickle(blob, path="x")
    np.testing.assert_array_equal(out[b"data"], data)
    assert out[b"labels"] == [1, 2, 3] and out[b"batch_label"] == b"training batch 1 of 5"
    assert out[b"data"].flags.writeable and out[b"data"].flags.c_contiguous
    value = {"data": data, "labels": [0, 9, 5], "names": ["ä", b"\xff"], "f": 1.5, "big": 2**70, "neg": -3}
    for protocol in range(2, 6):
        got = parse_plain_pickle(pickle.dumps(value, protocol=protocol), path="x")
        np.testing.assert_array_equal(got["data"], data)
        assert {k: v for k, v in got.items() if k != "data"} == {k: v for k, v in value.items() if k != "data"}
