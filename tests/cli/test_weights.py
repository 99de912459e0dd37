"""The local weights commands of `branchkey-gateway`: `inspect`, `convert` and `pack`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from gateway.weights import inspect_payload
from tests.support.weights import sdk_weights


def run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI as users do (python -m gateway)."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
        check=False,
    )


def test_inspect_describes_a_payload(tmp_path: Path) -> None:
    """`inspect` prints the payload description as JSON and exits 0."""
    path = sdk_weights(tmp_path / "w.npz", 5, [np.ones((2, 3), dtype=np.float32)])
    result = run("inspect", path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    described = json.loads(result.stdout)
    assert described["weighting"] == 5.0
    assert described["arrays"][0]["shape"] == [2, 3]


def test_inspect_reports_the_error_code(tmp_path: Path) -> None:
    """`inspect` exits 1 with the machine code and sentence on stderr for a refused file."""
    path = tmp_path / "w.npz"
    np.savez(path, layer_0=np.ones(2))
    result = run("inspect", path, cwd=tmp_path)
    assert result.returncode == 1
    assert json.loads(result.stderr)["error"] == "missing-weighting"


def test_convert_and_pack(tmp_path: Path) -> None:
    """`convert --to npy` writes a v1 file, `convert` brings it back, `pack` builds from parts."""
    layer = np.arange(6, dtype=np.float32).reshape(2, 3)
    sdk_weights(tmp_path / "w.npz", 9, [layer])
    assert run("convert", "w.npz", "w1.npy", "--to", "npy", cwd=tmp_path).returncode == 0
    assert run("convert", "w1.npy", "back.npz", cwd=tmp_path).returncode == 0
    with np.load(tmp_path / "back.npz", allow_pickle=False) as data:
        assert data["weighting"][0] == 9.0
        assert np.array_equal(data["layer_0"], layer)
    np.save(tmp_path / "part.npy", layer)
    result = run("pack", "packed.npz", "part.npy", "--weighting", "4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "packed.npz", allow_pickle=False) as data:
        assert data.files == ["weighting", "layer_0"]


def test_pack_writes_the_given_weighting(tmp_path: Path) -> None:
    """`pack --weighting 4` writes weighting 4 into the payload, read back by the gateway's own reader."""
    layers: list[np.ndarray[Any, Any]] = [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.ones(4, dtype=np.float64),
    ]
    for index, layer in enumerate(layers):
        np.save(tmp_path / f"layer_{index}.npy", layer)
    result = run(
        "pack", "packed.npz", "layer_0.npy", "layer_1.npy", "--weighting", "4", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    payload = inspect_payload(tmp_path / "packed.npz")
    assert payload.weighting == 4.0
    assert [info.shape for info in payload.arrays] == [(2, 3), (4,)]
    assert result.stdout == "wrote packed.npz (2 layers, weighting 4)\n"


def test_pack_names_the_local_file_not_an_http_part(tmp_path: Path) -> None:
    """`pack` refusing a string layer names the file and its layer, never an HTTP "Part", in plain words."""
    np.save(tmp_path / "names.npy", np.array(["abc"]))
    result = run("pack", "packed.npz", "names.npy", "--weighting", "4", cwd=tmp_path)
    assert result.returncode == 1
    refusal = json.loads(result.stderr)
    assert refusal["error"] == "not-numeric"
    assert refusal["detail"].startswith("names.npy (layer_0) is a string array (numpy dtype <U3)")
    assert "Part" not in refusal["detail"]
    assert not (tmp_path / "packed.npz").exists()


def test_inspect_accepts_every_upload_form(tmp_path: Path) -> None:
    """`inspect` describes a plain .npy, a list of arrays and a safetensors file (with its names) as
    the layers an upload would send."""
    layer = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "plain.npy", layer)
    ragged = np.empty(2, dtype=object)
    ragged[0], ragged[1] = layer, np.ones(4)
    np.save(tmp_path / "list.npy", ragged, allow_pickle=True)
    save_file({"fc.weight": layer, "fc.bias": np.ones(2, np.float16)}, str(tmp_path / "m.st"))
    expected = {
        "plain.npy": ("npy", [[2, 3]]),
        "list.npy": ("npy-object", [[2, 3], [4]]),
        "m.st": ("safetensors", [[2, 3], [2]]),
    }
    for name, (fmt, shapes) in expected.items():
        result = run("inspect", name, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        described = json.loads(result.stdout)
        assert described["format"] == fmt
        assert described["weighting"] is None
        assert [a["shape"] for a in described["arrays"]] == shapes
        assert [a["key"] for a in described["arrays"]] == ["layer_0", "layer_1"][: len(shapes)]
    names = json.loads(run("inspect", "m.st", cwd=tmp_path).stdout)["names"]
    assert [(t["layer"], t["name"], t["dtype"]) for t in names["tensors"]] == [
        ("layer_0", "fc.weight", "F32"),
        ("layer_1", "fc.bias", "F16"),
    ]
    deep = run("inspect", "m.st", "--deep", cwd=tmp_path)
    assert deep.returncode == 0, deep.stderr
    save_file({"bad": np.array([np.nan], np.float32)}, str(tmp_path / "nan.st"))
    refused = run("inspect", "nan.st", "--deep", cwd=tmp_path)
    assert refused.returncode == 1
    assert json.loads(refused.stderr)["error"] == "not-finite"


def test_convert_takes_plain_npy_and_safetensors(tmp_path: Path) -> None:
    """`convert` makes the BranchKey NPZ of a plain .npy (with --weighting) and of a safetensors
    file, and gives an aggregate back as safetensors in the names of `--names`."""
    layer = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "plain.npy", layer)
    result = run("convert", "plain.npy", "p.npz", "--weighting", "7", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "p.npz", allow_pickle=False) as data:
        assert data["weighting"][0] == 7.0
        assert np.array_equal(data["layer_0"], layer)
    save_file({"fc.weight": layer, "fc.bias": np.ones(2, np.float16)}, str(tmp_path / "m.st"))
    assert run("convert", "m.st", "m.npz", cwd=tmp_path).returncode == 0
    assert run("convert", "m.st", "m1.npy", "--to", "npy", cwd=tmp_path).returncode == 0
    with np.load(tmp_path / "m.npz", allow_pickle=False) as data:
        assert data.files == ["weighting", "layer_0", "layer_1"]
        assert data["layer_1"].dtype == np.float16
    back = run(
        "convert", "m.npz", "back.st", "--to", "safetensors", "--names", "m.st", cwd=tmp_path
    )
    assert back.returncode == 0, back.stderr
    restored = load_file(str(tmp_path / "back.st"))
    assert np.array_equal(restored["fc.weight"], layer)
    assert restored["fc.bias"].dtype == np.float16
    plain = run("convert", "m.npz", "layers.st", "--to", "safetensors", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert sorted(load_file(str(tmp_path / "layers.st"))) == ["layer_0", "layer_1"]
