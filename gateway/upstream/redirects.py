"""Upstream requests as values, and where a redirect sends one (as requests follows them for the client)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import httpx

from gateway.errors import UpstreamUnavailableError

MAX_REDIRECTS = 10
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CREDENTIAL_HEADERS = frozenset({"authorization", "leaf"})
"""Never carried to another origin (scheme, host and port)."""
_BODY_HEADERS = frozenset({"content-type", "content-length", "transfer-encoding"})

Content = Callable[[], Any]
"""Makes one attempt's body (bytes, or a fresh async iterable), or None for no body."""


@dataclass(frozen=True)
class Call:
    """One upstream request, rebuilt for every attempt (a streamed body is read again)."""

    method: str
    url: httpx.URL
    headers: tuple[tuple[str, str], ...]
    content: Content | None = None
    origin: tuple[str, str, int | None] | None = None
    """The origin the credentials were meant for (the first URL's)."""

    @classmethod
    def of(
        cls, method: str, url: str, headers: dict[str, str], content: Content | None = None
    ) -> Call:
        """A call to `url` with `headers`; its credentials stay with this URL's origin."""
        parsed = httpx.URL(url)
        return cls(method, parsed, tuple(headers.items()), content, _origin(parsed))

    def build(self, client: httpx.AsyncClient) -> tuple[httpx.Request, Any]:
        """The request of one attempt, and the body it sends."""
        body = self.content() if self.content is not None else None
        request = client.build_request(
            self.method, self.url, headers=list(self.headers), content=body
        )
        return request, body

    def redirected(self, response: httpx.Response) -> Call | None:
        """The call a redirect answer asks for, or None when `response` is no redirect."""
        location = response.headers.get("location")
        if response.status_code not in REDIRECT_STATUSES or not location:
            return None
        try:
            target = self.url.join(location)
        except httpx.InvalidURL:
            target = None
        if target is None or target.scheme not in ("http", "https"):
            raise UpstreamUnavailableError(
                f"BranchKey redirected to {location!r}, which is not an http(s) URL."
            )
        headers = self.headers
        if _origin(target) != self.origin:
            headers = tuple((k, v) for k, v in headers if k.lower() not in CREDENTIAL_HEADERS)
        method, content = self.method, self.content
        status = response.status_code
        if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
            method, content = "GET", None  # what browsers and requests do; 307/308 keep the body
            headers = tuple((k, v) for k, v in headers if k.lower() not in _BODY_HEADERS)
        return replace(self, method=method, url=target, headers=headers, content=content)


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return url.scheme, url.host, url.port or default
