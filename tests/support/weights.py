"""Small builders and readers of weights files: SDK NPZ, plain .npy, v1 object .npy, hand-made archives."""

from __future__ import annotations

import functools
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from gateway.weights import Limits, ValidationPolicy, WeightsError, inspect_payload
from gateway.weights.npy import ArrayHeader, array_from_bytes
from gateway.weights.objectnpy import LayerSource, read_object_npy, write_object_npy

Array = np.ndarray[Any, Any]


def npy_bytes(array: np.ndarray[Any, Any]) -> bytes:
    """The `.npy` encoding numpy writes for `array`."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_npz(
    path: Path, members: dict[str, bytes | np.ndarray[Any, Any]], *, compress: bool = True
) -> Path:
    """An archive with the given members (arrays are encoded as `<key>.npy`, bytes kept raw under their name)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        for key, value in members.items():
            if isinstance(value, np.ndarray):
                archive.writestr(f"{key}.npy", npy_bytes(value))
            else:
                archive.writestr(key, value)
    return path


def sdk_weights(path: Path, weighting: float, layers: list[np.ndarray[Any, Any]]) -> Path:
    """The layout BranchKey's `save_weights` writes: weighting float64 (1,) then layer_i."""
    arrays: dict[str, Any] = {"weighting": np.array([weighting], dtype=np.float64)}
    arrays.update({f"layer_{i}": layer for i, layer in enumerate(layers)})
    np.savez_compressed(path, **arrays)
    return path


def refusal(path: Path, policy: ValidationPolicy | None = None) -> str | None:
    """The error code `inspect_payload` gives, or None when it accepts the file."""
    try:
        inspect_payload(path, policy or ValidationPolicy())
    except WeightsError as error:
        return error.code
    return None


def read_v1(path: Path) -> tuple[int, list[np.ndarray[Any, Any]]]:
    """A v1 object `.npy` parsed by the gateway's pickle-free reader: (num_samples, layers)."""
    arrays: dict[int, np.ndarray[Any, Any]] = {}

    def sink(index: int, header: ArrayHeader, data: bytes) -> None:
        arrays[index] = array_from_bytes(header, data).copy()

    parsed = read_object_npy(path, Limits(), sink)
    return parsed.num_samples, [arrays[ref.index] for ref in parsed.layers]


def write_npy(path: Path, array: Array) -> Path:
    """A plain `.npy` file."""
    with path.open("wb") as stream:
        np.save(stream, array, allow_pickle=False)
    return path


def save_v1(path: Path, num_samples: int, layers: list[Array]) -> Path:
    """A BranchKey v1 client file: np.save of the object array (num_samples, [layers]) via a handle."""
    array = np.empty(2, dtype=object)
    array[0] = num_samples
    array[1] = layers
    with path.open("wb") as stream:
        np.save(stream, array, allow_pickle=True)
    return path


def write_v1(path: Path, num_samples: int, layers: list[Array]) -> Path:
    """A v1 object .npy `(num_samples, [layers])`, written by gateway.weights (no pickle)."""
    sources = [
        LayerSource(
            dtype=layer.dtype,
            shape=layer.shape,
            fortran_order=False,
            chunks=functools.partial(_chunks, layer),
        )
        for layer in layers
    ]
    with path.open("wb") as out:
        write_object_npy(out, num_samples, sources)
    return path


def _chunks(layer: Array) -> list[bytes]:
    return [np.ascontiguousarray(layer).tobytes()]


def layers_of(seed: int) -> list[Array]:
    """Two layers of different dtypes and shapes."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal(5)]
