"""Validation of protocol v3 NPZ payloads: the protocol's rules, the strict checks, deep mode."""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from gateway.weights.archive import Archive, Member
from gateway.weights.errors import WeightsError
from gateway.weights.model import (
    ANALYTICS,
    KIND_KEY,
    KINDS,
    LAYER_PREFIX,
    LEARNING,
    POSITIONAL_LAYER,
    RESERVED_KEYS,
    WEIGHTING_KEY,
    ArrayInfo,
    Payload,
    PayloadKind,
    layer_index,
)
from gateway.weights.npy import array_from_bytes, dtype_words, read_header
from gateway.weights.policy import Limits, ValidationPolicy
from gateway.weights.values import checked_chunks

NUMERIC_KINDS = frozenset("biufc")


def check_numeric(members: Iterable[Member], what: str, fix: Callable[[str], str]) -> None:
    """Refuse the first member that is not numeric (`what` names them, `fix(key)` says how to
    convert one) with a not-numeric error (the strict dtype check)."""
    for member in members:
        if member.header.dtype.kind not in NUMERIC_KINDS:
            raise WeightsError(
                "not-numeric",
                f"{member.key} is {dtype_words(member.header.dtype)}; {what} must be numeric "
                f"(bool, integer, unsigned, float or complex): convert it before saving, "
                f"{fix(member.key)}.",
            )


ANALYTICS_KINDS = frozenset("biufcUS")
_LOCAL_HEADER = struct.Struct("<4sHHHHHIIIHH")
"""A ZIP local file header: signature .. name and extra-field lengths (30 bytes)."""


def inspect_npz(path: Path, policy: ValidationPolicy) -> Payload:
    """Validate an NPZ payload from its headers (and its data in deep mode)."""
    with Archive(path, policy.limits) as archive:
        return _inspect(archive, policy)


def _inspect(archive: Archive, policy: ValidationPolicy) -> Payload:
    members = {member.key: member for member in archive.members}
    kind = _declared_kind(archive, members)
    weighting = members.get(WEIGHTING_KEY)
    weighting_value: float | None = None
    ignored: list[str] = []
    if kind == LEARNING:
        if weighting is None:
            raise WeightsError(
                "missing-weighting",
                "Missing 'weighting' field: a learning payload needs a 'weighting' array "
                "holding its aggregation weight (usually the number of training samples): "
                "add it with -F weighting=12 (or ?weighting=12) when uploading, or save "
                'np.savez("w.npz", weighting=12, layer_0=a, ...).',
            )
        _check_single(weighting)
        chosen = _learning_layers(archive.members, policy, ignored)
        weighting_value = _weighting(archive, weighting, policy)
    else:
        chosen = _analytics_fields(archive.members)
        if weighting is not None and weighting.header.count == 1:
            weighting_value = _weighting(archive, weighting, policy)
    if policy.deep:
        _deep_check(archive, archive.members, policy.finite)
    return Payload(
        format="npz",
        kind=kind,
        weighting=weighting_value,
        arrays=tuple(_info(member) for member in chosen),
        ignored=tuple(ignored),
        size=archive.size,
    )


def read_small(archive: Archive, member: Member) -> np.ndarray[Any, Any]:
    """Read a member that must be tiny (`weighting`, the kind key) as an array."""
    limit = archive.limits.max_small_member_bytes
    if member.header.data_size > limit:
        raise WeightsError(
            "too-large",
            f"'{member.key}' holds {member.header.data_size} bytes; at most {limit} are accepted.",
        )
    return array_from_bytes(member.header, archive.read_data(member))


def _declared_kind(archive: Archive, members: dict[str, Member]) -> PayloadKind:
    member = members.get(KIND_KEY)
    if member is None:
        return LEARNING
    declared = str(read_small(archive, member))
    for kind in KINDS:
        if declared == kind:
            return kind
    raise WeightsError(
        "unknown-kind",
        f"The archive declares unknown payload kind {declared[:60]!r} under {KIND_KEY!r}; "
        f"expected one of {', '.join(KINDS)} as a 0-d unicode array.",
    )


def _check_single(member: Member) -> None:
    if member.header.count != 1:
        raise WeightsError(
            "weighting-not-single",
            f"'weighting' must be a single value; it has shape {member.header.shape}.",
        )


def _weighting(archive: Archive, member: Member, policy: ValidationPolicy) -> float | None:
    header = member.header
    _check_single(member)
    numeric = header.dtype.kind in "iuf"
    value = float(read_small(archive, member).reshape(())) if numeric else None
    if policy.strict_weighting and (value is None or not math.isfinite(value) or value < 0):
        shown = header.dtype.str if value is None else repr(value)
        raise WeightsError(
            "bad-weighting",
            f"'weighting' must be a finite number >= 0 (got {shown}); "
            "use the number of samples this update was trained on.",
        )
    return value


