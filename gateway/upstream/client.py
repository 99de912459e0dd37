"""The one `httpx.AsyncClient` of the gateway's upstream calls: timeouts, proxies, TLS, timing, and
the direct read of a large answer's body."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpcore
import httpx

from gateway import __version__
from gateway.settings import Settings

USER_AGENT = f"branchkey-gateway/{__version__}"
"""How the gateway names itself upstream (the only place it does: uploads carry the client version)."""
READ_BYTES = 256 * 1024
"""Bytes asked of the socket per read of an HTTP/1.1 answer. httpcore asks 64 KiB; its per-read
cost (cancel scopes, h11 events) then caps a blob download near 350 MiB/s on one core, 2x
slower than with 256 KiB, the most asyncio's socket transport hands over at once."""

DIRECT_READ_BYTES = 1024 * 1024
"""Bytes asked of the connection per read of a `DirectBody` (what the socket holds comes back,
up to this)."""

Observe = Callable[[httpx.URL, int | str, float], None]
"""Told each request's URL, its status (`"error"` when no answer came) and the seconds until the
answer's headers."""


class TimedClient(httpx.AsyncClient):
    """An `httpx.AsyncClient` that reports how long every request took to `observe`."""

    def __init__(self, observe: Observe, **options: Any) -> None:
        super().__init__(**options)
        self._observe = observe

    async def send(self, request: httpx.Request, **options: Any) -> httpx.Response:
        """Send `request`, timing it until the answer's headers."""
        started = time.perf_counter()
        try:
            response = await super().send(request, **options)
        except Exception:
            self._observe(request.url, "error", time.perf_counter() - started)
            raise
        self._observe(request.url, response.status_code, time.perf_counter() - started)
        return response


def upstream_client(settings: Settings, observe: Observe) -> httpx.AsyncClient:
    """The client for BranchKey calls, as `settings` configure it (BK_* timeouts, proxies, TLS)."""
    # httpcore's public class constant, the one knob for it: process-wide (every HTTP/1.1
    # connection of this process reads in READ_BYTES), which suits all the gateway's calls.
    httpcore.AsyncHTTP11Connection.READ_NUM_BYTES = max(
        httpcore.AsyncHTTP11Connection.READ_NUM_BYTES, READ_BYTES
    )
    timeout = httpx.Timeout(
        connect=settings.bk_connect_timeout_s,
        read=settings.bk_read_timeout_s,
        write=settings.bk_read_timeout_s,
        pool=settings.bk_connect_timeout_s,
    )
    mounts: dict[str, httpx.AsyncBaseTransport | None] | None = None
    if settings.bk_proxies:
        mounts = {
            f"{scheme}://": httpx.AsyncHTTPTransport(proxy=url, verify=settings.ssl_verify())
            for scheme, url in settings.bk_proxies.items()
        }
    return TimedClient(
        observe,
        timeout=timeout,
        verify=settings.ssl_verify(),
        mounts=mounts,
        trust_env=True,
        headers={"User-Agent": USER_AGENT},
        follow_redirects=False,  # the transport follows them, dropping credentials across origins
    )


class DirectBody(httpx.AsyncByteStream):
    """The body of an HTTP/1.1 answer of a declared length (a blob), read from its connection instead
    of through h11, which copies every byte three times (into its buffer, out of it, into `bytes`):
    a 512 MiB blob on loopback took 0.65 s of the event loop's CPU that way, 0.2 s this way.

    The first chunk comes through httpx: it holds what h11 had buffered with the headers, which
    leaves h11's buffer empty (no chunk: h11 saw the body end, it has none). The rest is read from
    httpcore's `network_stream` extension, up to the declared length and never past it; a
    connection that ends early or goes silent is the `httpx` error h11 would have raised. The
    connection is then closed with the answer (h11 never saw the body end), never put back in the
    pool: one fresh connection per blob.
    """

    def __init__(
        self,
        inner: httpx.AsyncByteStream,
        network: httpcore.AsyncNetworkStream,
        length: int,
        request: httpx.Request,
    ) -> None:
        self.inner = inner
        self.network = network
        self.length = length
        self.request = request
        self.timeout: float | None = request.extensions.get("timeout", {}).get("read")
        self._chunks: AsyncIterator[bytes] | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = self._chunks = self.inner.__aiter__()
        first = await anext(chunks, None)
        if first is None:
            return
        yield first
        left = self.length - len(first)
        if left <= 0:  # all of it came with the headers: httpx reads the end of the message
            async for chunk in chunks:
                yield chunk
            return
        while left > 0:
            chunk = await self._read(min(left, DIRECT_READ_BYTES))
            left -= len(chunk)
            yield chunk

    async def _read(self, size: int) -> bytes:
        try:
            chunk = await self.network.read(size, self.timeout)
        except httpcore.TimeoutException as exc:
            raise httpx.ReadTimeout(str(exc), request=self.request) from exc
        except httpcore.NetworkError as exc:
            raise httpx.ReadError(str(exc), request=self.request) from exc
        if not chunk:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body", request=self.request
            )
        return chunk

    async def aclose(self) -> None:
        """Close the answer (and so, mid-message, its connection)."""
        chunks, self._chunks = self._chunks, None
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
        await self.inner.aclose()


def direct_body(response: httpx.Response) -> httpx.AsyncByteStream:
    """`response`'s body as a `DirectBody` when it can be one (HTTP/1.1 over a connection httpcore
    exposes, a Content-Length and no Transfer-Encoding), else its own stream unchanged."""
    stream = response.stream
    if not isinstance(stream, httpx.AsyncByteStream):  # pragma: no cover
        raise TypeError("the upstream client must be an httpx.AsyncClient")
    network = response.extensions.get("network_stream")
    length = response.headers.get("content-length", "")
    if (
        response.http_version != "HTTP/1.1"
        or not isinstance(network, httpcore.AsyncNetworkStream)
        or "transfer-encoding" in response.headers
        or not length.isdigit()
    ):
        return stream
    return DirectBody(stream, network, int(length), response.request)
