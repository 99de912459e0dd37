"""A stored NPZ in each download format: `npz` as stored, `npy` (protocol v1's object array) made once beside it."""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

from anyio import to_thread

from gateway.aggregator.records import Upload
from gateway.aggregator.state import AggregatorState, locked
from gateway.weights import ValidationPolicy, aggregate_to_object_npy, npz_to_object_npy

BlobFormat = Literal["npz", "npy"]
"""`npz` for protocol v3 leaves, `npy` (object array) for protocol v1 leaves."""

V1_SUFFIX: Final = ".v1.npy"
"""A stored NPZ's v1 copy lives next to it as `<id>.v1.npy`, made on the first v1 download."""


async def in_format(state: AggregatorState, fmt: BlobFormat, file_id: str, source: Path) -> Path:
    """The file to send for the stored NPZ `source` of `file_id` in format `fmt`."""
    if fmt == "npz":
        return source
    return await _v1_copy(state, file_id, source)


async def _v1_copy(state: AggregatorState, file_id: str, source: Path) -> Path:
    """The v1 object `.npy` of a stored NPZ, written once next to it (off the event loop, one writer)."""
    target = source.with_name(source.name.removesuffix(".npz") + V1_SUFFIX)
    if await to_thread.run_sync(target.exists):
        return target
    async with locked(state.file_locks, file_id):
        if not await to_thread.run_sync(target.exists):
            await to_thread.run_sync(_write_v1_copy, state, file_id, source, target)
    return target


def _write_v1_copy(state: AggregatorState, file_id: str, source: Path, target: Path) -> None:
    limits = state.settings.validation_policy().limits
    aggregation = state.store.aggregation(file_id)
    if aggregation is None:  # one of the leaf's own uploads, kept as an NPZ with its weighting
        npz_to_object_npy(source, target, ValidationPolicy.lenient(limits))
        return
    inputs = state.store.round_uploads(
        aggregation.branch_id, aggregation.run_number, aggregation.round
    )
    aggregate_to_object_npy(source, target, limits, num_samples=_sample_count(inputs))


def _sample_count(inputs: list[Upload]) -> int:
    """The samples behind an aggregate: the sum of its inputs' weightings when they are whole numbers."""
    weightings = [u.weighting for u in inputs]
    if not weightings or any(w is None or not float(w).is_integer() or w < 0 for w in weightings):
        return 0
    return int(sum(w for w in weightings if w is not None))
