"""The object model of numpy's pickles: three allowed globals rebuild plain numeric arrays, nothing else."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gateway.weights.errors import WeightsError
from gateway.weights.npy import ArrayHeader, check_shape
from gateway.weights.picklevm import Blob, forbidden, unsupported
from gateway.weights.policy import Limits

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
_KEEP_BYTES = 4096
_KEEP_TOTAL = 16 << 20


class _PendingDtype:
    __slots__ = ("code", "dtype")

    def __init__(self, code: str) -> None:
        self.code = code
        self.dtype: np.dtype[Any] | None = None


class PendingArray:
    """An array `_reconstruct` made; BUILD fills in what it is."""

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
    """The outer object array: its items (the v1 pair, or a list of arrays)."""

    items: list[Any]


@dataclass
class NumpyObjects:
    """The `ObjectModel` of a v1 weights file: it hands each numeric array's bytes to `sink`."""

    limits: Limits
    sink: ArraySink | None
    arrays: list[ArrayRef] = field(default_factory=list)
    root: ObjectRoot | None = None
    kept: int = 0

    @property
    def max_items(self) -> int:
        """The bound on the machine's stack, memo and lists: 64 items per allowed array, plus slack."""
        return 64 * self.limits.max_members + 1024

    def find_global(self, module: str, name: str) -> object:
        """numpy's `_reconstruct`, `ndarray` or `dtype`; any other global is forbidden."""
        resolved = _ALLOWED_GLOBALS.get((module, name))
        if resolved is None:
            if name == "scalar" and module.startswith("numpy"):
                raise WeightsError(
                    "pickle-forbidden",
                    "The file holds a numpy scalar (such as numpy.int64), which needs pickle to load; "
                    "use a Python int for the sample count (int(n)) and arrays for the layers.",
                )
            raise forbidden(f"the global {module[:80]}.{name[:80]}")
        return resolved

    def call(self, func: Any, args: tuple[Any, ...]) -> object:
        """A new empty array or a numeric dtype, from exactly the arguments numpy pickles."""
        if func is _RECONSTRUCT:
            if (
                len(args) != 3
                or args[0] is not _NDARRAY
                or args[1] != (0,)
                or not isinstance(args[2], Blob)
                or args[2].data != b"b"
            ):
                raise forbidden("numpy's _reconstruct with unexpected arguments")
            return PendingArray()
        if func is _DTYPE:
            if (
                len(args) != 3
                or not isinstance(args[0], str)
                or not all(isinstance(flag, bool) for flag in args[1:])
            ):
                raise forbidden("numpy.dtype with unexpected arguments")
            code = args[0]
            if not (_NUMERIC_CODE.fullmatch(code) or code in _OBJECT_CODES):
                raise forbidden(f"dtype {code[:20]!r} (only numeric dtypes are allowed)")
            return _PendingDtype(code)
        raise forbidden("a call to something other than numpy's array and dtype constructors")

    def build(self, target: Any, state: Any) -> None:
        """Give a new dtype its byte order, or a new array its shape, dtype and bytes (once each)."""
        if isinstance(target, _PendingDtype) and target.dtype is None:
            target.dtype = _dtype_from_state(target.code, state)
        elif isinstance(target, PendingArray) and target.built is None:
            target.built = self._array_from_state(state)
        else:
            raise forbidden("BUILD on something other than a new numpy array or dtype")

    def _array_from_state(self, state: Any) -> ArrayRef | ObjectRoot:
        if not isinstance(state, tuple) or len(state) != 5 or state[0] != 1:
            raise unsupported("an array state of an unknown layout")
        _, shape, dtype_ref, fortran, data = state
        if (
            not isinstance(shape, tuple)
            or not all(type(n) is int and n >= 0 for n in shape)
            or not isinstance(dtype_ref, _PendingDtype)
            or dtype_ref.dtype is None
            or not isinstance(fortran, bool)
        ):
            raise unsupported("an array state with a bad shape, dtype or order")
        dtype = dtype_ref.dtype
        check_shape(shape, dtype, f"Array {len(self.arrays)}")
        if dtype.hasobject:
            if self.root is not None or len(shape) != 1 or not isinstance(data, list):
                raise forbidden(
                    "an object array inside the weights (only the outer array may hold objects)"
                )
            if len(data) != shape[0]:
                raise unsupported("an object array whose items do not match its shape")
            self.root = ObjectRoot(items=data)
            return self.root
        if not isinstance(data, Blob) or data.data is None:
            raise unsupported("array data that is not a fresh bytes object")
        header = ArrayHeader(dtype=dtype, shape=shape, fortran_order=fortran, header_size=0)
        if math.prod(shape) * dtype.itemsize != len(data.data):
            raise WeightsError(
                "shape-mismatch",
                f"Array {len(self.arrays)} declares {dtype.str} shape {shape} but holds "
                f"{len(data.data)} bytes.",
            )
        if len(self.arrays) >= self.limits.max_members:
            raise WeightsError(
                "too-many-members",
                f"The weights hold more than {self.limits.max_members} arrays.",
            )
        ref = ArrayRef(index=len(self.arrays), header=header, data_offset=data.offset)
        if self.sink is not None:
            self.sink(ref.index, header, data.data)
        # Release the layer's bytes. Small ones are kept (bounded), because the pickler shares equal
        # small bytes objects (b"", one-byte values) between arrays through its memo.
        if len(data.data) <= _KEEP_BYTES and self.kept + len(data.data) <= _KEEP_TOTAL:
            self.kept += len(data.data)
        else:
            data.data = None  # a second use of these bytes is refused
        self.arrays.append(ref)
        return ref


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
        raise forbidden("a dtype state with fields, sub-arrays or metadata")
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
