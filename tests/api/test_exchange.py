"""`POST /exchange`: the upload, then the file of the first aggregation announced after it, in one call."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.app import create_app
from tests.support.aggregator import ADMIN, Running, start
from tests.support.gateways import Gateway, GatewayFactory, gateway_settings, run_gateway
from tests.support.gateways import write_credentials as credentials_file
from tests.support.http import admin_get, check_problem, curl, load_npz, wait_ready
from tests.support.waiting import wait_until
from tests.support.weights import layers_of, read_v1, sdk_weights


def _weights(folder: Path, leaf: int, weighting: float = 2.0) -> Path:
    return sdk_weights(folder / f"w{leaf}.npz", weighting, layers_of(leaf))


def _ready(gateway: Gateway) -> Gateway:
    wait_ready(gateway.url)
    return gateway


def test_three_trainers_exchange_and_get_the_same_round(
    gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """Three concurrent curl -F /exchange calls each get the round's FedAvg, with the same id and ETag and their own file id."""
    gateways = [_ready(gateway_for(leaf)) for leaf in range(3)]
    files = [_weights(tmp_path, leaf, weighting=float(leaf + 1)) for leaf in range(3)]

    def exchange(leaf: int) -> Any:
        return curl(
            "-F", f"file=@{files[leaf].name}", f"{gateways[leaf].url}/exchange", cwd=tmp_path
        )

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(exchange, range(3)))
    assert [a.status for a in answers] == [200, 200, 200], [a.body[:300] for a in answers]
    ids = {a.headers["x-aggregation-id"] for a in answers}
    etags = {a.headers["etag"] for a in answers}
    assert len(ids) == 1
    assert len(etags) == 1
    assert len({a.headers["x-file-id"] for a in answers}) == 3
    assert etags == {f'"{hashlib.sha256(answers[0].body).hexdigest()}"'}
    got = load_npz(answers[0].body)
    expected = [
        sum((w + 1) * np.asarray(layers_of(w)[i], np.float64) for w in range(3)) / 6
        for i in range(2)
    ]
    for i, layer in enumerate(expected):
        np.testing.assert_allclose(got[f"layer_{i}"], layer, rtol=1e-6)
    (aggregation_id,) = ids
    same = curl(f"{gateways[1].url}/aggregations/{aggregation_id}")
    assert same.body == answers[0].body


@pytest.fixture
def one_leaf_rounds(tmp_path: Path) -> Iterator[tuple[Running, Gateway]]:
    """An aggregator whose every upload closes a round, and a gateway for its first leaf."""
    with start(tmp_path / "agg1", min_leaves=1) as agg:
        creds = credentials_file(tmp_path / "leaf.json", agg.leaves[0])
        settings = gateway_settings(tmp_path / "gw", bk_host=agg.url, bk_credentials_file=creds)
        with run_gateway(settings, wait_heard=False) as gateway:
            yield agg, _ready(gateway)


def test_back_to_back_exchanges_never_miss_or_repeat_a_round(
    one_leaf_rounds: tuple[Running, Gateway], tmp_path: Path
) -> None:
    """Five rounds in a row, each closed by the upload itself: each answer is a new aggregation, in event order."""
    _, gateway = one_leaf_rounds
    seen: list[tuple[int, str]] = []
    with httpx.Client(timeout=30) as client:
        for round_number in range(5):  # a new file each round (a re-sent one counts once)
            weights = _weights(tmp_path, 0, weighting=round_number + 1.0)
            answer = client.post(
                f"{gateway.url}/exchange", files={"file": ("w.npz", weights.read_bytes())}
            )
            assert answer.status_code == 200, answer.text
            seen.append((int(answer.headers["x-event-id"]), answer.headers["x-aggregation-id"]))
        logged = client.get(f"{gateway.url}/aggregations", params={"after": 0}).json()
    assert len({agg for _, agg in seen}) == 5
    assert seen == [(e["id"], e["aggregation_id"]) for e in logged]
    with httpx.Client() as client:
        recorded = client.get(f"{gateway.url}/uploads").json()
    assert [r["outcome"] for r in recorded] == ["forwarded"] * 5  # GET /uploads lists them too


