"""Read a pickle stream as plain data, without pickle semantics (used for CIFAR batches).

:func:`parse_plain_pickle` interprets the opcode stream itself; it never calls
``pickle.load``, never imports a module and never calls a constructor, function or
``__setstate__`` that a file names. It returns only:

* ``dict`` (keys ``str``, ``bytes`` or ``int``), ``list``, ``tuple``, ``str``, ``bytes``,
  ``int``, ``float``, ``bool``, ``None``;
* NumPy arrays of the one layout CIFAR batches use: a C-contiguous array of a plain
  integer or float dtype (``u1 i1 u2 i2 u4 i4 u8 i8 f4 f8``, any byte order) whose
  declared shape times its item size equals the bytes that follow *exactly*. The
  array is made with ``np.frombuffer`` on those bytes (then copied), so a declared
  shape can never allocate more than the file holds, and there are no strides.

The global names that NumPy and Python 3 write for those arrays are recognised as
*tags*, not resolved: ``numpy[._]core.multiarray._reconstruct`` + ``numpy.ndarray``
followed by a ``BUILD`` with the array state (protocols 2-4),
``numpy[._]core.numeric._frombuffer`` with in-band bytes (protocol 5),
``numpy.dtype`` with its ``BUILD`` state, and ``_codecs.encode(str, "latin1")``
(how Python 3 writes ``bytes`` at protocol 2). Anything else -- another global, a
``BUILD`` on anything but a pending array or dtype, a ``_reconstruct`` never
initialised by its ``BUILD``, Fortran order, object or structured dtypes,
out-of-band buffers, sets, ``NEWOBJ``, extension codes, persistent ids -- raises
:class:`~prunekit.data.records.DataFormatError` naming the file and the byte offset.
Process state is never touched, so a rejected file leaves NumPy exactly as it was.

Example:
    >>> import pickle, numpy as np
    >>> blob = pickle.dumps({"data": np.arange(3, dtype=np.uint8), "labels": [1, 2]}, protocol=2)
    >>> out = parse_plain_pickle(blob, path="x")
    >>> out["data"].tolist(), out["labels"]
    ([0, 1, 2], [1, 2])
    >>> parse_plain_pickle(pickle.dumps(print), path="x")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    prunekit.data.records.DataFormatError: x: refusing to unpickle global 'builtins.print' ...
"""
from __future__ import annotations

import os
import struct

import numpy as np

from .records import DataFormatError

__all__ = ["parse_plain_pickle", "MAX_DEPTH", "ARRAY_DTYPES"]

#: dtype names an array may declare (the byte order comes from the dtype's state).
ARRAY_DTYPES = frozenset({"u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8", "f4", "f8", "b1"})
#: deepest nesting of containers accepted in the result.
MAX_DEPTH = 16
_MAX_NDIM = 8

_RECONSTRUCT = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")}
_FROMBUFFER = {("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer")}
_TAGS = {("numpy", "ndarray"): "ndarray", ("numpy", "dtype"): "dtype", ("_codecs", "encode"): "encode"}
_TAGS.update({key: "reconstruct" for key in _RECONSTRUCT})
_TAGS.update({key: "frombuffer" for key in _FROMBUFFER})


class _Tag:
    """A recognised global name; never resolved to the real object."""

    __slots__ = ("kind", "qualname")

    def __init__(self, kind: str, qualname: str):
        self.kind, self.qualname = kind, qualname


class _DType:
    __slots__ = ("name", "order", "built")

    def __init__(self, name: str):
        self.name, self.order, self.built = name, "|" if name[1] == "1" else "=", False

    def numpy(self) -> np.dtype:
        return np.dtype(self.order.replace("|", "=") + self.name)


class _Array:
    """An array being assembled: ``_reconstruct`` makes it pending, its ``BUILD`` fills it."""

    __slots__ = ("value", "offset")

    def __init__(self, offset: int):
        self.value: np.ndarray | None = None
        self.offset = offset


class _Mark:
    __slots__ = ()


_MARK = _Mark()


class _Stream:
    __slots__ = ("data", "pos", "path")

    def __init__(self, data: bytes, path):
        self.data, self.pos, self.path = memoryview(data), 0, path

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise DataFormatError(f"pickle stream truncated at byte {self.pos} (needs {n} more bytes, "
                                  f"{len(self.data) - self.pos} left)", path=self.path)
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def line(self) -> str:
        end = bytes(self.data[self.pos:self.pos + 512]).find(b"\n")
        if end < 0:
            raise DataFormatError(f"unterminated text argument at byte {self.pos}", path=self.path)
        text = bytes(self.take(end + 1)[:-1])
        try:
            return text.decode("ascii")
        except UnicodeDecodeError:
            raise DataFormatError(f"non-ASCII global name at byte {self.pos - end - 1}", path=self.path) from None

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")


