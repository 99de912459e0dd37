"""Federated analytics (§5.9.6): which operation combines each field, and the combination itself.

Pure and synchronous (numpy only): the round engine calls `combine_analytics` in a worker thread.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal, get_args

import numpy as np

from gateway.aggregator.errors import UnprocessableError
from gateway.weights import ANALYTICS, Limits
from gateway.weights.archive import Archive, Member
from gateway.weights.model import KIND_KEY, RESERVED_KEYS
from gateway.weights.npy import array_from_bytes
from gateway.weights.writer import NpzWriter, atomic_path

__all__ = [
    "BUNDLE_SUFFIXES",
    "DERIVED",
    "FIELD_OPERATIONS",
    "MAX_ANALYTICS_BYTES",
    "FieldOperation",
    "combine_analytics",
    "operation_of",
    "operation_refusal",
    "read_fields",
]

FieldOperation = Literal["sum", "min", "max", "mean", "must_match"]
FIELD_OPERATIONS: Final[tuple[str, ...]] = get_args(FieldOperation)

BUNDLE_SUFFIXES: Final[dict[str, FieldOperation]] = {
    "_n": "sum",
    "_sum": "sum",
    "_sumsq": "sum",
    "_nan": "sum",
    "_min": "min",
    "_max": "max",
}
"""`save_analytics` writes these six fields per column; each is combined by its suffix's operation."""

DERIVED: Final = ("_mean", "_variance", "_std", "_range")
"""Statistics added for every complete bundle (`c_n, c_sum, c_sumsq, c_min, c_max`)."""

MAX_ANALYTICS_BYTES: Final = 64 * 1024 * 1024
"""Array data of one analytics upload: fields are combined whole, one field at a time."""

_DTYPE_KINDS: Final[dict[str, str]] = {
    "sum": "biufc",
    "mean": "biufc",
    "min": "biuf",
    "max": "biuf",
    "must_match": "biufcUS",
}
_BUNDLE: Final = ("_n", "_sum", "_sumsq", "_min", "_max")


def operation_of(field: str, assigned: Mapping[str, str]) -> str | None:
    """The operation for `field`: the branch's assignment, else its bundle suffix's, else None."""
    if field in assigned:
        return assigned[field]
    for suffix, operation in BUNDLE_SUFFIXES.items():
        if field.endswith(suffix) and len(field) > len(suffix):
            return operation
    return None


def operation_refusal(field: str, operation: str, dtype: np.dtype[Any]) -> str | None:
    """Why `operation` cannot combine a field of `dtype`, or None when it can."""
    if dtype.kind in _DTYPE_KINDS[operation]:
        return None
    return (
        f"Field {field!r} is {dtype.str}, which '{operation}' cannot combine: use a numeric "
        "field, or assign 'must_match' to it."
    )


def read_fields(
    path: Path, names: Iterable[str], limits: Limits
) -> dict[str, np.ndarray[Any, Any]]:
    """Some fields of an analytics archive, read whole (they are bounded by MAX_ANALYTICS_BYTES)."""
    wanted = set(names)
    with Archive(path, limits) as archive:
        return {m.key: _read(archive, m) for m in archive.members if m.key in wanted}


def combine_analytics(
    inputs: Sequence[Path], dst: Path, assigned: Mapping[str, str], limits: Limits
) -> None:
    """Write the combination of K analytics payloads: each field by its operation, the kind key, and
    the mean, variance (population), std and range of every complete bundle.

    Memory is about two copies of the largest field, whatever K.
    """
    with contextlib.ExitStack() as stack:
        archives = [stack.enter_context(Archive(path, limits)) for path in inputs]
        members = [{m.key: m for m in a.members if m.key not in RESERVED_KEYS} for a in archives]
        names = list(members[0])
        for index, fields in enumerate(members[1:], start=1):
            if set(fields) != set(names):
                raise UnprocessableError(
                    f"Upload {index} of the round has fields {sorted(fields)} but upload 0 has "
                    f"{sorted(names)}."
                )
        bundle = {f"{c}{s}" for c in _columns(names) for s in _BUNDLE}
        kept: dict[str, np.ndarray[Any, Any]] = {}
        with atomic_path(dst) as tmp, NpzWriter(tmp, compress=False) as writer:
            writer.write_array(KIND_KEY, np.array(ANALYTICS))
            for name in names:
                operation = operation_of(name, assigned)
                if operation is None:
                    raise UnprocessableError(f"Field {name!r} has no operation assigned.")
                values = (
                    _read(a, fields[name]) for a, fields in zip(archives, members, strict=True)
                )
                result = _combine(name, operation, values)
                writer.write_array(name, result)
                if name in bundle:
                    kept[name] = result
            for column in _columns(names):
                for key, value in _derived(column, kept).items():
                    if key not in names:
                        writer.write_array(key, value)


def _read(archive: Archive, member: Member) -> np.ndarray[Any, Any]:
    array = array_from_bytes(member.header, archive.read_data(member))
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _columns(names: Iterable[str]) -> list[str]:
    present = set(names)
    columns = {n.removesuffix("_n") for n in present if n.endswith("_n") and len(n) > 2}
    return sorted(c for c in columns if all(f"{c}{s}" in present for s in _BUNDLE))


def _accumulator(dtype: np.dtype[Any]) -> np.dtype[Any]:
    if dtype.kind in "bi":
        return np.dtype(np.int64)
    if dtype.kind == "u":
        return np.dtype(np.uint64)
    if dtype.kind == "c":
        return np.dtype(np.complex128 if dtype.itemsize <= 16 else np.clongdouble)
    return np.dtype(np.float64 if dtype.itemsize <= 8 else np.longdouble)


def _combine(
    name: str, operation: str, values: Iterable[np.ndarray[Any, Any]]
) -> np.ndarray[Any, Any]:
    result: np.ndarray[Any, Any] | None = None
    count = 0
    for value in values:
        count += 1
        if result is None:
            result = (
                value.astype(_accumulator(value.dtype)) if operation in ("sum", "mean") else value
            )
        elif result.shape != value.shape:
            raise UnprocessableError(f"Field {name!r} has shapes {result.shape} and {value.shape}.")
        elif operation in ("sum", "mean"):
            result = result + value.astype(result.dtype)
        elif operation == "min":
            result = np.minimum(result, value)
        elif operation == "max":
            result = np.maximum(result, value)
        elif not _same(result, value):
            raise UnprocessableError(f"Field {name!r} (must_match) differs between uploads.")
    if result is None:
        raise UnprocessableError("No uploads to combine.")
    if operation == "mean":
        result = result / count if result.dtype.kind == "c" else result.astype(np.float64) / count
    return np.ascontiguousarray(result)


def _same(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def _derived(
    column: str, kept: Mapping[str, np.ndarray[Any, Any]]
) -> dict[str, np.ndarray[Any, Any]]:
    n, total, squares, low, high = (kept[f"{column}{s}"].astype(np.float64) for s in _BUNDLE)
    if len({n.shape, total.shape, squares.shape, low.shape, high.shape}) != 1:
        return {}
    with np.errstate(divide="ignore", invalid="ignore"):
        some = n > 0
        mean = np.where(some, total / n, math.nan)
        variance = np.where(some, np.maximum((squares - total * total / n) / n, 0.0), math.nan)
    return {
        f"{column}_mean": mean,
        f"{column}_variance": variance,
        f"{column}_std": np.sqrt(variance),
        f"{column}_range": high - low,
    }
