"""Requests with two Host (or Origin) headers, or a user name in either, are refused before any route."""

from __future__ import annotations

import json
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import PROBLEM_JSON, BadRequestError
from gateway.http_limits import host_origin_problem

log = logging.getLogger("gateway.requests")


class SingleHostOrigin:
    """400 problem for an ambiguous Host or Origin (a WebSocket is closed with 1008 instead).

    It runs outside the token and loopback checks, which read one Host and one Origin: they must
    never read a value another parser would understand differently.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = None
        if scope["type"] in ("http", "websocket"):
            problem = host_origin_problem(scope.get("headers") or ())
        if problem is None:
            await self.app(scope, receive, send)
            return
        log.info("%s refused: 400 /problems/bad-request: %s", scope["path"], problem)
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": problem[:120]})
        else:
            body = json.dumps(BadRequestError(problem).body()).encode()
            headers = [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            await send({"type": "http.response.start", "status": 400, "headers": headers})
            await send({"type": "http.response.body", "body": body})
