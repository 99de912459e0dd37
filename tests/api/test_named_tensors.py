"""Named tensors: safetensors and named NPZ go up in the trainer's names and the aggregate comes back in them."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load as st_load
from safetensors.numpy import save_file as st_save

from tests.support.aggregator import Running, start
from tests.support.cli import cli
from tests.support.gateways import Gateway, GatewayFactory, run_gateway
from tests.support.http import check_problem, curl, load_npz
from tests.support.weights import write_npz

DENSE: dict[str, np.ndarray[Any, Any]] = {
    "encoder.weight": (np.arange(12, dtype=np.float32).reshape(3, 4) / 7),
    "encoder.bias": np.linspace(-1, 1, 3).astype(np.float16),
    "steps": np.array([5], dtype=np.int64),
}


@pytest.fixture
def aggregator(tmp_path: Path) -> Iterator[Running]:
    """A local aggregator whose rounds close with one leaf: every upload yields an aggregation."""
    with start(tmp_path / "agg", min_leaves=1) as running:
        yield running


@pytest.fixture
def gateway(gateway_for: GatewayFactory) -> Gateway:
    """A gateway for leaf 0."""
    return gateway_for(0)


def _next_aggregation(gateway: Gateway, after: int) -> str:
    with httpx.Client(timeout=40) as client:
        events = client.get(f"{gateway.url}/aggregations", params={"after": after, "wait": 30})
    assert events.status_code == 200, events.text
    assert events.json(), "no aggregation within 30 s"
    return str(events.json()[0]["aggregation_id"])


def _round(gateway: Gateway, *curl_args: str, cwd: Path, query: str = "") -> tuple[Any, str]:
    """Upload with curl; the answer's JSON and the id of the aggregation it completed."""
    after = gateway.log.bounds()[1]
    answer = curl(*curl_args, f"{gateway.url}/upload{query}", cwd=cwd)
    assert answer.status == 201, answer.body
    return answer.json(), _next_aggregation(gateway, after)


def _get(gateway: Gateway, aggregation_id: str, **params: str) -> httpx.Response:
    return httpx.get(f"{gateway.url}/aggregations/{aggregation_id}", params=params, timeout=30)


def test_safetensors_round_trip_in_own_names_and_dtypes(gateway: Gateway, tmp_path: Path) -> None:
    """A safetensors upload travels as layer_0.. in the file's order and comes back with its names,
    dtypes and metadata; the plain NPZ stays the default."""
    st_save(DENSE, str(tmp_path / "m.safetensors"), metadata={"epoch": "3"})
    result, aggregation_id = _round(
        gateway, "-F", "file=@m.safetensors", "-F", "weighting=4", cwd=tmp_path
    )
    assert result["weighting"] == 4.0
    assert result["weighting_source"] == "request"
    # The official writer orders by dtype size (largest first), then name: the layers keep that order.
    assert [(layer["key"], layer["shape"]) for layer in result["layers"]] == [
        ("layer_0", [1]),
        ("layer_1", [3, 4]),
        ("layer_2", [3]),
    ]
    assert [layer["name"] for layer in result["layers"]] == [
        "steps",
        "encoder.weight",
        "encoder.bias",
    ]
    answer = _get(gateway, aggregation_id, format="safetensors")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-disposition"].endswith(f'{aggregation_id}.safetensors"')
    back = st_load(answer.content)
    assert set(back) == set(DENSE)
    for name, array in DENSE.items():
        assert back[name].dtype == array.dtype
        np.testing.assert_array_equal(back[name], array)
    with safe_open(_saved(tmp_path, answer.content), "np") as opened:
        assert opened.metadata() == {"epoch": "3"}
    plain = load_npz(_get(gateway, aggregation_id).content)
    assert list(plain) == ["layer_0", "layer_1", "layer_2"]
    named = load_npz(_get(gateway, aggregation_id, format="npz", names="original").content)
    assert list(named) == ["steps", "encoder.weight", "encoder.bias"]
    np.testing.assert_array_equal(named["encoder.weight"], DENSE["encoder.weight"])


def _saved(tmp_path: Path, data: bytes) -> str:
    path = tmp_path / "downloaded.safetensors"
    path.write_bytes(data)
    return str(path)


def test_safetensors_etag_answers_304(gateway: Gateway, tmp_path: Path) -> None:
    """The safetensors download has its own stable ETag; If-None-Match with it answers 304."""
    st_save(DENSE, str(tmp_path / "m.safetensors"))
    _, aggregation_id = _round(gateway, "-F", "file=@m.safetensors", cwd=tmp_path)
    first = _get(gateway, aggregation_id, format="safetensors")
    again = _get(gateway, aggregation_id, format="safetensors")
    assert (
        first.headers["etag"]
        == again.headers["etag"]
        != _get(gateway, aggregation_id).headers["etag"]
    )
    cached = httpx.get(
        f"{gateway.url}/aggregations/{aggregation_id}",
        params={"format": "safetensors"},
        headers={"If-None-Match": first.headers["etag"]},
    )
    assert cached.status_code == 304


