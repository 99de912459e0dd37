"""`branchkey-gateway exchange FILE -o OUT`: one round per command against a live gateway and aggregator."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support.aggregator import ADMIN, Running, start
from tests.support.cli import cli
from tests.support.gateways import Gateway, gateway_settings, run_gateway, write_credentials
from tests.support.http import admin_get
from tests.support.weights import sdk_weights


@pytest.fixture
def rounds(tmp_path: Path) -> Iterator[tuple[Running, Gateway]]:
    """An aggregator whose every upload closes a round, and a gateway for its first leaf."""
    with start(tmp_path / "agg", min_leaves=1) as agg:
        credentials = write_credentials(tmp_path / "leaf0.json", agg.leaves[0])
        settings = gateway_settings(
            tmp_path / "gw", bk_host=agg.url, bk_credentials_file=credentials
        )
        with run_gateway(settings, wait_heard=True) as gateway:
            yield agg, gateway


def _weights(folder: Path, value: float) -> Path:
    return sdk_weights(folder / f"w{value:g}.npz", 2.0, [np.full((2, 3), value, np.float32)])


def test_exchange_writes_the_next_model_and_prints_its_path(
    rounds: tuple[Running, Gateway], tmp_path: Path
) -> None:
    """`exchange w.npz -o next.npz` writes the round's aggregation (as GET serves it) and prints the path; --json names the ids."""
    agg, gateway = rounds
    out = tmp_path / "models" / "next.npz"
    out.parent.mkdir()
    result = cli("exchange", _weights(tmp_path, 3), "-o", out, url=gateway.url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{out}\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["next.npz"]  # no partial file left
    with np.load(out, allow_pickle=False) as data:
        np.testing.assert_array_equal(data["layer_0"], np.full((2, 3), 3, np.float32))
    described = cli(
        "exchange", _weights(tmp_path, 5), "--format", "npy", "--json",
        url=gateway.url, cwd=tmp_path,
    )  # fmt: skip
    assert described.returncode == 0, described.stderr
    ids = json.loads(described.stdout)
    assert ids["path"] == f"{ids['aggregation_id']}.npy"
    with httpx.Client() as client:
        served = client.get(
            f"{gateway.url}/aggregations/{ids['aggregation_id']}", params={"format": "npy"}
        )
        assert (tmp_path / ids["path"]).read_bytes() == served.content
        stored = {u["file_id"] for u in admin_get(agg.url, ADMIN, "uploads", client)}
    assert ids["file_id"] in stored
    assert ids["event_id"] > 0


def test_a_refused_exchange_exits_1_and_leaves_no_file(
    rounds: tuple[Running, Gateway], tmp_path: Path
) -> None:
    """A NaN model: exit 1 with the not-finite problem on stderr, no output file, nothing uploaded."""
    agg, gateway = rounds
    path = sdk_weights(tmp_path / "nan.npz", 1.0, [np.array([1.0, np.nan], np.float32)])
    result = cli("exchange", path, "-o", "next.npz", url=gateway.url, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: Invalid weights file: layer_0 holds NaN at index (1,)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agg", "gw", "leaf0.json", "nan.npz"]
    with httpx.Client() as client:
        assert admin_get(agg.url, ADMIN, "uploads", client) == []


def test_exchange_help_names_its_options(tmp_path: Path) -> None:
    """`exchange --help` names its options, the connection options and the exit codes."""
    result = cli("exchange", "--help", url="http://127.0.0.1:9", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for text in ["--output", "--format", "--weighting", "--wait-timeout", "--json", "Exit codes"]:
        assert text in result.stdout
