"""The aggregator's protocol v1 routes (HTTP Basic, object .npy) and its RabbitMQ notifications, on real sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aio_pika
import anyio
import httpx
import numpy as np
import pytest
from aiormq.exceptions import ChannelAccessRefused
from pamqp.commands import Basic

from gateway.aggregator.amqp import publish_with_retry
from gateway.aggregator.app import create_aggregator_app
from gateway.aggregator.provisioning import (
    AmqpSetupError,
    BrokerAdmin,
    ManagementProvisioner,
    leaf_permissions,
    provision,
)
from gateway.aggregator.records import Leaf
from tests.support.aggregator import Running, settings_for, start
from tests.support.amqp import AMQP_URL, broker_cleanup, queue_counts, rabbitmqctl
from tests.support.corpus import v1_file, v1_stream
from tests.support.waiting import wait_until
from tests.support.weights import layers_of, read_v1, sdk_weights, write_v1

Array = np.ndarray[Any, Any]
FIXED_METADATA = "{'key1':'value1', 'key2':'value2'}"
"""What every v1 client sends as upload metadata (§3.4): Python syntax, not JSON."""


# ---------------------------------------------------------------- what a v1 client sends


def basic(agg: Running, leaf: int = 0, token: str | None = None) -> dict[str, str]:
    """HTTP Basic `leaf_id:session_token`, as requests encodes it."""
    creds = agg.leaves[leaf]
    pair = f"{creds['id']}:{creds['session_token'] if token is None else token}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode("latin-1")).decode()}


def upload_v1(
    agg: Running, client: httpx.Client, path: Path, leaf: int = 0, name: str = "w.npy"
) -> httpx.Response:
    """POST /v1/file/upload as 2.6.2 does: Basic, `data` then `file`, no integrity headers."""
    data = {"data": json.dumps({"leaf_name": agg.leaves[leaf]["name"], "metadata": FIXED_METADATA})}
    return client.post(
        f"{agg.url}/v1/file/upload",
        headers={**basic(agg, leaf), "accept": "application/json"},
        data=data,
        files={"file": (name, path.read_bytes())},
    )


def download_url_v1(agg: Running, client: httpx.Client, file_id: str, leaf: int = 0) -> str:
    """Step one of the v1 download, with the client's literal `*/*S` accept header."""
    answer = client.get(
        f"{agg.url}/v1/file/download/{file_id}", headers={**basic(agg, leaf), "accept": "*/*S"}
    )
    assert answer.status_code == 200, answer.text
    url: str = answer.json()["data"]["download_url"]
    return url


