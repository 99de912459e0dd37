"""safetensors in and out: hostile headers refused with stable codes, interop with the official writer and reader."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from gateway.weights import WeightsError, detect_format, upload_to_npz
from gateway.weights.names import NamedTensor, NameMap, check_fit
from gateway.weights.npz import inspect_aggregate
from gateway.weights.policy import Limits, ValidationPolicy
from gateway.weights.renamed import aggregate_to_named_npz, aggregate_to_safetensors
from gateway.weights.safetensors import narrow_to_bf16, read_header, widen_bf16
from tests.support.http import load_npz
from tests.support.weights import write_npz

ALL_DTYPES: dict[str, np.ndarray[Any, Any]] = {
    "bool": np.array([True, False, True]),
    "u8": np.arange(4, dtype=np.uint8),
    "i8": np.arange(-2, 2, dtype=np.int8),
    "u16": np.arange(4, dtype=np.uint16),
    "i16": np.arange(-2, 2, dtype=np.int16),
    "f16": np.linspace(-1, 1, 4).astype(np.float16),
    "u32": np.arange(4, dtype=np.uint32),
    "i32": np.arange(-2, 2, dtype=np.int32),
    "f32": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
    "u64": np.arange(4, dtype=np.uint64),
    "i64": np.arange(-2, 2, dtype=np.int64),
    "f64": np.linspace(-1, 1, 4),
    "scalar": np.array(2.5, dtype=np.float32),
    "empty": np.zeros((0, 3), dtype=np.float32),
}


def _raw(header: dict[str, Any] | bytes, data: bytes = b"", length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


def _tensor(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


HOSTILE = [
    pytest.param(_raw(b"{}", length=1 << 12), "truncated", id="header-length-beyond-file"),
    pytest.param(_raw(b"{}", length=1 << 40), "header-too-large", id="huge-header"),
    # Not recognisable as safetensors by content: refused as no known format at all.
    pytest.param(b"\x02\x00\x00\x00\x00", "not-a-payload", id="short-length"),
    pytest.param(_raw(b"{not json"), "bad-safetensors-header", id="not-json"),
    pytest.param(_raw(b'["a"]'), "not-a-payload", id="not-an-object"),
    pytest.param(_raw(b'{"a": ' * 5000 + b"1" + b"}" * 5000), "bad-safetensors-header", id="deep"),
    pytest.param(
        _raw({"a": _tensor("F32", [1], 0, 4), "b": _tensor("F32", [1], 2, 6)}, b"\0" * 6),
        "overlapping-tensors",
        id="overlapping",
    ),
    pytest.param(
        _raw({"a": _tensor("F32", [2], 0, 8)}, b"\0" * 4), "tensor-offsets", id="out-of-range"
    ),
    pytest.param(
        _raw({"a": _tensor("F32", [2], 0, 4)}, b"\0" * 4), "tensor-offsets", id="size-vs-shape"
    ),
    pytest.param(_raw({"a": _tensor("F32", [1], 4, 8)}, b"\0" * 8), "tensor-offsets", id="hole"),
    pytest.param(
        _raw({"a": _tensor("F32", [1], 0, 4)}, b"\0" * 8), "tensor-offsets", id="trailing-bytes"
    ),
    pytest.param(
        _raw({"a": _tensor("F32", [0], 4, 0)}, b"\0" * 4), "tensor-offsets", id="end-before-begin"
    ),
    pytest.param(
        _raw({"a": _tensor("F32", [-1], 0, 4)}, b"\0" * 4),
        "bad-safetensors-header",
        id="negative-dim",
    ),
    pytest.param(
        _raw({"a": _tensor("X9", [1], 0, 4)}, b"\0" * 4), "unsupported-dtype", id="unknown-dtype"
    ),
    pytest.param(
        _raw({"a": _tensor("F8_E4M3", [4], 0, 4)}, b"\0" * 4),
        "unsupported-dtype",
        id="float8",
    ),
    pytest.param(
        _raw(
            b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
            b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
            b"\0" * 8,
        ),
        "duplicate-member",
        id="duplicate-names",
    ),
    pytest.param(
        _raw({"a\u0000b": _tensor("F32", [1], 0, 4)}, b"\0" * 4),
        "bad-member-name",
        id="nul-in-name",
    ),
    pytest.param(
        _raw({"__metadata__": {"k": 1}, "a": _tensor("F32", [1], 0, 4)}, b"\0" * 4),
        "bad-safetensors-header",
        id="metadata-not-strings",
    ),
    pytest.param(
        _raw({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4),
        "bad-safetensors-header",
        id="missing-offsets",
    ),
    pytest.param(
        _raw({"a": _tensor("F32", [1 << 62, 1 << 62], 0, 4)}, b"\0" * 4),
        "shape-overflow",
        id="shape-overflow",
    ),
    pytest.param(_raw({}), "no-layers", id="no-tensors"),
]


@pytest.mark.parametrize(("data", "code"), HOSTILE)
def test_hostile_safetensors_are_refused(tmp_path: Path, data: bytes, code: str) -> None:
    """Each damaged or malicious header is refused, before any data is read, with its stable code."""
    src = tmp_path / "m.safetensors"
    src.write_bytes(data)
    with pytest.raises(WeightsError) as caught:
        upload_to_npz(src, tmp_path / "out.npz")
    assert caught.value.code == code, caught.value.message
    assert not (tmp_path / "out.npz").exists()


def test_header_limit_is_a_setting(tmp_path: Path) -> None:
    """A header over `max_safetensors_header_bytes` is refused; at the limit it is read."""
    save_file({"a": np.ones(2, np.float32)}, str(tmp_path / "m.safetensors"))
    length = struct.unpack("<Q", (tmp_path / "m.safetensors").read_bytes()[:8])[0]
    read_header(tmp_path / "m.safetensors", Limits(max_safetensors_header_bytes=length))
    with pytest.raises(WeightsError) as caught:
        read_header(tmp_path / "m.safetensors", Limits(max_safetensors_header_bytes=length - 1))
    assert caught.value.code == "header-too-large"


def test_official_files_go_up_and_come_back(tmp_path: Path) -> None:
    """Every dtype numpy has, written by the official writer, becomes layer_0.. and is given back
    by our writer in a file the official reader loads with the same names, dtypes and values."""
    src = tmp_path / "m.safetensors"
    save_file(ALL_DTYPES, str(src), metadata={"framework": "numpy"})
    assert detect_format(src) == "safetensors"
    incoming = upload_to_npz(src, tmp_path / "up.npz", weighting=2)
    assert incoming.names is not None
    uploaded = load_npz((tmp_path / "up.npz").read_bytes())
    assert next(iter(uploaded)) == "weighting"
    for index, tensor in enumerate(incoming.names.tensors):
        np.testing.assert_array_equal(uploaded[f"layer_{index}"], ALL_DTYPES[tensor.name])
    aggregate = _aggregate_of(tmp_path / "up.npz", tmp_path / "agg.npz")
    aggregate_to_safetensors(aggregate, tmp_path / "out.safetensors", incoming.names, Limits(), "a")
    back = load_file(str(tmp_path / "out.safetensors"))
    assert set(back) == set(ALL_DTYPES)
    for name, array in ALL_DTYPES.items():
        assert back[name].dtype == array.dtype, name
        np.testing.assert_array_equal(back[name], array)
    with safe_open(str(tmp_path / "out.safetensors"), "np") as opened:
        assert opened.metadata() == {"framework": "numpy"}
        assert list(opened.keys()) == sorted(ALL_DTYPES)


def _aggregate_of(upload: Path, dst: Path) -> Path:
    """An aggregate as BranchKey sends it: the upload's layers without its weighting."""
    arrays = load_npz(upload.read_bytes())
    return write_npz(dst, {k: v for k, v in arrays.items() if k != "weighting"})


