"""BranchKey protocol v1 (`/v1`, HTTP Basic, pickled `.npy`), spoken as the official 2.5/2.6 client does."""

from __future__ import annotations

import base64
import dataclasses
import logging
from pathlib import Path
from typing import Any

import anyio

from gateway.errors import UpstreamUnavailableError
from gateway.upstream.credentials import Credentials
from gateway.upstream.v3 import RunInfo, V3Upstream, safe_filename

log = logging.getLogger("gateway.upstream")

V1_METADATA = "{'key1':'value1', 'key2':'value2'}"
"""The fixed `metadata` string of every v1 upload (§3.4): Python-dict syntax, not JSON."""


class V1Upstream(V3Upstream):
    """One leaf's session with a v1 upstream: same retries and streaming as v3, v1 wire format.

    The tree and branch ids come from `GET /v1/leaf/authenticate`; any call that needs them
    authenticates first when that has not happened yet (a start-up with the upstream down).
    """

    dialect = "v1"
    upload_format = "npy-object"
    download_accept = "*/*S"  # the v1 client's header, typo included (§3.4 #4)
    resend_uploads = False  # a v1 server may count a resent upload twice: fail with a 504 instead

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._authenticated = False
        self._auth_lock = anyio.Lock()

    def url(self, path: str) -> str:
        """The absolute URL of a v1 API path."""
        return f"{self.host}/v1{path}"

    def headers(self, accept: str = "application/json") -> dict[str, str]:
        """HTTP Basic with the leaf id and session token (latin-1, as requests encodes it)."""
        creds = self.credentials
        pair = f"{creds.id}:{creds.session_token}".encode("latin-1")  # checked by from_mapping
        return {"Authorization": f"Basic {base64.b64encode(pair).decode()}", "accept": accept}

    def call_headers(self, path: str) -> dict[str, str]:
        """`leaf: true` goes on the run call only (§3.4 #2)."""
        headers = self.headers()
        if path == self.run_path():
            headers["leaf"] = "true"
        return headers

    async def authenticate(self) -> Credentials:
        """`GET /v1/leaf/authenticate`: the tree, branch and user ids of this leaf."""
        async with self._auth_lock:
            return await self._authenticate()

    async def ensure_authenticated(self) -> None:
        """Authenticate once, before the first call that needs the ids (concurrent callers wait)."""
        if self._authenticated:
            return
        async with self._auth_lock:
            if not self._authenticated:
                await self._authenticate()

    async def _authenticate(self) -> Credentials:
        body = await self.call_json("GET", "/leaf/authenticate", "the authenticate call", 200)
        data = body.get("data") if isinstance(body, dict) else None
        ids = {key: data.get(key) if isinstance(data, dict) else None for key in _ID_KEYS}
        if not all(isinstance(value, str) and value for value in ids.values()):
            raise UpstreamUnavailableError(
                "BranchKey's authenticate answer lacks data.user_id, data.tree_id or data.branch_id."
            )
        creds = self.credentials
        if creds.branch_id and creds.branch_id != ids["branch_id"]:
            log.warning(
                "BranchKey says leaf %s is on branch %s, not the configured %s; using BranchKey's",
                creds.id,
                ids["branch_id"],
                creds.branch_id,
            )
        self.credentials = dataclasses.replace(
            creds,
            tree_id=str(ids["tree_id"]),
            branch_id=str(ids["branch_id"]),
            owner_id=str(ids["user_id"]),
        )
        self._authenticated = True
        return self.credentials

    def run_path(self) -> str:
        """`/v1/branch/{branch_id}/run`."""
        return f"/branch/{self.credentials.branch_id}/run"

    async def run(self) -> RunInfo:
        """`GET /v1/branch/{branch_id}/run` (the client adds `leaf: true` to this call only)."""
        await self.ensure_authenticated()
        return await super().run()

    async def upload(self, path: Path, size: int, digest_b64: str, kind: str, filename: str) -> str:
        """`POST /v1/file/upload`: the `data` field with the fixed metadata string, then the `.npy`."""
        del digest_b64, kind  # v1 sends neither integrity headers nor a payload kind
        stem = Path(filename).name.rsplit(".", 1)[0] or "weights"
        return await self.post_file(
            path, size, safe_filename(f"{stem}.npy", "weights.npy"), V1_METADATA, {}
        )

    async def send_metrics(self, aggregation_id: str, mode: str, data: Any) -> None:
        """`POST /v1/performance/analysis` (JSON text without Content-Type; 201 expected)."""
        await self.ensure_authenticated()
        await super().send_metrics(aggregation_id, mode, data)

    async def ticket(self) -> dict[str, Any]:
        """v1 has no WebSocket tickets: its notifications arrive over AMQP."""
        raise UpstreamUnavailableError(
            "Protocol v1 has no WebSocket; notifications come over AMQP."
        )


_ID_KEYS = ("user_id", "tree_id", "branch_id")
