"""NaN and Inf refused in every upload form: seen by the stream scan as bytes arrive, or by the conversion pass."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.weights import (
    StreamScan,
    ValidationPolicy,
    WeightsError,
    inspect_npz,
    layers_to_npz,
    upload_to_npz,
)
from gateway.weights.npy import header_bytes
from gateway.weights.policy import Limits
from gateway.weights.scan import check_payload
from gateway.weights.values import ValueCheck
from tests.support.weights import save_v1, write_npy

POLICY = ValidationPolicy()


def _layers(bad: float | complex | None = None, at: int = 1) -> dict[str, np.ndarray[Any, Any]]:
    """Three layers; layer `at` gets `bad` at index (2, 3) when given."""
    rng = np.random.default_rng(0)
    layers: dict[str, np.ndarray[Any, Any]] = {
        "layer_0": rng.normal(size=(4, 5)).astype(np.float32),
        "layer_1": rng.normal(size=(6, 7)).astype(np.float32),
        "layer_2": np.arange(5, dtype=np.int64),
    }
    if bad is not None:
        layers[f"layer_{at}"][2, 3] = bad
    return layers


def _npz(path: Path, layers: dict[str, np.ndarray[Any, Any]], *, compressed: bool) -> Path:
    arrays: dict[str, Any] = {"weighting": np.float64(3), **layers}
    if compressed:
        np.savez_compressed(path, **arrays)
    else:
        np.savez(path, **arrays)
    return path


def _scanned(path: Path, piece: int) -> StreamScan:
    """A scan fed the file in pieces of `piece` bytes, as the receive loop would."""
    scan = StreamScan(Limits())
    data = path.read_bytes()
    for start in range(0, len(data), piece):
        scan.update(memoryview(data)[start : start + piece])
    return scan


def _refusal(action: Any) -> WeightsError:
    with pytest.raises(WeightsError) as refused:
        action()
    return refused.value


@pytest.mark.parametrize("compressed", [False, True], ids=["stored", "deflated"])
@pytest.mark.parametrize("piece", [1, 7, 4096, 1 << 20])
def test_the_scan_finds_nan_as_bytes_arrive(tmp_path: Path, compressed: bool, piece: int) -> None:
    """Stored and deflated NPZs, fed in any piece size, get a verdict for every member from the scan alone."""
    path = _npz(tmp_path / "w.npz", _layers(np.nan), compressed=compressed)
    scan = _scanned(path, piece)
    by_name = {m.name: m for m in scan.members.values()}
    assert set(by_name) == {"weighting.npy", "layer_0.npy", "layer_1.npy", "layer_2.npy"}
    assert all(m.complete for m in by_name.values())
    assert by_name["layer_2.npy"].values is None  # integers cannot hold NaN
    values = by_name["layer_1.npy"].values
    assert values is not None
    assert values.bad == (2 * 7 + 3, "NaN")
    payload = inspect_npz(path, POLICY)
    error = _refusal(lambda: check_payload(path, payload, POLICY.limits, scan))
    assert error.code == "not-finite"
    assert error.message.startswith("layer_1 holds NaN at index (2, 3)")
    assert "GATEWAY_ALLOW_NONFINITE=true" in error.message


def test_a_clean_scan_means_no_read_back(tmp_path: Path) -> None:
    """Members the scan saw whole are judged by it: the file is not read again (here it is gone)."""
    path = _npz(tmp_path / "w.npz", _layers(), compressed=True)
    scan = _scanned(path, 65536)
    payload = inspect_npz(path, POLICY)
    good = tmp_path / "good.npz"
    path.rename(good)
    check_payload(good, payload, POLICY.limits, scan)
    # The same archive, its layer_1 swapped for NaNs of the same size, compressed differently:
    # the directory no longer matches what the scan saw, so that member is read back.
    _npz(path, _layers(np.inf), compressed=False)
    error = _refusal(lambda: check_payload(path, inspect_npz(path, POLICY), POLICY.limits, scan))
    assert error.message.startswith("layer_1 holds inf at index (2, 3)")


def test_an_archive_the_scan_cannot_follow_is_read_back(tmp_path: Path) -> None:
    """A ZIP written to a pipe (data descriptors) stops the scan; the read-back still finds the -inf."""
    buffer = io.BytesIO()

    class Pipe(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, data: Any) -> int:
            return buffer.write(data)

    with zipfile.ZipFile(Pipe(), "w") as archive:  # not seekable: sizes go in data descriptors
        for key, array in {"weighting": np.float64(1), **_layers(-np.inf, at=0)}.items():
            array = np.asarray(array)
            with archive.open(f"{key}.npy", "w") as member:
                member.write(header_bytes(array.dtype, array.shape, False) + array.tobytes())
    path = tmp_path / "piped.npz"
    path.write_bytes(buffer.getvalue())
    scan = _scanned(path, 4096)
    assert scan.stopped
    assert not any(m.complete for m in scan.members.values())
    error = _refusal(lambda: check_payload(path, inspect_npz(path, POLICY), POLICY.limits, scan))
    assert error.message.startswith("layer_0 holds -inf at index (2, 3)")


def test_the_scan_never_inflates_past_the_declared_size(tmp_path: Path) -> None:
    """A member packed past the ratio limit is skipped by the scan (the archive check refuses it)."""
    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        data = np.zeros(4 << 20, dtype=np.float32)
        archive.writestr(
            "layer_0.npy", header_bytes(data.dtype, data.shape, False) + data.tobytes()
        )
    scan = _scanned(path, 65536)
    (member,) = scan.members.values()
    assert not member.complete
    assert member.values is None


@pytest.mark.parametrize(
    ("bad", "words"),
    [(np.nan, "NaN"), (np.inf, "inf"), (complex(1, np.nan), "a complex value with NaN")],
)
def test_every_upload_form_refuses_non_finite_values(
    tmp_path: Path, bad: float | complex, words: str
) -> None:
    """NPZ, plain .npy, a list of arrays, the v1 pair and per-layer parts all name the layer and index."""
    layers = _layers()
    dtype = np.complex64 if isinstance(bad, complex) else np.float32
    layers["layer_1"] = layers["layer_1"].astype(dtype)
    layers["layer_1"][2, 3] = bad
    arrays = [layers[f"layer_{i}"] for i in range(3)]
    npz = _npz(tmp_path / "w.npz", layers, compressed=False)
    plain = write_npy(tmp_path / "plain.npy", arrays[1])
    listed = tmp_path / "list.npy"
    np.save(listed, np.array(arrays, dtype=object), allow_pickle=True)
    pair = save_v1(tmp_path / "pair.npy", 12, arrays)
    parts = [write_npy(tmp_path / f"part{i}.npy", a) for i, a in enumerate(arrays)]
    out = tmp_path / "out.npz"
    attempts: dict[str, list[Any]] = {
        "layer_1": [
            lambda: upload_to_npz(npz, out, POLICY, scan=_scanned(npz, 999)),
            lambda: upload_to_npz(npz, out, POLICY),
            lambda: upload_to_npz(npz, out, POLICY, weighting="5"),
            lambda: upload_to_npz(listed, out, POLICY),
            lambda: upload_to_npz(pair, out, POLICY),
            lambda: layers_to_npz(parts, "3", out, POLICY),
        ],
        "layer_0": [lambda: upload_to_npz(plain, out, POLICY)],
    }
    for key, actions in attempts.items():
        for action in actions:
            error = _refusal(action)
            assert (error.code, error.message.split(":")[0]) == (
                "not-finite",
                f"{key} holds {words} at index (2, 3)",
            )
            assert not out.exists()


def test_allow_nonfinite_lets_every_form_through(tmp_path: Path) -> None:
    """With the check off (GATEWAY_ALLOW_NONFINITE=true) the same files convert as before."""
    policy = ValidationPolicy(finite=False)
    layers = _layers(np.nan)
    arrays = [layers[f"layer_{i}"] for i in range(3)]
    npz = _npz(tmp_path / "w.npz", layers, compressed=True)
    pair = save_v1(tmp_path / "pair.npy", 12, arrays)
    plain = write_npy(tmp_path / "plain.npy", arrays[1])
    for source in (npz, pair, plain):
        incoming = upload_to_npz(source, tmp_path / "out.npz", policy)
        assert incoming.payload.layer_count >= 1


def test_value_check_handles_elements_split_across_pieces() -> None:
    """A float64 NaN split over pieces of 3 bytes is found at its index once flushed; big-endian and float16 too."""
    for dtype in (np.dtype("<f8"), np.dtype(">f8"), np.dtype("<f2")):
        values = np.ones(10, dtype=dtype)
        values[7] = np.nan
        data = values.tobytes()
        check = ValueCheck("layer_9", dtype, (10,))
        for start in range(0, len(data), 3):
            check.feed(data[start : start + 3])
        assert check.bad is None  # gathered, not yet checked
        check.flush()
        assert check.bad == (7, "NaN")


def test_analytics_fields_may_hold_infinities(tmp_path: Path) -> None:
    """An analytics payload's fields (an empty group's min is +inf) are not model weights: not refused."""
    path = tmp_path / "fields.npz"
    np.savez(
        path,
        __bk_payload_kind__=np.array("federated_analytics"),
        age_min=np.array([np.inf]),
        age_n=np.array([0]),
    )
    incoming = upload_to_npz(path, tmp_path / "out.npz", POLICY, scan=_scanned(path, 100))
    assert incoming.payload.kind == "federated_analytics"


@pytest.mark.parametrize("position", [0, 1, 8_751, 8_752, 24_999, 49_999])
def test_value_check_is_exact_for_large_and_small_pieces_alike(position: int) -> None:
    """Pieces checked where they lie (64 KiB and more) and gathered small ones, with elements
    split between them, give the index of the first NaN wherever it is."""
    values = np.ones(50_000, dtype=np.float64)
    values[position] = -np.inf
    values[-1] = np.nan  # a later one: the first is reported
    data = values.tobytes()
    check = ValueCheck("layer_0", values.dtype, values.shape)
    at = 0
    for size in (3, 70_001, 5, 131_072, 1, 65_536, len(data)):
        check.feed(data[at : at + size])
        at += size
    check.flush()
    expected = (position, "-inf") if position != 49_999 else (49_999, "NaN")
    assert check.bad == expected


def test_named_uploads_are_refused_in_their_own_names(tmp_path: Path) -> None:
    """A safetensors file and an NPZ in the trainer's names: the refusal names the tensor as they do."""
    from safetensors.numpy import save_file

    tensors: dict[str, Any] = {
        "dense.weight": np.ones((3, 2), np.float32),
        "dense.bias": np.array([0.5, np.inf], np.float32),
    }
    save_file(tensors, str(tmp_path / "m.safetensors"))
    np.savez(tmp_path / "named.npz", **tensors)
    out = tmp_path / "out.npz"
    for source in (tmp_path / "m.safetensors", tmp_path / "named.npz"):
        error = _refusal(lambda s=source: upload_to_npz(s, out, POLICY, weighting="2"))
        assert error.code == "not-finite"
        assert error.message.startswith("'dense.bias' (layer_")  # the file's order decides i
        assert "holds inf at index (1,)" in error.message
        assert not out.exists()
