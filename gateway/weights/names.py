"""A trainer's own tensor names and dtypes, in `layer_<i>` order: kept from its upload, fitted to aggregates."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from gateway.weights.errors import WeightsError
from gateway.weights.model import LEARNING, Payload, layer_key
from gateway.weights.safetensors import ITEM_SIZES, numpy_dtype, safetensors_dtype

NamedFormat = Literal["safetensors", "npz"]
_VERSION = 1


@dataclass(frozen=True)
class NamedTensor:
    """One tensor as the trainer named it; it travels to BranchKey as `layer_<its index>`."""

    name: str
    dtype: str
    """As the trainer's file wrote it: a safetensors dtype (`BF16`) or a numpy one (`<f4`)."""
    shape: tuple[int, ...]


@dataclass(frozen=True)
class NameMap:
    """The names, dtypes and shapes of a named upload, in the order they became `layer_0 ..`."""

    source: NamedFormat
    """The trainer's upload format."""
    tensors: tuple[NamedTensor, ...]
    metadata: dict[str, str] = field(default_factory=dict)
    """The safetensors `__metadata__` of the upload (given back with the aggregate)."""

    def to_json(self) -> str:
        """The map as JSON (what the gateway keeps in its data directory)."""
        return json.dumps(
            {
                "version": _VERSION,
                "source": self.source,
                "tensors": [[t.name, t.dtype, list(t.shape)] for t in self.tensors],
                "metadata": self.metadata,
            },
            ensure_ascii=False,
        )

    @classmethod
    def from_json(cls, text: str) -> NameMap:
        """A map written by `to_json` (ValueError if it is not one)."""
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            raise ValueError("not a name map of this version")
        tensors = tuple(
            NamedTensor(str(name), str(dtype), tuple(int(n) for n in shape))
            for name, dtype, shape in data["tensors"]
        )
        source = data["source"]
        if source not in ("safetensors", "npz"):
            raise ValueError(f"unknown source {source!r}")
        return cls(source, tensors, {str(k): str(v) for k, v in data["metadata"].items()})

    @property
    def digest(self) -> str:
        """A short stable digest: files derived with this map are named after it."""
        return hashlib.sha256(self.to_json().encode("utf-8")).hexdigest()[:16]


def numpy_dtype_of(tensor: NamedTensor) -> np.dtype[Any]:
    """The numpy dtype the tensor is served as in an NPZ (BF16: float32; little-endian)."""
    if tensor.dtype in ITEM_SIZES:
        return numpy_dtype(tensor.dtype)
    dtype = np.dtype(tensor.dtype)
    return dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype


def safetensors_dtype_of(tensor: NamedTensor) -> str:
    """The safetensors dtype the tensor is served as (its own, for a safetensors upload)."""
    if tensor.dtype in ITEM_SIZES:
        return tensor.dtype
    return safetensors_dtype(np.dtype(tensor.dtype), f"Tensor {tensor.name!r}")


def check_fit(names: NameMap, aggregate: Payload, aggregation_id: str) -> None:
    """The aggregate's layers are the map's tensors: as many, each of the same shape."""
    if aggregate.kind != LEARNING:
        raise WeightsError(
            "names-mismatch",
            f"Aggregation {aggregation_id} holds analytics fields, not model layers; "
            "it has no tensor names to give back: download it without names.",
        )
    layers, tensors = aggregate.arrays, names.tensors
    if len(layers) != len(tensors):
        raise WeightsError(
            "names-mismatch",
            f"Aggregation {aggregation_id} has {len(layers)} layers but the remembered names "
            f"(from this leaf's last {names.source} upload) are for {len(tensors)} tensors: "
            "it is another model's aggregate. Download it as layer_0.. (without names) or "
            "upload this model's weights again first.",
        )
    for index, (layer, tensor) in enumerate(zip(layers, tensors, strict=True)):
        if layer.shape != tensor.shape:
            raise WeightsError(
                "names-mismatch",
                f"Aggregation {aggregation_id}'s {layer_key(index)} has shape {list(layer.shape)} "
                f"but the remembered tensor {tensor.name!r} (that layer in this leaf's last "
                f"{names.source} upload) has shape {list(tensor.shape)}: the names do not fit. "
                "Download it as layer_0.. (without names) or upload this model's weights again.",
            )
