"""The protocol v1 weights file: a `.npy` object array `(num_samples, [ndarray, ...])`.

Such a file holds a pickle stream. It is never given to `pickle`: a small interpreter runs only the
opcodes numpy's own pickles use, resolves only the three globals that rebuild plain numeric arrays,
and hands each array's bytes to a callback as soon as they are read, so memory stays about one layer.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from gateway.weights.errors import WeightsError
from gateway.weights.model import LEARNING, ArrayInfo, Payload, layer_key
from gateway.weights.npy import ArrayHeader, check_shape, header_bytes, read_exact, read_header
from gateway.weights.policy import Limits, ValidationPolicy

ArraySink = Callable[[int, ArrayHeader, bytes], None]
"""Called with (index, header, data) for every numeric array, in the order the stream builds them."""


class _Global:
    """One of the three globals the stream may name; never called, only recognised."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name


_RECONSTRUCT = _Global("numpy.core.multiarray._reconstruct")
_NDARRAY = _Global("numpy.ndarray")
_DTYPE = _Global("numpy.dtype")
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DTYPE,
}
# The dtype codes numpy writes when it pickles a plain numeric dtype (plus the object dtype itself).
_NUMERIC_CODE = re.compile(r"(b1|[iu](1|2|4|8)|f(2|4|8|12|16)|c(8|16|24|32))", re.ASCII)
_OBJECT_CODES = {"O4", "O8"}
_ENDIAN = {"<", ">", "|", "="}
_MAX_TUPLE = 64
_MAX_STRING = 256
_MAX_LONG_BYTES = 64
_KEEP_BYTES = 4096
_KEEP_TOTAL = 16 << 20


class _Blob:
    """Bytes from the stream; a layer's bytes are released once its array is built."""

    __slots__ = ("data", "offset")

    def __init__(self, data: bytes | None, offset: int) -> None:
        self.data = data
        self.offset = offset


class _PendingDtype:
    __slots__ = ("code", "dtype")

    def __init__(self, code: str) -> None:
        self.code = code
        self.dtype: np.dtype[Any] | None = None


class _PendingArray:
    __slots__ = ("built",)

    def __init__(self) -> None:
        self.built: ArrayRef | ObjectRoot | None = None


@dataclass(frozen=True)
class ArrayRef:
    """A numeric array the stream built (its data already went to the sink)."""

    index: int
    header: ArrayHeader
    data_offset: int


@dataclass
class ObjectRoot:
    """The outer object array: its two items."""

    items: list[Any]


_Mark = object()


@dataclass
class _Machine:
    stream: IO[bytes]
    end: int
    limits: Limits
    sink: ArraySink | None
    stack: list[Any] = field(default_factory=list)
    memo: dict[int, Any] = field(default_factory=dict)
    arrays: list[ArrayRef] = field(default_factory=list)
    root: ObjectRoot | None = None
    kept: int = 0

    @property
    def max_items(self) -> int:
        return 64 * self.limits.max_members + 1024

    def pos(self) -> int:
        return self.stream.tell()

    def read(self, size: int) -> bytes:
        if size > self.end - self.pos():
            raise WeightsError("truncated", "The pickle stream ends early: the file is truncated.")
        return read_exact(self.stream.read, size, "The pickle stream")

    def push(self, value: Any) -> None:
        if len(self.stack) >= self.max_items:
            raise _unsupported("the pickle stack grows beyond the limit")
        self.stack.append(value)

    def pop(self) -> Any:
        if not self.stack or self.stack[-1] is _Mark:
            raise _unsupported("an opcode found no value where it needs one")
        return self.stack.pop()

    def pop_mark(self) -> list[Any]:
        for at in range(len(self.stack) - 1, -1, -1):
            if self.stack[at] is _Mark:
                items = self.stack[at + 1 :]
                del self.stack[at:]
                return items
        raise _unsupported("an opcode found no mark")

    def put(self, index: int) -> None:
        if not self.stack or self.stack[-1] is _Mark:
            raise _unsupported("memoize with an empty stack")
        if len(self.memo) >= self.max_items and index not in self.memo:
            raise _unsupported("the pickle memo grows beyond the limit")
        self.memo[index] = self.stack[-1]

    def get(self, index: int) -> None:
        if index not in self.memo:
            raise _unsupported(f"memo entry {index} is read before it is written")
        self.push(self.memo[index])


