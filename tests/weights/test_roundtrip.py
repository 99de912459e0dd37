"""Round trips between the three weight forms: NPZ, the v1 object .npy, and per-layer .npy files."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.weights import (
    inspect_payload,
    layers_to_npz,
    normalize_aggregate,
    npz_to_layers,
    npz_to_object_npy,
    object_npy_to_npz,
)
from gateway.weights.objectnpy import read_object_npy
from gateway.weights.policy import Limits, ValidationPolicy
from tests.support.weights import sdk_weights

NUMERIC = st.one_of(
    hnp.boolean_dtypes(),
    hnp.integer_dtypes(endianness="="),
    hnp.integer_dtypes(endianness=">"),
    hnp.unsigned_integer_dtypes(),
    hnp.floating_dtypes(sizes=(16, 32, 64)),
    hnp.floating_dtypes(endianness=">", sizes=(32, 64)),
    hnp.complex_number_dtypes(),
)


@st.composite
def layer(draw: st.DrawFn) -> np.ndarray[Any, Any]:
    """One layer: any numeric dtype, 0-d to 4-d, empty allowed, C or Fortran order."""
    dtype = draw(NUMERIC)
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
    array = draw(hnp.arrays(dtype, shape))
    return np.asfortranarray(array) if draw(st.booleans()) and array.ndim > 1 else array


LAYERS = st.lists(layer(), min_size=1, max_size=5)
SAMPLES = st.integers(min_value=0, max_value=2**40)


def same(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> bool:
    """Equal values, shape and dtype (byte order aside); NaNs compare equal."""
    return (
        a.shape == b.shape
        and a.dtype.newbyteorder("=") == b.dtype.newbyteorder("=")
        and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    )


def loaded(path: Path) -> tuple[float, list[np.ndarray[Any, Any]]]:
    """Weighting and layers of an NPZ, read back with numpy."""
    with np.load(path, allow_pickle=False) as data:
        count = len([k for k in data.files if k.startswith("layer_")])
        return float(data["weighting"][0]), [data[f"layer_{i}"] for i in range(count)]


ROUND_TRIP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@ROUND_TRIP
@given(layers=LAYERS, samples=SAMPLES)
def test_npz_to_object_npy_and_back(layers: list[np.ndarray[Any, Any]], samples: int) -> None:
    """NPZ -> v1 object .npy -> NPZ keeps every layer's values, shape and dtype, and the weighting."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        sdk_weights(d / "a.npz", samples, layers)
        npz_to_object_npy(d / "a.npz", d / "b.npy")
        parsed = read_object_npy(d / "b.npy", Limits())
        assert parsed.num_samples == samples
        assert len(parsed.layers) == len(layers)
        payload = object_npy_to_npz(d / "b.npy", d / "c.npz")
        assert payload.weighting == float(samples)
        weighting, back = loaded(d / "c.npz")
        assert weighting == float(samples)
        assert all(same(x, y) for x, y in zip(layers, back, strict=True))


@ROUND_TRIP
@given(layers=LAYERS, samples=SAMPLES)
def test_numpy_written_object_npy_to_npz(layers: list[np.ndarray[Any, Any]], samples: int) -> None:
    """A v1 file written by numpy.save (as the v1 client's users do) converts to an equal NPZ."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        pair = np.empty(2, dtype=object)
        pair[0], pair[1] = samples, list(layers)
        np.save(d / "v1.npy", pair, allow_pickle=True)
        assert inspect_payload(d / "v1.npy").weighting == float(samples)
        object_npy_to_npz(d / "v1.npy", d / "out.npz")
        weighting, back = loaded(d / "out.npz")
        assert weighting == float(samples)
        assert all(same(x, y) for x, y in zip(layers, back, strict=True))


@ROUND_TRIP
@given(layers=LAYERS, weighting=st.floats(min_value=0, max_value=1e12))
def test_npz_to_layer_files_and_back(layers: list[np.ndarray[Any, Any]], weighting: float) -> None:
    """NPZ -> one .npy per layer -> NPZ keeps the layers and the weighting exactly (NaN and Inf
    too, with the finite check off)."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        sdk_weights(d / "a.npz", weighting, layers)
        got_weighting, paths = npz_to_layers(d / "a.npz", d / "parts")
        assert got_weighting == weighting
        assert all(same(np.load(p), x) for p, x in zip(paths, layers, strict=True))
        layers_to_npz(paths, repr(weighting), d / "b.npz", ValidationPolicy(finite=False))
        back_weighting, back = loaded(d / "b.npz")
        assert back_weighting == weighting
        assert all(same(x, y) for x, y in zip(layers, back, strict=True))


@ROUND_TRIP
@given(layers=LAYERS)
def test_normalized_aggregate_is_plain(layers: list[np.ndarray[Any, Any]]) -> None:
    """An aggregate in either form becomes layer_0.. little-endian C-order arrays with equal values."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        sdk_weights(d / "a.npz", 1, layers)
        npz_to_object_npy(d / "a.npz", d / "a.npy")
        for source in (d / "a.npz", d / "a.npy"):
            normalize_aggregate(source, d / "plain.npz")
            with np.load(d / "plain.npz", allow_pickle=False) as data:
                assert data.files == [f"layer_{i}" for i in range(len(layers))]
                for i, original in enumerate(layers):
                    got = data[f"layer_{i}"]
                    assert same(got, original)
                    assert got.dtype.byteorder in "<|="
                    assert got.flags.c_contiguous
