"""What both dialects share on the wire: retries, error mapping, JSON calls and the streamed upload."""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
from anyio import to_thread

from gateway._io import sha256_file
from gateway.errors import (
    InsufficientStorageError,
    NotFoundError,
    UpstreamRejectedError,
    UpstreamTimeoutError,
    UpstreamUnavailableError,
)
from gateway.upstream.credentials import Credentials
from gateway.upstream.protocol import Outgoing

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


class Transport:
    """Sends a dialect's requests over a shared `httpx.AsyncClient`: retried, errors mapped."""

    def __init__(self, client: httpx.AsyncClient, retry: RetryPolicy | None = None) -> None:
        self.client = client
        self.retry = retry or RetryPolicy()

    async def send(
        self,
        build: Callable[[], httpx.Request],
        what: str,
        *,
        stream: bool = False,
        resend_after_body: bool = False,
    ) -> httpx.Response:
        """Send with retries: connect failures and 408/429/502/503/504 always; read failures only if
        `resend_after_body` (v3 uploads: the upstream deduplicates identical bodies)."""
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
        url: str,
        headers: dict[str, str],
        what: str,
        expected: int,
        **kwargs: Any,
    ) -> Any:
        """One JSON API call; returns the parsed body."""
        response = await self.send(
            lambda: self.client.build_request(method, url, headers=headers, **kwargs), what
        )
        raise_for_status(response, expected, what)
        try:
            return response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UpstreamUnavailableError(
                f"BranchKey answered {what} with a body that is not JSON."
            ) from None

    async def post_file(
        self,
        url: str,
        headers: dict[str, str],
        data: str,
        outgoing: Outgoing,
        *,
        resend_after_body: bool,
    ) -> str:
        """The upload call of both dialects: a `data` field, then the `file` part, streamed with an
        exact Content-Length; 201 + data.file_id."""
        boundary = secrets.token_hex(16)
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="data"\r\n\r\n{data}\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="{outgoing.filename}"\r\n\r\n'
        ).encode()
        tail = f"\r\n--{boundary}--\r\n".encode()
        sent = {
            **headers,
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Content-Length": str(len(head) + outgoing.size + len(tail)),
        }

        def build() -> httpx.Request:
            body = _body(head, outgoing.path, outgoing.size, tail)
            return self.client.build_request("POST", url, headers=sent, content=body)

        response = await self.send(build, "the upload", resend_after_body=resend_after_body)
        raise_for_status(response, 201, "the upload")
        file_id = _data_field(response, "file_id")
        if not isinstance(file_id, str) or not file_id:
            raise UpstreamUnavailableError("BranchKey's upload answer lacks data.file_id.")
        return file_id

    async def download_url(self, url: str, headers: dict[str, str]) -> str:
        """The download call of both dialects -> the absolute blob URL in data.download_url."""
        response = await self.send(
            lambda: self.client.build_request("GET", url, headers=headers), "the download call"
        )
        raise_for_status(response, 200, "the download call")
        blob_url = _data_field(response, "download_url")
        if not isinstance(blob_url, str) or not blob_url.startswith(("http://", "https://")):
            raise UpstreamUnavailableError(
                "BranchKey's download answer lacks an absolute data.download_url."
            )
        return blob_url

    @asynccontextmanager
    async def blob(self, url: str) -> AsyncIterator[httpx.Response]:
        """The blob behind a download URL, streamed, without credentials; a non-200 answer is an
        error, never a model."""
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


async def read_outgoing(path: Path, sha256: bytes | None, kind: str, filename: str) -> Outgoing:
    """An `Outgoing` for a file on disk: its size, and its sha256 unless already known."""
    size = await to_thread.run_sync(os.path.getsize, path)
    if sha256 is None:
        sha256 = await to_thread.run_sync(sha256_file, path)
    return Outgoing(path=path, size=size, sha256=sha256, kind=kind, filename=filename)


def upload_data(credentials: Credentials, metadata: str) -> str:
    """The `data` field of an upload in both dialects: the leaf name and the dialect's metadata."""
    return json.dumps({"leaf_name": credentials.name, "metadata": metadata})


def metrics_body(credentials: Credentials, aggregation_id: str, mode: str, data: Any) -> str:
    """The performance report as both dialects' clients send it (`data` JSON-encoded once more)."""
    body = {
        "mode": mode,
        "aggregation_id": aggregation_id,
        "leaf_id": credentials.id,
        "branch_id": credentials.branch_id,
        "tree_id": credentials.tree_id,
        "data": data if isinstance(data, str) else json.dumps(data),
    }
    return json.dumps(body)


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
    if response.status_code == InsufficientStorageError.status:  # a full disk: never retried
        raise InsufficientStorageError(
            f"BranchKey has no storage for {what} (HTTP 507): {text}",
            upstream_status=507,
        )
    if response.status_code >= 500 or response.status_code < 400:
        raise UpstreamUnavailableError(
            f"BranchKey answered {what} with HTTP {response.status_code}: {text}",
            upstream_status=response.status_code,
        )
    if response.status_code == 404:
        raise NotFoundError(f"BranchKey: {text}", upstream_status=404)
    raise UpstreamRejectedError(response.status_code, f"BranchKey refused {what}: {text}")


def safe_filename(filename: str, default: str) -> str:
    """A file name that cannot break the part header."""
    return "".join(ch for ch in filename if ch.isprintable() and ch not in '"\\\r\n') or default


def data_of(body: Any) -> dict[str, Any] | None:
    """The `data` object of an enveloped answer, or None."""
    data = body.get("data") if isinstance(body, dict) else None
    return data if isinstance(data, dict) else None


def _data_field(response: httpx.Response, key: str) -> Any:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    data = data_of(body)
    return data.get(key) if data is not None else None


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
