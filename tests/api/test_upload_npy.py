"""The headline commands: `np.save("w.npy", weights)` then curl, a raw body or the CLI, each a one-leaf round."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.support.aggregator import ADMIN, Running, start
from tests.support.gateways import Gateway, GatewayFactory
from tests.support.http import CurlResult, admin_get, curl, load_npz

WEIGHTS = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
RAGGED = [WEIGHTS, np.linspace(-1.0, 1.0, 5)]


@pytest.fixture
def aggregator(tmp_path: Path) -> Iterator[Running]:
    """A local aggregator whose rounds close with one leaf: every upload yields an aggregation."""
    with start(tmp_path / "agg", min_leaves=1) as running:
        yield running


@pytest.fixture
def gateway(gateway_for: GatewayFactory) -> Gateway:
    """A gateway for leaf 0."""
    return gateway_for(0)


def _aggregate(gateway: Gateway, after: int) -> dict[str, np.ndarray[Any, Any]]:
    """The arrays of the first aggregation announced after event `after`, downloaded from the gateway."""
    with httpx.Client(timeout=40) as client:
        events = client.get(f"{gateway.url}/aggregations", params={"after": after, "wait": 30})
        assert events.status_code == 200, events.text
        assert events.json(), "no aggregation within 30 s"
        aggregation_id = events.json()[0]["aggregation_id"]
        answer = client.get(f"{gateway.url}/aggregations/{aggregation_id}")
        assert answer.status_code == 200, answer.text
    return load_npz(answer.content)


def _newest_event(gateway: Gateway) -> int:
    """The newest event id the gateway has logged (aggregations after it are new)."""
    return gateway.log.bounds()[1]


def _stored_weighting(aggregator: Running, file_id: str) -> float:
    """The weighting BranchKey recorded for an upload."""
    with httpx.Client() as client:
        uploads = {u["file_id"]: u for u in admin_get(aggregator.url, ADMIN, "uploads", client)}
    return float(uploads[file_id]["weighting"])


def _accepted(answer: CurlResult, weighting: float, source: str, layers: int = 1) -> str:
    """The upload answered 201 with this weighting and source; its file id."""
    assert answer.status == 201, answer.body
    result = answer.json()
    assert result["weighting"] == weighting
    assert result["weighting_source"] == source
    assert [layer["key"] for layer in result["layers"]] == [f"layer_{i}" for i in range(layers)]
    return str(result["file_id"])


CURL_FORMS = [
    pytest.param(("-F", "file=@w.npy"), "", 1.0, "default", id="plain"),
    pytest.param(("-F", "file=@w.npy", "-F", "weighting=3"), "", 3.0, "request", id="form-field"),
    pytest.param(("-F", "file=@w.npy"), "?weighting=10", 10.0, "request", id="query"),
    pytest.param(
        ("--data-binary", "@w.npy", "-H", "Content-Type: application/octet-stream"),
        "",
        1.0,
        "default",
        id="raw-body",
    ),
    pytest.param(
        ("--data-binary", "@w.npy", "-H", "Content-Type: application/octet-stream"),
        "?weighting=10",
        10.0,
        "request",
        id="raw-body-query",
    ),
]


@pytest.mark.parametrize(("args", "query", "weighting", "source"), CURL_FORMS)
def test_curl_plain_npy_is_a_one_layer_model(
    args: tuple[str, ...],
    query: str,
    weighting: float,
    source: str,
    aggregator: Running,
    gateway: Gateway,
    tmp_path: Path,
) -> None:
    """`np.save("w.npy", w)` + curl answers 201 with the weighting and its source; the aggregate is `w`."""
    np.save(tmp_path / "w.npy", WEIGHTS)
    after = _newest_event(gateway)
    answer = curl(*args, f"{gateway.url}/upload{query}", cwd=tmp_path)
    file_id = _accepted(answer, weighting, source)
    assert _stored_weighting(aggregator, file_id) == weighting
    arrays = _aggregate(gateway, after)
    assert list(arrays) == ["layer_0"]
    assert arrays["layer_0"].dtype == np.float32
    np.testing.assert_array_equal(arrays["layer_0"], WEIGHTS)


def test_curl_list_of_arrays_is_one_layer_per_item(gateway: Gateway, tmp_path: Path) -> None:
    """A ragged list saved with `np.save` (an object array of arrays) becomes layer_0, layer_1."""
    np.save(tmp_path / "w.npy", np.array(RAGGED, dtype=object), allow_pickle=True)
    after = _newest_event(gateway)
    answer = curl("-F", "file=@w.npy", "-F", "weighting=3", f"{gateway.url}/upload", cwd=tmp_path)
    _accepted(answer, 3.0, "request", layers=2)
    arrays = _aggregate(gateway, after)
    assert list(arrays) == ["layer_0", "layer_1"]
    for index, layer in enumerate(RAGGED):
        assert arrays[f"layer_{index}"].dtype == layer.dtype
        np.testing.assert_array_equal(arrays[f"layer_{index}"], layer)


def test_npz_weighting_is_reported_as_from_the_file(gateway: Gateway, tmp_path: Path) -> None:
    """An NPZ carrying its own weighting answers `weighting_source: "file"`."""
    np.savez(tmp_path / "w.npz", weighting=np.array([12.0]), layer_0=WEIGHTS)
    answer = curl("-F", "file=@w.npz", f"{gateway.url}/upload", cwd=tmp_path)
    _accepted(answer, 12.0, "file")


def test_cli_uploads_a_plain_npy(aggregator: Running, gateway: Gateway, tmp_path: Path) -> None:
    """`branchkey-gateway upload w.npy` (and with --weighting 3) exits 0 and BranchKey gets layer_0."""
    np.save(tmp_path / "w.npy", WEIGHTS)
    after = _newest_event(gateway)
    env = {k: v for k, v in os.environ.items() if k not in ("GATEWAY_TOKEN", "GATEWAY_URL")}
    for extra, weighting in (((), 1.0), (("--weighting", "3"), 3.0)):
        result = subprocess.run(
            [sys.executable, "-m", "gateway", "upload", "w.npy", "--gateway", gateway.url, *extra],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert _stored_weighting(aggregator, result.stdout.strip()) == weighting
    np.testing.assert_array_equal(_aggregate(gateway, after)["layer_0"], WEIGHTS)
