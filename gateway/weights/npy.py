"""Reading and writing `.npy` headers without trusting them."""

from __future__ import annotations

import ast
import io
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.lib.format as npformat

from gateway.weights.errors import WeightsError

_SPAN_CHUNK = 1 << 20

MAGIC = b"\x93NUMPY"
_INTP_MAX = int(np.iinfo(np.intp).max)
_HEADER_KEYS = {"descr", "fortran_order", "shape"}

Read = Callable[[int], bytes]


@dataclass(frozen=True)
class ArrayHeader:
    """What a `.npy` header declares, checked for consistency but not against the data yet."""

    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    fortran_order: bool
    header_size: int
    """Bytes from the magic string up to the first data byte."""

    @property
    def count(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def data_size(self) -> int:
        """Bytes of array data the header promises."""
        return self.count * self.dtype.itemsize


def read_exact(read: Read, size: int, what: str) -> bytes:
    """Read exactly `size` bytes or fail with `truncated`."""
    chunks: list[bytes] = []
    left = size
    while left > 0:
        chunk = read(left)
        if not chunk:
            raise WeightsError("truncated", f"{what} ends early: the file is truncated.")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_span(path: Path, offset: int, nbytes: int) -> Iterator[bytes]:
    """Yield `nbytes` of the file from `offset` in 1 MiB chunks (a multiple of any item size, but
    the last); `truncated` when the file shrank meanwhile."""
    with path.open("rb") as stream:
        stream.seek(offset)
        left = nbytes
        while left > 0:
            chunk = stream.read(min(_SPAN_CHUNK, left))
            if not chunk:
                raise WeightsError("truncated", f"{path.name} shrank while it was being read.")
            left -= len(chunk)
            yield chunk


def read_header(
    read: Read, max_header_bytes: int, what: str, *, allow_object: bool = False
) -> ArrayHeader:
    """Parse a `.npy` header from a byte source positioned at its start; never reads array data.

    Object dtypes are refused unless `allow_object` (the v1 object array, read by `objectnpy`).
    """
    magic = read_exact(read, len(MAGIC) + 2, what)
    if not magic.startswith(MAGIC):
        raise WeightsError("not-an-array", f"{what} is not a numpy array (no .npy magic string).")
    version = (magic[6], magic[7])
    if version == (1, 0):
        length_size, encoding = 2, "latin1"
    elif version in ((2, 0), (3, 0)):
        length_size, encoding = 4, "latin1" if version == (2, 0) else "utf8"
    else:
        raise WeightsError(
            "bad-npy-header",
            f"{what} uses .npy format version {version[0]}.{version[1]}; only 1.0, 2.0 and 3.0 exist.",
        )
    length = int.from_bytes(read_exact(read, length_size, what), "little")
    if length > max_header_bytes:
        raise WeightsError(
            "header-too-large",
            f"{what} has a {length}-byte .npy header; at most {max_header_bytes} bytes are accepted.",
        )
    raw = read_exact(read, length, what)
    header = _parse_header(raw, encoding, what, allow_object)
    return ArrayHeader(
        dtype=header[0],
        shape=header[1],
        fortran_order=header[2],
        header_size=len(MAGIC) + 2 + length_size + length,
    )


def _parse_header(
    raw: bytes, encoding: str, what: str, allow_object: bool
) -> tuple[np.dtype[Any], tuple[int, ...], bool]:
    bad = WeightsError(
        "bad-npy-header",
        f"{what} has a malformed .npy header; write it with numpy.save or a conforming .npy writer.",
    )
    try:
        # literal_eval only builds literals; the input is at most max_header_bytes long.
        parsed = ast.literal_eval(raw.decode(encoding))
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(parsed, dict) or set(parsed) != _HEADER_KEYS:
        raise bad
    shape, fortran_order, descr = parsed["shape"], parsed["fortran_order"], parsed["descr"]
    if not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
        raise bad
    if not isinstance(fortran_order, bool):
        raise bad
    try:
        dtype = npformat.descr_to_dtype(descr)
    except Exception:  # numpy raises many types for a bad descr; all mean the same
        raise WeightsError(
            "unsupported-dtype", f"{what} declares a dtype numpy cannot read: {str(descr)[:80]!r}."
        ) from None
    if dtype.hasobject and not (allow_object and dtype == np.dtype(object)):
        raise WeightsError(
            "pickle-forbidden",
            f"{what} holds Python objects (dtype {str(descr)[:80]!r}), which need pickle; "
            "only plain numeric and string arrays are accepted.",
        )
    if dtype.subdtype is not None:
        raise WeightsError(
            "unsupported-dtype",
            f"{what} declares a sub-array dtype {str(descr)[:80]!r}, which numpy never writes as "
            "an array's dtype; put the extra dimensions in the shape.",
        )
    check_shape(shape, dtype, what)
    return dtype, shape, fortran_order


MAX_DIMS = 32
"""Dimensions any numpy (1.x allows 32, 2.x allows 64) can build."""


def check_shape(shape: tuple[int, ...], dtype: np.dtype[Any], what: str) -> None:
    """Refuse shapes numpy cannot build: too many dimensions, or sizes past the address space.

    Zero-length dimensions do not excuse huge others: numpy refuses those shapes too.
    """
    nonzero = math.prod(n for n in shape if n)
    if (
        len(shape) > MAX_DIMS
        or any(n > _INTP_MAX for n in shape)
        or nonzero > _INTP_MAX
        or nonzero * max(dtype.itemsize, 1) > _INTP_MAX
    ):
        raise WeightsError(
            "shape-overflow",
            f"{what} declares shape {str(shape)[:120]}, which no array can have.",
        )


def header_bytes(dtype: np.dtype[Any], shape: tuple[int, ...], fortran_order: bool) -> bytes:
    """The `.npy` header numpy itself writes for this array (format 1.0 unless it is too long)."""
    header = {
        "descr": npformat.dtype_to_descr(dtype),
        "fortran_order": fortran_order,
        "shape": shape,
    }
    buffer = io.BytesIO()
    try:
        npformat.write_array_header_1_0(buffer, header)
    except ValueError:  # a header over 64 KiB needs format 2.0
        buffer = io.BytesIO()
        npformat.write_array_header_2_0(buffer, header)
    return buffer.getvalue()


def array_from_bytes(
    header: ArrayHeader, data: bytes | bytearray | memoryview
) -> np.ndarray[Any, Any]:
    """Build an array from exactly `header.data_size` bytes (the caller checked the length)."""
    if header.data_size == 0:
        return np.zeros(
            header.shape, dtype=header.dtype, order="F" if header.fortran_order else "C"
        )
    flat = np.frombuffer(data, dtype=header.dtype, count=header.count)
    if header.fortran_order:
        return flat.reshape(header.shape[::-1]).transpose()
    return flat.reshape(header.shape)


_KIND_WORDS = {
    "b": "a boolean",
    "i": "an integer",
    "u": "an unsigned integer",
    "f": "a float",
    "c": "a complex",
    "U": "a string",
    "S": "a bytes",
    "O": "a Python-object",
    "V": "a structured (record)",
    "M": "a datetime",
    "m": "a timedelta",
}


def dtype_words(dtype: np.dtype[Any]) -> str:
    """A dtype for people: `a string array (numpy dtype <U3)`."""
    kind = _KIND_WORDS.get(dtype.kind, "an")
    return f"{kind} array (numpy dtype {dtype.str})"