def wait_done(agg: Running, client: httpx.Client, count: int) -> list[dict[str, Any]]:
    """The aggregations, once `count` of them are done (fails after 20 s)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found: list[dict[str, Any]] = client.get(
            f"{agg.url}/admin/aggregations", headers=agg.admin
        ).json()["data"]
        if len([a for a in found if a["status"] == "done"]) >= count:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{count} aggregations were not done within 20 s")


# ---------------------------------------------------------------- HTTP routes


def test_basic_auth_authenticate_and_run(aggregator: Running) -> None:
    """Basic leaf credentials open /v1/leaf/authenticate (owner, tree, branch ids) and the run; anything else is 401."""
    leaf = aggregator.leaves[0]
    with httpx.Client() as client:
        ok = client.get(f"{aggregator.url}/v1/leaf/authenticate", headers=basic(aggregator))
        assert ok.status_code == 200
        assert ok.json() == {
            "data": {
                "user_id": leaf["owner_id"],
                "tree_id": leaf["tree_id"],
                "branch_id": leaf["branch_id"],
            }
        }
        doubled = client.get(f"{aggregator.url}//v1/leaf/authenticate", headers=basic(aggregator))
        assert doubled.status_code == 200
        refused = [
            basic(aggregator, token="wrong"),
            {"Authorization": "Basic " + base64.b64encode(b"nobody:x").decode()},
            {"Authorization": "Basic not-base64!"},
            {"Authorization": f"Bearer {leaf['id']}:{leaf['session_token']}"},
            {},
        ]
        for headers in refused:
            bad = client.get(f"{aggregator.url}/v1/leaf/authenticate", headers=headers)
            assert bad.status_code == 401, headers
            assert isinstance(bad.json()["error"], str)

        run = client.get(
            f"{aggregator.url}/v1/branch/{aggregator.branch}/run",
            headers={**basic(aggregator), "leaf": "true"},
        )
        assert run.status_code == 200
        assert run.json() == {"data": {"run_status": "start", "run_number": 1}}
        foreign = client.get(f"{aggregator.url}/v1/branch/other/run", headers=basic(aggregator))
        assert foreign.status_code == 403
        unauthenticated = client.get(f"{aggregator.url}/v1/branch/{aggregator.branch}/run")
        assert unauthenticated.status_code == 401


def test_v1_upload_round_and_download_in_v1_layout(tmp_path: Path) -> None:
    """A v1 .npy with the non-JSON metadata is stored; its one-leaf round downloads as a v1 .npy equal to the input."""
    layers = layers_of(1)
    path = write_v1(tmp_path / "w.npy", 12, layers)
    with start(tmp_path / "agg", min_leaves=1) as agg, httpx.Client(timeout=10) as client:
        response = upload_v1(agg, client, path)
        assert response.status_code == 201, response.text
        file_id = response.json()["data"]["file_id"]
        [upload] = client.get(f"{agg.url}/admin/uploads", headers=agg.admin).json()["data"]
        assert upload["file_id"] == file_id
        assert upload["weighting"] == 12
        assert json.loads(upload["metadata"]) == {"raw": FIXED_METADATA}
        [aggregation] = wait_done(agg, client, 1)

        url = download_url_v1(agg, client, aggregation["aggregation_id"])
        assert url.startswith(f"{agg.url}/v1/blob/{aggregation['aggregation_id']}?")
        blob = client.get(url)
        assert blob.status_code == 200
        (tmp_path / "result.npy").write_bytes(blob.content)
        num_samples, got = read_v1(tmp_path / "result.npy")
        assert num_samples == 12
        assert len(got) == len(layers)
        for sent, back in zip(layers, got, strict=True):
            assert back.dtype == sent.dtype
            np.testing.assert_array_equal(back, sent)
        cached = agg.data_dir / "aggregations" / f"{aggregation['aggregation_id']}.v1.npy"
        assert cached.read_bytes() == blob.content

        # The leaf's own upload, in the v1 layout too; another leaf may not have it.
        own = client.get(download_url_v1(agg, client, file_id))
        (tmp_path / "own.npy").write_bytes(own.content)
        assert read_v1(tmp_path / "own.npy")[0] == 12
        other = client.get(
            f"{agg.url}/v1/file/download/{file_id}", headers={**basic(agg, 1), "accept": "*/*S"}
        )
        assert other.status_code == 403
        assert isinstance(other.json()["error"], str)
        missing = client.get(f"{agg.url}/v1/file/download/nope", headers=basic(agg))
        assert missing.status_code == 404
        assert isinstance(missing.json()["error"], str)


def test_download_signatures_bind_the_format(tmp_path: Path) -> None:
    """A signed v1 URL does not open the v3 blob route and a v3 URL does not open the v1 one (403 both ways)."""
    path = sdk_weights(tmp_path / "w.npz", 3, layers_of(2))
    with start(tmp_path / "agg", min_leaves=1) as agg, httpx.Client(timeout=10) as client:
        assert agg.upload(client, path).status_code == 201
        [aggregation] = wait_done(agg, client, 1)
        file_id = aggregation["aggregation_id"]
        v1_url = download_url_v1(agg, client, file_id)
        v3_answer = client.get(f"{agg.url}/api/v1/file/download/{file_id}", headers=agg.auth())
        v3_url: str = v3_answer.json()["data"]["download_url"]
        assert client.get(v1_url).status_code == client.get(v3_url).status_code == 200
        query_v1, query_v3 = urlsplit(v1_url).query, urlsplit(v3_url).query
        swapped = [
            f"{agg.url}/api/v1/blob/{file_id}?{query_v1}",
            f"{agg.url}/v1/blob/{file_id}?{query_v3}",
        ]
        for url in swapped:
            refused = client.get(url)
            assert refused.status_code == 403, url
            assert "signature" in refused.json()["error"]


def test_hostile_and_non_v1_payloads_are_refused(tmp_path: Path) -> None:
    """A pickle bomb, a float weighting and an analytics payload get 4xx errors on /v1/file/upload; nothing runs or is stored."""
    marker = tmp_path / "MARKER"
    command = f"touch {marker}".encode()
    bomb = v1_stream(
        layers=b"cos\nsystem\nX" + struct.pack("<I", len(command)) + command + b"\x85R"
    )
    (tmp_path / "bomb.npy").write_bytes(v1_file(bomb))
    sdk_weights(tmp_path / "float.npz", 2.5, layers_of(3))
    np.savez(
        tmp_path / "analytics.npz",
        __bk_payload_kind__=np.array("federated_analytics"),
        count=np.array([3]),
    )
    cases = {
        "bomb.npy": (422, "pickle-forbidden"),
        "float.npz": (422, "whole number of samples"),
        "analytics.npz": (422, "federated_learning"),
    }
    with start(tmp_path / "agg") as agg, httpx.Client(timeout=10) as client:
        for name, (status, needle) in cases.items():
            response = upload_v1(agg, client, tmp_path / name, name=name)
            assert response.status_code == status, (name, response.text)
            body = response.json()
            assert needle in f"{body.get('code')} {body['error']}", (name, body)
        assert not marker.exists()
        assert client.get(f"{agg.url}/admin/uploads", headers=agg.admin).json()["data"] == []
        assert list((agg.data_dir / "uploads").iterdir()) == []


def test_metrics_without_content_type(aggregator: Running, tmp_path: Path) -> None:
    """The v1 metrics body (JSON text, no Content-Type) is stored with 201; a foreign leaf id is 403."""
    leaf = aggregator.leaves[0]
    with httpx.Client() as client:
        aggregator.upload(client, sdk_weights(tmp_path / "w.npz", 1, layers_of(2)))
        aggregation_id = client.post(
            f"{aggregator.url}/admin/aggregate?wait=true", headers=aggregator.admin
        ).json()["data"]["aggregation_id"]
        report = aggregator.report(0, aggregation_id, {"accuracy": 0.5})
        request = client.build_request(
            "POST",
            f"{aggregator.url}/v1/performance/analysis",
            headers={**basic(aggregator), "accept": "application/json"},
            content=json.dumps(report).encode(),
        )
        assert "content-type" not in request.headers
        assert client.send(request).status_code == 201
        foreign = client.post(
            f"{aggregator.url}/v1/performance/analysis",
            headers=basic(aggregator),
            content=json.dumps({**report, "leaf_id": aggregator.leaves[1]["id"]}),
        )
        assert foreign.status_code == 403
        [stored] = client.get(f"{aggregator.url}/admin/metrics", headers=aggregator.admin).json()[
            "data"
        ]
        assert stored["leaf_id"] == leaf["id"]
        assert json.loads(stored["data"]) == {"accuracy": 0.5}


def test_mixed_v1_and_v3_round(tmp_path: Path) -> None:
    """A v1 leaf and a v3 leaf complete one round together; both dialects download the same weighted mean."""
    v1_layers, v3_layers = layers_of(4), layers_of(5)
    v1_path = write_v1(tmp_path / "v1.npy", 10, v1_layers)
    v3_path = sdk_weights(tmp_path / "v3.npz", 30, v3_layers)
    with start(tmp_path / "agg", dev_leaves=2) as agg, httpx.Client(timeout=10) as client:
        assert upload_v1(agg, client, v1_path, leaf=0).status_code == 201
        assert client.get(f"{agg.url}/admin/aggregations", headers=agg.admin).json()["data"] == []
        assert agg.upload(client, v3_path, leaf=1).status_code == 201
        [aggregation] = wait_done(agg, client, 1)
        assert sorted(json.loads(aggregation["contributors"])) == sorted(
            leaf["id"] for leaf in agg.leaves
        )
        file_id = aggregation["aggregation_id"]
        (tmp_path / "v1-result.npy").write_bytes(
            client.get(download_url_v1(agg, client, file_id)).content
        )
        v3_answer = client.get(f"{agg.url}/api/v1/file/download/{file_id}", headers=agg.auth(1))
        (tmp_path / "v3-result.npz").write_bytes(
            client.get(v3_answer.json()["data"]["download_url"]).content
        )
        num_samples, v1_result = read_v1(tmp_path / "v1-result.npy")
        assert num_samples == 40
        with np.load(tmp_path / "v3-result.npz", allow_pickle=False) as archive:
            v3_result = [archive[f"layer_{i}"] for i in range(len(v1_layers))]
        for index, (a, b) in enumerate(zip(v1_layers, v3_layers, strict=True)):
            expected = (10 * a.astype(np.float64) + 30 * b.astype(np.float64)) / 40
            np.testing.assert_allclose(v1_result[index], expected, rtol=1e-6, atol=1e-7)
            np.testing.assert_array_equal(v1_result[index], v3_result[index])


# ---------------------------------------------------------------- RabbitMQ


async def _get(url: str, vhost: str, queue: str) -> aio_pika.abc.AbstractIncomingMessage | None:
    """One message from `queue` (basic.get, acked), connecting as the URL's user; None when empty."""
    connection = await aio_pika.connect(url + quote(vhost, safe=""), timeout=10)
    async with connection:
        channel = await connection.channel()
        target = await channel.get_queue(queue, ensure=False)
        message = await target.get(fail=False, timeout=5)
        if message is not None:
            await message.ack()
        return message