def test_a_file_sent_again_gets_the_round_of_its_first_sending(
    one_leaf_rounds: tuple[Running, Gateway], tmp_path: Path
) -> None:
    """The aggregator counts a re-sent file once (same file id): an exchange of a file already sent,
    by /upload or /exchange, answers with that sending's round at once instead of a 504 later; a
    new file still waits for a new round."""
    _, gateway = one_leaf_rounds
    first, second = _weights(tmp_path, 0, weighting=1.0), _weights(tmp_path, 1, weighting=2.0)
    with httpx.Client(timeout=30) as client:

        def exchange(path: Path) -> httpx.Response:
            return client.post(
                f"{gateway.url}/exchange",
                params={"wait_timeout": 5},
                files={"file": ("w.npz", path.read_bytes())},
            )

        uploaded = client.post(
            f"{gateway.url}/upload", files={"file": ("w.npz", first.read_bytes())}
        )
        assert uploaded.status_code == 201, uploaded.text
        again = exchange(first)
        assert again.status_code == 200, again.text
        assert again.headers["x-file-id"] == uploaded.json()["file_id"]
        (round_one,) = client.get(f"{gateway.url}/aggregations", params={"after": 0}).json()
        assert again.headers["x-aggregation-id"] == round_one["aggregation_id"]
        fresh = exchange(second)
        assert fresh.status_code == 200, fresh.text
        assert fresh.headers["x-aggregation-id"] != round_one["aggregation_id"]
        retried = exchange(second)  # e.g. a retry after the answer was lost
        assert retried.status_code == 200, retried.text
        assert retried.headers["x-aggregation-id"] == fresh.headers["x-aggregation-id"]
        assert retried.content == fresh.content


