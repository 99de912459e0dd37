"""Model-weights formats: safe parsing, exact validation, conversion and FedAvg (pure, sync, numpy)."""

from gateway.weights.averaging import fedavg
from gateway.weights.convert import (
    aggregate_to_object_npy,
    detect_format,
    inspect_payload,
    layers_to_npz,
    normalize_aggregate,
    npz_to_layers,
    npz_to_object_npy,
    object_npy_to_npz,
    to_npz,
    with_weighting,
)
from gateway.weights.errors import ErrorCode, WeightsError
from gateway.weights.incoming import Incoming, WeightingSource, upload_to_npz
from gateway.weights.layers import parse_weighting
from gateway.weights.model import ANALYTICS, LEARNING, ArrayInfo, Payload, PayloadKind
from gateway.weights.npz import inspect_aggregate, inspect_npz, starts_plain
from gateway.weights.objectnpy import inspect_object_npy
from gateway.weights.policy import Limits, ValidationPolicy
from gateway.weights.scan import StreamScan

__all__ = [
    "ANALYTICS",
    "LEARNING",
    "ArrayInfo",
    "ErrorCode",
    "Incoming",
    "Limits",
    "Payload",
    "PayloadKind",
    "StreamScan",
    "ValidationPolicy",
    "WeightingSource",
    "WeightsError",
    "aggregate_to_object_npy",
    "detect_format",
    "fedavg",
    "inspect_aggregate",
    "inspect_npz",
    "inspect_object_npy",
    "inspect_payload",
    "layers_to_npz",
    "normalize_aggregate",
    "npz_to_layers",
    "npz_to_object_npy",
    "object_npy_to_npz",
    "parse_weighting",
    "starts_plain",
    "to_npz",
    "upload_to_npz",
    "with_weighting",
]