def leaf_url(creds: dict[str, str]) -> str:
    """The AMQP URL a v1 client builds from its credentials (user = leaf id, password = token)."""
    return f"amqp://{creds['id']}:{creds['session_token']}@127.0.0.1:5672/"


def test_provisioning_and_least_privilege(tmp_path: Path) -> None:
    """Start-up provisions vhost, users, permissions, bounded queues and the branch fanout; a leaf reads only its own queue."""
    with start(tmp_path / "agg", amqp_url=AMQP_URL, amqp_queue_max_length=50) as agg:
        tree, branch = agg.leaves[0]["tree_id"], agg.branch
        ids = [leaf["id"] for leaf in agg.leaves]
        permissions = {
            line.split("\t")[0]: tuple(line.split("\t")[1:])
            for line in rabbitmqctl("list_permissions", "-p", tree).splitlines()[1:]
        }
        assert permissions == {
            "guest": (".*", ".*", ".*"),
            **{leaf_id: leaf_permissions(leaf_id) for leaf_id in ids},
        }
        queues = rabbitmqctl("list_queues", "-p", tree, "name", "durable", "arguments")
        rows = sorted(line.split("\t") for line in queues.splitlines()[1:])
        arguments = '[{"x-max-length",50},{"x-message-ttl",600000}]'
        assert rows == sorted([leaf_id, "true", arguments] for leaf_id in ids)
        exchanges = rabbitmqctl("list_exchanges", "-p", tree, "name", "type", "durable")
        assert f"{branch}\tfanout\ttrue" in exchanges.splitlines()
        bindings = rabbitmqctl("list_bindings", "-p", tree, "source_name", "destination_name")
        assert sorted(
            line.split("\t")[1] for line in bindings.splitlines()[1:] if line.startswith(branch)
        ) == sorted(ids)
        for leaf in agg.leaves:
            # "--": a random token may start with "-", which rabbitmqctl would take for an option.
            rabbitmqctl("authenticate_user", "--", leaf["id"], leaf["session_token"])

        async def check() -> None:
            own, other = agg.leaves[0], agg.leaves[1]
            assert await _get(leaf_url(own), tree, own["id"]) is None  # empty, but readable
            with pytest.raises(ChannelAccessRefused):
                await _get(leaf_url(own), tree, other["id"])

        asyncio.run(check())
    assert tree not in rabbitmqctl("list_vhosts")
    assert not set(ids) & set(rabbitmqctl("list_users").split())


