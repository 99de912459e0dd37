"""Uploads of any accepted form made into the BranchKey NPZ: plain .npy, lists of arrays, v1, NPZ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.weights import WeightsError, inspect_payload, upload_to_npz
from gateway.weights.objectnpy import read_object_npy
from gateway.weights.policy import Limits
from tests.support.corpus import marker_path, system_call
from tests.support.http import load_npz
from tests.support.weights import write_npz

A = np.arange(12, dtype=np.float32).reshape(3, 4)
B = np.linspace(-1.0, 1.0, 5)


def _object_npy(path: Path, items: list[Any]) -> Path:
    """A 1-D object array holding `items`, as numpy.save writes it."""
    array = np.empty(len(items), dtype=object)
    for index, item in enumerate(items):
        array[index] = item
    with path.open("wb") as out:
        np.save(out, array, allow_pickle=True)
    return path


def _converted(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    return load_npz(path.read_bytes())


def test_plain_npy_is_one_layer_with_default_weighting(tmp_path: Path) -> None:
    """A single-array .npy becomes `layer_0` with weighting 1.0, reported as the default."""
    np.save(tmp_path / "w.npy", A)
    result = upload_to_npz(tmp_path / "w.npy", tmp_path / "out.npz")
    assert result.converted
    assert result.weighting_source == "default"
    assert result.payload.weighting == 1.0
    arrays = _converted(tmp_path / "out.npz")
    assert list(arrays) == ["weighting", "layer_0"]
    np.testing.assert_array_equal(arrays["weighting"], [1.0])
    np.testing.assert_array_equal(arrays["layer_0"], A)


def test_plain_npy_takes_the_requested_weighting(tmp_path: Path) -> None:
    """A weighting given with the request is written into the NPZ and reported as `request`."""
    np.save(tmp_path / "w.npy", A)
    result = upload_to_npz(tmp_path / "w.npy", tmp_path / "out.npz", weighting="3")
    assert (result.payload.weighting, result.weighting_source) == (3.0, "request")
    np.testing.assert_array_equal(_converted(tmp_path / "out.npz")["weighting"], [3.0])


@pytest.mark.parametrize("count", [1, 2, 3])
def test_list_of_arrays_is_one_layer_per_item(tmp_path: Path, count: int) -> None:
    """A 1-D object array of n numeric arrays becomes layer_0 .. layer_{n-1}, in order."""
    every: list[np.ndarray[Any, Any]] = [A, B, A[::-1].copy()]
    layers = every[:count]
    _object_npy(tmp_path / "w.npy", layers)
    result = upload_to_npz(tmp_path / "w.npy", tmp_path / "out.npz")
    assert result.weighting_source == "default"
    arrays = _converted(tmp_path / "out.npz")
    assert list(arrays) == ["weighting", *(f"layer_{i}" for i in range(count))]
    for index, layer in enumerate(layers):
        assert arrays[f"layer_{index}"].dtype == layer.dtype
        np.testing.assert_array_equal(arrays[f"layer_{index}"], layer)


def test_np_save_of_a_ragged_object_array_is_a_list(tmp_path: Path) -> None:
    """`np.save("w.npy", np.array([a, b], dtype=object))` (ragged shapes) uploads as two layers."""
    np.save(tmp_path / "w.npy", np.array([A, B], dtype=object), allow_pickle=True)
    result = upload_to_npz(tmp_path / "w.npy", tmp_path / "out.npz", weighting=5)
    assert [a.key for a in result.payload.arrays] == ["layer_0", "layer_1"]
    assert (result.payload.weighting, result.weighting_source) == (5.0, "request")


def test_v1_pair_is_still_v1(tmp_path: Path) -> None:
    """The v1 (num_samples, [arrays]) pair keeps its sample count as the weighting, source `file`."""
    _object_npy(tmp_path / "v1.npy", [12, [A, B]])
    result = upload_to_npz(tmp_path / "v1.npy", tmp_path / "out.npz")
    assert (result.payload.weighting, result.weighting_source) == (12.0, "file")
    assert [a.key for a in result.payload.arrays] == ["layer_0", "layer_1"]
    overridden = upload_to_npz(tmp_path / "v1.npy", tmp_path / "out2.npz", weighting=4)
    assert (overridden.payload.weighting, overridden.weighting_source) == (4.0, "request")
    assert read_object_npy(tmp_path / "v1.npy", Limits()).num_samples == 12


def test_strict_v1_reader_still_refuses_a_list(tmp_path: Path) -> None:
    """The v1 reader (BranchKey's side) refuses a list of arrays exactly as before: Dim 0 not integer."""
    _object_npy(tmp_path / "w.npy", [A, B])
    with pytest.raises(WeightsError) as caught:
        read_object_npy(tmp_path / "w.npy", Limits())
    assert caught.value.code == "not-integer"


def test_npz_keeps_its_weighting_and_bytes(tmp_path: Path) -> None:
    """An NPZ with its weighting is sent as it is (not converted), source `file`."""
    np.savez(tmp_path / "w.npz", weighting=np.array([7.0]), layer_0=A)
    result = upload_to_npz(tmp_path / "w.npz", tmp_path / "out.npz")
    assert not result.converted
    assert (result.payload.weighting, result.weighting_source) == (7.0, "file")


def test_hostile_list_is_refused_and_never_run(tmp_path: Path) -> None:
    """An object .npy whose second item calls os.system is refused (pickle globals); nothing runs."""
    _object_npy(tmp_path / "w.npy", [A, system_call(tmp_path)])
    with pytest.raises(WeightsError) as caught:
        upload_to_npz(tmp_path / "w.npy", tmp_path / "out.npz")
    assert caught.value.code == "pickle-forbidden"
    assert "system" in caught.value.message
    assert not marker_path(tmp_path).exists()
    assert not (tmp_path / "out.npz").exists()


def test_nested_object_array_is_refused(tmp_path: Path) -> None:
    """A list holding another object array is refused: only the outer array may hold objects."""
    inner = np.empty(2, dtype=object)
    inner[0], inner[1] = A, B
    _object_npy(tmp_path / "w.npy", [A, inner])
    with pytest.raises(WeightsError) as caught:
        upload_to_npz(tmp_path / "w.npy", tmp_path / "out.npz")
    assert caught.value.code == "pickle-forbidden"


def test_list_with_a_string_item_names_the_item(tmp_path: Path) -> None:
    """A list whose item 1 is not an array is refused naming item 1 and the np.save that works."""
    _object_npy(tmp_path / "w.npy", [A, "bias"])
    with pytest.raises(WeightsError) as caught:
        upload_to_npz(tmp_path / "w.npy", tmp_path / "out.npz")
    assert caught.value.code == "not-ndarray"
    assert "Item 1" in caught.value.message
    assert 'np.save("w.npy", np.array([a, b], dtype=object))' in caught.value.message


def test_named_tensors_are_listed_with_the_rename(tmp_path: Path) -> None:
    """An NPZ of fc1.weight / fc1.bias is refused naming both keys and the np.savez that works."""
    write_npz(tmp_path / "w.npz", {"fc1.weight": A, "fc1.bias": B, "weighting": np.array([1.0])})
    with pytest.raises(WeightsError) as caught:
        inspect_payload(tmp_path / "w.npz")
    message = caught.value.message
    assert caught.value.code == "no-layers"
    assert "'fc1.weight', 'fc1.bias'" in message
    assert 'np.savez("w.npz", weighting=n_samples, layer_0=..., layer_1=...)' in message


def test_single_misnumbered_layer_says_layer_0(tmp_path: Path) -> None:
    """A lone `layer_1` is told to be `layer_0`, not `layer_0 .. layer_0`."""
    np.savez(tmp_path / "w.npz", weighting=np.array([1.0]), layer_1=A)
    with pytest.raises(WeightsError) as caught:
        inspect_payload(tmp_path / "w.npz")
    message = caught.value.message
    assert "layer_0 .. layer_0" not in message
    assert "must be named layer_0 with no gaps" in message
    assert "found layer_1" in message
    assert 'np.savez("w.npz", weighting=n_samples, layer_0=...)' in message


def test_string_layer_is_described_in_words(tmp_path: Path) -> None:
    """A string layer is called "a string array (numpy dtype <U3)" and the astype fix is given."""
    np.savez(tmp_path / "w.npz", weighting=np.array([1.0]), layer_0=np.array(["abc"]))
    with pytest.raises(WeightsError) as caught:
        inspect_payload(tmp_path / "w.npz")
    assert "layer_0 is a string array (numpy dtype <U3)" in caught.value.message
    assert "astype(np.float32)" in caught.value.message


def test_plain_string_npy_is_refused_in_words(tmp_path: Path) -> None:
    """A plain .npy of strings is refused as "a string array" with the file named, not as a part."""
    np.save(tmp_path / "w.npy", np.array(["abc"]))
    with pytest.raises(WeightsError) as caught:
        upload_to_npz(tmp_path / "w.npy", tmp_path / "out.npz")
    assert caught.value.code == "not-numeric"
    assert caught.value.message.startswith("The .npy file is a string array (numpy dtype <U3)")


def test_not_a_file_of_weights_gives_the_save_command(tmp_path: Path) -> None:
    """A file that is neither NPZ nor .npy is refused with the np.savez / np.save that works."""
    (tmp_path / "w.bin").write_bytes(b"hello world")
    with pytest.raises(WeightsError) as caught:
        upload_to_npz(tmp_path / "w.bin", tmp_path / "out.npz")
    assert caught.value.code == "not-a-payload"
    assert 'np.save("w.npy", array)' in caught.value.message