def _unsupported(why: str) -> WeightsError:
    return WeightsError(
        "unsupported-pickle",
        f"The object array's pickle stream is not one numpy writes ({why}); "
        "save the (num_samples, [arrays]) pair with numpy.save, or send an NPZ instead.",
    )


def _forbidden(what: str) -> WeightsError:
    return WeightsError(
        "pickle-forbidden",
        f"The pickle stream uses {what}, which is not allowed: only a Python int, a list and "
        "plain numeric numpy arrays may appear in a v1 weights file.",
    )


def _string(machine: _Machine, size: int) -> str:
    if size > _MAX_STRING:
        raise _unsupported(f"a {size}-byte string")
    try:
        return machine.read(size).decode("utf-8")
    except UnicodeDecodeError:
        raise _unsupported("a string that is not UTF-8") from None


def _bytes(machine: _Machine, size: int) -> None:
    offset = machine.pos()
    machine.push(_Blob(machine.read(size), offset))


def _uint(machine: _Machine, size: int) -> int:
    return int.from_bytes(machine.read(size), "little")


def _global(machine: _Machine, module: str, name: str) -> None:
    resolved = _ALLOWED_GLOBALS.get((module, name))
    if resolved is None:
        if name == "scalar" and module.startswith("numpy"):
            raise WeightsError(
                "pickle-forbidden",
                "The file holds a numpy scalar (such as numpy.int64), which needs pickle to load; "
                "use a Python int for the sample count (int(n)) and arrays for the layers.",
            )
        raise _forbidden(f"the global {module[:80]}.{name[:80]}")
    machine.push(resolved)


def _reduce(machine: _Machine) -> None:
    args = machine.pop()
    func = machine.pop()
    if not isinstance(args, tuple):
        raise _unsupported("a call without an argument tuple")
    if func is _RECONSTRUCT:
        if (
            len(args) != 3
            or args[0] is not _NDARRAY
            or args[1] != (0,)
            or not isinstance(args[2], _Blob)
            or args[2].data != b"b"
        ):
            raise _forbidden("numpy's _reconstruct with unexpected arguments")
        machine.push(_PendingArray())
    elif func is _DTYPE:
        if (
            len(args) != 3
            or not isinstance(args[0], str)
            or not all(isinstance(flag, bool) for flag in args[1:])
        ):
            raise _forbidden("numpy.dtype with unexpected arguments")
        code = args[0]
        if not (_NUMERIC_CODE.fullmatch(code) or code in _OBJECT_CODES):
            raise _forbidden(f"dtype {code[:20]!r} (only numeric dtypes are allowed)")
        machine.push(_PendingDtype(code))
    else:
        raise _forbidden("a call to something other than numpy's array and dtype constructors")


def _build(machine: _Machine) -> None:
    state = machine.pop()
    target = machine.stack[-1] if machine.stack else None
    if isinstance(target, _PendingDtype) and target.dtype is None:
        target.dtype = _dtype_from_state(target.code, state)
    elif isinstance(target, _PendingArray) and target.built is None:
        target.built = _array_from_state(machine, state)
    else:
        raise _forbidden("BUILD on something other than a new numpy array or dtype")


