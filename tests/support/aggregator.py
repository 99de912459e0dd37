"""The local aggregator on a loopback port for tests: three development leaves and a known admin token."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import zipfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from gateway.aggregator.app import create_aggregator_app
from gateway.aggregator.settings import AggregatorSettings
from gateway.aggregator.state import launch_of
from gateway.aggregator.websocket import uvicorn_ws_options
from gateway.http_limits import bounded_http_options
from tests.support.amqp import broker_cleanup
from tests.support.servers import serve

ADMIN = "admin-secret-token"


@dataclass
class Running:
    """A live aggregator and handles for tests."""

    url: str
    data_dir: Path
    leaves: list[dict[str, str]]

    def auth(self, leaf: int = 0) -> dict[str, str]:
        """The headers the official client sends for leaf `leaf`."""
        creds = self.leaves[leaf]
        return {
            "Authorization": f"Bearer {creds['id']}:{creds['session_token']}",
            "accept": "application/json",
            "LEAF": "true",
        }

    @property
    def admin(self) -> dict[str, str]:
        """Admin API headers."""
        return {"Authorization": f"Bearer {ADMIN}"}

    @property
    def branch(self) -> str:
        """The branch of the development leaves."""
        return self.leaves[0]["branch_id"]

    def upload(
        self,
        client: httpx.Client,
        path: Path,
        leaf: int = 0,
        *,
        kind: str | None = None,
        **headers: str,
    ) -> httpx.Response:
        """POST a weights file as BranchKey's client does (integrity headers, data then file part);
        `kind` is the metadata's (default: what the archive declares, as the client writes it)."""
        body = path.read_bytes()
        digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
        meta = {
            "client_version": "test",
            "file_size": len(body),
            "file_digest": f"sha256={digest}",
            "kind": kind or _declared_kind(path),
        }
        sent = {
            "x-bk-file-size": str(len(body)),
            "x-bk-file-digest": f"sha256={digest}",
            **self.auth(leaf),
        }
        sent.update({k.replace("_", "-"): v for k, v in headers.items()})
        data = {
            "data": json.dumps(
                {"leaf_name": self.leaves[leaf]["name"], "metadata": json.dumps(meta)}
            )
        }
        return client.post(
            f"{self.url}/api/v1/file/upload",
            headers=sent,
            data=data,
            files={"file": (path.name, body)},
        )

    def report(self, leaf: int, aggregation_id: str, data: dict[str, Any]) -> dict[str, str]:
        """A performance report as the official clients send it (`data` JSON-encoded)."""
        creds = self.leaves[leaf]
        return {
            "mode": "test",
            "aggregation_id": aggregation_id,
            "leaf_id": creds["id"],
            "branch_id": creds["branch_id"],
            "tree_id": creds["tree_id"],
            "data": json.dumps(data),
        }

    def set_run(self, client: httpx.Client, status: str) -> dict[str, Any]:
        """Set the run status through the admin API."""
        response = client.post(f"{self.url}/admin/run", headers=self.admin, json={"status": status})
        response.raise_for_status()
        data: dict[str, Any] = response.json()["data"]
        return data


def _declared_kind(path: Path) -> str:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "__bk_payload_kind__" in archive.files:
                return str(archive["__bk_payload_kind__"])
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        pass  # not an NPZ (a v1 object .npy, a hostile file): the client says learning
    return "federated_learning"


def settings_for(data_dir: Path, **overrides: Any) -> AggregatorSettings:
    """Test settings: three dev leaves, a known admin token, no .env file."""
    values: dict[str, Any] = {
        "data_dir": data_dir,
        "dev_leaves": 3,
        "admin_token": ADMIN,
        **overrides,
    }
    return AggregatorSettings(_env_file=None, **values)


@contextmanager
def start(data_dir: Path, port: int = 0, **overrides: Any) -> Iterator[Running]:
    """Start an aggregator for `data_dir` on `port` (0: a free one); stop it on exit.

    A restart on the same port and data dir keeps its URL and leaves.
    With `amqp_url=tests.support.amqp.AMQP_URL` it provisions RabbitMQ for its leaves at start-up; their vhosts
    and users are deleted from the broker once the aggregator has stopped.
    """
    settings = settings_for(data_dir, **overrides)
    app = create_aggregator_app(settings)
    cleanup: AbstractContextManager[None] = nullcontext()
    if settings.amqp_url is not None:
        cleanup = broker_cleanup(
            vhosts={leaf.tree_id for leaf in launch_of(app).leaves},
            users={leaf.id for leaf in launch_of(app).leaves},
        )
    options = {
        **uvicorn_ws_options(ping_interval_s=5, ping_timeout_s=5),
        **bounded_http_options(int(settings.max_header_bytes), settings.header_timeout_s),
    }
    with cleanup, serve(app, port, **options) as url:
        source = settings.leaves_file or data_dir / "leaves.json"
        leaves = json.loads(source.read_text(encoding="utf-8"))
        yield Running(url=url, data_dir=data_dir, leaves=leaves)


def upload_v3(agg: Running, client: httpx.Client, weights: Path, leaf: int) -> None:
    """Leaf `leaf` uploads straight to the aggregator (v3), closing a one-upload round."""
    response = agg.upload(client, weights, leaf)
    assert response.status_code == 201, response.text


def ready_leaves(port: int, leaves_file: Path, timeout: float = 30) -> list[dict[str, Any]]:
    """The leaves in `leaves_file` once the aggregator on `port` answers leaf 0's v3 run request."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.1)
        if not leaves_file.exists():
            continue
        leaves: list[dict[str, Any]] = json.loads(leaves_file.read_text())
        leaf = leaves[0]
        try:
            status = httpx.get(
                f"http://127.0.0.1:{port}/api/v1/run/{leaf['branch_id']}",
                headers={"Authorization": f"Bearer {leaf['id']}:{leaf['session_token']}"},
            ).status_code
        except httpx.TransportError:
            continue
        if status == 200:
            return leaves
    raise AssertionError(f"no aggregator answered on port {port} within {timeout} s")
