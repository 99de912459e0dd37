"""BranchKey protocol v3 (`/api/v1`, Bearer, NPZ), spoken exactly as the official 3.0.1 client does."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
import httpx

from gateway import __version__
from gateway.errors import (
    NotFoundError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.upstream.credentials import Credentials

log = logging.getLogger("gateway.upstream")

_CHUNK = 1 << 20
_ERROR_TEXT_LIMIT = 500
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently failed upstream calls are repeated."""

    max_retries: int = 3
    backoff_s: float = 1.0
    max_delay_s: float = 60.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds before retry `attempt` (1-based): `Retry-After` when given, else exponential."""
        if retry_after:
            seconds = _retry_after_seconds(retry_after)
            if seconds is not None:
                return min(max(seconds, 0.0), self.max_delay_s)
        return float(min(self.backoff_s * 2 ** (attempt - 1), self.max_delay_s))


def _retry_after_seconds(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return (when - datetime.now(when.tzinfo)).total_seconds()


@dataclass(frozen=True)
class RunInfo:
    """The run as the upstream reports it."""

    run_status: str
    run_number: Any


def upstream_error_text(response: httpx.Response) -> str:
    """The upstream's `error` sentence, or a bounded piece of its body."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])[:_ERROR_TEXT_LIMIT]
    text = response.text[:_ERROR_TEXT_LIMIT].strip()
    return text or f"HTTP {response.status_code} with an empty body"


def raise_for_status(response: httpx.Response, expected: int, what: str) -> None:
    """Map an unexpected upstream status onto the gateway's errors (4xx passed through, 5xx -> 502)."""
    if response.status_code == expected:
        return
    text = upstream_error_text(response)
    if response.status_code >= 500 or response.status_code < 400:
        raise UpstreamUnavailableError(
            f"BranchKey answered {what} with HTTP {response.status_code}: {text}",
            upstream_status=response.status_code,
        )
    if response.status_code == 404:
        raise NotFoundError(f"BranchKey: {text}", upstream_status=404)
    raise UpstreamRejectedError(response.status_code, f"BranchKey refused {what}: {text}")