def test_notifications_reach_every_leaf_queue(tmp_path: Path) -> None:
    """A run change and an aggregation are published to every leaf's queue: persistent JSON in order."""
    path = sdk_weights(tmp_path / "w.npz", 4, layers_of(6))
    with (
        start(tmp_path / "agg", amqp_url=AMQP_URL, min_leaves=1) as agg,
        httpx.Client(timeout=10) as client,
    ):
        agg.set_run(client, "stop")
        agg.set_run(client, "start")
        assert agg.upload(client, path).status_code == 201
        [aggregation] = wait_done(agg, client, 1)
        expected = [
            {"message_type": "run_status", "body": {"run_status": "stop"}},
            {"message_type": "run_status", "body": {"run_status": "start"}},
            {
                "message_type": "aggregation_status",
                "body": {"aggregation_id": aggregation["aggregation_id"]},
            },
        ]

        async def drain(creds: dict[str, str]) -> list[aio_pika.abc.AbstractIncomingMessage]:
            got: list[aio_pika.abc.AbstractIncomingMessage] = []
            with anyio.fail_after(10):
                while len(got) < len(expected):
                    message = await _get(leaf_url(creds), creds["tree_id"], creds["id"])
                    if message is None:
                        await anyio.sleep(0.05)
                    else:
                        got.append(message)
            return got

        for creds in agg.leaves:
            messages = asyncio.run(drain(creds))
            assert [json.loads(m.body) for m in messages] == expected
            assert all(m.delivery_mode == aio_pika.DeliveryMode.PERSISTENT for m in messages)
            assert all(m.content_type == "application/json" for m in messages)


