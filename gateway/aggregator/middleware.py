"""Pure-ASGI middleware of the aggregator."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.aggregator.errors import error_response
from gateway.http_limits import host_origin_problem


class CollapseLeadingSlashes:
    """`//api/v1/...` (a host configured with a trailing slash, §2.1) is routed like `/api/v1/...`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith("//"):
            path = "/" + scope["path"].lstrip("/")
            scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


class SingleHostOrigin:
    """An ambiguous Host or Origin (two of either, or a user name in one) is refused with a 400."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        problem = None
        if scope["type"] in ("http", "websocket"):
            problem = host_origin_problem(scope.get("headers") or ())
        if problem is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": problem[:120]})
        else:
            await error_response(400, problem, headers={"Connection": "close"})(
                scope, receive, send
            )
