"""Who may call the gateway: loopback only without GATEWAY_TOKEN, else `Authorization: Bearer <token>`."""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import PROBLEM_JSON, NotAuthenticatedError

_LOOPBACK_HOSTS = frozenset({b"127.0.0.1", b"localhost", b"[::1]"})


def _hostname(value: bytes) -> bytes:
    """`host[:port]` (or an Origin URL) -> host, lower-case."""
    value = value.split(b"://", 1)[-1].lower()
    if value.startswith(b"["):
        return value.split(b"]", 1)[0] + b"]"
    return value.split(b":", 1)[0]


class RequireToken:
    """When GATEWAY_TOKEN is set, every route but /healthz needs `Authorization: Bearer <token>`.

    Without a token only loopback is trusted: the Host must be a loopback name (no DNS rebinding)
    and a browser's Origin, when sent, must be loopback too (no web page can post weights).
    """

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or scope["path"] == "/healthz":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.token is None:
            origin = headers.get(b"origin")
            if _hostname(headers.get(b"host", b"127.0.0.1")) in _LOOPBACK_HOSTS and (
                origin is None or _hostname(origin) in _LOOPBACK_HOSTS
            ):
                await self.app(scope, receive, send)
                return
            await _refuse(
                scope,
                send,
                "Without GATEWAY_TOKEN the gateway answers only loopback requests (Host 127.0.0.1, "
                "localhost or [::1], and no foreign Origin); set GATEWAY_TOKEN to serve others.",
            )
            return
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token):
            await self.app(scope, receive, send)
            return
        await _refuse(
            scope, send, "Send 'Authorization: Bearer <GATEWAY_TOKEN>' with every request."
        )


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