def test_formats_and_upload_options_are_those_of_upload_and_download(
    one_leaf_rounds: tuple[Running, Gateway], tmp_path: Path
) -> None:
    """A raw body with ?weighting= and ?format=npy gets the v1 file; a plain .npy works as a form too."""
    _, gateway = one_leaf_rounds
    layer = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "w.npy", layer)
    with httpx.Client(timeout=30) as client:
        answer = client.post(
            f"{gateway.url}/exchange",
            params={"format": "npy", "weighting": "3"},
            content=(tmp_path / "w.npy").read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert answer.status_code == 200, answer.text
        assert "x-upload-note" not in answer.headers
        assert answer.headers["content-disposition"].endswith(
            f'{answer.headers["x-aggregation-id"]}.npy"'
        )
        (tmp_path / "agg.npy").write_bytes(answer.content)
        samples, (got,) = read_v1(tmp_path / "agg.npy")
        assert samples == 0
        np.testing.assert_array_equal(got, layer)
        plain = client.post(
            f"{gateway.url}/exchange",
            files={"file": ("w.npy", (tmp_path / "w.npy").read_bytes())},
            data={"weighting": "4"},
        )
        assert plain.status_code == 200, plain.text
        np.testing.assert_array_equal(load_npz(plain.content)["layer_0"], layer)


def test_a_round_still_open_is_a_504_with_the_file_id_and_no_old_aggregation(
    aggregator: Running, gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """Aggregation A exists; an exchange for the next round times out (504, file_id, after) instead of answering A."""
    gateway = _ready(gateway_for(0, gateway_wait_timeout_s=1.0))
    with httpx.Client(timeout=30) as client:
        for leaf in range(3):
            assert aggregator.upload(client, _weights(tmp_path, leaf), leaf).status_code == 201
        first = gateway.event_of(_done(aggregator, client, 1))
        began = time.monotonic()
        answer = client.post(
            f"{gateway.url}/exchange",
            params={"wait_timeout": "100"},  # capped by GATEWAY_WAIT_TIMEOUT_S (1 s)
            files={"file": ("w.npz", _weights(tmp_path, 0, weighting=5.0).read_bytes())},
        )
        assert time.monotonic() - began < 10
        problem = check_problem(answer, 504, "aggregation-timeout")
        assert problem["after"] >= first
        assert problem["file_id"] in problem["detail"]
        uploads = admin_get(aggregator.url, ADMIN, "uploads", client)
        assert problem["file_id"] in {u["file_id"] for u in uploads}
        for leaf in (1, 2):  # the others finish the round: the trainer resumes after `after`
            weights = _weights(tmp_path, leaf, weighting=7.0)
            assert aggregator.upload(client, weights, leaf).status_code == 201
        later = client.get(
            f"{gateway.url}/aggregations", params={"after": problem["after"], "wait": 30}
        ).json()
        assert [e["aggregation_id"] for e in later] == [_done(aggregator, client, 2)]


def _done(aggregator: Running, client: httpx.Client, count: int) -> str:
    """The id of the aggregator's `count`-th finished aggregation, once it is done."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = [
            r
            for r in admin_get(aggregator.url, ADMIN, "aggregations", client)
            if r["status"] == "done"
        ]
        if len(done) >= count:
            return str(
                sorted(done, key=lambda r: str(r["created_at"]))[count - 1]["aggregation_id"]
            )
        time.sleep(0.05)
    raise AssertionError(f"{count} aggregation(s) did not finish")


def test_a_refused_upload_is_refused_as_upload_refuses_it(
    one_leaf_rounds: tuple[Running, Gateway], tmp_path: Path
) -> None:
    """A NaN layer sent to /exchange is the same 422 not-finite problem, and nothing reaches BranchKey."""
    agg, gateway = one_leaf_rounds
    layers = layers_of(0)
    layers[0][1, 1] = np.nan
    weights = sdk_weights(tmp_path / "nan.npz", 1.0, layers)
    answer = curl("-F", "file=@nan.npz", f"{gateway.url}/exchange", cwd=tmp_path)
    assert answer.status == 422
    assert answer.json()["type"] == "/problems/weights/not-finite"
    assert weights.exists()
    with httpx.Client() as client:
        assert admin_get(agg.url, ADMIN, "uploads", client) == []
        (refused,) = client.get(f"{gateway.url}/uploads").json()
    assert refused["problem_type"] == "/problems/weights/not-finite"


def test_the_openapi_doc_gives_exchange_the_bodies_and_options_of_upload(tmp_path: Path) -> None:
    """/exchange declares /upload's request body (whatever /upload declares) and query options, and
    the download options of GET /aggregations/{id} (format, names) with the same schemas."""
    doc = create_app(gateway_settings(tmp_path)).openapi()
    upload, exchange = doc["paths"]["/upload"]["post"], doc["paths"]["/exchange"]["post"]
    download = doc["paths"]["/aggregations/{aggregation_id}"]["get"]
    assert exchange.get("requestBody") == upload.get("requestBody")
    names = {p["name"] for p in exchange["parameters"]}
    assert names == {p["name"] for p in upload["parameters"]} | {"format", "names"}

    def typed(schema: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in schema.items() if key != "description"}

    schemas = {p["name"]: typed(p["schema"]) for p in exchange["parameters"]}
    for option in download["parameters"]:
        if option["name"] in ("format", "names"):
            assert schemas[option["name"]] == typed(option["schema"])
    assert "application/octet-stream" in exchange["responses"]["200"]["content"]
    assert "/problems/aggregation-timeout" in exchange["responses"]["504"]["description"]


def test_a_client_that_leaves_while_waiting_frees_its_wait(
    aggregator: Running, gateway_for: GatewayFactory, tmp_path: Path
) -> None:
    """The round stays open; the trainer gives up after 1 s: the gateway's waiter is gone within seconds."""
    gateway = _ready(gateway_for(0))
    weights = _weights(tmp_path, 0).read_bytes()

    def give_up() -> type[BaseException] | None:
        with httpx.Client(timeout=httpx.Timeout(30, read=3)) as client:
            try:
                client.post(f"{gateway.url}/exchange", files={"file": ("w.npz", weights)})
            except httpx.ReadTimeout as error:
                return type(error)
        return None

    with ThreadPoolExecutor(1) as pool:
        gave_up = pool.submit(give_up)
        wait_until(lambda: gateway.subscribers() == 1, 10, "the exchange waits for its round")
        assert gave_up.result(timeout=30) is httpx.ReadTimeout
    wait_until(lambda: gateway.subscribers() == 0, 10, "the exchange stopped waiting")
    with httpx.Client() as client:
        assert len(admin_get(aggregator.url, ADMIN, "uploads", client)) == 1