def test_notifications_expire_so_a_late_client_gets_no_stale_ids(tmp_path: Path) -> None:
    """Leaf queues carry x-message-ttl: a notification nobody consumed within it is gone, a fresh one is delivered."""
    path = sdk_weights(tmp_path / "w.npz", 4, layers_of(6))
    with (
        start(tmp_path / "agg", amqp_url=AMQP_URL, min_leaves=1, amqp_message_ttl_s=3) as agg,
        httpx.Client(timeout=10) as client,
    ):
        creds = agg.leaves[0]
        assert agg.upload(client, path).status_code == 201
        [stale] = wait_done(agg, client, 1)
        wait_until(lambda: queue_counts(creds["tree_id"], creds["id"]) == (1, 0), 5, "published")
        wait_until(lambda: queue_counts(creds["tree_id"], creds["id"]) == (0, 0), 10, "expired")
        assert (
            agg.upload(client, sdk_weights(tmp_path / "v.npz", 5, layers_of(6))).status_code == 201
        )
        fresh = [
            a for a in wait_done(agg, client, 2) if a["aggregation_id"] != stale["aggregation_id"]
        ]
        message = asyncio.run(_get(leaf_url(creds), creds["tree_id"], creds["id"]))
        assert message is not None
        assert json.loads(message.body)["body"]["aggregation_id"] == fresh[0]["aggregation_id"]


def test_a_queue_declared_with_other_arguments_is_declared_again(tmp_path: Path) -> None:
    """A leaf queue left by an older version (no TTL) does not stop start-up: unused, it is declared again."""
    suffix = uuid.uuid4().hex[:8]
    leaf = {
        "id": f"leaf-{suffix}",
        "name": "old",
        "session_token": f"token-{suffix}",
        "tree_id": f"tree-{suffix}",
        "branch_id": f"branch-{suffix}",
        "owner_id": "owner",
    }
    (tmp_path / "leaves.json").write_text(json.dumps([leaf]))
    with broker_cleanup(vhosts=[leaf["tree_id"]], users=[leaf["id"]]):
        rabbitmqctl("add_vhost", leaf["tree_id"])
        rabbitmqctl("set_permissions", "-p", leaf["tree_id"], "guest", ".*", ".*", ".*")

        async def declare_old() -> None:
            connection = await aio_pika.connect(AMQP_URL + leaf["tree_id"], timeout=10)
            async with connection:
                channel = await connection.channel()
                await channel.declare_queue(
                    leaf["id"], durable=True, arguments={"x-max-length": 10}
                )

        asyncio.run(declare_old())
        with start(tmp_path / "agg", leaves_file=tmp_path / "leaves.json", amqp_url=AMQP_URL):
            queues = rabbitmqctl("list_queues", "-p", leaf["tree_id"], "name", "arguments")
            assert f'{leaf["id"]}\t[{{"x-max-length",10000}},{{"x-message-ttl",600000}}]' in queues


# ---------------------------------------------------------------- units: provisioning, publishing, start-up


def _leaf(n: int, tree: str = "tree/1") -> Leaf:
    return Leaf(
        id=f"leaf-{n}",
        name=f"leaf {n}",
        session_token=f"token-{n}-secret",
        tree_id=tree,
        branch_id="branch-1",
        owner_id="owner",
    )