def test_bf16_widens_exactly_and_narrows_to_nearest_even() -> None:
    """BF16 becomes the float32 with the same top half; float32 goes back rounded to nearest, ties
    to even, NaN kept, overflow to infinity."""
    halves = np.array([0x3F80, 0xBF80, 0x7F80, 0x0001, 0x4049], dtype="<u2")
    widened = np.frombuffer(b"".join(widen_bf16([halves.tobytes()])), dtype="<f4")
    assert widened[:3].tolist() == [1.0, -1.0, float("inf")]
    assert narrow_to_bf16(widened) == halves.tobytes()
    values = np.array(
        [
            np.frombuffer(struct.pack("<I", 0x3F808000), "<f4")[0],  # a tie: down to even 0x3F80
            np.frombuffer(struct.pack("<I", 0x3F818000), "<f4")[0],  # a tie: up to even 0x3F82
            np.frombuffer(struct.pack("<I", 0x3F808001), "<f4")[0],  # above the tie: up
            np.float32(np.nan),
            np.float32(3.4e38),
        ],
        dtype="<f4",
    )
    assert np.frombuffer(narrow_to_bf16(values), "<u2").tolist() == [
        0x3F80,
        0x3F82,
        0x3F81,
        0x7FC0,
        0x7F80,
    ]


