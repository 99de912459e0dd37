"""What an upload of any accepted form would send, from its headers: the layers, weighting and names."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from gateway.weights.convert import detect_format, inspect_payload
from gateway.weights.layers import inspect_layer_file
from gateway.weights.model import LEARNING, ArrayInfo, Payload, layer_key
from gateway.weights.named import describe_named_npz, describe_safetensors, is_named_npz
from gateway.weights.named import npz_weighting as named_npz_weighting
from gateway.weights.names import NameMap
from gateway.weights.objectnpy import (
    ArrayList,
    inspect_object_npy,
    read_object_arrays,
    ref_info,
)
from gateway.weights.policy import ValidationPolicy


@dataclass(frozen=True)
class Described:
    """An upload as the gateway would forward it (layer keys, dtypes as sent) and its own names."""

    payload: Payload
    names: NameMap | None
    """The trainer's tensor names (safetensors, named NPZ); None for `layer_<n>` forms."""


def describe_upload(path: Path, policy: ValidationPolicy | None = None) -> Described:
    """Validate any accepted upload form from its headers (a v1 or list `.npy` is parsed, its data
    skipped) and describe it; the weighting is None where the file carries none."""
    policy = policy or ValidationPolicy()
    kind = detect_format(path, policy.limits)
    if kind == "safetensors":
        payload, names = describe_safetensors(path, policy)
        return Described(payload, names)
    if kind == "npz" and is_named_npz(path, policy):
        payload, names = describe_named_npz(path, policy)
        return Described(replace(payload, weighting=named_npz_weighting(path, policy)), names)
    if kind == "npy":
        header = inspect_layer_file(path, policy, "The .npy file")
        info = ArrayInfo(
            key=layer_key(0),
            dtype=header.dtype.str,
            shape=header.shape,
            fortran_order=header.fortran_order,
            nbytes=header.data_size,
            data_offset=header.header_size,
            member_offset=None,
        )
        return Described(Payload("npy", LEARNING, None, (info,), size=path.stat().st_size), None)
    if kind == "npy-object":
        parsed = read_object_arrays(path, policy.limits)
        if isinstance(parsed, ArrayList):
            arrays = tuple(ref_info(ref) for ref in parsed.layers)
            return Described(Payload("npy-object", LEARNING, None, arrays, size=parsed.size), None)
        return Described(inspect_object_npy(path, policy), None)
    return Described(inspect_payload(path, policy), None)
