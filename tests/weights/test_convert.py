"""Conversions between dialects, per-layer uploads and aggregate normalisation."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.weights import (
    Limits,
    ValidationPolicy,
    WeightsError,
    detect_format,
    layers_to_npz,
    normalize_aggregate,
    npz_to_object_npy,
    object_npy_to_npz,
    to_npz,
)
from gateway.weights.objectnpy import read_object_npy
from tests.support.weights import sdk_weights, write_npz


def v1_file(path: Path, samples: object, layers: object) -> Path:
    """A v1 object .npy, as numpy.save writes it."""
    pair = np.empty(2, dtype=object)
    pair[0], pair[1] = samples, layers
    with path.open("wb") as out:  # numpy.save would append .npy to other names
        np.save(out, pair, allow_pickle=True)
    return path


def test_v1_to_npz_is_the_sdk_layout(tmp_path: Path) -> None:
    """A converted v1 file lists weighting (float64, shape (1,)) first, then layer_i, and no kind key."""
    v1_file(tmp_path / "v1.npy", 42, [np.ones(3, dtype=np.float32), np.zeros((2, 2))])
    object_npy_to_npz(tmp_path / "v1.npy", tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz", allow_pickle=False) as data:
        assert data.files == ["weighting", "layer_0", "layer_1"]
        assert data["weighting"].dtype == np.float64
        assert data["weighting"].shape == (1,)
        assert data["weighting"][0] == 42.0
    with zipfile.ZipFile(tmp_path / "out.npz") as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_DEFLATED}


def test_npz_to_v1_type_rules(tmp_path: Path) -> None:
    """The v1 file written from an NPZ holds a Python int and a Python list of arrays (§3.6)."""
    sdk_weights(tmp_path / "a.npz", 7, [np.ones(2), np.arange(4, dtype=np.int16)])
    npz_to_object_npy(tmp_path / "a.npz", tmp_path / "b.npy")
    parsed = read_object_npy(tmp_path / "b.npy", Limits())
    assert type(parsed.num_samples) is int
    assert parsed.num_samples == 7
    assert [ref.header.dtype.str for ref in parsed.layers] == ["<f8", "<i2"]


@pytest.mark.parametrize("weighting", [2.5, -1.0])
def test_npz_to_v1_needs_whole_sample_count(tmp_path: Path, weighting: float) -> None:
    """v1 carries an integer sample count, so a fractional or negative weighting cannot be converted."""
    sdk_weights(tmp_path / "a.npz", weighting, [np.ones(2)])
    with pytest.raises(WeightsError) as caught:
        npz_to_object_npy(
            tmp_path / "a.npz", tmp_path / "b.npy", ValidationPolicy(strict_weighting=False)
        )
    assert caught.value.code == "weighting-not-integer"
    assert not (tmp_path / "b.npy").exists()


def test_analytics_has_no_v1_form(tmp_path: Path) -> None:
    """An analytics payload cannot become a v1 file."""
    path = write_npz(
        tmp_path / "s.npz",
        {"__bk_payload_kind__": np.array("federated_analytics"), "x_n": np.array([2])},
    )
    with pytest.raises(WeightsError) as caught:
        npz_to_object_npy(path, tmp_path / "b.npy")
    assert caught.value.code == "unsupported-kind"


def test_layer_parts_build_an_sdk_npz(tmp_path: Path) -> None:
    """Per-layer .npy parts plus a weighting string become weighting + layer_0.. in order."""
    parts = []
    layers: list[np.ndarray[Any, Any]] = [np.ones((2, 2), dtype=np.float32), np.arange(3)]
    for i, layer in enumerate(layers):
        np.save(tmp_path / f"p{i}.npy", layer)
        parts.append(tmp_path / f"p{i}.npy")
    payload = layers_to_npz(parts, "128", tmp_path / "out.npz")
    assert payload.weighting == 128.0
    assert [a.shape for a in payload.arrays] == [(2, 2), (3,)]
    with np.load(tmp_path / "out.npz", allow_pickle=False) as data:
        assert data.files == ["weighting", "layer_0", "layer_1"]


@pytest.mark.parametrize(
    ("weighting", "code"),
    [
        ("ten", "bad-weighting"),
        ("nan", "bad-weighting"),
        ("-3", "bad-weighting"),
        ("inf", "bad-weighting"),
    ],
)
def test_layer_parts_weighting_rules(tmp_path: Path, weighting: str, code: str) -> None:
    """The weighting field must be a finite number >= 0; nothing is written otherwise."""
    np.save(tmp_path / "p.npy", np.ones(2))
    with pytest.raises(WeightsError) as caught:
        layers_to_npz([tmp_path / "p.npy"], weighting, tmp_path / "out.npz")
    assert caught.value.code == code
    assert not (tmp_path / "out.npz").exists()


def test_layer_parts_limits(tmp_path: Path) -> None:
    """No parts, too many parts, and a truncated or over-long part are each refused by code."""
    with pytest.raises(WeightsError, match="layer_0") as caught:
        layers_to_npz([], "1", tmp_path / "out.npz")
    assert caught.value.code == "no-layers"
    np.save(tmp_path / "p.npy", np.ones(8))
    with pytest.raises(WeightsError) as caught:
        layers_to_npz(
            [tmp_path / "p.npy"] * 3,
            "1",
            tmp_path / "out.npz",
            ValidationPolicy(limits=Limits(max_members=3)),
        )
    assert caught.value.code == "too-many-members"
    raw = (tmp_path / "p.npy").read_bytes()
    (tmp_path / "short.npy").write_bytes(raw[:-1])
    (tmp_path / "long.npy").write_bytes(raw + b"\0")
    for name, code in (("short.npy", "truncated"), ("long.npy", "shape-mismatch")):
        with pytest.raises(WeightsError) as caught:
            layers_to_npz([tmp_path / name], "1", tmp_path / "out.npz")
        assert caught.value.code == code


def test_normalize_drops_weighting_and_renumbers(tmp_path: Path) -> None:
    """An aggregate with weighting and numbered layers becomes layer_0.. in numeric order only."""
    layers = {f"layer_{i}": np.full(2, float(i)) for i in (0, 2, 10)}
    path = write_npz(tmp_path / "agg.npz", {"weighting": np.array([1.0]), **layers})
    payload = normalize_aggregate(path, tmp_path / "plain.npz")
    assert payload.kind == "federated_learning"
    with np.load(tmp_path / "plain.npz", allow_pickle=False) as data:
        assert data.files == ["layer_0", "layer_1", "layer_2"]
        assert [data[k][0] for k in data.files] == [0.0, 2.0, 10.0]
    with zipfile.ZipFile(tmp_path / "plain.npz") as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}


def test_normalize_moves_an_already_plain_file_only_when_asked(tmp_path: Path) -> None:
    """`move=True` renames an aggregate that is already plain (same bytes, source gone); a file that
    needs re-encoding is rewritten and its source kept; without `move` the source always stays."""
    layers: dict[str, bytes | np.ndarray[Any, Any]] = {
        f"layer_{i}": np.full(3, float(i), dtype=np.float32) for i in range(2)
    }
    plain = write_npz(tmp_path / "plain-src.npz", layers, compress=False)
    original = plain.read_bytes()
    normalize_aggregate(plain, tmp_path / "copied.npz")
    assert plain.exists()
    normalize_aggregate(plain, tmp_path / "moved.npz", move=True)
    assert not plain.exists()
    assert (
        (tmp_path / "moved.npz").read_bytes() == original == (tmp_path / "copied.npz").read_bytes()
    )
    packed = write_npz(tmp_path / "packed.npz", layers, compress=True)
    normalize_aggregate(packed, tmp_path / "unpacked.npz", move=True)
    assert packed.exists()
    with zipfile.ZipFile(tmp_path / "unpacked.npz") as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}


def test_normalize_keeps_analytics_fields(tmp_path: Path) -> None:
    """An analytics aggregate keeps its field names, byte-swapped to little-endian where needed."""
    path = write_npz(
        tmp_path / "agg.npz",
        {"age_sum": np.array([3.0], dtype=">f8"), "name": np.array(["x"], dtype=">U1")},
    )
    payload = normalize_aggregate(path, tmp_path / "plain.npz")
    assert [a.key for a in payload.arrays] == ["age_sum", "name"]
    assert [a.dtype for a in payload.arrays] == ["<f8", "<U1"]


def test_to_npz_and_detect_format(tmp_path: Path) -> None:
    """Uploads are recognised by content, not name; only v1 files are rewritten."""
    npz = sdk_weights(tmp_path / "w.npz", 1, [np.ones(2)]).rename(tmp_path / "w.bin")
    v1 = v1_file(tmp_path / "w.dat", 3, [np.ones(2)])
    assert detect_format(npz) == "npz"
    assert detect_format(v1) == "npy-object"
    payload, converted = to_npz(npz, tmp_path / "unused.npz")
    assert not converted
    assert payload.weighting == 1.0
    assert not (tmp_path / "unused.npz").exists()
    payload, converted = to_npz(v1, tmp_path / "converted.npz")
    assert converted
    assert payload.weighting == 3.0
    assert payload.format == "npz"


def test_failed_conversion_leaves_nothing(tmp_path: Path) -> None:
    """A v1 file that fails half-way (second item not an array) leaves no partial output."""
    v1_file(tmp_path / "bad.npy", 3, [np.ones(2), "not an array"])
    with pytest.raises(WeightsError) as caught:
        object_npy_to_npz(tmp_path / "bad.npy", tmp_path / "out.npz")
    assert caught.value.code == "not-ndarray"
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.npy"]
