"""BranchKey protocol v3 (`/api/v1`, Bearer, NPZ), spoken exactly as the official 3.0.1 client does."""

from __future__ import annotations

import base64
import json
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

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
from gateway.weights import ValidationPolicy

CLIENT_VERSION = "3.0.1"
"""The official client whose dialect this is: `metadata.client_version` of every upload."""


class V3Upstream:
    """One leaf's session with a v3 upstream, over a shared `httpx.AsyncClient`."""

    dialect = "v3"

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

    def url(self, path: str) -> str:
        """The absolute URL of an API path."""
        return f"{self.host}/api/v1{path}"

    def headers(self, accept: str = "application/json") -> dict[str, str]:
        """The headers of every API call, the run call included (§5.3)."""
        creds = self.credentials
        return {
            "Authorization": f"Bearer {creds.id}:{creds.session_token}",
            "accept": accept,
            "LEAF": "true",
        }

    async def authenticate(self) -> Credentials:
        """v3 has no login call: the credentials carry every id."""
        return self.credentials

    async def run(self) -> RunInfo:
        """`GET /api/v1/run/{branch_id}`."""
        body = await self.transport.call_json(
            "GET",
            self.url(f"/run/{self.credentials.branch_id}"),
            self.headers(),
            "the run status call",
            200,
        )
        data = data_of(body)
        if data is None or "run_status" not in data or "run_number" not in data:
            raise UpstreamUnavailableError(
                "BranchKey's run status answer lacks data.run_status or data.run_number."
            )
        return RunInfo(run_status=str(data["run_status"]), run_number=data["run_number"])

    async def prepare(self, npz: WeightsFile, scratch: Path, policy: ValidationPolicy) -> Outgoing:
        """v3 sends the NPZ itself (`scratch` and `policy` are not needed)."""
        del scratch, policy
        return await read_outgoing(
            npz.path, npz.sha256, npz.kind, safe_filename(npz.filename, "weights.npz")
        )

    async def upload(self, outgoing: Outgoing) -> Sent:
        """`POST /api/v1/file/upload`, streamed, with the client's JSON metadata and integrity
        headers (§5.5.1); resent after a lost answer only where the upstream deduplicates uploads
        (the policy's `resend_uploads`)."""
        digest = f"sha256={base64.b64encode(outgoing.sha256).decode()}"
        metadata = {
            "client_version": CLIENT_VERSION,  # the gateway names itself in User-Agent only
            "timestamp": datetime.now().isoformat(),  # local time without offset, as the client sends
            "file_size": outgoing.size,
            "file_digest": digest,
            "kind": outgoing.kind,
        }
        headers = {
            **self.headers(),
            "x-bk-file-size": str(outgoing.size),
            "x-bk-file-digest": digest,
        }
        data = upload_data(self.credentials, json.dumps(metadata, ensure_ascii=False))
        file_id = await self.transport.post_file(
            self.url("/file/upload"),
            headers,
            data,
            outgoing,
            resend=self.transport.policy.resend_uploads,
        )
        return Sent(file_id=file_id, size=outgoing.size, sha256=outgoing.sha256)

    async def download_url(self, file_id: str) -> str:
        """`GET /api/v1/file/download/{file_id}` -> the blob URL."""
        return await self.transport.download_url(
            self.url(f"/file/download/{quote(file_id, safe='')}"), self.headers("*/*")
        )

    def blob(self, url: str) -> AbstractAsyncContextManager[httpx.Response]:
        """The blob behind a download URL, streamed; a non-200 answer is an error, never a model."""
        return self.transport.blob(url)

    async def send_metrics(self, aggregation_id: str, mode: str, data: Any) -> None:
        """`POST /api/v1/performance/analysis` (the body as the client sends it, without Content-Type)."""
        await self.transport.call_json(
            "POST",
            self.url("/performance/analysis"),
            self.headers(),
            "the metrics call",
            201,
            content=metrics_body(self.credentials, aggregation_id, mode, data),
            resend=False,  # a report whose answer was lost may have been counted
        )

    async def ticket(self) -> dict[str, Any]:
        """`POST /api/v1/ws/ticket` -> ticket_id, request_id (envelope or not), with the headers
        of the client's aiohttp call: an empty `application/octet-stream` body."""
        headers = {**self.headers(), "Content-Type": "application/octet-stream"}
        body = await self.transport.call_json(
            "POST", self.url("/ws/ticket"), headers, "the ticket call", 200, content=b""
        )
        data = body.get("data", body) if isinstance(body, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("ticket_id"), str):
            raise UpstreamUnavailableError("BranchKey's ticket answer lacks ticket_id.")
        return data
