"""Telling payload formats apart, and converting between them layer by layer."""

from __future__ import annotations

import dataclasses
import errno
import functools
import math
import os
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from gateway.weights.archive import Archive, is_zip
from gateway.weights.errors import WeightsError
from gateway.weights.layers import inspect_layer_files, iter_file_data, parse_weighting
from gateway.weights.model import (
    LEARNING,
    RESERVED_KEYS,
    WEIGHTING_KEY,
    Payload,
    layer_index,
    layer_key,
)
from gateway.weights.npy import MAGIC, ArrayHeader, array_from_bytes, header_bytes, read_header
from gateway.weights.npz import inspect_aggregate, inspect_npz
from gateway.weights.objectnpy import (
    ArrayList,
    ObjectNpy,
    check_sample_count,
    inspect_object_npy,
    read_object_arrays,
    read_object_npy,
)
from gateway.weights.objectnpy_writer import LayerSource, write_object_npy
from gateway.weights.policy import Limits, ValidationPolicy
from gateway.weights.safetensors import looks_like_safetensors
from gateway.weights.values import check_array_bytes, checked_chunks
from gateway.weights.writer import NpzWriter, atomic_path, move_to_front

FileFormat = Literal["npz", "npy-object", "npy", "safetensors", "unknown"]


def detect_format(path: Path, limits: Limits | None = None) -> FileFormat:
    """Which kind of file this is, from its first bytes and (for `.npy`) its header."""
    limits = limits or Limits()
    with path.open("rb") as stream:
        prefix = stream.read(9)
        if is_zip(prefix):
            return "npz"
        if not prefix.startswith(MAGIC):
            return "safetensors" if looks_like_safetensors(prefix) else "unknown"
        stream.seek(0)
        header = read_header(
            stream.read, limits.max_header_bytes, "The .npy file", allow_object=True
        )
    return "npy-object" if header.dtype.hasobject else "npy"


def inspect_payload(path: Path, policy: ValidationPolicy | None = None) -> Payload:
    """Validate an uploaded file of either dialect and describe it."""
    policy = policy or ValidationPolicy()
    kind = detect_format(path, policy.limits)
    if kind == "npz":
        return inspect_npz(path, policy)
    if kind == "npy-object":
        return inspect_object_npy(path, policy)
    if kind == "npy":
        raise WeightsError(
            "not-a-payload",
            "This is a single .npy array, not a payload: upload it through the gateway "
            "(curl -F file=@w.npy -F weighting=12 localhost:8000/upload), or save an NPZ with "
            'np.savez("w.npz", weighting=12, layer_0=array).',
        )
    if kind == "safetensors":
        raise WeightsError(
            "not-a-payload",
            "This is a safetensors file, not a BranchKey payload: upload it through the gateway "
            "(curl -F file=@model.safetensors -F weighting=12 localhost:8000/upload), which "
            "names its tensors layer_0.. and gives the aggregate back with ?format=safetensors.",
        )
    raise WeightsError(
        "not-a-payload",
        "The file is neither an NPZ archive, a .npy file nor a safetensors file; save the weights "
        'with np.savez("w.npz", weighting=n_samples, layer_0=a, layer_1=b), np.save("w.npy", '
        'array) or safetensors.torch.save_file(model.state_dict(), "model.safetensors").',
    )


def npz_to_object_npy(src: Path, dst: Path, policy: ValidationPolicy | None = None) -> Payload:
    """A learning NPZ as the v1 object `.npy`, streaming each layer from the archive."""
    policy = policy or ValidationPolicy()
    payload = inspect_npz(src, policy)
    if payload.kind != LEARNING:
        raise WeightsError(
            "unsupported-kind",
            f"A {payload.kind} payload has no v1 form: protocol v1 carries model weights only.",
        )
    weighting = payload.weighting
    if (
        weighting is None
        or not math.isfinite(weighting)
        or weighting < 0
        or weighting != int(weighting)
        or weighting >= 2**63
    ):
        raise WeightsError(
            "weighting-not-integer",
            f"Protocol v1 needs a whole, non-negative sample count as the weighting (got {weighting!r}).",
        )
    _write_v1(src, dst, policy.limits, payload, int(weighting))
    return payload


def _write_v1(src: Path, dst: Path, limits: Limits, payload: Payload, num_samples: int) -> None:
    """The layers of an NPZ as the v1 object `.npy`, streamed member by member."""
    for info in payload.arrays:
        if np.dtype(info.dtype).kind not in "biufc":
            raise WeightsError(
                "not-numeric",
                f"{info.key} has dtype {info.dtype}; a v1 weights file holds numeric arrays only.",
            )
    with Archive(src, limits) as archive, atomic_path(dst) as tmp:
        members = {m.key: m for m in archive.members}
        sources = [
            LayerSource(
                dtype=members[info.key].header.dtype,
                shape=info.shape,
                fortran_order=info.fortran_order,
                chunks=functools.partial(archive.iter_data, members[info.key]),
            )
            for info in payload.arrays
        ]
        with tmp.open("wb") as out:
            write_object_npy(out, num_samples, sources)


