"""FedAvg: weighted mean from files on disk, layer by layer, in the inputs' dtype."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.weights import Limits, ValidationPolicy, WeightsError, fedavg
from gateway.weights import averaging as fedavg_module
from tests.support.weights import sdk_weights, write_npz


def averaged(path: Path) -> list[np.ndarray[Any, Any]]:
    """The layers of an aggregate, in order."""
    with np.load(path, allow_pickle=False) as data:
        assert "weighting" not in data.files
        return [data[f"layer_{i}"] for i in range(len(data.files))]


def test_weighted_mean_matches_numpy(tmp_path: Path) -> None:
    """Three leaves with different weightings average exactly as an independent numpy computation."""
    rng = np.random.default_rng(7)
    weights = [10.0, 30.0, 60.0]
    models: list[list[np.ndarray[Any, Any]]] = [
        [rng.standard_normal((64, 33)).astype(np.float32), rng.standard_normal(7)] for _ in weights
    ]
    paths = [
        sdk_weights(tmp_path / f"{k}.npz", w, m)
        for k, (w, m) in enumerate(zip(weights, models, strict=True))
    ]
    payload = fedavg(paths, tmp_path / "avg.npz")
    got = averaged(tmp_path / "avg.npz")
    for index in range(2):
        expected = sum(
            w * m[index].astype(np.float64) for w, m in zip(weights, models, strict=True)
        ) / sum(weights)
        assert got[index].dtype == models[0][index].dtype
        np.testing.assert_allclose(got[index], expected, rtol=1e-6, atol=1e-6)
    assert [a.key for a in payload.arrays] == ["layer_0", "layer_1"]
    assert payload.weighting is None


def test_chunked_average_over_many_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Layers spanning many accumulation chunks (with a ragged tail) average like whole arrays."""
    monkeypatch.setattr(fedavg_module, "_CHUNK_BYTES", 1000)
    a, b = np.arange(10_001, dtype=np.float64), np.arange(10_001, dtype=np.float64)[::-1].copy()
    paths = [sdk_weights(tmp_path / "a.npz", 1, [a]), sdk_weights(tmp_path / "b.npz", 3, [b])]
    fedavg(paths, tmp_path / "avg.npz")
    np.testing.assert_allclose(averaged(tmp_path / "avg.npz")[0], (a + 3 * b) / 4)


def test_integer_bool_complex_and_mixed_byte_order(tmp_path: Path) -> None:
    """Integers round to nearest, bools vote, complex averages, big- and little-endian inputs mix."""
    one: list[np.ndarray[Any, Any]] = [
        np.array([1, 2, 10], dtype=">i4"),
        np.array([True, False, True]),
        np.array([1 + 1j]),
        np.array([1, 2], dtype=np.float16),
    ]
    two: list[np.ndarray[Any, Any]] = [
        np.array([2, 3, 20], dtype="<i4"),
        np.array([True, True, False]),
        np.array([3 - 1j]),
        np.array([3, 4], dtype=np.float16),
    ]
    paths = [sdk_weights(tmp_path / "a.npz", 1, one), sdk_weights(tmp_path / "b.npz", 3, two)]
    fedavg(paths, tmp_path / "avg.npz")
    ints, bools, cplx, half = averaged(tmp_path / "avg.npz")
    assert ints.dtype == np.dtype("int32")
    assert ints.tolist() == [
        2,
        3,
        18,
    ]
    assert bools.dtype == np.bool_
    assert bools.tolist() == [True, True, False]
    assert cplx.tolist() == [2.5 - 0.5j]
    assert half.dtype == np.float16
    assert half.tolist() == [2.5, 3.5]


def test_fortran_and_mixed_memory_order(tmp_path: Path) -> None:
    """Fortran-order inputs, and a mix of Fortran and C order, average element by element."""
    a = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    b = np.ascontiguousarray(np.arange(12.0).reshape(3, 4) * 3)
    paths = [sdk_weights(tmp_path / "a.npz", 1, [a]), sdk_weights(tmp_path / "b.npz", 1, [b])]
    fedavg(paths, tmp_path / "mixed.npz")
    np.testing.assert_allclose(averaged(tmp_path / "mixed.npz")[0], (a + b) / 2)
    paths = [
        sdk_weights(tmp_path / "c.npz", 1, [a]),
        sdk_weights(tmp_path / "d.npz", 1, [np.asfortranarray(b)]),
    ]
    fedavg(paths, tmp_path / "fortran.npz")
    np.testing.assert_allclose(averaged(tmp_path / "fortran.npz")[0], (a + b) / 2)