def test_management_provisioner_requests() -> None:
    """The management API provisioner sends exactly these PUTs: vhost, admin rights, then each user and its rights."""
    seen: list[tuple[str, str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        seen.append((request.method, request.url.raw_path.decode(), body))
        assert request.headers["authorization"] == "Basic " + base64.b64encode(b"admin:pw").decode()
        return httpx.Response(200 if request.method == "GET" else 201)

    async def run() -> bool:
        async with httpx.AsyncClient(
            base_url="http://broker:15672",
            auth=("admin", "pw"),
            transport=httpx.MockTransport(handler),
        ) as client:
            management = ManagementProvisioner(client, "admin")
            answers = await management.answers()
            await management.provision([_leaf(1), _leaf(2)])
            return answers

    assert asyncio.run(run()) is True
    read = {"configure": "^$", "write": "^$"}
    assert seen == [
        ("GET", "/api/overview", None),
        ("PUT", "/api/vhosts/tree%2F1", {}),
        (
            "PUT",
            "/api/permissions/tree%2F1/admin",
            {"configure": ".*", "write": ".*", "read": ".*"},
        ),
        ("PUT", "/api/users/leaf-1", {"password": "token-1-secret", "tags": ""}),
        ("PUT", "/api/permissions/tree%2F1/leaf-1", {**read, "read": "^leaf\\-1$"}),
        ("PUT", "/api/users/leaf-2", {"password": "token-2-secret", "tags": ""}),
        ("PUT", "/api/permissions/tree%2F1/leaf-2", {**read, "read": "^leaf\\-2$"}),
    ]


def test_management_provisioner_refusals_are_one_sentence() -> None:
    """A 401 from the management API, or a leaf named like the admin user, fails start-up with what to do."""

    def unauthorised(_: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "not_authorised"})

    async def run() -> None:
        async with httpx.AsyncClient(
            base_url="http://broker:15672", transport=httpx.MockTransport(unauthorised)
        ) as client:
            await ManagementProvisioner(client, "admin").answers()

    with pytest.raises(AmqpSetupError, match=r"answered 401 .* administrator tag"):
        asyncio.run(run())

    settings = settings_for(Path("unused"), amqp_url="amqp://leaf-1:pw@127.0.0.1:5672/")
    admin = BrokerAdmin.from_settings(settings)
    with pytest.raises(AmqpSetupError, match="also the RabbitMQ admin user"):
        asyncio.run(provision(settings, admin, [_leaf(1)]))


class _FlakyExchange:
    """An exchange whose first `failures` publishes raise; records every message."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.messages: list[aio_pika.abc.AbstractMessage] = []

    async def publish(self, message: aio_pika.abc.AbstractMessage, routing_key: str) -> object:
        self.messages.append(message)
        assert routing_key == ""
        if len(self.messages) <= self.failures:
            raise ConnectionResetError("broker restarting")
        return Basic.Ack()


def test_publish_retries_then_gives_up() -> None:
    """A failing publish is retried with growing pauses; after the last attempt the error is returned, not raised."""
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    async def run(failures: int) -> tuple[Exception | None, _FlakyExchange]:
        exchange = _FlakyExchange(failures)
        error = await publish_with_retry(exchange, b"{}", 4, backoff_s=1.0, sleep=sleep)
        return error, exchange

    error, exchange = asyncio.run(run(2))
    assert error is None
    assert len(exchange.messages) == 3
    assert pauses == [1.0, 2.0]
    message = exchange.messages[-1]
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.content_type == "application/json"

    pauses.clear()
    error, exchange = asyncio.run(run(10))
    assert isinstance(error, ConnectionResetError)
    assert len(exchange.messages) == 4
    assert pauses == [1.0, 2.0, 4.0]


def _lifespan(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, **overrides: Any
) -> Callable[[], None]:
    app = create_aggregator_app(settings_for(tmp_path / "agg", **overrides))

    def run() -> None:
        async def enter() -> None:
            async with app.router.lifespan_context(app):
                pass

        with caplog.at_level(logging.INFO, logger="gateway.aggregator"):
            asyncio.run(enter())

    return run


def test_startup_without_and_with_an_unreachable_broker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Without amqp_url one line says how to enable v1 notifications; a broker that cannot be provisioned stops start-up."""
    _lifespan(tmp_path / "plain", caplog)()
    assert any(
        "v1 leaves get HTTP service only" in r.getMessage() and "--amqp-url" in r.getMessage()
        for r in caplog.records
    )
    caplog.clear()
    failing = _lifespan(
        tmp_path / "broken",
        caplog,
        amqp_url="amqp://guest:s3cret-password@127.0.0.1:1/",
        amqp_provisioner="management",
        amqp_management_url="http://127.0.0.1:1",
    )
    with pytest.raises(AmqpSetupError, match="does not answer: enable the rabbitmq_management"):
        failing()
    assert all("s3cret-password" not in r.getMessage() for r in caplog.records)