def stream_object_layers(
    src: Path,
    writer: NpzWriter,
    limits: Limits,
    *,
    allow_list: bool = False,
    finite: bool = False,
) -> ObjectNpy | ArrayList:
    """Read an object `.npy` (the v1 pair; with `allow_list` also a list of arrays), writing each array
    into `writer` as `layer_<i>` as soon as it is read: memory stays about one layer. With `finite`,
    an array holding NaN or Inf is refused as it is read."""

    def sink(index: int, header: ArrayHeader, data: bytes) -> None:
        if finite:
            check_array_bytes(layer_key(index), header, data)
        writer.write_stream(
            layer_key(index), header.dtype, header.shape, header.fortran_order, [data]
        )

    if allow_list:
        return read_object_arrays(src, limits, sink)
    return read_object_npy(src, limits, sink)


def object_npy_to_npz(
    src: Path, dst: Path, policy: ValidationPolicy | None = None, *, compress: bool = True
) -> Payload:
    """A v1 object `.npy` as a protocol v3 NPZ (`weighting` + `layer_i`), one layer in memory."""
    policy = policy or ValidationPolicy()
    with atomic_path(dst) as tmp:
        with NpzWriter(tmp, compress=compress) as writer:
            parsed = stream_object_layers(src, writer, policy.limits)
            assert isinstance(parsed, ObjectNpy)  # noqa: S101 - allow_list=False never yields a list
            check_sample_count(parsed.num_samples, policy)
            writer.write_weighting(float(parsed.num_samples))
            move_to_front(writer, WEIGHTING_KEY)
        payload = inspect_npz(tmp, policy)
    return payload


def layers_to_npz(
    paths: Sequence[Path],
    weighting: str | float,
    dst: Path,
    policy: ValidationPolicy | None = None,
    *,
    compress: bool = True,
    labels: Sequence[str] | None = None,
) -> Payload:
    """Per-layer `.npy` files (in order) plus a weighting number, as one NPZ (`labels` name the
    files in messages; default: the HTTP parts)."""
    policy = policy or ValidationPolicy()
    value = parse_weighting(weighting, policy)
    headers = inspect_layer_files(paths, policy, labels)
    with atomic_path(dst) as tmp:
        with NpzWriter(tmp, compress=compress) as writer:
            writer.write_weighting(value)
            for index, (path, header) in enumerate(zip(paths, headers, strict=True)):
                key = layer_key(index)
                writer.write_stream(
                    key,
                    header.dtype,
                    header.shape,
                    header.fortran_order,
                    checked_chunks(iter_file_data(path, header), key, header, check=policy.finite),
                )
        payload = inspect_npz(tmp, policy)
    return payload


def with_weighting(
    src: Path, weighting: str | float, dst: Path, policy: ValidationPolicy | None = None
) -> Payload:
    """A learning NPZ with its `weighting` replaced (or supplied), layers copied one at a time."""
    policy = policy or ValidationPolicy()
    value = parse_weighting(weighting, policy)
    payload = inspect_npz(src, dataclasses.replace(policy, strict_weighting=False))
    if payload.kind != LEARNING:
        raise WeightsError(
            "unsupported-kind", "Only a learning payload has a weighting to replace."
        )
    with Archive(src, policy.limits) as archive, atomic_path(dst) as tmp:
        members = {m.key: m for m in archive.members}
        with NpzWriter(tmp, compress=False) as writer:
            writer.write_weighting(value)
            for info in payload.arrays:
                member = members[info.key]
                header = member.header
                writer.write_stream(
                    info.key,
                    header.dtype,
                    header.shape,
                    header.fortran_order,
                    archive.iter_data(member),
                )
        result = inspect_npz(tmp, policy)
    return result


def npz_to_layers(
    src: Path, dst_dir: Path, policy: ValidationPolicy | None = None
) -> tuple[float | None, list[Path]]:
    """A learning NPZ as one plain `.npy` file per layer (`layer_<i>.npy`) and its weighting."""
    policy = policy or ValidationPolicy()
    payload = inspect_npz(src, policy)
    dst_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with Archive(src, policy.limits) as archive:
        members = {m.key: m for m in archive.members}
        for index, info in enumerate(payload.arrays):
            member = members[info.key]
            target = dst_dir / f"{layer_key(index)}.npy"
            with atomic_path(target) as tmp, tmp.open("wb") as out:
                header = member.header
                out.write(header_bytes(header.dtype, header.shape, header.fortran_order))
                for chunk in archive.iter_data(member):
                    out.write(chunk)
            written.append(target)
    return payload.weighting, written