class _Machine:
    """The pickle machine: stack, marks and memo, and one handler per opcode (family)."""

    __slots__ = ("stream", "path", "stack", "marks", "memo")

    def __init__(self, data: bytes, path):
        self.stream, self.path = _Stream(data, path), path
        self.stack: list = []
        self.marks: list[list] = []
        self.memo: dict[int, object] = {}

    def fail(self, message: str, at: int | None = None) -> DataFormatError:
        return DataFormatError(f"{message} (byte {self.stream.pos if at is None else at})", path=self.path)

    def pop_mark(self) -> list:
        if not self.marks:
            raise self.fail("pickle opcode needs a MARK but there is none")
        items = self.stack
        self.stack = self.marks.pop()
        if any(item is _MARK for item in items):  # pragma: no cover - defensive
            raise self.fail("malformed MARK nesting")
        return items

    def pop(self):
        if not self.stack:
            raise self.fail("pickle stack underflow")
        return self.stack.pop()

    def top(self):
        if not self.stack:
            raise self.fail("pickle stack underflow")
        return self.stack[-1]

    def push_global(self, module: str, name: str, at: int) -> None:
        kind = _TAGS.get((module, name))
        if kind is None:
            raise DataFormatError(f"refusing to unpickle global '{module}.{name}' (only NumPy arrays and plain "
                                  f"types are allowed; byte {at})", path=self.path)
        self.stack.append(_Tag(kind, f"{module}.{name}"))

    def set_items(self, target, items: list, at: int) -> None:
        if not isinstance(target, dict):
            raise self.fail(f"SETITEM(S) on a {type(target).__name__}, not a dict", at)
        if len(items) % 2:
            raise self.fail("SETITEMS with an odd number of items", at)
        for k in range(0, len(items), 2):
            key = items[k]
            if type(key) not in (str, bytes, int):
                raise self.fail(f"dict key of type {_kind(key)} (only str, bytes and int keys are allowed)", at)
            target[key] = items[k + 1]

    def append(self, target, items: list, at: int) -> None:
        if not isinstance(target, list):
            raise self.fail(f"APPEND(S) on a {_kind(target)}, not a list", at)
        target.extend(items)

    def result(self):
        """The one value left on the stack at STOP, its array placeholders resolved."""
        if self.marks:
            raise self.fail("pickle stream ends inside a MARK")
        if len(self.stack) != 1:
            raise self.fail(f"pickle stream ends with {len(self.stack)} values on the stack, expected 1")
        return _resolve(self.stack[0], self.fail)

    # opcode handlers: handler(code, at), ``at`` the opcode's byte offset

    def op_proto(self, code: int, at: int) -> None:
        version = self.stream.uint(1)
        if version > 5:
            raise self.fail(f"unsupported pickle protocol {version}", at)

    def op_frame(self, code: int, at: int) -> None:  # only a length hint
        self.stream.take(8)

    def op_mark(self, code: int, at: int) -> None:
        self.marks.append(self.stack)
        self.stack = []

    def op_pop(self, code: int, at: int) -> None:
        self.pop()

    def op_pop_mark(self, code: int, at: int) -> None:
        self.pop_mark()

    def op_dup(self, code: int, at: int) -> None:
        self.stack.append(self.top())

    def op_constant(self, code: int, at: int) -> None:  # NONE, NEWTRUE, NEWFALSE
        self.stack.append({0x4E: None, 0x88: True, 0x89: False}[code])

    def op_binint(self, code: int, at: int) -> None:  # BININT (signed), BININT1, BININT2
        if code == 0x4A:
            self.stack.append(int.from_bytes(self.stream.take(4), "little", signed=True))
        else:
            self.stack.append(self.stream.uint(1 if code == 0x4B else 2))

    def op_long1(self, code: int, at: int) -> None:
        n = self.stream.uint(1)
        if n > 16:
            raise self.fail(f"integer of {n} bytes (at most 16 allowed)", at)
        self.stack.append(int.from_bytes(self.stream.take(n), "little", signed=True))

    def op_binfloat(self, code: int, at: int) -> None:
        self.stack.append(struct.unpack(">d", self.stream.take(8))[0])

    def op_unicode(self, code: int, at: int) -> None:  # BINUNICODE, SHORT_BINUNICODE, BINUNICODE8
        n = self.stream.uint({0x58: 4, 0x8C: 1, 0x8D: 8}[code])
        raw = self.stream.take(n)
        try:
            self.stack.append(bytes(raw).decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError:
            raise self.fail("invalid UTF-8 in a string", at) from None

    def op_binstring(self, code: int, at: int) -> None:  # BINSTRING, SHORT_BINSTRING (Python 2 str): bytes
        n = int.from_bytes(self.stream.take(4 if code == 0x54 else 1), "little", signed=code == 0x54)
        if n < 0:
            raise self.fail("negative string length", at)
        self.stack.append(bytes(self.stream.take(n)))

    def op_binbytes(self, code: int, at: int) -> None:  # BINBYTES, SHORT_BINBYTES, BINBYTES8, BYTEARRAY8
        n = self.stream.uint({0x42: 4, 0x43: 1, 0x8E: 8, 0x96: 8}[code])
        self.stack.append(bytes(self.stream.take(n)))  # bytearrays come back as (immutable) bytes

    def op_empty(self, code: int, at: int) -> None:  # EMPTY_DICT, EMPTY_LIST, EMPTY_TUPLE
        self.stack.append({0x7D: dict, 0x5D: list, 0x29: tuple}[code]())

    def op_tuple_n(self, code: int, at: int) -> None:  # TUPLE1..3
        n = code - 0x84
        if len(self.stack) < n:
            raise self.fail("pickle stack underflow")
        items = tuple(self.stack[-n:])
        del self.stack[-n:]
        self.stack.append(items)

    def op_tuple(self, code: int, at: int) -> None:
        items = tuple(self.pop_mark())  # pop_mark swaps the stack: append afterwards
        self.stack.append(items)

    def op_list(self, code: int, at: int) -> None:
        items = list(self.pop_mark())
        self.stack.append(items)

    def op_dict(self, code: int, at: int) -> None:
        items = self.pop_mark()
        target: dict = {}
        self.set_items(target, items, at)
        self.stack.append(target)

    def op_append(self, code: int, at: int) -> None:
        value = self.pop()
        self.append(self.top(), [value], at)

    def op_appends(self, code: int, at: int) -> None:
        items = self.pop_mark()
        self.append(self.top(), items, at)

    def op_setitem(self, code: int, at: int) -> None:
        value, key = self.pop(), self.pop()
        self.set_items(self.top(), [key, value], at)

    def op_setitems(self, code: int, at: int) -> None:
        items = self.pop_mark()
        self.set_items(self.top(), items, at)

    def op_put(self, code: int, at: int) -> None:  # BINPUT, LONG_BINPUT, MEMOIZE
        index = len(self.memo) if code == 0x94 else self.stream.uint(1 if code == 0x71 else 4)
        self.memo[index] = self.top()

    def op_get(self, code: int, at: int) -> None:  # BINGET, LONG_BINGET
        index = self.stream.uint(1 if code == 0x68 else 4)
        if index not in self.memo:
            raise self.fail(f"memo index {index} read before it was written", at)
        self.stack.append(self.memo[index])

    def op_global(self, code: int, at: int) -> None:
        module = self.stream.line()
        name = self.stream.line()
        self.push_global(module, name, at)

    def op_stack_global(self, code: int, at: int) -> None:
        name, module = self.pop(), self.pop()
        if type(module) is not str or type(name) is not str:
            raise self.fail("STACK_GLOBAL with non-string names", at)
        self.push_global(module, name, at)

    def op_reduce(self, code: int, at: int) -> None:
        args, func = self.pop(), self.pop()
        self.stack.append(_reduce(func, args, at, self.fail))

    def op_build(self, code: int, at: int) -> None:
        state = self.pop()
        _build(self.top(), state, at, self.fail)


_STOP = 0x2E
_HANDLERS = {
    0x80: _Machine.op_proto, 0x95: _Machine.op_frame, 0x28: _Machine.op_mark, 0x30: _Machine.op_pop,
    0x31: _Machine.op_pop_mark, 0x32: _Machine.op_dup,
    0x4E: _Machine.op_constant, 0x88: _Machine.op_constant, 0x89: _Machine.op_constant,
    0x4A: _Machine.op_binint, 0x4B: _Machine.op_binint, 0x4D: _Machine.op_binint, 0x8A: _Machine.op_long1,
    0x47: _Machine.op_binfloat,
    0x58: _Machine.op_unicode, 0x8C: _Machine.op_unicode, 0x8D: _Machine.op_unicode,
    0x54: _Machine.op_binstring, 0x55: _Machine.op_binstring,
    0x42: _Machine.op_binbytes, 0x43: _Machine.op_binbytes, 0x8E: _Machine.op_binbytes, 0x96: _Machine.op_binbytes,
    0x7D: _Machine.op_empty, 0x5D: _Machine.op_empty, 0x29: _Machine.op_empty,
    0x85: _Machine.op_tuple_n, 0x86: _Machine.op_tuple_n, 0x87: _Machine.op_tuple_n,
    0x74: _Machine.op_tuple, 0x6C: _Machine.op_list, 0x64: _Machine.op_dict,
    0x61: _Machine.op_append, 0x65: _Machine.op_appends, 0x73: _Machine.op_setitem, 0x75: _Machine.op_setitems,
    0x71: _Machine.op_put, 0x72: _Machine.op_put, 0x94: _Machine.op_put,
    0x68: _Machine.op_get, 0x6A: _Machine.op_get,
    0x63: _Machine.op_global, 0x93: _Machine.op_stack_global,
    0x52: _Machine.op_reduce, 0x62: _Machine.op_build,
}


def parse_plain_pickle(data: bytes, *, path: str | os.PathLike):
    """Interpret a pickle stream as plain data (see the module docstring); never runs code.

    Raises :class:`DataFormatError` (naming ``path`` and the byte offset) for anything
    outside the plain-data subset, a truncated stream or an inconsistent array.
    """
    machine = _Machine(bytes(data), path)
    while True:
        at = machine.stream.pos
        code = machine.stream.take(1)[0]
        if code == _STOP:
            return machine.result()
        handler = _HANDLERS.get(code)
        if handler is None:
            raise machine.fail(f"unsupported pickle opcode 0x{code:02x} ({_OPNAMES.get(code, 'unknown')}); only "
                               "plain data and NumPy arrays are read", at)
        handler(machine, code, at)


def _kind(value) -> str:
    if isinstance(value, _Tag):
        return f"global '{value.qualname}'"
    if isinstance(value, _DType):
        return "dtype"
    if isinstance(value, _Array):
        return "ndarray"
    return type(value).__name__


def _ints(shape, fail, at) -> tuple[int, ...]:
    if type(shape) is not tuple or len(shape) > _MAX_NDIM or any(type(v) is not int or v < 0 for v in shape):
        raise fail(f"array shape must be a tuple of at most {_MAX_NDIM} non-negative ints", at)
    return shape


def _make_array(raw, dtype, shape, at, fail) -> np.ndarray:
    if type(raw) is not bytes:
        raise fail(f"array data must be bytes, got {_kind(raw)}", at)
    if not isinstance(dtype, _DType) or not dtype.built:
        raise fail(f"array dtype must be a plain numpy dtype, got {_kind(dtype)}", at)
    shape = _ints(shape, fail, at)
    np_dtype = dtype.numpy()
    count = 1
    for v in shape:
        count *= v  # Python ints: no overflow
    if count * np_dtype.itemsize != len(raw):
        raise fail(f"array declares shape {shape} of {np_dtype} ({count * np_dtype.itemsize} bytes) but holds "
                   f"{len(raw)} bytes", at)
    return np.frombuffer(raw, dtype=np_dtype).reshape(shape).copy()


def _reduce(func, args, at, fail):
    if not isinstance(func, _Tag) or type(args) is not tuple:
        raise fail(f"REDUCE calls {_kind(func)}; only NumPy's array/dtype tags are allowed", at)
    kind = func.kind
    if kind == "encode":
        if len(args) != 2 or type(args[0]) is not str or args[1] not in ("latin1", "latin-1"):
            raise fail("_codecs.encode is only read as encode(str, 'latin1')", at)
        try:
            return args[0].encode("latin-1")
        except UnicodeEncodeError:
            raise fail("_codecs.encode of a non-latin-1 string", at) from None
    if kind == "dtype":
        if len(args) == 3 and type(args[0]) is bytes:  # Python 2 pickles: the name is a byte string
            args = (args[0].decode("latin-1"),) + args[1:]
        if len(args) != 3 or type(args[0]) is not str or args[1] not in (False, 0) or args[2] not in (True, 1):
            raise fail("numpy.dtype is only read as dtype(name, False, True)", at)
        if args[0] not in ARRAY_DTYPES:
            raise fail(f"array dtype {args[0]!r} is not a plain numeric dtype ({', '.join(sorted(ARRAY_DTYPES))})",
                       at)
        return _DType(args[0])
    if kind == "reconstruct":
        if (len(args) != 3 or not isinstance(args[0], _Tag) or args[0].kind != "ndarray" or args[1] != (0,)
                or args[2] not in (b"b", "b")):
            raise fail("_reconstruct is only read as _reconstruct(numpy.ndarray, (0,), b'b')", at)
        return _Array(at)
    if kind == "frombuffer":
        if len(args) != 4 or args[3] != "C":
            raise fail("_frombuffer is only read as _frombuffer(bytes, dtype, shape, 'C') (C order)", at)
        array = _Array(at)
        array.value = _make_array(args[0], args[1], args[2], at, fail)
        return array
    raise fail(f"REDUCE calls global '{func.qualname}', which is never called", at)


def _build(target, state, at, fail) -> None:
    if isinstance(target, _DType) and not target.built:
        if (type(state) is not tuple or len(state) not in (8, 9) or state[0] not in (3, 4)
                or any(v is not None for v in state[2:5])):
            raise fail("dtype state must be (3, byteorder, None, None, None, -1, -1, 0)", at)
        order = state[1].decode("latin-1") if type(state[1]) is bytes else state[1]
        if order not in ("<", ">", "|", "="):
            raise fail(f"dtype byte order {order!r} is not one of < > | =", at)
        target.order, target.built = order, True
        return
    if isinstance(target, _Array) and target.value is None:
        if type(state) is not tuple or len(state) not in (4, 5):
            raise fail("ndarray state must be (1, shape, dtype, is_fortran, bytes)", at)
        if len(state) == 5:
            if state[0] != 1:
                raise fail(f"ndarray state version {state[0]!r} is not 1", at)
            state = state[1:]
        shape, dtype, fortran, raw = state
        if fortran not in (False, 0):
            shape = _ints(shape, fail, at)
            if sum(v > 1 for v in shape) > 1:
                raise fail("Fortran-ordered arrays are not read (C-contiguous only)", at)
        target.value = _make_array(raw, dtype, shape, at, fail)
        return
    raise fail(f"BUILD on a {_kind(target)}: only a pending NumPy array or dtype takes a state; never sets "
               "attributes", at)


def _resolve(root, fail):
    """Replace array placeholders by arrays; refuse tags, dtypes and unfinished arrays; bound depth."""
    def plain(value):
        if isinstance(value, _Array):
            if value.value is None:
                raise fail("ndarray from _reconstruct was never initialised by its BUILD", value.offset)
            return value.value
        if isinstance(value, (_Tag, _DType)):
            raise fail(f"a bare {_kind(value)} is not data")
        return value

    root = plain(root)
    seen: set[int] = set()
    todo = [(root, 1)]
    while todo:
        value, depth = todo.pop()
        if not isinstance(value, (dict, list, tuple)) or id(value) in seen:
            continue
        if depth > MAX_DEPTH:
            raise fail(f"containers nested deeper than {MAX_DEPTH} levels")
        seen.add(id(value))
        if isinstance(value, dict):
            for key, item in value.items():
                value[key] = item = plain(item)
                todo.append((item, depth + 1))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                value[i] = item = plain(item)
                todo.append((item, depth + 1))
        else:  # tuples: refuse placeholders inside (they cannot be replaced in place)
            for item in value:
                if isinstance(item, (_Array, _Tag, _DType)):
                    raise fail("NumPy arrays inside tuples are not read")
                todo.append((item, depth + 1))
    return root


_OPNAMES = {0x69: "INST", 0x6F: "OBJ", 0x81: "NEWOBJ", 0x92: "NEWOBJ_EX", 0x50: "PERSID", 0x51: "BINPERSID",
            0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", 0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
            0x8F: "EMPTY_SET", 0x90: "ADDITEMS", 0x91: "FROZENSET", 0x8B: "LONG4", 0x49: "INT", 0x4C: "LONG",
            0x46: "FLOAT", 0x53: "STRING", 0x56: "UNICODE", 0x70: "PUT", 0x67: "GET"}
