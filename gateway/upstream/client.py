"""The one `httpx.AsyncClient` of the gateway's upstream calls: timeouts, proxies, TLS, and timing."""

from __future__ import annotations

import time
from collections.abc import Callable
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