def _dtype_from_state(code: str, state: Any) -> np.dtype[Any]:
    if (
        not isinstance(state, tuple)
        or len(state) not in (8, 9)
        or state[0] not in (3, 4)
        or not isinstance(state[1], str)
        or state[1] not in _ENDIAN
        or state[2:5] != (None, None, None)
        or not all(type(value) is int for value in state[5:8])
        or (len(state) == 9 and state[8] is not None)
    ):
        raise _forbidden("a dtype state with fields, sub-arrays or metadata")
    try:
        dtype = np.dtype(code)
    except TypeError:  # a code this platform has no type for, such as f12 on 64-bit machines
        raise WeightsError(
            "unsupported-dtype", f"The weights use dtype {code!r}, which numpy here cannot build."
        ) from None
    if state[1] == "<":
        dtype = dtype.newbyteorder("<")
    elif state[1] == ">":
        dtype = dtype.newbyteorder(">")
    return dtype


def _array_from_state(machine: _Machine, state: Any) -> ArrayRef | ObjectRoot:
    if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
        raise _unsupported("an array state of an unknown layout")
    _, shape, dtype_ref, fortran, data = state
    if (
        not isinstance(shape, tuple)
        or not all(type(n) is int and n >= 0 for n in shape)
        or not isinstance(dtype_ref, _PendingDtype)
        or dtype_ref.dtype is None
        or not isinstance(fortran, bool)
    ):
        raise _unsupported("an array state with a bad shape, dtype or order")
    dtype = dtype_ref.dtype
    check_shape(shape, dtype, f"Array {len(machine.arrays)}")
    if dtype.hasobject:
        if machine.root is not None or shape != (2,) or not isinstance(data, list):
            raise _forbidden(
                "an object array inside the weights (only the outer pair may hold objects)"
            )
        machine.root = ObjectRoot(items=data)
        return machine.root
    if not isinstance(data, _Blob) or data.data is None:
        raise _unsupported("array data that is not a fresh bytes object")
    header = ArrayHeader(dtype=dtype, shape=shape, fortran_order=fortran, header_size=0)
    if math.prod(shape) * dtype.itemsize != len(data.data):
        raise WeightsError(
            "shape-mismatch",
            f"Array {len(machine.arrays)} declares {dtype.str} shape {shape} but holds "
            f"{len(data.data)} bytes.",
        )
    if len(machine.arrays) >= machine.limits.max_members:
        raise WeightsError(
            "too-many-members",
            f"The weights hold more than {machine.limits.max_members} arrays.",
        )
    ref = ArrayRef(index=len(machine.arrays), header=header, data_offset=data.offset)
    if machine.sink is not None:
        machine.sink(ref.index, header, data.data)
    # Release the layer's bytes. Small ones are kept (bounded), because the pickler shares equal
    # small bytes objects (b"", one-byte values) between arrays through its memo.
    if len(data.data) <= _KEEP_BYTES and machine.kept + len(data.data) <= _KEEP_TOTAL:
        machine.kept += len(data.data)
    else:
        data.data = None  # a second use of these bytes is refused
    machine.arrays.append(ref)
    return ref


def _tuple(machine: _Machine, items: list[Any]) -> None:
    if len(items) > _MAX_TUPLE:
        raise _unsupported(f"a tuple of {len(items)} items")
    machine.push(tuple(items))


def _appends(machine: _Machine, items: list[Any]) -> None:
    target = machine.pop()
    if not isinstance(target, list):
        raise _unsupported("APPENDS to something other than a list")
    if len(target) + len(items) > machine.max_items:
        raise _unsupported("a list longer than the limit")
    target.extend(items)
    machine.push(target)