class V3Upstream:
    """One leaf's session with a v3 upstream, over a shared `httpx.AsyncClient`."""

    dialect = "v3"
    upload_format = "npz"
    """The file format this dialect uploads: `npz`, or `npy-object` (the v1 pickled layout)."""
    resend_uploads = True
    """Resend an upload whose answer timed out: the v3 service deduplicates identical bodies."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        host: str,
        credentials: Credentials,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.client = client
        self.host = host.rstrip("/")
        self.credentials = credentials
        self.retry = retry or RetryPolicy()

    def url(self, path: str) -> str:
        """The absolute URL of an API path."""
        return f"{self.host}/api/v1{path}"

    def headers(self, accept: str = "application/json") -> dict[str, str]:
        """The headers of every API call (§5.3)."""
        creds = self.credentials
        return {
            "Authorization": f"Bearer {creds.id}:{creds.session_token}",
            "accept": accept,
            "LEAF": "true",
        }

    def call_headers(self, path: str) -> dict[str, str]:
        """The headers of a JSON API call to `path`."""
        del path  # v3 sends the same headers on every call
        return self.headers()

    async def send(
        self,
        build: Callable[[], httpx.Request],
        what: str,
        *,
        stream: bool = False,
        resend_after_body: bool = False,
    ) -> httpx.Response:
        """Send with retries: connect failures and 408/429/502/503/504 always; read failures only if
        `resend_after_body` (uploads: the upstream deduplicates identical bodies)."""
        attempt = 0
        while True:
            attempt += 1
            last = attempt > self.retry.max_retries
            try:
                response = await self.client.send(build(), stream=stream)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                if last:
                    raise _transport_error(exc, what) from None
                delay = self.retry.delay(attempt, None)
            except httpx.TransportError as exc:
                if last or not resend_after_body:
                    raise _transport_error(exc, what) from None
                delay = self.retry.delay(attempt, None)
            else:
                if response.status_code not in RETRY_STATUSES or last:
                    return response
                delay = self.retry.delay(attempt, response.headers.get("retry-after"))
                await response.aclose()
            log.info("retrying %s in %.1f s (attempt %d)", what, delay, attempt + 1)
            await anyio.sleep(delay)

    async def call_json(
        self,
        method: str,
        path: str,
        what: str,
        expected: int,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """One JSON API call; returns the parsed body."""
        sent = headers or self.call_headers(path)
        response = await self.send(
            lambda: self.client.build_request(method, self.url(path), headers=sent, **kwargs),
            what,
        )
        raise_for_status(response, expected, what)
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UpstreamUnavailableError(
                f"BranchKey answered {what} with a body that is not JSON."
            ) from None

    def run_path(self) -> str:
        """The run status path of this dialect."""
        return f"/run/{self.credentials.branch_id}"

    async def run(self) -> RunInfo:
        """The run status call (`GET /api/v1/run/{branch_id}` in v3)."""
        body = await self.call_json("GET", self.run_path(), "the run status call", 200)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict) or "run_status" not in data or "run_number" not in data:
            raise UpstreamUnavailableError(
                "BranchKey's run status answer lacks data.run_status or data.run_number."
            )
        return RunInfo(run_status=str(data["run_status"]), run_number=data["run_number"])

    async def authenticate(self) -> Credentials:
        """v3 has no login call: the credentials carry every id."""
        return self.credentials

    async def ensure_authenticated(self) -> None:
        """Make sure the session's ids are known (v3: they always are)."""

    async def upload(self, path: Path, size: int, digest_b64: str, kind: str, filename: str) -> str:
        """`POST /api/v1/file/upload`, streamed from `path` with the client's exact parts and headers (§5.5.1)."""
        digest = f"sha256={digest_b64}"
        metadata = {
            "client_version": f"branchkey-gateway/{__version__}",
            "timestamp": datetime.now().isoformat(),  # local time without offset, as the client sends
            "file_size": size,
            "file_digest": digest,
            "kind": kind,
        }
        return await self.post_file(
            path,
            size,
            safe_filename(filename, "weights.npz"),
            json.dumps(metadata, ensure_ascii=False),
            {"x-bk-file-size": str(size), "x-bk-file-digest": digest},
        )

    async def post_file(
        self, path: Path, size: int, filename: str, metadata: str, extra: dict[str, str]
    ) -> str:
        """The upload call of both dialects: a `data` field, then the `file` part, streamed; 201 + file_id."""
        data = json.dumps({"leaf_name": self.credentials.name, "metadata": metadata})
        boundary = secrets.token_hex(16)
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="data"\r\n\r\n{data}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n\r\n'
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        headers = {
            **self.headers(),
            **extra,
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + size + len(tail)),
        }

        def build() -> httpx.Request:
            return self.client.build_request(
                "POST",
                self.url("/file/upload"),
                headers=headers,
                content=_body(head, path, size, tail),
            )

        response = await self.send(build, "the upload", resend_after_body=self.resend_uploads)
        raise_for_status(response, 201, "the upload")
        body = _json_or_none(response)
        answer = body.get("data") if isinstance(body, dict) else None
        file_id = answer.get("file_id") if isinstance(answer, dict) else None
        if not isinstance(file_id, str) or not file_id:
            raise UpstreamUnavailableError("BranchKey's upload answer lacks data.file_id.")
        return file_id

    download_accept = "*/*"

    async def download_url(self, file_id: str) -> str:
        """`GET <prefix>/file/download/{file_id}` -> the blob URL."""
        response = await self.send(
            lambda: self.client.build_request(
                "GET",
                self.url(f"/file/download/{quote(file_id, safe='')}"),
                headers=self.headers(self.download_accept),
            ),
            "the download call",
        )
        raise_for_status(response, 200, "the download call")
        body = _json_or_none(response)
        answer = body.get("data") if isinstance(body, dict) else None
        url = answer.get("download_url") if isinstance(answer, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise UpstreamUnavailableError(
                "BranchKey's download answer lacks an absolute data.download_url."
            )
        return url

    @asynccontextmanager
    async def blob(self, url: str) -> AsyncIterator[httpx.Response]:
        """The blob behind a download URL, streamed; a non-200 answer is an error, never a model."""
        response = await self.send(
            lambda: self.client.build_request("GET", url), "the blob download", stream=True
        )
        try:
            if response.status_code != 200:
                await response.aread()
                raise_for_status(response, 200, "the blob download")
            yield response
        finally:
            await response.aclose()

    async def send_metrics(self, aggregation_id: str, mode: str, data: Any) -> None:
        """`POST /api/v1/performance/analysis` (the body as the client sends it, without Content-Type)."""
        creds = self.credentials
        body = {
            "mode": mode,
            "aggregation_id": aggregation_id,
            "leaf_id": creds.id,
            "branch_id": creds.branch_id,
            "tree_id": creds.tree_id,
            "data": data if isinstance(data, str) else json.dumps(data),
        }
        await self.call_json(
            "POST", "/performance/analysis", "the metrics call", 201, content=json.dumps(body)
        )

    async def ticket(self) -> dict[str, Any]:
        """`POST /api/v1/ws/ticket` -> ticket_id, request_id (envelope or not)."""
        body = await self.call_json("POST", "/ws/ticket", "the ticket call", 200)
        data = body.get("data", body) if isinstance(body, dict) else None
        if not isinstance(data, dict) or not isinstance(data.get("ticket_id"), str):
            raise UpstreamUnavailableError("BranchKey's ticket answer lacks ticket_id.")
        return data


def safe_filename(filename: str, default: str) -> str:
    """A file name that cannot break the part header."""
    return "".join(ch for ch in filename if ch.isprintable() and ch not in '"\\\r\n') or default


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


async def _body(head: bytes, path: Path, size: int, tail: bytes) -> AsyncIterator[bytes]:
    yield head
    sent = 0
    async with await anyio.open_file(path, "rb") as stream:
        while sent < size:
            chunk = await stream.read(min(_CHUNK, size - sent))
            if not chunk:
                raise UpstreamUnavailableError("The upload file shrank while it was being sent.")
            sent += len(chunk)
            yield chunk
    yield tail


def _transport_error(
    exc: httpx.TransportError, what: str
) -> UpstreamTimeoutError | UpstreamUnavailableError:
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamTimeoutError(
            f"BranchKey did not answer {what} in time ({type(exc).__name__})."
        )
    return UpstreamUnavailableError(
        f"BranchKey could not be reached for {what} ({type(exc).__name__}: {exc})."
    )
