"""Per-layer `.npy` files plus a weighting number: the input shape for trainers with only a `.npy` writer."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from gateway.weights.errors import WeightsError
from gateway.weights.model import layer_key
from gateway.weights.npy import ArrayHeader, dtype_words, read_header, read_span
from gateway.weights.policy import ValidationPolicy


def inspect_layer_file(path: Path, policy: ValidationPolicy, what: str) -> ArrayHeader:
    """Check one plain `.npy` layer: header, exact data size, numeric dtype when strict.

    `what` names it in messages: `Part 'layer_0'` for an HTTP part, the file name for a local file.
    """
    with path.open("rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        header = read_header(stream.read, policy.limits.max_header_bytes, what)
    data_size = size - header.header_size
    if data_size < header.data_size:
        raise WeightsError(
            "truncated",
            f"{what} declares {header.dtype.str} shape {header.shape} ({header.data_size} bytes) "
            f"but holds only {data_size} bytes: the file is truncated; save it again with "
            'np.save("layer.npy", array).',
        )
    if data_size > header.data_size:
        raise WeightsError(
            "shape-mismatch",
            f"{what} holds {data_size - header.data_size} bytes more than its header declares.",
        )
    if policy.strict_layer_dtypes and header.dtype.kind not in "biufc":
        raise WeightsError(
            "not-numeric",
            f"{what} is {dtype_words(header.dtype)}; layers must be numeric "
            "(bool, integer, unsigned, float or complex): convert it first, e.g. "
            'np.save("layer.npy", array.astype(np.float32)).',
        )
    return header


def parse_weighting(text: str | float, policy: ValidationPolicy) -> float:
    """The `weighting` form field: a number (strictly: finite and >= 0)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise WeightsError(
            "bad-weighting",
            f"'weighting' must be a number, such as the count of training samples (got {str(text)[:40]!r}).",
        ) from None
    if policy.strict_weighting and (not math.isfinite(value) or value < 0):
        raise WeightsError(
            "bad-weighting", f"'weighting' must be a finite number >= 0 (got {value!r})."
        )
    return value


def inspect_layer_files(
    paths: Sequence[Path], policy: ValidationPolicy, labels: Sequence[str] | None = None
) -> list[ArrayHeader]:
    """Check every part; at least one and no more than the member limit.

    `labels` name the files in messages (default: the HTTP parts `Part 'layer_<i>'`).
    """
    if not paths:
        raise WeightsError(
            "no-layers",
            "No layer parts: send 'layer_0', 'layer_1', ... as .npy files, e.g. "
            "curl -F layer_0=@l0.npy -F layer_1=@l1.npy -F weighting=12 localhost:8000/upload",
        )
    if len(paths) + 1 > policy.limits.max_members:
        raise WeightsError(
            "too-many-members",
            f"{len(paths)} layers; at most {policy.limits.max_members - 1} are accepted.",
        )
    names = labels or [f"Part {layer_key(i)!r}" for i in range(len(paths))]
    return [inspect_layer_file(path, policy, what) for path, what in zip(paths, names, strict=True)]


def iter_file_data(path: Path, header: ArrayHeader) -> Iterator[bytes]:
    """Yield the data of a checked `.npy` file in chunks."""
    return read_span(path, header.header_size, header.data_size)
