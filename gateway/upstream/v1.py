"""BranchKey protocol v1 (`/v1`, HTTP Basic, pickled `.npy`), spoken as the official 2.5/2.6 client does."""

from __future__ import annotations

import base64
import dataclasses
import logging
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx
from anyio import to_thread

from gateway.errors import UpstreamUnavailableError
from gateway.upstream.credentials import Credentials
from gateway.upstream.policy import Policy
from gateway.upstream.protocol import Outgoing, RunInfo, Sent, WeightsFile
from gateway.upstream.transport import (
    Transport,
    data_of,
    metrics_body,
    read_outgoing,
    safe_filename,
    upload_data,
)
from gateway.weights import ValidationPolicy, npz_to_object_npy

log = logging.getLogger("gateway.upstream")

V1_METADATA = "{'key1':'value1', 'key2':'value2'}"
"""The fixed `metadata` string of every v1 upload (§3.4): Python-dict syntax, not JSON."""

_ID_KEYS = ("user_id", "tree_id", "branch_id")

CLIENT_VERSION = "2.6.2"
"""The official client whose dialect this is (its uploads carry no version: the fixed metadata)."""


class V1Upstream:
    """One leaf's session with a v1 upstream: the same transport as v3, the v1 wire format.

    The tree and branch ids come from `GET /v1/leaf/authenticate`; any call that needs them
    authenticates first when that has not happened yet (a start-up with the upstream down).
    """

    dialect = "v1"

    def __init__(
        self,
        client: httpx.AsyncClient,
        host: str,
        credentials: Credentials,
        policy: Policy | None = None,
    ) -> None:
        self.transport = Transport(client, policy)
        self.host = host.rstrip("/")
        self.credentials = credentials
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
        body = await self.transport.call_json(
            "GET", self.url("/leaf/authenticate"), self.headers(), "the authenticate call", 200
        )
        data = data_of(body)
        ids = {key: data.get(key) if data is not None else None for key in _ID_KEYS}
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

    async def run(self) -> RunInfo:
        """`GET /v1/branch/{branch_id}/run`, the one call with `leaf: true` (§3.4 #2)."""
        await self.ensure_authenticated()
        headers = {**self.headers(), "leaf": "true"}
        path = f"/branch/{self.credentials.branch_id}/run"
        body = await self.transport.call_json(
            "GET", self.url(path), headers, "the run status call", 200
        )
        data = data_of(body)
        if data is None or "run_status" not in data or "run_number" not in data:
            raise UpstreamUnavailableError(
                "BranchKey's run status answer lacks data.run_status or data.run_number."
            )
        return RunInfo(run_status=str(data["run_status"]), run_number=data["run_number"])

    async def prepare(self, npz: WeightsFile, scratch: Path, policy: ValidationPolicy) -> Outgoing:
        """The v1 object `.npy` of `npz`, written to `scratch` by our own writer from the validated
        NPZ: never by pickling (or passing on) anything the trainer sent."""
        await to_thread.run_sync(npz_to_object_npy, npz.path, scratch, policy)
        stem = Path(npz.filename).name.rsplit(".", 1)[0] or "weights"
        name = safe_filename(f"{stem}.npy", "weights.npy")
        return await read_outgoing(scratch, None, npz.kind, name)

    async def upload(self, outgoing: Outgoing) -> Sent:
        """`POST /v1/file/upload`: the `data` field with the fixed metadata string, then the `.npy`,
        with neither integrity headers nor a payload kind. Resent after a lost answer only where the
        upstream deduplicates uploads: a v1 server may count a resent upload twice in a round, so
        that is a 504 instead."""
        file_id = await self.transport.post_file(
            self.url("/file/upload"),
            self.headers(),
            upload_data(self.credentials, V1_METADATA),
            outgoing,
            resend=self.transport.policy.resend_uploads,
        )
        return Sent(file_id=file_id, size=outgoing.size, sha256=outgoing.sha256)

    async def download_url(self, file_id: str) -> str:
        """`GET /v1/file/download/{file_id}` -> the blob URL."""
        return await self.transport.download_url(
            self.url(f"/file/download/{quote(file_id, safe='')}"),
            self.headers("*/*S"),  # the v1 client's header, typo included (§3.4 #4)
        )

    def blob(self, url: str) -> AbstractAsyncContextManager[httpx.Response]:
        """The blob behind a download URL, streamed; a non-200 answer is an error, never a model."""
        return self.transport.blob(url)

    async def send_metrics(self, aggregation_id: str, mode: str, data: Any) -> None:
        """`POST /v1/performance/analysis` (JSON text without Content-Type; 201 expected)."""
        await self.ensure_authenticated()
        await self.transport.call_json(
            "POST",
            self.url("/performance/analysis"),
            self.headers(),
            "the metrics call",
            201,
            content=metrics_body(self.credentials, aggregation_id, mode, data),
            resend=False,  # a report whose answer was lost may have been counted
        )
