"""Reading the protocol v1 weights file, a `.npy` object array `(num_samples, [ndarray, ...])`, never with pickle."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gateway.weights.errors import WeightsError
from gateway.weights.model import LEARNING, ArrayInfo, Payload, layer_key
from gateway.weights.npy import ArrayHeader, read_header
from gateway.weights.numpy_pickle import (
    ArrayRef,
    ArraySink,
    NumpyObjects,
    ObjectRoot,
    PendingArray,
)
from gateway.weights.objectnpy_writer import LayerSource, write_object_npy
from gateway.weights.picklevm import run_pickle, unsupported
from gateway.weights.policy import Limits, ValidationPolicy
from gateway.weights.values import check_array_bytes

__all__ = [
    "ArrayList",
    "ArrayRef",
    "ArraySink",
    "LayerSource",
    "ObjectNpy",
    "check_sample_count",
    "inspect_object_npy",
    "read_object_arrays",
    "read_object_npy",
    "write_object_npy",
]


@dataclass(frozen=True)
class ObjectNpy:
    """A parsed v1 weights file."""

    num_samples: int
    layers: tuple[ArrayRef, ...]
    size: int


@dataclass(frozen=True)
class ArrayList:
    """A parsed list of arrays saved with `np.save` (a 1-D object array of numeric arrays)."""

    layers: tuple[ArrayRef, ...]
    size: int


def read_object_npy(path: Path, limits: Limits, sink: ArraySink | None = None) -> ObjectNpy:
    """Parse a v1 object `.npy` safely and apply the protocol's type rules (§3.6).

    The file's pickle stream is never given to `pickle`: a restricted machine (`picklevm`) runs only
    the opcodes numpy's own pickles use, and its object model (`numpy_pickle`) resolves only the three
    globals that rebuild plain numeric arrays and hands each array's bytes to `sink` as soon as they
    are read, so memory stays about one layer.
    """
    parsed = _read(path, limits, sink, allow_list=False)
    assert isinstance(parsed, ObjectNpy)  # noqa: S101 - allow_list=False never yields a list
    return parsed


def read_object_arrays(
    path: Path, limits: Limits, sink: ArraySink | None = None
) -> ObjectNpy | ArrayList:
    """Like `read_object_npy`, but a 1-D object array whose items are all numeric arrays is read
    as a list of layers (what `np.save("w.npy", np.array([a, b], dtype=object))` writes)."""
    return _read(path, limits, sink, allow_list=True)


def _read(
    path: Path, limits: Limits, sink: ArraySink | None, *, allow_list: bool
) -> ObjectNpy | ArrayList:
    with path.open("rb") as stream:
        size = os.fstat(stream.fileno()).st_size
        header = read_header(
            stream.read, limits.max_header_bytes, "The .npy file", allow_object=True
        )
        _check_outer(header, allow_list=allow_list)
        if size - header.header_size > limits.max_pickle_bytes:
            raise WeightsError(
                "too-large",
                f"The pickle stream is {size - header.header_size} bytes; at most "
                f"{limits.max_pickle_bytes} are accepted.",
            )
        objects = NumpyObjects(limits=limits, sink=sink)
        result = run_pickle(stream, size, objects, objects.max_items)
        if stream.tell() != size:
            raise WeightsError(
                "shape-mismatch", "The file holds data after the end of its pickle stream."
            )
    if not isinstance(result, PendingArray) or not isinstance(result.built, ObjectRoot):
        raise WeightsError(
            "not-object-pair", "The pickle stream does not hold the (num_samples, [arrays]) pair."
        )
    items = result.built.items
    if len(items) != header.shape[0]:
        raise WeightsError(
            "shape-mismatch",
            f"The header declares {header.shape[0]} items but the pickle stream holds {len(items)}.",
        )
    if allow_list and items and isinstance(items[0], PendingArray):
        return _check_list(items, objects.arrays, size)
    return _check_pair(items, objects.arrays, size)


def _check_outer(header: ArrayHeader, *, allow_list: bool) -> None:
    if header.dtype == np.dtype(object) and header.shape == (2,):
        return
    if allow_list and header.dtype == np.dtype(object) and len(header.shape) == 1:
        if header.shape[0] == 0:
            raise WeightsError(
                "no-layers",
                "The object array is empty: save at least one layer, e.g. "
                'np.save("w.npy", np.array([a, b], dtype=object)).',
            )
        return
    if allow_list:
        raise WeightsError(
            "not-object-pair",
            f"An object .npy must hold a list of arrays (1-D); this one has shape "
            f"{header.shape}. Save each layer as its own array in a list: "
            'np.save("w.npy", np.array([a, b], dtype=object)), or '
            'np.savez("w.npz", weighting=n_samples, layer_0=a, layer_1=b).',
        )
    raise WeightsError(
        "not-object-pair",
        f"A v1 weights file is an object array of shape (2,); this one is "
        f"{header.dtype.str} shape {header.shape}.",
    )


def _check_list(items: list[Any], arrays: list[ArrayRef], size: int) -> ArrayList:
    refs: list[ArrayRef] = []
    for position, item in enumerate(items):
        if not isinstance(item, PendingArray) or not isinstance(item.built, ArrayRef):
            raise WeightsError(
                "not-ndarray",
                f"Item {position} of the object array is not a numeric numpy array: a list of "
                'layers holds arrays only, e.g. np.save("w.npy", np.array([a, b], dtype=object)).',
            )
        refs.append(item.built)
    if [ref.index for ref in refs] != list(range(len(arrays))):
        raise unsupported("layers that are shared, reordered or outside the list")
    return ArrayList(layers=tuple(refs), size=size)


def _check_pair(items: list[Any], arrays: list[ArrayRef], size: int) -> ObjectNpy:
    if len(items) != 2:
        raise WeightsError("not-object-pair", "Incorrect shape: the object array needs 2 items.")
    num_samples, layers = items
    if type(num_samples) is not int:
        raise WeightsError(
            "not-integer",
            "Dim 0 not integer: the first item must be a Python int (the number of samples); "
            "numpy integers and bools are refused by BranchKey's client too.",
        )
    if type(layers) is not list:
        raise WeightsError("not-list", "Dim 1 not list: the second item must be a Python list.")
    if not layers or not isinstance(layers[0], PendingArray):
        raise WeightsError(
            "not-ndarray", "Dim 1:0 not ndarray: the list must start with a numpy array."
        )
    refs: list[ArrayRef] = []
    for position, item in enumerate(layers):
        if not isinstance(item, PendingArray) or not isinstance(item.built, ArrayRef):
            raise WeightsError(
                "not-ndarray", f"Item {position} of the layer list is not a numeric numpy array."
            )
        refs.append(item.built)
    if [ref.index for ref in refs] != list(range(len(arrays))):
        raise unsupported("layers that are shared, reordered or outside the list")
    return ObjectNpy(num_samples=num_samples, layers=tuple(refs), size=size)


_INT64_MAX = (1 << 63) - 1


def check_sample_count(count: int, policy: ValidationPolicy) -> None:
    """The strict weighting rule for v1 files: a sample count from 0 to 2**63 - 1."""
    if policy.strict_weighting and not 0 <= count <= _INT64_MAX:
        raise WeightsError(
            "bad-weighting",
            f"The sample count must be between 0 and 2**63 - 1 (got {count}).",
        )


def inspect_object_npy(path: Path, policy: ValidationPolicy) -> Payload:
    """Validate a v1 object `.npy` and describe it like any other payload."""
    parsed = read_object_npy(
        path, policy.limits, _finite_sink if policy.deep and policy.finite else None
    )
    check_sample_count(parsed.num_samples, policy)
    return Payload(
        format="npy-object",
        kind=LEARNING,
        weighting=float(parsed.num_samples),
        arrays=tuple(ref_info(ref) for ref in parsed.layers),
        size=parsed.size,
    )


def _finite_sink(index: int, header: ArrayHeader, data: bytes) -> None:
    check_array_bytes(layer_key(index), header, data)


def ref_info(ref: ArrayRef) -> ArrayInfo:
    """What a layer of an object `.npy` holds, and where its data is in the file."""
    return ArrayInfo(
        key=layer_key(ref.index),
        dtype=ref.header.dtype.str,
        shape=ref.header.shape,
        fortran_order=ref.header.fortran_order,
        nbytes=ref.header.data_size,
        data_offset=ref.data_offset,
        member_offset=None,
    )
