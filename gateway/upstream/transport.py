"""What both dialects share on the wire: retries, error mapping, JSON calls and the streamed upload."""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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
from gateway.upstream.pacing import Clock, Deadline, Pace, PacedStream, UploadBody
from gateway.upstream.policy import Policy
from gateway.upstream.protocol import Outgoing
from gateway.upstream.redirects import MAX_REDIRECTS, Call

log = logging.getLogger("gateway.upstream")

_ERROR_TEXT_LIMIT = 500
_NOTHING_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class Transport:
    """Sends a dialect's requests over a shared `httpx.AsyncClient` as the official client does
    (retries, `Retry-After`, redirects), each operation bounded in time, errors mapped."""

    def __init__(self, client: httpx.AsyncClient, policy: Policy | None = None) -> None:
        self.client = client
        self.policy = policy or Policy()

    async def send(
        self,
        call: Call,
        what: str,
        *,
        stream: bool = False,
        resend: bool = True,
        clock: Clock | None = None,
    ) -> httpx.Response:
        """`call` with its redirects and retries, within `clock` (a control call's deadline unless
        given). `resend`: the request may be repeated after it was sent whole and its answer was
        lost (idempotent calls; uploads only where the upstream deduplicates them)."""
        clock = clock or Deadline(self.policy.bounds.deadline_s)
        with clock.scope:
            return await self._follow(call, what, stream, resend, clock)
        raise clock.expired(what)

    async def _follow(
        self, call: Call, what: str, stream: bool, resend: bool, clock: Clock
    ) -> httpx.Response:
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._attempts(call, what, stream, resend, clock)
            following = call.redirected(response)
            if following is None:
                return response
            await response.aclose()
            log.info("following a %d redirect of %s", response.status_code, what)
            call = following
        raise UpstreamUnavailableError(
            f"BranchKey redirected {what} more than {MAX_REDIRECTS} times."
        )

    async def _attempts(
        self, call: Call, what: str, stream: bool, resend: bool, clock: Clock
    ) -> httpx.Response:
        """Up to 1 + max_retries attempts of one URL: connect failures, a request cut before its
        last byte, and the retried statuses always; a lost answer only if `resend`."""
        retry = self.policy.retry
        attempt = 0
        while True:
            attempt += 1
            last = attempt > retry.max_retries
            clock.attempt()
            request, body = call.build(self.client)
            try:
                response = await self.client.send(request, stream=stream)
            except httpx.TransportError as exc:
                await _close(body)
                whole = not isinstance(exc, _NOTHING_SENT) and getattr(body, "complete", True)
                if last or (whole and not resend):
                    raise _transport_error(exc, what) from None
                delay = retry.delay(attempt, None)
            except BaseException:
                await _close(body)
                raise
            else:
                await _close(body)
                retry_after = response.headers.get("retry-after")
                if last or not retry.retries(response.status_code, retry_after):
                    return response
                delay = retry.delay(attempt, retry_after)
                if delay > clock.remaining():
                    log.warning(
                        "not retrying %s: BranchKey asked to wait %.1f s, beyond its time bound",
                        what,
                        delay,
                    )
                    return response
                await response.aclose()
            log.info("retrying %s in %.1f s (attempt %d)", what, delay, attempt + 1)
            clock.attempt()
            await anyio.sleep(delay)

    async def call_json(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        what: str,
        expected: int,
        *,
        content: bytes | str | None = None,
        resend: bool = True,
    ) -> Any:
        """One JSON API call; returns the parsed body."""
        body = content.encode() if isinstance(content, str) else content
        call = Call.of(method, url, headers, None if body is None else lambda: body)
        response = await self.send(call, what, resend=resend)
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
        resend: bool,
    ) -> str:
        """The upload call of both dialects: a `data` field, then the `file` part, streamed with an
        exact Content-Length and paced; 201 + data.file_id. It is sent again whenever BranchKey
        cannot have stored it (the connection failed before its last byte), and after a lost
        answer only if `resend`."""
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
        pace = Pace(self.policy.bounds)

        def body() -> UploadBody:
            return UploadBody(head, outgoing.path, outgoing.size, tail, pace, outgoing.growing)

        call = Call.of("POST", url, sent, body)
        response = await self.send(call, "the upload", resend=resend, clock=pace)
        raise_for_status(response, 201, "the upload")
        file_id = _data_field(response, "file_id")
        if not isinstance(file_id, str) or not file_id:
            raise UpstreamUnavailableError("BranchKey's upload answer lacks data.file_id.")
        return file_id

    async def download_url(self, url: str, headers: dict[str, str]) -> str:
        """The download call of both dialects -> the absolute blob URL in data.download_url."""
        response = await self.send(Call.of("GET", url, headers), "the download call")
        raise_for_status(response, 200, "the download call")
        blob_url = _data_field(response, "download_url")
        if not isinstance(blob_url, str) or not blob_url.startswith(("http://", "https://")):
            raise UpstreamUnavailableError(
                "BranchKey's download answer lacks an absolute data.download_url."
            )
        return blob_url

    @asynccontextmanager
    async def blob(self, url: str) -> AsyncIterator[httpx.Response]:
        """The blob behind a download URL, streamed and paced, without credentials; a non-200
        answer is an error, never a model. The pace's scope spans the caller's reading: a stalled
        blob ends the caller's `async with` with a 504 (a context manager may hold a scope open
        across its `yield`; the reader's own time is not counted)."""
        what = "the blob download"
        pace = Pace(self.policy.bounds)
        response = await self.send(Call.of("GET", url, {}), what, stream=True, clock=pace)
        pace.moved(0)  # the clock stops until the body is awaited
        pace.scope = anyio.CancelScope()
        try:
            with pace.scope:
                if response.status_code != 200:
                    pace.attempt()
                    await response.aread()
                    raise_for_status(response, 200, what)
                if not isinstance(response.stream, httpx.AsyncByteStream):  # pragma: no cover
                    raise TypeError("the upstream client must be an httpx.AsyncClient")
                response.stream = PacedStream(response.stream, pace)
                yield response
            if pace.scope.cancelled_caught:
                raise pace.expired(what)
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


async def _close(body: Any) -> None:
    """Close an attempt's body if it holds anything open (an upload's file)."""
    if isinstance(body, UploadBody):
        await body.aclose()


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