def test_zero_and_empty_layers(tmp_path: Path) -> None:
    """0-d and size-0 layers pass through the average with their shapes."""
    paths = [
        sdk_weights(tmp_path / f"{k}.npz", 1, [np.array(float(k)), np.zeros((0, 3))])
        for k in range(2)
    ]
    fedavg(paths, tmp_path / "avg.npz")
    scalar, empty = averaged(tmp_path / "avg.npz")
    assert scalar.shape == ()
    assert scalar == 0.5
    assert empty.shape == (0, 3)


@pytest.mark.parametrize(
    ("second", "fragment"),
    [
        ([np.zeros(3), np.zeros(1)], "layers"),
        ([np.zeros(4)], "shape"),
        ([np.zeros(3, dtype=np.float32)], "dtype"),
    ],
)
def test_disagreeing_leaves_are_refused(
    tmp_path: Path, second: list[np.ndarray[Any, Any]], fragment: str
) -> None:
    """Leaves that differ in layer count, shape or dtype get a clear layer-mismatch error."""
    paths = [
        sdk_weights(tmp_path / "a.npz", 1, [np.zeros(3)]),
        sdk_weights(tmp_path / "b.npz", 1, second),
    ]
    with pytest.raises(WeightsError) as caught:
        fedavg(paths, tmp_path / "avg.npz")
    assert caught.value.code == "layer-mismatch"
    assert fragment in caught.value.message
    assert not (tmp_path / "avg.npz").exists()


def test_zero_weight_sum_and_bad_inputs(tmp_path: Path) -> None:
    """A weighting sum of 0, no inputs, and analytics payloads are errors, never a file."""
    zero = [sdk_weights(tmp_path / f"{k}.npz", 0, [np.ones(2)]) for k in range(2)]
    with pytest.raises(WeightsError) as caught:
        fedavg(zero, tmp_path / "avg.npz")
    assert caught.value.code == "zero-weighting"
    with pytest.raises(WeightsError) as caught:
        fedavg([], tmp_path / "avg.npz")
    assert caught.value.code == "no-inputs"
    stats = write_npz(
        tmp_path / "s.npz",
        {"__bk_payload_kind__": np.array("federated_analytics"), "x_n": np.array([1])},
    )
    with pytest.raises(WeightsError) as caught:
        fedavg([stats], tmp_path / "avg.npz")
    assert caught.value.code == "unsupported-kind"
    assert not (tmp_path / "avg.npz").exists()


def test_negative_weighting_refused_even_when_lenient(tmp_path: Path) -> None:
    """FedAvg never averages with a negative or non-finite weight, whatever the validation policy."""
    bad = [
        sdk_weights(tmp_path / "a.npz", -1, [np.ones(2)]),
        sdk_weights(tmp_path / "b.npz", 3, [np.ones(2)]),
    ]
    with pytest.raises(WeightsError) as caught:
        fedavg(bad, tmp_path / "avg.npz", ValidationPolicy.lenient())
    assert caught.value.code == "bad-weighting"


def test_corrupt_input_fails_without_output(tmp_path: Path) -> None:
    """A CRC failure in any input, found while averaging, leaves no output file behind."""
    good = sdk_weights(tmp_path / "a.npz", 1, [np.zeros(5000)])
    bad = write_npz(
        tmp_path / "b.npz",
        {"weighting": np.array([1.0]), "layer_0": np.zeros(5000)},
        compress=False,
    )
    raw = bytearray(bad.read_bytes())
    raw[raw.index(b"layer_0.npy") + 11 + 128 + 100] ^= 0x01
    bad.write_bytes(bytes(raw))
    with pytest.raises(WeightsError) as caught:
        fedavg([good, bad], tmp_path / "avg.npz", ValidationPolicy(limits=Limits()))
    assert caught.value.code == "crc-mismatch"
    assert not (tmp_path / "avg.npz").exists()
    assert not list(tmp_path.glob(".avg.npz.*"))