def _run(machine: _Machine) -> Any:
    while True:
        op = machine.read(1)
        if op == b"\x80":  # PROTO
            if machine.read(1)[0] > 5:
                raise _unsupported("an unknown pickle protocol")
        elif op == b"\x95":  # FRAME: a size hint only
            machine.read(8)
        elif op == b".":  # STOP
            return machine.pop()
        elif op == b"(":  # MARK
            machine.push(_Mark)
        elif op == b"N":
            machine.push(None)
        elif op == b"\x88":
            machine.push(True)
        elif op == b"\x89":
            machine.push(False)
        elif op == b"K":  # BININT1
            machine.push(_uint(machine, 1))
        elif op == b"M":  # BININT2
            machine.push(_uint(machine, 2))
        elif op == b"J":  # BININT
            machine.push(struct.unpack("<i", machine.read(4))[0])
        elif op == b"G":  # BINFLOAT: a float sample count is refused by the type rules, not here
            machine.push(struct.unpack(">d", machine.read(8))[0])
        elif op in (b"\x8a", b"\x8b"):  # LONG1, LONG4
            size = _uint(machine, 1 if op == b"\x8a" else 4)
            if size > _MAX_LONG_BYTES:
                raise _unsupported(f"a {size}-byte integer")
            machine.push(int.from_bytes(machine.read(size), "little", signed=True))
        elif op == b"\x8c":  # SHORT_BINUNICODE
            machine.push(_string(machine, _uint(machine, 1)))
        elif op == b"X":  # BINUNICODE
            machine.push(_string(machine, _uint(machine, 4)))
        elif op == b"\x8d":  # BINUNICODE8
            machine.push(_string(machine, _uint(machine, 8)))
        elif op == b"C":  # SHORT_BINBYTES
            _bytes(machine, _uint(machine, 1))
        elif op == b"B":  # BINBYTES
            _bytes(machine, _uint(machine, 4))
        elif op == b"\x8e":  # BINBYTES8
            _bytes(machine, _uint(machine, 8))
        elif op == b")":
            machine.push(())
        elif op in (b"\x85", b"\x86", b"\x87"):  # TUPLE1..3
            count = op[0] - 0x84
            if len(machine.stack) < count:
                raise _unsupported("a tuple with too few values")
            _tuple(machine, [machine.pop() for _ in range(count)][::-1])
        elif op == b"t":  # TUPLE
            _tuple(machine, machine.pop_mark())
        elif op == b"]":  # EMPTY_LIST
            machine.push([])
        elif op == b"l":  # LIST
            machine.push(machine.pop_mark())
        elif op == b"a":  # APPEND
            value = machine.pop()
            _appends(machine, [value])
        elif op == b"e":  # APPENDS
            items = machine.pop_mark()
            _appends(machine, items)
        elif op == b"q":  # BINPUT
            machine.put(_uint(machine, 1))
        elif op == b"r":  # LONG_BINPUT
            machine.put(_uint(machine, 4))
        elif op == b"\x94":  # MEMOIZE
            machine.put(len(machine.memo))
        elif op == b"h":  # BINGET
            machine.get(_uint(machine, 1))
        elif op == b"j":  # LONG_BINGET
            machine.get(_uint(machine, 4))
        elif op == b"c":  # GLOBAL
            module = _line(machine)
            _global(machine, module, _line(machine))
        elif op == b"\x93":  # STACK_GLOBAL
            name, module = machine.pop(), machine.pop()
            if not isinstance(module, str) or not isinstance(name, str):
                raise _unsupported("STACK_GLOBAL without names")
            _global(machine, module, name)
        elif op == b"R":
            _reduce(machine)
        elif op == b"b":
            _build(machine)
        else:
            raise _forbidden(f"pickle opcode {op!r}")


def _line(machine: _Machine) -> str:
    raw = bytearray()
    while True:
        ch = machine.read(1)
        if ch == b"\n":
            break
        raw += ch
        if len(raw) > _MAX_STRING:
            raise _unsupported("an over-long global name")
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise _unsupported("a global name that is not ASCII") from None


@dataclass(frozen=True)
class ObjectNpy:
    """A parsed v1 weights file."""

    num_samples: int
    layers: tuple[ArrayRef, ...]
    size: int


