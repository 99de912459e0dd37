"""Rounds as BranchKey would run them: pause keeps a round, re-sent uploads count once, every upload fits its round."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.support.aggregator import ADMIN, Running, start
from tests.support.http import admin_get
from tests.support.weights import sdk_weights, write_npz

Array = np.ndarray[Any, Any]


def _finished(agg: Running, client: httpx.Client, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = admin_get(agg.url, ADMIN, "aggregations", client)
        if len([a for a in found if a["status"] != "pending"]) >= count:
            return list(found)
        time.sleep(0.05)
    raise AssertionError(f"{count} aggregations did not finish within 20 s")


def _result(agg: Running, client: httpx.Client, aggregation_id: str) -> dict[str, Array]:
    answer = client.get(f"{agg.url}/api/v1/file/download/{aggregation_id}", headers=agg.auth())
    assert answer.status_code == 200, answer.text
    blob = client.get(answer.json()["data"]["download_url"]).content
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _open_round(agg: Running, client: httpx.Client) -> dict[str, Any]:
    [open_round] = client.get(f"{agg.url}/admin/rounds", headers=agg.admin).json()["data"]
    return dict(open_round)


def test_pause_then_start_resumes_the_run_and_keeps_its_uploads(tmp_path: Path) -> None:
    """An upload made before a pause stays in the round after start, the run number stays, and the round completes."""
    with start(tmp_path / "agg", min_leaves=2) as agg, httpx.Client() as client:
        first = sdk_weights(tmp_path / "a.npz", 1, [np.full(3, 2.0)])
        second = sdk_weights(tmp_path / "b.npz", 3, [np.full(3, 6.0)])
        assert agg.upload(client, first, 0).status_code == 201
        assert agg.set_run(client, "pause")["run_number"] == 1
        assert agg.upload(client, second, 1).status_code == 409
        resumed = agg.set_run(client, "start")
        assert (resumed["run_number"], resumed["round"]) == (1, 0)
        assert _open_round(agg, client)["leaves"] == [agg.leaves[0]["id"]]
        assert agg.upload(client, second, 1).status_code == 201
        [aggregation] = _finished(agg, client, 1)
        assert aggregation["status"] == "done"
        assert sorted(json.loads(aggregation["contributors"])) == sorted(
            leaf["id"] for leaf in agg.leaves[:2]
        )
        assert _result(agg, client, aggregation["aggregation_id"])["layer_0"].tolist() == [5.0] * 3


def test_stop_then_start_opens_a_new_run(tmp_path: Path) -> None:
    """A stop ends the run: the next start is run 2, round 0, with nothing of run 1's open round."""
    with start(tmp_path / "agg", min_leaves=2) as agg, httpx.Client() as client:
        assert (
            agg.upload(client, sdk_weights(tmp_path / "a.npz", 1, [np.ones(2)])).status_code == 201
        )
        agg.set_run(client, "stop")
        restarted = agg.set_run(client, "start")
        assert (restarted["run_number"], restarted["round"]) == (2, 0)
        assert _open_round(agg, client)["leaves"] == []


def test_resent_upload_after_its_round_closed_is_not_counted_again(tmp_path: Path) -> None:
    """A client's retry that arrives after its round closed gets the first file id and opens no new round."""
    with start(tmp_path / "agg", min_leaves=2) as agg, httpx.Client() as client:
        mine = sdk_weights(tmp_path / "a.npz", 1, [np.ones(2)])
        first = agg.upload(client, mine, 0).json()["data"]["file_id"]
        assert (
            agg.upload(client, sdk_weights(tmp_path / "b.npz", 1, [np.zeros(2)]), 1).status_code
            == 201
        )
        _finished(agg, client, 1)
        again = agg.upload(client, mine, 0)
        assert again.status_code == 201
        assert again.json()["data"]["file_id"] == first
        assert _open_round(agg, client)["leaves"] == []
        assert len(admin_get(agg.url, ADMIN, "uploads", client)) == 2
        # A different file of the same leaf is a new upload of the next round.
        newer = agg.upload(client, sdk_weights(tmp_path / "c.npz", 2, [np.ones(2)]), 0)
        assert newer.json()["data"]["file_id"] != first
        assert _open_round(agg, client)["leaves"] == [agg.leaves[0]["id"]]


