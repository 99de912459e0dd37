"""The safetensors format: its header read without trusting it, its tensors streamed, and a streaming writer.

A file is an 8-byte little-endian header length N, N bytes of JSON (`{name: {dtype, shape,
data_offsets}}` plus an optional `__metadata__` of strings), then the tensors' bytes. The checks are
the official reader's (offsets contiguous from 0 to the end of the file, sizes matching shapes) plus
refusals it does not make (duplicate names, headers over a limit, control characters in names).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gateway.weights.errors import WeightsError
from gateway.weights.npy import check_shape, read_span
from gateway.weights.policy import Limits

LENGTH_BYTES = 8
METADATA_KEY = "__metadata__"
_ALIGN = 8

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("|b1"),
    "U8": np.dtype("|u1"),
    "I8": np.dtype("|i1"),
    "U16": np.dtype("<u2"),
    "I16": np.dtype("<i2"),
    "F16": np.dtype("<f2"),
    "U32": np.dtype("<u4"),
    "I32": np.dtype("<i4"),
    "F32": np.dtype("<f4"),
    "U64": np.dtype("<u8"),
    "I64": np.dtype("<i8"),
    "F64": np.dtype("<f8"),
    "C64": np.dtype("<c8"),
}
"""The safetensors dtypes numpy has, as numpy reads their little-endian bytes."""
BF16 = "BF16"
WIDENED: dict[str, np.dtype[Any]] = {BF16: np.dtype("<f4")}
"""Dtypes numpy lacks that are widened exactly on the way in: bfloat16 is the top half of a float32."""
ITEM_SIZES = {**{name: dtype.itemsize for name, dtype in NUMPY_DTYPES.items()}, BF16: 2}
_NO_NUMPY = {
    "F8_E4M3": "an 8-bit float",
    "F8_E5M2": "an 8-bit float",
    "F8_E8M0": "an 8-bit scale",
    "F6_E2M3": "a 6-bit float",
    "F6_E3M2": "a 6-bit float",
    "F4": "a 4-bit float",
}


@dataclass(frozen=True)
class Tensor:
    """One tensor of a safetensors file, as its header declares it (checked against the file)."""

    name: str
    dtype: str
    """The safetensors dtype name (`F32`, `BF16`, ...)."""
    shape: tuple[int, ...]
    begin: int
    """Offset of its first byte from the start of the data section."""
    end: int

    @property
    def nbytes(self) -> int:
        """Bytes of its data."""
        return self.end - self.begin


@dataclass(frozen=True)
class Header:
    """A checked safetensors header: its tensors in the order the header lists them."""

    tensors: tuple[Tensor, ...]
    metadata: dict[str, str]
    data_start: int
    """Offset of the data section in the file (8 + N)."""
    size: int
    """Bytes of the file."""


def looks_like_safetensors(prefix: bytes) -> bool:
    """Whether the first 9 bytes start like a safetensors file: a length, then a JSON object."""
    if len(prefix) < LENGTH_BYTES + 1:
        return False
    length = int.from_bytes(prefix[:LENGTH_BYTES], "little")
    return length >= 2 and prefix[LENGTH_BYTES] == ord("{")


def numpy_dtype(dtype: str) -> np.dtype[Any]:
    """The numpy dtype a safetensors dtype is read as (BF16: float32, widened exactly)."""
    return WIDENED.get(dtype) or NUMPY_DTYPES[dtype]


def safetensors_dtype(dtype: np.dtype[Any], what: str) -> str:
    """The safetensors name of a numpy dtype (byte order aside), or `unsupported-dtype`."""
    plain = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    for name, candidate in NUMPY_DTYPES.items():
        if candidate == plain:
            return name
    raise WeightsError(
        "unsupported-dtype",
        f"{what} is numpy {dtype.str}, which safetensors has no dtype for; "
        "ask for ?format=npz instead.",
    )


def read_header(path: Path, limits: Limits) -> Header:
    """Parse and check the header of a safetensors file; never reads tensor data."""
    with path.open("rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        prefix = stream.read(LENGTH_BYTES)
        if len(prefix) < LENGTH_BYTES:
            raise WeightsError("truncated", "The safetensors file ends inside its header length.")
        length = int.from_bytes(prefix, "little")
        if length > limits.max_safetensors_header_bytes:
            raise WeightsError(
                "header-too-large",
                f"The safetensors header is {length} bytes; at most "
                f"{limits.max_safetensors_header_bytes} are accepted "
                "(GATEWAY_MAX_SAFETENSORS_HEADER_BYTES).",
            )
        if LENGTH_BYTES + length > size:
            raise WeightsError(
                "truncated",
                f"The safetensors header claims {length} bytes but the file holds only "
                f"{size - LENGTH_BYTES} after its length: the file is truncated or not safetensors.",
            )
        raw = stream.read(length)
    tensors, metadata = _parse(raw, limits)
    data_start = LENGTH_BYTES + length
    _check_offsets(tensors, size - data_start)
    return Header(tuple(tensors), metadata, data_start, size)


def _bad(detail: str) -> WeightsError:
    return WeightsError(
        "bad-safetensors-header",
        f"The safetensors header is malformed: {detail}; write the file with "
        "safetensors.torch.save_file (or another conforming writer).",
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise WeightsError(
                "duplicate-member",
                f"The safetensors header names {key[:100]!r} twice; each tensor name may appear once.",
            )
        result[key] = value
    return result


def _parse(raw: bytes, limits: Limits) -> tuple[list[Tensor], dict[str, str]]:
    try:
        # Nesting is bounded by the header size; RecursionError covers a deeply nested attack.
        parsed = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad("it is not UTF-8 JSON") from None
    if not isinstance(parsed, dict):
        raise _bad("it is not a JSON object")
    metadata = parsed.pop(METADATA_KEY, {})
    if not isinstance(metadata, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in metadata.items()
    ):
        raise _bad(f"{METADATA_KEY!r} must map strings to strings")
    if len(parsed) > limits.max_members:
        raise WeightsError(
            "too-many-members",
            f"The safetensors file holds {len(parsed)} tensors; at most {limits.max_members} are accepted.",
        )
    return [_tensor(name, entry) for name, entry in parsed.items()], metadata


def _tensor(name: str, entry: object) -> Tensor:
    shown = repr(name[:100])
    if not name or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name):
        raise WeightsError(
            "bad-member-name",
            f"Tensor name {shown} is empty or holds control characters; rename the tensor.",
        )
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise _bad(f"tensor {shown} needs exactly 'dtype', 'shape' and 'data_offsets'")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        raise _bad(f"tensor {shown} has a dtype that is not a string")
    if dtype in _NO_NUMPY:
        raise WeightsError(
            "unsupported-dtype",
            f"Tensor {shown} is {dtype} ({_NO_NUMPY[dtype]}), which numpy and BranchKey cannot "
            "average; save it as F16, BF16 or F32 (e.g. tensor.to(torch.bfloat16)).",
        )
    if dtype not in ITEM_SIZES:
        raise WeightsError(
            "unsupported-dtype",
            f"Tensor {shown} has unknown dtype {dtype[:20]!r}; accepted: {', '.join(ITEM_SIZES)}.",
        )
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise _bad(f"tensor {shown} has a shape that is not a list of non-negative integers")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(type(n) is int and n >= 0 for n in offsets)
    ):
        raise _bad(f"tensor {shown} needs 'data_offsets' [begin, end] of non-negative integers")
    check_shape(tuple(shape), numpy_dtype(dtype), f"Tensor {shown}")
    return Tensor(name, dtype, tuple(shape), offsets[0], offsets[1])


def _check_offsets(tensors: list[Tensor], data_size: int) -> None:
    """Each tensor's bytes match its shape; together they tile the data section exactly."""
    for tensor in tensors:
        expected = math.prod(tensor.shape) * ITEM_SIZES[tensor.dtype]
        if tensor.end < tensor.begin or tensor.nbytes != expected:
            raise WeightsError(
                "tensor-offsets",
                f"Tensor {tensor.name[:100]!r} is {tensor.dtype} {list(tensor.shape)} "
                f"({expected} bytes) but its data_offsets {[tensor.begin, tensor.end]} span "
                f"{tensor.end - tensor.begin} bytes.",
            )
        if tensor.end > data_size:
            raise WeightsError(
                "tensor-offsets",
                f"Tensor {tensor.name[:100]!r} ends at byte {tensor.end} of the data, which holds "
                f"only {data_size}: the file is truncated or its header is wrong.",
            )
    position = 0
    for tensor in sorted(tensors, key=lambda t: (t.begin, t.end)):
        if tensor.begin < position:
            raise WeightsError(
                "overlapping-tensors",
                f"Tensor {tensor.name[:100]!r} overlaps the tensor before it "
                f"(it starts at byte {tensor.begin}, before byte {position}).",
            )
        if tensor.begin > position:
            raise WeightsError(
                "tensor-offsets",
                f"The data has a hole of {tensor.begin - position} bytes before tensor "
                f"{tensor.name[:100]!r}; tensors must follow each other with no gaps.",
            )
        position = tensor.end
    if position != data_size:
        raise WeightsError(
            "tensor-offsets",
            f"The file holds {data_size - position} bytes after its last tensor.",
        )