def test_bf16_round_trip_through_an_aggregate(tmp_path: Path) -> None:
    """A BF16 tensor travels as float32 and comes back as BF16 with the same bits."""
    bits = np.array([0x3F80, 0x4000, 0xC0A0, 0x0000], dtype="<u2")
    header = json.dumps({"w": _tensor("BF16", [2, 2], 0, 8)}).encode()
    src = tmp_path / "m.safetensors"
    src.write_bytes(_raw(header, bits.tobytes()))
    incoming = upload_to_npz(src, tmp_path / "up.npz")
    assert incoming.payload.arrays[0].dtype == "<f4"
    assert load_npz((tmp_path / "up.npz").read_bytes())["layer_0"].tolist() == [
        [1.0, 2.0],
        [-5.0, 0.0],
    ]
    assert incoming.names is not None
    aggregate = _aggregate_of(tmp_path / "up.npz", tmp_path / "agg.npz")
    out = tmp_path / "out.safetensors"
    aggregate_to_safetensors(aggregate, out, incoming.names, Limits(), "a")
    data = out.read_bytes()
    length = struct.unpack("<Q", data[:8])[0]
    assert json.loads(data[8 : 8 + length])["w"]["dtype"] == "BF16"
    assert data[8 + length :] == bits.tobytes()
    aggregate_to_named_npz(aggregate, tmp_path / "named.npz", incoming.names, Limits(), "a")
    assert load_npz((tmp_path / "named.npz").read_bytes())["w"].dtype == np.float32


def test_named_npz_without_layer_keys_is_mapped_in_archive_order(tmp_path: Path) -> None:
    """An NPZ of its own keys goes up as layer_0.. in archive order; a mix with layer_<n> keys keeps
    the strict key check."""
    np.savez(tmp_path / "w.npz", b=np.ones(2), a=np.zeros((2, 2), np.float32))
    incoming = upload_to_npz(tmp_path / "w.npz", tmp_path / "up.npz")
    assert incoming.names is not None
    assert [t.name for t in incoming.names.tensors] == ["b", "a"]
    assert (incoming.payload.weighting, incoming.weighting_source) == (1.0, "default")
    np.savez(tmp_path / "mixed.npz", weighting=1.0, layer_0=np.ones(2), extra=np.ones(2))
    with pytest.raises(WeightsError) as caught:
        upload_to_npz(tmp_path / "mixed.npz", tmp_path / "up2.npz")
    assert caught.value.code == "unexpected-key"


def test_names_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    """A map with another count or another shape never labels an aggregate."""
    np.savez(tmp_path / "agg.npz", layer_0=np.ones((2, 3), np.float32), layer_1=np.ones(3))
    aggregate = inspect_aggregate(tmp_path / "agg.npz", ValidationPolicy.lenient())
    fits = NameMap("npz", (NamedTensor("w", "<f4", (2, 3)), NamedTensor("b", "<f8", (3,))))
    check_fit(fits, aggregate, "a")
    for wrong in (
        NameMap("npz", fits.tensors[:1]),
        NameMap("npz", (NamedTensor("w", "<f4", (3, 2)), fits.tensors[1])),
    ):
        with pytest.raises(WeightsError) as caught:
            check_fit(wrong, aggregate, "a")
        assert caught.value.code == "names-mismatch"
    assert NameMap.from_json(fits.to_json()) == fits
