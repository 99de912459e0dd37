"""Writing the protocol v1 weights file: `(num_samples, [arrays])` as numpy.save pickles it, one layer at a time."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np

from gateway.weights.errors import WeightsError
from gateway.weights.npy import header_bytes


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
