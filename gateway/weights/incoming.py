"""Any weights file a trainer uploads, as the BranchKey NPZ, and where its weighting came from."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gateway.weights.convert import (
    detect_format,
    inspect_payload,
    stream_object_layers,
    with_weighting,
)
from gateway.weights.errors import WeightsError
from gateway.weights.layers import inspect_layer_file, iter_file_data, parse_weighting
from gateway.weights.model import LEARNING, WEIGHTING_KEY, Payload, layer_key
from gateway.weights.named import (
    is_named_npz,
    named_npz_to_npz,
    npz_weighting,
    safetensors_to_npz,
)
from gateway.weights.names import NameMap
from gateway.weights.npz import inspect_npz
from gateway.weights.objectnpy import ObjectNpy, check_sample_count
from gateway.weights.policy import ValidationPolicy
from gateway.weights.scan import StreamScan, check_payload
from gateway.weights.values import checked_chunks
from gateway.weights.writer import NpzWriter, atomic_path, move_to_front

WeightingSource = Literal["default", "file", "request"]
"""file: the NPZ's `weighting` or the v1 sample count; request: a form field or `?weighting=`;
default: neither, so 1.0."""
DEFAULT_WEIGHTING = 1.0
_LAYER = re.compile(r"layer_(\d+) ")


@dataclass(frozen=True)
class Incoming:
    """An upload made ready for BranchKey."""

    payload: Payload
    converted: bool
    """False: the uploaded file itself is the NPZ to send; True: `dst` holds it."""
    weighting_source: WeightingSource | None
    """None only for an analytics payload without a weighting."""
    names: NameMap | None = None
    """The trainer's own tensor names, for a safetensors or named-NPZ upload."""


def upload_to_npz(
    src: Path,
    dst: Path,
    policy: ValidationPolicy | None = None,
    *,
    weighting: str | float | None = None,
    compress: bool = True,
    scan: StreamScan | None = None,
) -> Incoming:
    """Validate an upload of any accepted form and make it the BranchKey NPZ.

    An NPZ or a v1 `(num_samples, [arrays])` file keeps its own weighting unless `weighting` is
    given; a plain `.npy` array (one layer), a list of arrays saved with `np.save` (one layer per
    item) or a safetensors file carries none, so it gets `weighting`, else 1.0. Tensors in the
    trainer's own names (safetensors, an NPZ without `layer_<n>` keys) become `layer_0 ..` in the
    file's order, and `names` keeps their names. With `policy.finite`, NaN and Inf are refused in
    the pass that reads every byte: a conversion's, or for an NPZ `scan` (fed the bytes as they
    arrived), reading back only what it did not see; a named upload's converted NPZ is read back.
    """
    policy = policy or ValidationPolicy()
    kind = detect_format(src, policy.limits)
    if kind == "npy":
        return _plain_to_npz(src, dst, policy, weighting, compress)
    if kind == "npy-object":
        return _object_to_npz(src, dst, policy, weighting, compress)
    if kind == "safetensors" or (kind == "npz" and is_named_npz(src, policy)):
        return _named_to_npz(src, dst, policy, weighting, safetensors=kind != "npz")
    if weighting is not None and kind == "npz":
        if policy.finite:
            loose = dataclasses.replace(policy, strict_weighting=False)
            check_payload(src, inspect_npz(src, loose), policy.limits, scan)
        return Incoming(with_weighting(src, weighting, dst, policy), True, "request")
    payload = inspect_payload(src, policy)
    # Model weights only: an analytics field may hold an infinity on purpose (the min of no data).
    # Deep mode has read every member already.
    if policy.finite and not policy.deep and payload.kind == LEARNING and payload.format == "npz":
        check_payload(src, payload, policy.limits, scan)
    return Incoming(payload, False, None if payload.weighting is None else "file")


def _chosen(
    weighting: str | float | None, policy: ValidationPolicy
) -> tuple[float, WeightingSource]:
    if weighting is None:
        return DEFAULT_WEIGHTING, "default"
    return parse_weighting(weighting, policy), "request"


def _named_to_npz(
    src: Path,
    dst: Path,
    policy: ValidationPolicy,
    weighting: str | float | None,
    *,
    safetensors: bool,
) -> Incoming:
    """Tensors in the trainer's own names become `layer_0 ..` in the file's order; a named NPZ's
    `weighting` array counts as the file's weighting. The NPZ is stored, not deflated: model tensors
    barely deflate, and deflating them (~15 MiB/s a core) takes longer than sending them."""
    value, source = _chosen(weighting, policy)
    if safetensors:
        payload, names = safetensors_to_npz(src, dst, policy, value, compress=False)
    else:
        if weighting is None and (found := npz_weighting(src, policy)) is not None:
            value, source = parse_weighting(found, policy), "file"
        payload, names = named_npz_to_npz(src, dst, policy, value, compress=False)
    if policy.finite:
        _check_named(dst, payload, policy, names)
    return Incoming(payload, True, source, names)


def _check_named(dst: Path, payload: Payload, policy: ValidationPolicy, names: NameMap) -> None:
    """NaN and Inf in a named upload, read back from its stored NPZ, named as the trainer names it."""
    try:
        check_payload(dst, payload, policy.limits)
    except WeightsError as error:
        found = _LAYER.match(error.message)
        if error.code == "not-finite" and found and int(found[1]) < len(names.tensors):
            error.message = f"{names.tensors[int(found[1])].name!r} ({error.message})"
            error.args = (error.message,)
        dst.unlink(missing_ok=True)
        raise


def _plain_to_npz(
    src: Path,
    dst: Path,
    policy: ValidationPolicy,
    weighting: str | float | None,
    compress: bool,
) -> Incoming:
    """A single `.npy` array as the one-layer model `layer_0`."""
    value, source = _chosen(weighting, policy)
    header = inspect_layer_file(src, policy, "The .npy file")
    with atomic_path(dst) as tmp:
        with NpzWriter(tmp, compress=compress) as writer:
            writer.write_weighting(value)
            key = layer_key(0)
            writer.write_stream(
                key,
                header.dtype,
                header.shape,
                header.fortran_order,
                checked_chunks(iter_file_data(src, header), key, header, check=policy.finite),
            )
        payload = inspect_npz(tmp, policy)
    return Incoming(payload, True, source)


def _object_to_npz(
    src: Path,
    dst: Path,
    policy: ValidationPolicy,
    weighting: str | float | None,
    compress: bool,
) -> Incoming:
    """A v1 pair or a list of arrays, each array streamed into the NPZ as it is read."""
    value, source = _chosen(weighting, policy)
    with atomic_path(dst) as tmp:
        with NpzWriter(tmp, compress=compress) as writer:
            parsed = stream_object_layers(
                src, writer, policy.limits, allow_list=True, finite=policy.finite
            )
            if isinstance(parsed, ObjectNpy):
                check_sample_count(parsed.num_samples, policy)
                if source == "default":
                    value, source = float(parsed.num_samples), "file"
            writer.write_weighting(value)
            move_to_front(writer, WEIGHTING_KEY)
        payload = inspect_npz(tmp, policy)
    return Incoming(payload, True, source)