def read_object_npy(path: Path, limits: Limits, sink: ArraySink | None = None) -> ObjectNpy:
    """Parse a v1 object `.npy` safely and apply the protocol's type rules (§3.6)."""
    with path.open("rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        header = read_header(
            stream.read, limits.max_header_bytes, "The .npy file", allow_object=True
        )
        if header.dtype != np.dtype(object) or header.shape != (2,):
            raise WeightsError(
                "not-object-pair",
                f"A v1 weights file is an object array of shape (2,); this one is "
                f"{header.dtype.str} shape {header.shape}.",
            )
        if size - header.header_size > limits.max_pickle_bytes:
            raise WeightsError(
                "too-large",
                f"The pickle stream is {size - header.header_size} bytes; at most "
                f"{limits.max_pickle_bytes} are accepted.",
            )
        machine = _Machine(stream=stream, end=size, limits=limits, sink=sink)
        result = _run(machine)
        if machine.pos() != size:
            raise WeightsError(
                "shape-mismatch", "The file holds data after the end of its pickle stream."
            )
    if not isinstance(result, _PendingArray) or not isinstance(result.built, ObjectRoot):
        raise WeightsError(
            "not-object-pair", "The pickle stream does not hold the (num_samples, [arrays]) pair."
        )
    return _check_pair(result.built.items, machine.arrays, size)


def _check_pair(items: list[Any], arrays: list[ArrayRef], size: int) -> ObjectNpy:
    if len(items) != 2:
        raise WeightsError("not-object-pair", "Incorrect shape: the object array needs 2 items.")
    num_samples, layers = items
    if type(num_samples) is not int:
        raise WeightsError(
            "not-integer",
            "Dim 0 not integer: the first item must be a Python int (the number of samples); "
            "numpy integers and bools are refused by BranchKey's client too.",
        )
    if type(layers) is not list:
        raise WeightsError("not-list", "Dim 1 not list: the second item must be a Python list.")
    if not layers or not isinstance(layers[0], _PendingArray):
        raise WeightsError(
            "not-ndarray", "Dim 1:0 not ndarray: the list must start with a numpy array."
        )
    refs: list[ArrayRef] = []
    for position, item in enumerate(layers):
        if not isinstance(item, _PendingArray) or not isinstance(item.built, ArrayRef):
            raise WeightsError(
                "not-ndarray", f"Item {position} of the layer list is not a numeric numpy array."
            )
        refs.append(item.built)
    if [ref.index for ref in refs] != list(range(len(arrays))):
        raise _unsupported("layers that are shared, reordered or outside the list")
    return ObjectNpy(num_samples=num_samples, layers=tuple(refs), size=size)


_INT64_MAX = (1 << 63) - 1


def check_sample_count(count: int, policy: ValidationPolicy) -> None:
    """The strict weighting rule for v1 files: a sample count from 0 to 2**63 - 1."""
    if policy.strict_weighting and not 0 <= count <= _INT64_MAX:
        raise WeightsError(
            "bad-weighting",
            f"The sample count must be between 0 and 2**63 - 1 (got {count}).",
        )


def inspect_object_npy(path: Path, policy: ValidationPolicy) -> Payload:
    """Validate a v1 object `.npy` and describe it like any other payload."""
    parsed = read_object_npy(path, policy.limits, _finite_sink if policy.deep else None)
    check_sample_count(parsed.num_samples, policy)
    return Payload(
        format="npy-object",
        kind=LEARNING,
        weighting=float(parsed.num_samples),
        arrays=tuple(_info(ref) for ref in parsed.layers),
        size=parsed.size,
    )


def _finite_sink(index: int, header: ArrayHeader, data: bytes) -> None:
    if header.dtype.kind in "fc" and header.count:
        values = np.frombuffer(data, dtype=header.dtype, count=header.count)
        if not np.isfinite(values).all():
            raise WeightsError(
                "non-finite", f"Layer {index} contains NaN or infinite values (deep validation)."
            )


