"""The design card's upload commands, typed as curl: every accepted form reaches BranchKey as the same NPZ."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.aggregator import Running
from tests.support.gateways import GatewayFactory
from tests.support.http import CurlResult, aggregator_file, curl, load_npz
from tests.support.weights import save_v1, sdk_weights, write_npy

LAYERS = [
    np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    np.linspace(-1.0, 1.0, 5),
]
EXPECTED_LAYERS = [
    {"key": "layer_0", "dtype": "<f4", "shape": [3, 4], "name": None},
    {"key": "layer_1", "dtype": "<f8", "shape": [5], "name": None},
]


@dataclass(frozen=True)
class Form:
    """One way of uploading: the files it needs (written into a folder) and the curl arguments."""

    name: str
    prepare: Callable[[Path], None]
    args: tuple[str, ...]
    weighting: float
    forwarded_as_sent: str | None = None
    """The file whose exact bytes reach BranchKey (None: the gateway builds or converts the NPZ)."""


def _v1(folder: Path) -> None:
    save_v1(folder / "w.npy", 12, LAYERS)


def _npz(folder: Path) -> None:
    sdk_weights(folder / "w.npz", 12.0, LAYERS)


def _layers(folder: Path) -> None:
    write_npy(folder / "l0.npy", LAYERS[0])
    write_npy(folder / "l1.npy", LAYERS[1])


FORMS = [
    Form("v1-object-npy", _v1, ("-F", "file=@w.npy"), 12.0),
    Form("npz-multipart", _npz, ("-F", "file=@w.npz"), 12.0, forwarded_as_sent="w.npz"),
    Form(
        "npz-raw-body",
        _npz,
        ("--data-binary", "@w.npz", "-H", "Content-Type: application/octet-stream"),
        12.0,
        forwarded_as_sent="w.npz",
    ),
    Form(
        "per-layer-parts",
        _layers,
        ("-F", "layer_0=@l0.npy", "-F", "layer_1=@l1.npy", "-F", "weighting=12"),
        12.0,
    ),
    Form("npz-weighting-override", _npz, ("-F", "file=@w.npz", "-F", "weighting=3.5"), 3.5),
]


def _check_forwarded(
    aggregator: Running, answer: CurlResult, weighting: float, sent: Path | None
) -> None:
    """BranchKey holds an NPZ with `weighting` and LAYERS, and the answer describes exactly that file."""
    assert answer.status == 201, answer.body
    result: dict[str, Any] = answer.json()
    with httpx.Client() as client:
        stored = aggregator_file(aggregator, client, result["file_id"])
    arrays = load_npz(stored)
    assert list(arrays) == ["weighting", "layer_0", "layer_1"]
    np.testing.assert_array_equal(arrays["weighting"], np.array([weighting]))
    assert arrays["weighting"].dtype == np.float64
    for index, layer in enumerate(LAYERS):
        got = arrays[f"layer_{index}"]
        assert got.dtype == layer.dtype
        np.testing.assert_array_equal(got, layer)
    assert result["sha256"] == hashlib.sha256(stored).hexdigest()
    assert result["size"] == len(stored)
    assert result["kind"] == "federated_learning"
    assert result["weighting"] == weighting
    assert result["layers"] == EXPECTED_LAYERS
    if sent is not None:
        assert stored == sent.read_bytes()


@pytest.mark.parametrize("form", FORMS, ids=[f.name for f in FORMS])
def test_curl_upload_reaches_branchkey(
    form: Form, aggregator: Running, gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """Each documented curl upload answers 201 and BranchKey stores an NPZ equal to what was sent."""
    gateway = gateway_for(0)
    folder = tmp_path / "files"
    folder.mkdir()
    form.prepare(folder)
    answer = curl(*form.args, f"{gateway.url}/upload", cwd=folder)
    sent = folder / form.forwarded_as_sent if form.forwarded_as_sent else None
    _check_forwarded(aggregator, answer, form.weighting, sent)
    assert list(gateway.tmp_dir.iterdir()) == []


def test_query_weighting_supplies_the_weight(
    aggregator: Running, gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """`?weighting=` on a raw upload replaces the file's weighting in what BranchKey receives."""
    gateway = gateway_for(0)
    _npz(tmp_path)
    answer = curl(
        "--data-binary",
        "@w.npz",
        "-H",
        "Content-Type: application/octet-stream",
        f"{gateway.url}/upload?weighting=7",
        cwd=tmp_path,
    )
    _check_forwarded(aggregator, answer, 7.0, None)