def test_an_upload_that_does_not_fit_its_round_is_refused_naming_the_layer(tmp_path: Path) -> None:
    """Layer names, shapes and dtypes that differ from the round's uploads get 422 naming the layer."""
    reference: list[Array] = [np.ones(3), np.ones((2, 2), dtype=np.float32)]
    misfits: dict[str, tuple[list[Array], str]] = {
        "shape": ([np.ones(4), reference[1]], "layer_0 has shape (4,) but (3,)"),
        "dtype": ([reference[0], np.ones((2, 2))], "layer_1 has dtype <f8 but <f4"),
        "missing": ([reference[0]], "layer_1 is missing"),
        "extra": ([*reference, np.ones(1)], "layer_2 is not a layer of this round's model"),
    }
    with start(tmp_path / "agg") as agg, httpx.Client() as client:
        assert (
            agg.upload(client, sdk_weights(tmp_path / "ref.npz", 1, reference), 0).status_code
            == 201
        )
        for name, (layers, expected) in misfits.items():
            refused = agg.upload(client, sdk_weights(tmp_path / f"{name}.npz", 1, layers), 1)
            assert refused.status_code == 422, (name, refused.text)
            assert refused.json()["code"] == "layer-mismatch"
            assert expected in refused.json()["error"], (name, refused.text)
        # Alone in its round, a leaf may replace its upload with another model; it then sets the round's.
        other = [np.ones(5)]
        assert agg.upload(client, sdk_weights(tmp_path / "new.npz", 1, other), 0).status_code == 201
        assert (
            agg.upload(client, sdk_weights(tmp_path / "fits.npz", 1, other), 1).status_code == 201
        )
        assert (
            agg.upload(client, sdk_weights(tmp_path / "last.npz", 1, other), 2).status_code == 201
        )
        [aggregation] = _finished(agg, client, 1)
        assert aggregation["status"] == "done"


def test_weightings_all_zero_give_the_unweighted_mean(tmp_path: Path) -> None:
    """When every weighting of a round is 0, the result is the plain mean of the layers."""
    with start(tmp_path / "agg", min_leaves=2) as agg, httpx.Client() as client:
        agg.upload(client, sdk_weights(tmp_path / "a.npz", 0, [np.array([1.0, 3.0])]), 0)
        agg.upload(client, sdk_weights(tmp_path / "b.npz", 0, [np.array([3.0, 7.0])]), 1)
        [aggregation] = _finished(agg, client, 1)
        assert aggregation["status"] == "done", aggregation
        assert _result(agg, client, aggregation["aggregation_id"])["layer_0"].tolist() == [2.0, 5.0]


def test_validation_is_the_clients_rules_plus_safety(tmp_path: Path) -> None:
    """What the official client accepts is accepted (gaps, layer_ prefixes, extra keys); only what FedAvg
    cannot use is refused, and so is any pickled member (safety rule)."""
    pickled = np.empty(1, dtype=object)
    pickled[0] = {"never": "loaded"}
    buffer = io.BytesIO()
    np.save(buffer, pickled, allow_pickle=True)
    accepted: dict[str, dict[str, bytes | Array]] = {
        "gap": {"weighting": np.array([2.0]), "layer_0": np.ones(2), "layer_7": np.ones(3)},
        "prefix": {"weighting": np.array([[1]]), "layer_norm": np.ones(2)},
        "extra": {
            "weighting": np.array([1.0]),
            "layer_0": np.ones(2),
            "notes": np.array(["a key the client never opens"]),
        },
    }
    refused: dict[str, tuple[dict[str, bytes | Array], str]] = {
        "text-weighting": (
            {"weighting": np.array(["ten"]), "layer_0": np.ones(2)},
            "bad-weighting",
        ),
        "nan-weighting": (
            {"weighting": np.array([np.nan]), "layer_0": np.ones(2)},
            "bad-weighting",
        ),
        "text-layer": ({"weighting": np.array([1.0]), "layer_0": np.array(["a"])}, "not-numeric"),
        "no-layers": ({"weighting": np.array([1.0]), "bias": np.ones(2)}, "no-layers"),
        # Safety over likeness: the client would not open this key, but nothing pickled is accepted.
        "pickled": (
            {"weighting": np.array([1.0]), "layer_0": np.ones(2), "notes.npy": buffer.getvalue()},
            "pickle-forbidden",
        ),
    }
    with start(tmp_path / "agg", min_leaves=1) as agg, httpx.Client() as client:
        for name, members in accepted.items():
            path = write_npz(tmp_path / f"{name}.npz", members)
            answer = agg.upload(client, path, 0)
            assert answer.status_code == 201, (name, answer.text)
        for name, (members, code) in refused.items():
            path = write_npz(tmp_path / f"{name}.npz", members)
            answer = agg.upload(client, path, 0)
            assert answer.status_code == 422, (name, answer.text)
            assert answer.json()["code"] == code, (name, answer.text)
        done = _finished(agg, client, 3)
        assert [a["status"] for a in done] == ["done"] * 3