def aggregate_to_object_npy(
    src: Path, dst: Path, limits: Limits | None = None, *, num_samples: int = 0
) -> Payload:
    """A (normalised) learning aggregate as the v1 object `.npy`: `(num_samples, [layer_0, ...])`.

    An aggregate carries no weighting, so the sample count is `num_samples` (0 unless given).
    """
    limits = limits or Limits()
    payload = inspect_aggregate(src, ValidationPolicy.lenient(limits))
    if payload.kind != LEARNING:
        raise WeightsError(
            "unsupported-kind",
            "An analytics aggregate has no v1 form: v1 carries model weights only.",
        )
    _write_v1(src, dst, limits, payload, num_samples)
    return payload


def normalize_aggregate(
    src: Path, dst: Path, limits: Limits | None = None, *, move: bool = False
) -> Payload:
    """An aggregated result of either dialect as an NPZ of plain arrays any `.npy` reader can open.

    Learning results become `layer_0 .. layer_{n-1}` (numeric order, no `weighting`); analytics
    results keep their field names. Arrays are written little-endian in C order, stored uncompressed.
    A `src` already in that layout is copied, or with `move` renamed (then `src` is gone).
    """
    limits = limits or Limits()
    lenient = ValidationPolicy.lenient(limits)
    fmt = detect_format(src, limits)
    if fmt == "npz" and _already_plain(src, limits):
        payload = inspect_aggregate(src, lenient)  # headers only; before `src` may be moved
        with atomic_path(dst) as tmp:
            # already the target layout: no re-encoding
            if not (move and _moved(src, tmp)):
                shutil.copyfile(src, tmp)
        return payload
    with atomic_path(dst) as tmp:
        with NpzWriter(tmp, compress=False) as writer:
            if fmt == "npy-object":

                def sink(index: int, header: ArrayHeader, data: bytes) -> None:
                    _write_plain(writer, layer_key(index), header, lambda: iter([data]))

                read_object_npy(src, limits, sink)
            elif fmt == "npz":
                _normalize_npz(src, writer, limits)
            else:
                inspect_payload(src, lenient)  # raises the precise error
        payload = inspect_aggregate(tmp, lenient)
    return payload


def _moved(src: Path, dst: Path) -> bool:
    """Rename `src` to `dst`; False (nothing done) when they are on different file systems."""
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        return False
    return True


def _already_plain(src: Path, limits: Limits) -> bool:
    """Stored `layer_0 .. layer_{n-1}` in order, little-endian, C order, nothing else."""
    with Archive(src, limits) as archive:
        members = archive.members
        return bool(members) and all(
            member.key == layer_key(index)
            and member.info.compress_type == zipfile.ZIP_STORED
            and member.header.dtype.byteorder != ">"
            and not member.header.fortran_order
            for index, member in enumerate(members)
        )


def _normalize_npz(src: Path, writer: NpzWriter, limits: Limits) -> None:
    with Archive(src, limits) as archive:
        numbered = sorted(
            (index, m) for m in archive.members if (index := layer_index(m.key)) is not None
        )
        if numbered:
            chosen = [(layer_key(i), m) for i, (_, m) in enumerate(numbered)]
        else:
            chosen = [(m.key, m) for m in archive.members if m.key not in RESERVED_KEYS]
        if not chosen:
            raise WeightsError("no-layers", "The aggregated archive holds no arrays.")
        for key, member in chosen:
            _write_plain(writer, key, member.header, functools.partial(archive.iter_data, member))


def _write_plain(writer: NpzWriter, key: str, header: ArrayHeader, chunks: Any) -> None:
    dtype = header.dtype
    plain = dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype
    if plain == dtype and not header.fortran_order:
        writer.write_stream(key, dtype, header.shape, False, chunks())
        return
    # Byte-swapping or reordering needs the whole layer: one layer in memory.
    array = array_from_bytes(header, b"".join(chunks()))
    writer.write_array(key, np.asarray(array, dtype=plain, order="C"))


def to_npz(
    src: Path, dst: Path, policy: ValidationPolicy | None = None, *, compress: bool = True
) -> tuple[Payload, bool]:
    """Make sure an upload is an NPZ: validate it, convert a v1 file. Returns (payload, converted)."""
    policy = policy or ValidationPolicy()
    if detect_format(src, policy.limits) == "npy-object":
        return object_npy_to_npz(src, dst, policy, compress=compress), True
    return inspect_payload(src, policy), False
