"""A BranchKey v3 upstream inside httpx.MockTransport, for unit tests of the gateway's services."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx

from gateway.upstream.credentials import Credentials
from gateway.upstream.policy import Policy, RetryPolicy
from gateway.upstream.session import Session
from gateway.upstream.v3 import V3Upstream

HOST = "https://bk.example"
CREDENTIALS = Credentials(
    id="leaf-1", name="leaf", session_token="token-1", tree_id="t", branch_id="b", owner_id="o"
)
FAST = Policy(retry=RetryPolicy(max_retries=1, backoff_s=0.01, max_delay_s=0.05))

_FILENAME = re.compile(rb'name="file"; filename="([^"]*)"')


@dataclass
class FakeBranchKey:
    """The v3 calls the gateway makes, answered from memory; every request is recorded."""

    run_status: str = "start"
    blobs: dict[str, bytes] = field(default_factory=dict)
    """Aggregation id -> the file its blob URL serves."""
    blob_status: int = 200
    requests: list[httpx.Request] = field(default_factory=list)
    uploads: list[bytes] = field(default_factory=list)
    """The multipart bodies of the uploads received."""

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        """Answer one request."""
        self.requests.append(request)
        path = request.url.path
        if path == "/api/v1/run/b":
            return httpx.Response(
                200, json={"data": {"run_status": self.run_status, "run_number": 1}}
            )
        if path == "/api/v1/file/upload":
            self.uploads.append(await request.aread())
            return httpx.Response(201, json={"data": {"file_id": f"file-{len(self.uploads)}"}})
        if path.startswith("/api/v1/file/download/"):
            file_id = path.rsplit("/", 1)[1]
            url = f"{HOST}/blob/{file_id}"
            return httpx.Response(200, json={"data": {"download_url": url}})
        if path.startswith("/blob/"):
            body = self.blobs.get(path.rsplit("/", 1)[1])
            if body is None or self.blob_status != 200:
                return httpx.Response(self.blob_status if body else 404, text="no such blob")
            return httpx.Response(200, content=body)
        return httpx.Response(404, text=json.dumps({"error": f"no route {path}"}))

    def calls(self, prefix: str) -> int:
        """Requests whose path starts with `prefix`."""
        return sum(1 for r in self.requests if r.url.path.startswith(prefix))

    def uploaded_filenames(self) -> list[str]:
        """The `file` part's file name of every upload received."""
        names = []
        for body in self.uploads:
            found = _FILENAME.search(body)
            names.append(found[1].decode() if found else "")
        return names


@asynccontextmanager
async def session_with(
    fake: FakeBranchKey, run_check_interval_s: float = 0.05
) -> AsyncIterator[Session]:
    """A logged-in v3 session whose upstream is `fake`."""
    async with httpx.AsyncClient(transport=httpx.MockTransport(fake)) as client:
        connect = functools.partial(V3Upstream, client, HOST, policy=FAST)
        session = Session(connect, HOST, run_check_interval_s)
        session.adopt(CREDENTIALS)
        yield session