def _info(ref: ArrayRef) -> ArrayInfo:
    return ArrayInfo(
        key=layer_key(ref.index),
        dtype=ref.header.dtype.str,
        shape=ref.header.shape,
        fortran_order=ref.header.fortran_order,
        nbytes=ref.header.data_size,
        data_offset=ref.data_offset,
        member_offset=None,
    )


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class LayerSource:
    """A layer to write: its header and its data as chunks (read lazily)."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran_order: bool
    chunks: Callable[[], Iterable[bytes]]

    @property
    def nbytes(self) -> int:
        """Bytes of data."""
        return math.prod(self.shape) * self.dtype.itemsize


_FOUR_GIB = 1 << 32


def write_object_npy(out: IO[bytes], num_samples: int, layers: Iterable[LayerSource]) -> None:
    """Write `(num_samples, [arrays])` in the object-array layout numpy.save uses, one layer at a time.

    The stream uses protocol 3 and numpy 1.x module paths, which every numpy since 1.x loads,
    with protocol 4's 8-byte length only for a layer of 4 GiB or more.
    """
    out.write(header_bytes(np.dtype(object), (2,), False))
    layers = list(layers)
    big = any(layer.nbytes >= _FOUR_GIB for layer in layers)
    out.write(b"\x80" + bytes([4 if big else 3]))
    out.write(
        b"cnumpy.core.multiarray\n_reconstruct\nq\x00cnumpy\nndarray\nq\x01cnumpy\ndtype\nq\x02"
    )
    _write_new_array(out)
    out.write(b"(K\x01K\x02\x85")
    _write_dtype(out, np.dtype(object))
    out.write(b"\x89](")  # not Fortran; the items list: [num_samples, [layers]]
    _write_int(out, num_samples)
    out.write(b"](")
    for layer in layers:
        _write_new_array(out)
        out.write(b"(K\x01")
        _write_tuple(out, layer.shape)
        _write_dtype(out, layer.dtype)
        out.write(b"\x88" if layer.fortran_order else b"\x89")
        size = layer.nbytes
        out.write(b"\x8e" + struct.pack("<Q", size) if big else b"B" + struct.pack("<I", size))
        written = 0
        for chunk in layer.chunks():
            out.write(chunk)
            written += len(chunk)
        if written != size:
            raise WeightsError("truncated", "A layer ended early while it was being converted.")
        out.write(b"tb")
    out.write(b"ee" + b"tb.")


def _write_new_array(out: IO[bytes]) -> None:
    out.write(b"h\x00h\x01K\x00\x85C\x01b\x87R")


def _write_dtype(out: IO[bytes], dtype: np.dtype[Any]) -> None:
    reduced = dtype.__reduce__()
    if isinstance(reduced, str):
        raise TypeError(f"numpy reduces dtype {dtype} to a name")
    _, args, state = reduced[:3]
    out.write(b"h\x02")
    _write_value(out, args)
    out.write(b"R")
    _write_value(out, state)
    out.write(b"b")


def _write_value(out: IO[bytes], value: Any) -> None:
    if value is None:
        out.write(b"N")
    elif value is True:
        out.write(b"\x88")
    elif value is False:
        out.write(b"\x89")
    elif type(value) is int:
        _write_int(out, value)
    elif isinstance(value, str):
        encoded = value.encode("utf-8")
        out.write(b"X" + struct.pack("<I", len(encoded)) + encoded)
    elif isinstance(value, tuple):
        out.write(b"(")
        for item in value:
            _write_value(out, item)
        out.write(b"t")
    else:
        raise TypeError(f"cannot write {type(value).__name__} into a v1 weights file")


def _write_tuple(out: IO[bytes], values: tuple[int, ...]) -> None:
    _write_value(out, values)


def _write_int(out: IO[bytes], value: int) -> None:
    if -(1 << 31) <= value < (1 << 31):
        out.write(b"J" + struct.pack("<i", value))
    else:
        size = (value.bit_length() + 8) // 8
        out.write(b"\x8a" + bytes([size]) + value.to_bytes(size, "little", signed=True))