def _learning_layers(
    members: list[Member], policy: ValidationPolicy, ignored: list[str]
) -> list[Member]:
    layers = [m for m in members if m.key.startswith(LAYER_PREFIX)]
    if not layers:
        found = [m.key for m in members if m.key not in RESERVED_KEYS]
        raise WeightsError(
            "no-layers",
            "No layer arrays found: a learning payload stores its parameters as "
            f"'layer_0', 'layer_1', ... arrays, and this archive holds {_keys(found)}. "
            f"Save them under those names: {savez_hint(len(found))}.",
        )
    for member in members:
        if member.key not in RESERVED_KEYS and not member.key.startswith(LAYER_PREFIX):
            if policy.strict_extra_keys:
                raise WeightsError(
                    "unexpected-key",
                    f"Unexpected key {member.key!r} in a learning payload: only 'weighting' and "
                    "'layer_<n>' arrays are allowed (the gateway's strict key check); save "
                    f"only those: {savez_hint(len(layers))}.",
                )
            ignored.append(member.key)
    if policy.strict_layer_dtypes:
        check_numeric(layers, "layers", lambda key: f"e.g. {key}=array.astype(np.float32)")
    indexed = {layer_index(m.key): m for m in layers}
    if policy.strict_layer_numbering:
        expected = set(range(len(layers)))
        if None in indexed or set(indexed) != expected:
            names = ", ".join(sorted((m.key for m in layers), key=_natural)[:8])
            expected_names = (
                "layer_0" if len(layers) == 1 else f"layer_0 .. layer_{len(layers) - 1}"
            )
            raise WeightsError(
                "layer-numbering",
                f"{len(layers)} layer(s) must be named {expected_names} with no gaps, "
                f"duplicates or leading zeros; found {names}. Save them in order: "
                f"{savez_hint(len(layers))}.",
            )
    numbered = sorted((i, m) for i, m in indexed.items() if i is not None)
    rest = [m for m in layers if layer_index(m.key) is None]
    return [m for _, m in numbered] + rest


def _analytics_fields(members: list[Member]) -> list[Member]:
    fields = [m for m in members if m.key not in RESERVED_KEYS]
    if not fields:
        raise WeightsError(
            "no-fields",
            f"No named fields found for payload kind '{ANALYTICS}': add at least one field array.",
        )
    for member in fields:
        if POSITIONAL_LAYER.match(member.key):
            raise WeightsError(
                "reserved-field-name",
                f"{member.key!r} is reserved for positional model parameters and cannot appear "
                f"in a '{ANALYTICS}' payload; rename the field.",
            )
        if not member.header.shape:
            raise WeightsError(
                "bare-scalar",
                f"Field {member.key!r} is a bare scalar; store a single value as a "
                "one-element 1-D array.",
            )
        if member.header.dtype.kind not in ANALYTICS_KINDS:
            raise WeightsError(
                "unsupported-dtype",
                f"Field {member.key!r} is {dtype_words(member.header.dtype)}, which is not "
                "supported; fields must be numeric, boolean or string: convert it before "
                f"saving, e.g. {member.key}=np.asarray(value, dtype=np.float64).",
            )
    return fields


def _deep_check(archive: Archive, members: Iterable[Member], finite: bool) -> None:
    """Read every member (the zip library checks its CRC) and, with `finite`, refuse NaN and Inf."""
    for member in members:
        header = member.header
        for _ in checked_chunks(archive.iter_data(member), member.key, header, check=finite):
            pass


def _info(member: Member) -> ArrayInfo:
    header = member.header
    return ArrayInfo(
        key=member.key,
        dtype=header.dtype.str,
        shape=header.shape,
        fortran_order=header.fortran_order,
        nbytes=header.data_size,
        data_offset=header.header_size,
        member_offset=member.offset,
    )


def _natural(key: str) -> tuple[int, str]:
    index = layer_index(key)
    return (index if index is not None else 1 << 62, key)


def inspect_aggregate(path: Path, policy: ValidationPolicy) -> Payload:
    """Describe an aggregated NPZ (no `weighting`): its `layer_i` in order, or its named fields."""
    with Archive(path, policy.limits) as archive:
        numbered = sorted(
            (index, m) for m in archive.members if (index := layer_index(m.key)) is not None
        )
        kind: PayloadKind = LEARNING if numbered else ANALYTICS
        chosen = (
            [m for _, m in numbered]
            if numbered
            else [m for m in archive.members if m.key not in RESERVED_KEYS]
        )
        if policy.deep:
            _deep_check(archive, archive.members, policy.finite)
        return Payload(
            format="npz",
            kind=kind,
            weighting=None,
            arrays=tuple(_info(m) for m in chosen),
            size=archive.size,
        )


def _keys(keys: list[str]) -> str:
    if not keys:
        return "no other arrays"
    shown = ", ".join(repr(key) for key in keys[:8])
    return shown + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")


def savez_hint(count: int) -> str:
    """The `np.savez` call that writes `count` layers the way the protocol names them."""
    names = ["layer_0=...", "layer_1=..."][: max(count, 1)]
    more = ", ..." if count > 2 else ""
    return f'np.savez("w.npz", weighting=n_samples, {", ".join(names)}{more})'


def starts_plain(prefix: bytes, limits: Limits) -> bool:
    """Whether a file beginning with `prefix` (its first MiB, or all of it) starts the way an aggregate
    already in the served layout does: a stored `layer_0.npy` member holding a little-endian,
    C-order array. Only the whole file decides (`normalize_aggregate`); this lets a download be
    passed on while it arrives when it will most likely be kept byte for byte."""
    if len(prefix) < _LOCAL_HEADER.size or not prefix.startswith(b"PK\x03\x04"):
        return False
    fields = _LOCAL_HEADER.unpack_from(prefix)
    method, name_size, extra_size = fields[3], fields[9], fields[10]
    start = _LOCAL_HEADER.size + name_size + extra_size
    name = prefix[_LOCAL_HEADER.size : _LOCAL_HEADER.size + name_size]
    if method != 0 or name != b"layer_0.npy" or len(prefix) <= start:
        return False
    try:
        header = read_header(io.BytesIO(prefix[start:]).read, limits.max_header_bytes, "layer_0")
    except WeightsError:
        return False
    return header.dtype.byteorder != ">" and not header.fortran_order