def iter_tensor(path: Path, header: Header, tensor: Tensor) -> Iterator[bytes]:
    """Yield a tensor's bytes in chunks (a multiple of the item size, but the last)."""
    return read_span(path, header.data_start + tensor.begin, tensor.nbytes)


def widen_bf16(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """bfloat16 bytes as float32 bytes: exact, since a bfloat16 is the top half of a float32."""
    for chunk in chunks:
        halves = np.frombuffer(chunk, dtype="<u2")
        yield (halves.astype("<u4") << 16).tobytes()


def narrow_to_bf16(values: np.ndarray[Any, Any]) -> bytes:
    """float values as bfloat16 bytes, rounded to nearest even (NaN stays NaN, as torch does)."""
    bits = np.ascontiguousarray(values, dtype="<f4").view("<u4")
    rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
    rounded = np.where(np.isnan(values), 0x7FC0, rounded)
    return rounded.astype("<u2").tobytes()


@dataclass(frozen=True)
class OutTensor:
    """One tensor to write: its name, safetensors dtype, shape and a source of its bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    chunks: Callable[[], Iterable[bytes]]


def header_for(tensors: list[OutTensor], metadata: dict[str, str]) -> bytes:
    """The length-prefixed header for `tensors` laid out one after the other, padded with spaces to
    8 bytes as the official writer does."""
    entries: dict[str, Any] = {METADATA_KEY: metadata} if metadata else {}
    position = 0
    for tensor in tensors:
        size = math.prod(tensor.shape) * ITEM_SIZES[tensor.dtype]
        entries[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [position, position + size],
        }
        position += size
    text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % _ALIGN)
    return len(text).to_bytes(LENGTH_BYTES, "little") + text


class Writable(Protocol):
    """Where a file is written: an open binary file, or anything with its `write`."""

    def write(self, data: bytes, /) -> object:
        """Write `data`."""


def write_safetensors(
    stream: Writable, tensors: list[OutTensor], metadata: dict[str, str] | None = None
) -> None:
    """Write a safetensors file tensor by tensor; each must yield exactly its size."""
    stream.write(header_for(tensors, metadata or {}))
    for tensor in tensors:
        expected = math.prod(tensor.shape) * ITEM_SIZES[tensor.dtype]
        written = 0
        for chunk in tensor.chunks():
            stream.write(chunk)
            written += len(chunk)
        if written != expected:
            raise WeightsError(
                "truncated",
                f"Tensor {tensor.name!r} received {written} bytes of data but needs {expected}.",
            )