def test_raw_body_and_cli_upload_safetensors(gateway: Gateway, tmp_path: Path) -> None:
    """A raw application/octet-stream body and `branchkey-gateway upload` take safetensors too."""
    st_save(DENSE, str(tmp_path / "m.safetensors"))
    result, _ = _round(
        gateway,
        "--data-binary",
        "@m.safetensors",
        "-H",
        "Content-Type: application/octet-stream",
        cwd=tmp_path,
    )
    assert result["weighting_source"] == "default"
    after = gateway.log.bounds()[1]
    uploaded = cli("upload", "m.safetensors", "--weighting", "2", url=gateway.url, cwd=tmp_path)
    assert uploaded.returncode == 0, uploaded.stderr
    aggregation_id = _next_aggregation(gateway, after)
    downloaded = cli(
        "download",
        aggregation_id,
        "--format",
        "safetensors",
        "-o",
        "agg.safetensors",
        url=gateway.url,
        cwd=tmp_path,
    )
    assert downloaded.returncode == 0, downloaded.stderr
    back = st_load((tmp_path / "agg.safetensors").read_bytes())
    np.testing.assert_array_equal(back["encoder.weight"], DENSE["encoder.weight"])


def test_named_npz_keeps_its_weighting_and_names(gateway: Gateway, tmp_path: Path) -> None:
    """An NPZ with its own keys is layer_0.. in archive order, its `weighting` is the file's, and
    names=original gives the keys back."""
    arrays: dict[str, np.ndarray[Any, Any]] = {
        "params.dense.kernel": np.ones((2, 3), np.float32),
        "params.dense.bias": np.zeros(3),
    }
    write_npz(tmp_path / "w.npz", {"weighting": np.array([6.0]), **arrays})
    result, aggregation_id = _round(gateway, "-F", "file=@w.npz", cwd=tmp_path)
    assert (result["weighting"], result["weighting_source"]) == (6.0, "file")
    assert [layer["shape"] for layer in result["layers"]] == [[2, 3], [3]]
    named = load_npz(_get(gateway, aggregation_id, names="original").content)
    assert list(named) == list(arrays)
    for key, array in arrays.items():
        assert named[key].dtype == array.dtype
        np.testing.assert_array_equal(named[key], array)
    back = st_load(_get(gateway, aggregation_id, format="safetensors").content)
    assert back["params.dense.bias"].dtype == np.float64


def test_names_that_do_not_fit_are_a_409(gateway_for: GatewayFactory, tmp_path: Path) -> None:
    """Names from another model's upload never label an aggregate: 409 names/mismatch; without
    any named upload, 409 names/no-map; names=layer always works (three models of different
    architectures, so the architecture check is off)."""
    gateway = gateway_for(0, gateway_check_architecture=False)
    np.savez(tmp_path / "w.npz", weighting=np.array([1.0]), layer_0=np.ones((2, 2), np.float32))
    _, positional = _round(gateway, "-F", "file=@w.npz", cwd=tmp_path)
    check_problem(_get(gateway, positional, format="safetensors"), 409, "names/no-map")
    check_problem(_get(gateway, positional, names="original"), 409, "names/no-map")
    layered = st_load(_get(gateway, positional, format="safetensors", names="layer").content)
    assert list(layered) == ["layer_0"]
    st_save(DENSE, str(tmp_path / "m.safetensors"))
    _, named = _round(gateway, "-F", "file=@m.safetensors", cwd=tmp_path)
    problem = check_problem(_get(gateway, positional, format="safetensors"), 409, "names/mismatch")
    assert "1 layers" in problem["detail"]
    assert "3 tensors" in problem["detail"]
    st_save({"other": np.ones((4, 4), np.float32)}, str(tmp_path / "o.safetensors"))
    _round(gateway, "-F", "file=@o.safetensors", cwd=tmp_path)
    problem = check_problem(_get(gateway, positional, format="safetensors"), 409, "names/mismatch")
    assert "'other'" in problem["detail"]
    assert "[2, 2]" in problem["detail"]
    check_problem(_get(gateway, named, format="npy", names="original"), 400, "bad-request")


def test_names_survive_a_restart(gateway: Gateway, tmp_path: Path) -> None:
    """The name map is kept in the data dir: a new gateway process serves the same names."""
    st_save(DENSE, str(tmp_path / "m.safetensors"))
    _, aggregation_id = _round(gateway, "-F", "file=@m.safetensors", cwd=tmp_path)
    assert (gateway.data_dir / "names.json").is_file()
    with run_gateway(gateway.settings) as again:
        answer = _get(again, aggregation_id, format="safetensors")
    assert answer.status_code == 200, answer.text
    assert set(st_load(answer.content)) == set(DENSE)


HOSTILE = [
    pytest.param(b"\x00\x10\x00\x00\x00\x00\x00\x00{}", "truncated", id="header-beyond-file"),
    pytest.param(
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}',
        "overlapping-tensors",
        id="overlap",
    ),
    pytest.param(
        b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}',
        "tensor-offsets",
        id="out-of-range",
    ),
    pytest.param(
        b'{"a":{"dtype":"Q7","shape":[1],"data_offsets":[0,4]}}',
        "unsupported-dtype",
        id="unknown-dtype",
    ),
    pytest.param(
        b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        b'"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}',
        "duplicate-member",
        id="duplicate-names",
    ),
    pytest.param(b"\xff\xff\xff\xff\x00\x00\x00\x00{", "header-too-large", id="huge-header"),
]


@pytest.mark.parametrize(("body", "code"), HOSTILE)
def test_hostile_safetensors_are_refused(gateway: Gateway, body: bytes, code: str) -> None:
    """Damaged or malicious safetensors files answer 422 (413 for size) with a stable problem type."""
    if not body.startswith((b"\x00\x10", b"\xff")):
        body = len(body).to_bytes(8, "little") + body + b"\x00" * 4
    answer = httpx.post(
        f"{gateway.url}/upload", files={"file": ("m.safetensors", io.BytesIO(body))}, timeout=30
    )
    check_problem(answer, 422, f"weights/{code}")
