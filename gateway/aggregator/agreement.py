"""An upload must fit its round, checked when it arrives so that an aggregation cannot fail later.

One kind per round; learning: a weighting FedAvg can use, numeric layers, and the layer names, shapes
and dtypes of the round's other uploads; analytics (§5.9.6): an operation for every field, the fields,
dtypes and shapes of the run's first upload, and the round's values of `must_match` fields.
Synchronous (it reads archive headers): call it in a worker thread, holding the branch's lock.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from gateway.aggregator.analytics import (
    FIELD_OPERATIONS,
    MAX_ANALYTICS_BYTES,
    operation_of,
    operation_refusal,
    read_fields,
)
from gateway.aggregator.errors import PayloadTooLargeError, UnprocessableError
from gateway.aggregator.records import Branch, Leaf, Upload
from gateway.aggregator.store import Store
from gateway.weights import ANALYTICS, LEARNING, ArrayInfo, Payload, ValidationPolicy, inspect_npz

__all__ = ["check_fit"]

_SAME_MODEL = "every leaf of a round must send the same model"


def check_fit(
    store: Store, leaf: Leaf, branch: Branch, path: Path, payload: Payload, policy: ValidationPolicy
) -> None:
    """Refuse (422, naming the layer or field) an upload that its round could not aggregate."""
    others = [
        u
        for u in store.round_uploads(branch.branch_id, branch.run_number, branch.round)
        if u.leaf_id != leaf.id
    ]
    if others and others[0].kind != payload.kind:
        raise UnprocessableError(
            f"This round collects {others[0].kind} uploads and this file is {payload.kind}: "
            "upload it once the round has closed.",
            "kind-mismatch",
        )
    if payload.kind == LEARNING:
        _check_learning(payload)
        if others:
            _check_layers(payload, inspect_npz(Path(others[0].path), policy))
        return
    _check_operations(payload, store.field_operations(branch.branch_id))
    first = store.first_run_upload(branch.branch_id, branch.run_number, ANALYTICS, leaf.id)
    if first is not None and first.kind == ANALYTICS:
        _check_fields(payload, inspect_npz(Path(first.path), policy))
    if others:
        _check_must_match(path, payload, others[0], store, policy)


def _check_learning(payload: Payload) -> None:
    weighting = payload.weighting
    if weighting is None or not math.isfinite(weighting) or weighting < 0:
        shown = "not a number" if weighting is None else repr(weighting)
        raise UnprocessableError(
            f"'weighting' is {shown}; FedAvg weighs each upload by it, so it must be a finite "
            "number >= 0 (usually the number of training samples).",
            "bad-weighting",
        )
    for info in payload.arrays:
        if np.dtype(info.dtype).kind not in "biufc":
            raise UnprocessableError(
                f"{info.key} has dtype {info.dtype}; FedAvg averages numeric layers only "
                f"(bool, integer, float or complex): save it with .astype(np.float32).",
                "not-numeric",
            )


def _check_layers(payload: Payload, reference: Payload) -> None:
    mine = {info.key: info for info in payload.arrays}
    theirs = {info.key: info for info in reference.arrays}
    for key in theirs:
        if key not in mine:
            raise UnprocessableError(
                f"{key} is missing: this round's uploads have {_names(theirs)}; {_SAME_MODEL}.",
                "layer-mismatch",
            )
    for key, info in mine.items():
        other = theirs.get(key)
        if other is None:
            raise UnprocessableError(
                f"{key} is not a layer of this round's model ({_names(theirs)}); {_SAME_MODEL}.",
                "layer-mismatch",
            )
        _check_same_array(key, info, other, "layer-mismatch", "this round's uploads")


def _check_same_array(key: str, mine: ArrayInfo, theirs: ArrayInfo, code: str, where: str) -> None:
    if mine.shape != theirs.shape:
        raise UnprocessableError(
            f"{key} has shape {mine.shape} but {theirs.shape} in {where}.", code
        )
    if _native(mine.dtype) != _native(theirs.dtype):
        raise UnprocessableError(
            f"{key} has dtype {mine.dtype} but {theirs.dtype} in {where}.", code
        )


def _native(dtype: str) -> np.dtype[Any]:
    return np.dtype(dtype).newbyteorder("=")


def _names(arrays: dict[str, ArrayInfo]) -> str:
    keys = list(arrays)
    shown = ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")
    return f"{len(keys)} layer(s): {shown}"


def _check_operations(payload: Payload, assigned: dict[str, str]) -> None:
    size = sum(info.nbytes for info in payload.arrays)
    if size > MAX_ANALYTICS_BYTES:
        raise PayloadTooLargeError(
            f"The analytics fields hold {size} bytes of data; at most {MAX_ANALYTICS_BYTES} are "
            "combined: send summaries (save_analytics), not raw data."
        )
    for info in payload.arrays:
        operation = operation_of(info.key, assigned)
        if operation is None:
            raise UnprocessableError(
                f"Field {info.key!r} has no operation: assign one ({', '.join(FIELD_OPERATIONS)}) "
                "before the first aggregation with PUT /admin/fields "
                f'{{"fields": {{"{info.key}": "sum"}}}}; the suffixes _n, _sum, _sumsq, _nan, '
                "_min and _max are combined without one.",
                "unassigned_field",
            )
        refusal = operation_refusal(info.key, operation, np.dtype(info.dtype))
        if refusal is not None:
            raise UnprocessableError(refusal, "field-dtype")


def _check_fields(payload: Payload, first: Payload) -> None:
    mine = {info.key: info for info in payload.arrays}
    run = {info.key: info for info in first.arrays}
    listed = ", ".join(list(run)[:8]) + (" ..." if len(run) > 8 else "")
    for key in run:
        if key not in mine:
            raise UnprocessableError(
                f"Field {key!r} is missing: the fields of a run are fixed by its first upload "
                f"({listed}).",
                "field_missing",
            )
    for key, info in mine.items():
        if key not in run:
            raise UnprocessableError(
                f"Field {key!r} is not one of this run's fields ({listed}); the fields of a run "
                "are fixed by its first upload.",
                "unknown_field",
            )
        _check_same_array(f"Field {key!r}", info, run[key], "field-mismatch", "this run's uploads")


def _check_must_match(
    path: Path, payload: Payload, other: Upload, store: Store, policy: ValidationPolicy
) -> None:
    assigned = store.field_operations(other.branch_id)
    names = [i.key for i in payload.arrays if operation_of(i.key, assigned) == "must_match"]
    if not names:
        return
    mine = read_fields(path, names, policy.limits)
    theirs = read_fields(Path(other.path), names, policy.limits)
    for name in names:
        a, b = mine[name], theirs[name]
        equal_nan = a.dtype.kind in "fc"
        if a.shape != b.shape or not np.array_equal(a, b, equal_nan=equal_nan):
            raise UnprocessableError(
                f"Field {name!r} must match across leaves and differs from this round's other "
                "uploads.",
                "must-match",
            )
