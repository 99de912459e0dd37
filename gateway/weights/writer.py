"""Streaming NPZ writing: one member at a time, never the whole model in memory."""

from __future__ import annotations

import contextlib
import os
import secrets
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, Self

import numpy as np

from gateway.weights.errors import WeightsError
from gateway.weights.model import WEIGHTING_KEY
from gateway.weights.npy import header_bytes


class NpzWriter:
    """Write an NPZ as `numpy.savez[_compressed]` does: `<key>.npy` members, ZIP64 headers."""

    def __init__(self, path: Path, *, compress: bool, level: int = 1) -> None:
        self.path = path
        self._zip = zipfile.ZipFile(
            path,
            "w",
            compression=zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED,
            compresslevel=level if compress else None,
            allowZip64=True,
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Finish the central directory."""
        self._zip.close()

    def write_stream(
        self,
        key: str,
        dtype: np.dtype[Any],
        shape: tuple[int, ...],
        fortran_order: bool,
        chunks: Iterable[bytes | memoryview],
    ) -> None:
        """Write one array member from chunks of its raw data."""
        with self.open_member(key, dtype, shape, fortran_order) as member:
            for chunk in chunks:
                member.write(chunk)

    @contextlib.contextmanager
    def open_member(
        self, key: str, dtype: np.dtype[Any], shape: tuple[int, ...], fortran_order: bool
    ) -> Iterator[MemberSink]:
        """One array member, its header written: the caller writes its raw data, all of it."""
        expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
        with self._zip.open(f"{key}.npy", "w", force_zip64=True) as member:
            member.write(header_bytes(dtype, shape, fortran_order))
            sink = MemberSink(member)
            yield sink
        if sink.written != expected:
            raise WeightsError(
                "truncated", f"{key} received {sink.written} bytes of data but needs {expected}."
            )

    def write_array(self, key: str, array: np.ndarray[Any, Any]) -> None:
        """Write one in-memory array (C order unless it is Fortran-contiguous)."""
        fortran = bool(array.flags.f_contiguous and not array.flags.c_contiguous)
        flat = array.ravel(order="F" if fortran else "C")
        chunks = [flat.view(np.uint8).data] if flat.nbytes else []
        self.write_stream(key, array.dtype, array.shape, fortran, chunks)

    def write_weighting(self, weighting: float) -> None:
        """`weighting` as the SDK writes it: float64, shape (1,)."""
        self.write_array(WEIGHTING_KEY, np.array([weighting], dtype=np.float64))


class MemberSink:
    """The raw data of one member being written; counts what it is given."""

    def __init__(self, member: IO[bytes]) -> None:
        self._member = member
        self.written = 0

    def write(self, chunk: bytes | memoryview) -> None:
        """Append a chunk (the zip library updates the CRC-32 as it writes)."""
        self._member.write(chunk)
        self.written += memoryview(chunk).nbytes


@contextlib.contextmanager
def atomic_path(dst: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `dst`; it replaces `dst` only if the block succeeds."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{secrets.token_hex(6)}.partial")
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def move_to_front(writer: NpzWriter, key: str) -> None:
    """List `key` first in the central directory (the order `numpy.load` reports keys in)."""
    entries = writer._zip.filelist  # ZipFile.filelist is documented; reordered before close
    name = f"{key}.npy"
    entries.sort(key=lambda info: info.filename != name)
