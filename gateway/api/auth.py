"""Who may call the gateway: loopback only without GATEWAY_TOKEN, else `Authorization: Bearer <token>`
(or, for a GET or HEAD from a browser, a signed `?access_token=`)."""

from __future__ import annotations

import hmac
import json
from collections.abc import Iterable
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.access import QUERY_PARAMETER, AccessSigner
from gateway.errors import PROBLEM_JSON, NotAuthenticatedError

_LOOPBACK_HOSTS = frozenset({b"127.0.0.1", b"localhost", b"[::1]"})

PUBLIC_PATHS = frozenset(
    {"/healthz", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)
"""Open with GATEWAY_TOKEN too: they hold no data (the pages ask for the token, the spec is public)."""
PUBLIC_PREFIX = "/static/"


def _hostname(value: bytes) -> bytes:
    """`host[:port]` (or an Origin URL) -> host, lower-case."""
    value = value.split(b"://", 1)[-1].lower()
    if value.startswith(b"["):
        return value.split(b"]", 1)[0] + b"]"
    return value.split(b":", 1)[0]


class RequireToken:
    """When GATEWAY_TOKEN is set, every route but /healthz and the pages needs `Authorization:
    Bearer <token>`; a GET or HEAD may carry a signed `?access_token=` from POST /access instead.

    Without a token only loopback is trusted: the Host must be a loopback name (no DNS rebinding)
    and a browser's Origin, when sent, must be loopback or listed in GATEWAY_CORS_ORIGINS (no other
    web page can post weights).
    """

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        access: AccessSigner | None = None,
        origins: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.access = access
        self.origins = frozenset(origin.encode() for origin in origins)
        """GATEWAY_CORS_ORIGINS: pages the user trusts, loopback or not."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.token is None:
            origin = headers.get(b"origin")
            if _hostname(headers.get(b"host", b"127.0.0.1")) in _LOOPBACK_HOSTS and (
                origin is None or _hostname(origin) in _LOOPBACK_HOSTS or origin in self.origins
            ):
                await self.app(scope, receive, send)
                return
            await _refuse(
                scope,
                send,
                "Without GATEWAY_TOKEN the gateway answers only loopback requests (Host 127.0.0.1, "
                "localhost or [::1], and no foreign Origin: list a web page's origin in "
                "GATEWAY_CORS_ORIGINS, or serve it on a loopback port); set GATEWAY_TOKEN to "
                "serve others.",
            )
            return
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            await self.app(scope, receive, send)
            return
        if _is_public(scope):
            await self.app(scope, receive, send)
            return
        refusal = self._check_access_token(scope)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        await _refuse(scope, send, refusal)

    def _check_access_token(self, scope: Scope) -> str | None:
        """None when a GET or HEAD carries a valid `?access_token=`, else why the request is refused."""
        bearer = "Send 'Authorization: Bearer <GATEWAY_TOKEN>' with every request"
        found = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(QUERY_PARAMETER)
        if found is None or self.access is None:
            return (
                f"{bearer}; where a browser cannot (EventSource, links), add "
                f"?{QUERY_PARAMETER}= with a token from POST /access."
            )
        if scope.get("method") not in ("GET", "HEAD"):
            return f"{bearer}: ?{QUERY_PARAMETER}= is accepted for GET and HEAD only."
        verdict = self.access.check(found[0]) if len(found) == 1 else "invalid"
        if verdict == "valid":
            return None
        if verdict == "expired":
            return f"The {QUERY_PARAMETER} has expired: get a new one with POST /access."
        return f"The {QUERY_PARAMETER} is not one this gateway issued: get one with POST /access."


def _is_public(scope: Scope) -> bool:
    path: str = scope["path"]
    return scope["type"] == "http" and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIX))


async def _refuse(scope: Scope, send: Send, detail: str) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
        return
    error = NotAuthenticatedError(detail)
    body = json.dumps(error.body()).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b"Bearer"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