def test_products_are_computed_in_float64() -> None:
    """Weighted products are formed in the float64 accumulator, not in the layer's own precision."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        big = np.array([1000.0, -1000.0], dtype=np.float16)  # 1000 x 100 overflows float16
        a = sdk_weights(d / "a.npz", 100, [big])
        b = sdk_weights(d / "b.npz", 100, [big])
        fedavg([a, b], d / "avg.npz")
        assert averaged(d / "avg.npz")[0].tolist() == [1000.0, -1000.0]
        rng = np.random.default_rng(20250131)
        layers = [rng.standard_normal((32, 16)).astype(np.float32) for _ in range(3)]
        weights = [3.0, 11.0, 26.0]
        paths = [
            sdk_weights(d / f"{k}.npz", w, [x])
            for k, (w, x) in enumerate(zip(weights, layers, strict=True))
        ]
        fedavg(paths, d / "exact.npz")
        exact = np.zeros((32, 16))
        for w, x in zip(weights, layers, strict=True):
            exact += w * x.astype(np.float64)
        exact /= sum(weights)
        np.testing.assert_array_equal(averaged(d / "exact.npz")[0], exact.astype(np.float32))


def _leaf(path: Path, weighting: float, layers: list[np.ndarray[Any, Any]], compress: bool) -> Path:
    members: dict[str, bytes | np.ndarray[Any, Any]] = {"weighting": np.array([weighting])}
    members.update({f"layer_{i}": layer for i, layer in enumerate(layers)})
    return write_npz(path, members, compress=compress)


@pytest.mark.parametrize("compress", [(False, False), (True, False), (False, True)])
def test_stored_and_deflated_inputs_across_ragged_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, compress: tuple[bool, bool]
) -> None:
    """Stored members (read in place) and deflated ones mix; layers end mid-chunk and mid-block."""
    monkeypatch.setattr(fedavg_module, "_CHUNK_BYTES", 1000)
    monkeypatch.setattr(fedavg_module, "_BLOCK", 7)
    rng = np.random.default_rng(11)
    weights = [2.0, 7.0]
    models: list[list[np.ndarray[Any, Any]]] = [
        [
            rng.standard_normal(3001).astype(np.float32),
            rng.integers(-1000, 1000, 1001).astype(np.int16),
            (rng.standard_normal(333) + 1j * rng.standard_normal(333)).astype(np.complex64),
            np.zeros((0, 4), dtype=np.float32),
            np.array(rng.standard_normal()),
            rng.standard_normal(250).astype(np.float32),  # exactly one 1000-byte chunk
        ]
        for _ in weights
    ]
    paths = [
        _leaf(tmp_path / f"{k}.npz", w, m, c)
        for k, (w, m, c) in enumerate(zip(weights, models, compress, strict=True))
    ]
    fedavg(paths, tmp_path / "avg.npz")
    got = averaged(tmp_path / "avg.npz")
    for index, layer in enumerate(got):
        dtype = models[0][index].dtype
        wide = np.complex128 if dtype.kind == "c" else np.float64
        exact = np.zeros(models[0][index].shape, dtype=wide)
        for w, m in zip(weights, models, strict=True):
            exact += m[index].astype(wide) * w
        exact /= sum(weights)
        if dtype.kind == "i":
            exact = np.rint(exact)
        assert layer.dtype == dtype
        assert layer.shape == models[0][index].shape
        np.testing.assert_array_equal(layer, exact.astype(dtype))


def test_corrupt_stored_member_found_mid_layer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flipped byte in a stored member's middle chunk fails the CRC after the last chunk."""
    monkeypatch.setattr(fedavg_module, "_CHUNK_BYTES", 1000)
    layer = np.arange(5000, dtype=np.float32)
    good = _leaf(tmp_path / "a.npz", 1, [layer], compress=False)
    bad = _leaf(tmp_path / "b.npz", 1, [layer], compress=False)
    raw = bytearray(bad.read_bytes())
    raw[raw.index(b"layer_0.npy") + 11 + 128 + 9000] ^= 0x01
    bad.write_bytes(bytes(raw))
    with pytest.raises(WeightsError) as caught:
        fedavg([good, bad], tmp_path / "avg.npz")
    assert caught.value.code == "crc-mismatch"
    assert not list(tmp_path.glob("*avg.npz*"))
