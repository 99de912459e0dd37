"""Named uploads (safetensors, an NPZ with the trainer's own keys) as the BranchKey NPZ, with their name map."""

from __future__ import annotations

from pathlib import Path

from gateway.weights.archive import Archive, Member
from gateway.weights.errors import WeightsError
from gateway.weights.model import (
    KIND_KEY,
    LEARNING,
    POSITIONAL_LAYER,
    RESERVED_KEYS,
    WEIGHTING_KEY,
    ArrayInfo,
    Payload,
    layer_key,
)
from gateway.weights.names import NamedTensor, NameMap
from gateway.weights.npz import check_numeric, inspect_npz, read_small
from gateway.weights.policy import ValidationPolicy
from gateway.weights.safetensors import BF16, Header, iter_tensor, numpy_dtype, widen_bf16
from gateway.weights.safetensors import read_header as read_safetensors_header
from gateway.weights.writer import NpzWriter, atomic_path


def describe_safetensors(path: Path, policy: ValidationPolicy) -> tuple[Payload, NameMap]:
    """A safetensors file as it would be sent (`layer_i`, BF16 as float32) and its name map; headers only."""
    return _describe(read_safetensors_header(path, policy.limits))


def _describe(header: Header) -> tuple[Payload, NameMap]:
    if not header.tensors:
        raise WeightsError(
            "no-layers", "The safetensors file holds no tensors: save the model's state_dict."
        )
    arrays = tuple(
        ArrayInfo(
            key=layer_key(index),
            dtype=numpy_dtype(tensor.dtype).str,
            shape=tensor.shape,
            fortran_order=False,
            nbytes=tensor.nbytes,
            data_offset=header.data_start + tensor.begin,
            member_offset=None,
        )
        for index, tensor in enumerate(header.tensors)
    )
    names = NameMap(
        "safetensors",
        tuple(NamedTensor(t.name, t.dtype, t.shape) for t in header.tensors),
        header.metadata,
    )
    return Payload("safetensors", LEARNING, None, arrays, size=header.size), names


def safetensors_to_npz(
    src: Path, dst: Path, policy: ValidationPolicy, weighting: float, *, compress: bool = True
) -> tuple[Payload, NameMap]:
    """A safetensors file as the BranchKey NPZ, one chunk of one tensor in memory at a time."""
    header = read_safetensors_header(src, policy.limits)
    _, names = _describe(header)
    with atomic_path(dst) as tmp:
        with NpzWriter(tmp, compress=compress) as writer:
            writer.write_weighting(weighting)
            for index, tensor in enumerate(header.tensors):
                chunks = iter_tensor(src, header, tensor)
                writer.write_stream(
                    layer_key(index),
                    numpy_dtype(tensor.dtype),
                    tensor.shape,
                    False,
                    widen_bf16(chunks) if tensor.dtype == BF16 else chunks,
                )
        payload = inspect_npz(tmp, policy)
    return payload, names


def is_named_npz(path: Path, policy: ValidationPolicy) -> bool:
    """An NPZ in the trainer's own names: no kind key, no `layer_<n>` key, some other array."""
    with Archive(path, policy.limits) as archive:
        keys = [member.key for member in archive.members]
    return (
        KIND_KEY not in keys
        and not any(POSITIONAL_LAYER.match(key) for key in keys)
        and any(key not in RESERVED_KEYS for key in keys)
    )


def npz_weighting(path: Path, policy: ValidationPolicy) -> float | None:
    """The `weighting` array of a named NPZ as a number, or None when it has none."""
    with Archive(path, policy.limits) as archive:
        member = next((m for m in archive.members if m.key == WEIGHTING_KEY), None)
        if member is None:
            return None
        value = read_small(archive, member)
    if value.size != 1 or value.dtype.kind not in "iuf":
        raise WeightsError(
            "bad-weighting",
            f"'weighting' must be a single number (got {value.dtype.str} shape {value.shape}).",
        )
    return float(value.reshape(()))


def describe_named_npz(path: Path, policy: ValidationPolicy) -> tuple[Payload, NameMap]:
    """A named NPZ as it would be sent (`layer_i` in archive order) and its name map; headers only."""
    with Archive(path, policy.limits) as archive:
        members = _named_members(archive, policy)
        size = archive.size
    arrays = tuple(
        ArrayInfo(
            key=layer_key(index),
            dtype=m.header.dtype.str,
            shape=m.header.shape,
            fortran_order=m.header.fortran_order,
            nbytes=m.header.data_size,
            data_offset=m.header.header_size,
            member_offset=m.offset,
        )
        for index, m in enumerate(members)
    )
    names = NameMap(
        "npz", tuple(NamedTensor(m.key, m.header.dtype.str, m.header.shape) for m in members)
    )
    return Payload("npz", LEARNING, None, arrays, size=size), names


def named_npz_to_npz(
    src: Path, dst: Path, policy: ValidationPolicy, weighting: float, *, compress: bool = True
) -> tuple[Payload, NameMap]:
    """A named NPZ as the BranchKey NPZ: its arrays become `layer_0 ..` in archive order."""
    _, names = describe_named_npz(src, policy)
    with Archive(src, policy.limits) as archive, atomic_path(dst) as tmp:
        members = _named_members(archive, policy)
        with NpzWriter(tmp, compress=compress) as writer:
            writer.write_weighting(weighting)
            for index, member in enumerate(members):
                writer.write_stream(
                    layer_key(index),
                    member.header.dtype,
                    member.header.shape,
                    member.header.fortran_order,
                    archive.iter_data(member),
                )
        payload = inspect_npz(tmp, policy)
    return payload, names


def _named_members(archive: Archive, policy: ValidationPolicy) -> list[Member]:
    members = [m for m in archive.members if m.key not in RESERVED_KEYS]
    if policy.strict_layer_dtypes:
        check_numeric(members, "model tensors", lambda _key: "or leave it out of the archive")
    return members
