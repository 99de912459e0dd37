"""An aggregate (`layer_0 ..`) given back in the trainer's own names and dtypes: safetensors or a named NPZ."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from gateway.weights.archive import Archive, Member
from gateway.weights.errors import WeightsError
from gateway.weights.names import NameMap, check_fit, numpy_dtype_of, safetensors_dtype_of
from gateway.weights.npz import inspect_aggregate
from gateway.weights.policy import Limits, ValidationPolicy
from gateway.weights.safetensors import (
    BF16,
    OutTensor,
    narrow_to_bf16,
    numpy_dtype,
    safetensors_dtype,
    write_safetensors,
)
from gateway.weights.writer import NpzWriter, atomic_path


def aggregate_to_safetensors(
    src: Path, dst: Path, names: NameMap | None, limits: Limits, aggregation_id: str
) -> str:
    """A plain aggregate NPZ as safetensors: the map's names and dtypes, or `layer_i` as they are.

    Returns the file's sha256 (hex), computed as it was written."""
    with Archive(src, limits) as archive, atomic_path(dst) as tmp:
        members = _layers(src, archive, names, aggregation_id)
        tensors = []
        for index, member in enumerate(members):
            if names is None:
                name = member.key
                dtype = safetensors_dtype(member.header.dtype, f"Layer {member.key}")
            else:
                name, dtype = names.tensors[index].name, safetensors_dtype_of(names.tensors[index])
            tensors.append(
                OutTensor(name, dtype, member.header.shape, _chunks(archive, member, dtype))
            )
        with tmp.open("wb") as out:
            hashing = _Hashing(out)
            write_safetensors(hashing, tensors, names.metadata if names is not None else None)
    return hashing.digest.hexdigest()


class _Hashing:
    """A file being written, hashed on the way (the digest costs no second read)."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> None:
        self.digest.update(data)
        self.stream.write(data)


def aggregate_to_named_npz(
    src: Path, dst: Path, names: NameMap, limits: Limits, aggregation_id: str
) -> None:
    """A plain aggregate NPZ with the map's names and dtypes (BF16 as float32), stored."""
    with Archive(src, limits) as archive, atomic_path(dst) as tmp:
        members = _layers(src, archive, names, aggregation_id)
        with NpzWriter(tmp, compress=False) as writer:
            for tensor, member in zip(names.tensors, members, strict=True):
                dtype = numpy_dtype_of(tensor)
                writer.write_stream(
                    tensor.name,
                    dtype,
                    member.header.shape,
                    False,
                    _chunks(archive, member, dtype.str)(),
                )


def _layers(
    src: Path, archive: Archive, names: NameMap | None, aggregation_id: str
) -> list[Member]:
    """The aggregate's layers in order, after checking that the names fit them."""
    payload = inspect_aggregate(src, ValidationPolicy.lenient(archive.limits))
    if names is not None:
        check_fit(names, payload, aggregation_id)
    members = {member.key: member for member in archive.members}
    chosen = [members[info.key] for info in payload.arrays]
    for member in chosen:
        if member.header.fortran_order or member.header.dtype.byteorder == ">":
            raise WeightsError(
                "unsupported-kind",
                f"Layer {member.key} is not a plain little-endian C-order array; "
                "normalise the aggregate first.",
            )
    return chosen


def _chunks(archive: Archive, member: Member, target: str) -> Any:
    """A source of the member's bytes as `target` (a safetensors or numpy dtype name)."""
    source = member.header.dtype
    wanted = None if target == BF16 else _numpy(target)
    if wanted == source:
        return lambda: archive.iter_data(member)
    if source.kind == "c" and (wanted is None or wanted.kind != "c"):
        raise WeightsError(
            "names-mismatch",
            f"Layer {member.key} is complex but the remembered tensor is {target}: "
            "the names do not fit this aggregate.",
        )
    return lambda: _cast(archive.iter_data(member), source, wanted)


def _numpy(name: str) -> np.dtype[Any]:
    try:
        return numpy_dtype(name)
    except KeyError:
        return np.dtype(name)


def _cast(
    chunks: Iterable[bytes], source: np.dtype[Any], wanted: np.dtype[Any] | None
) -> Iterator[bytes]:
    """Convert chunk by chunk (whole items only): integers and bools are rounded, not truncated;
    `wanted` None means bfloat16."""
    carry = b""
    for chunk in chunks:
        data = carry + chunk
        usable = len(data) - len(data) % source.itemsize
        carry = data[usable:]
        values = np.frombuffer(data, dtype=source, count=usable // source.itemsize)
        if wanted is None:
            yield narrow_to_bf16(values)
        elif wanted.kind in "biu" and source.kind == "f":
            yield _round(values, wanted).tobytes()
        else:
            yield values.astype(wanted).tobytes()


def _round(values: np.ndarray[Any, Any], wanted: np.dtype[Any]) -> np.ndarray[Any, Any]:
    rounded: np.ndarray[Any, Any] = np.rint(np.nan_to_num(values.real))
    if wanted.kind == "b":
        nonzero: np.ndarray[Any, Any] = rounded != 0
        return nonzero
    info = np.iinfo(wanted)
    clipped: np.ndarray[Any, Any] = np.clip(rounded, info.min, info.max)
    return clipped.astype(wanted)
