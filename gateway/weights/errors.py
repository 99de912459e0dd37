"""The one error type of the weights module, with stable machine codes."""

from __future__ import annotations

from typing import Literal

ErrorCode = Literal[
    # Container and file-level problems.
    "not-a-payload",
    "invalid-archive",
    "truncated",
    "too-large",
    "too-many-members",
    "duplicate-member",
    "bad-member-name",
    "encrypted-member",
    "unsupported-compression",
    "overlapping-members",
    "zip-bomb",
    "crc-mismatch",
    # .npy header and data.
    "bad-npy-header",
    "header-too-large",
    "shape-overflow",
    "shape-mismatch",
    "unsupported-dtype",
    "pickle-forbidden",
    # safetensors headers.
    "bad-safetensors-header",
    "tensor-offsets",
    "overlapping-tensors",
    # Protocol v3 rules (L1-L4, A1-A5 and the payload kind).
    "unknown-kind",
    "missing-weighting",
    "weighting-not-single",
    "no-layers",
    "not-an-array",
    "no-fields",
    "reserved-field-name",
    "bare-scalar",
    # The gateway's strict checks.
    "bad-weighting",
    "not-numeric",
    "layer-numbering",
    "unexpected-key",
    # Array values (every upload; deep mode for any inspection).
    "not-finite",
    # Protocol v1 object arrays.
    "not-object-pair",
    "not-integer",
    "not-list",
    "not-ndarray",
    "unsupported-pickle",
    # Conversion and aggregation.
    "unsupported-kind",
    "weighting-not-integer",
    "layer-mismatch",
    "zero-weighting",
    "no-inputs",
    # The gateway's architecture check (against the branch's latest aggregation).
    "architecture-mismatch",
    # Names: a remembered name map against an aggregation.
    "names-mismatch",
]


class WeightsError(Exception):
    """A payload was refused; `code` is stable for machines, the message is for people."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code: ErrorCode = code
        self.message = message

    def __repr__(self) -> str:
        return f"WeightsError({self.code!r}, {self.message!r})"
