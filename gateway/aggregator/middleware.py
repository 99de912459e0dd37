"""Pure-ASGI middleware of the aggregator."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.aggregator.errors import error_response


class CollapseLeadingSlashes:
    """`//api/v1/...` (a host configured with a trailing slash, §2.1) is routed like `/api/v1/...`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"].startswith("//"):
            path = "/" + scope["path"].lstrip("/")
            scope = {**scope, "path": path, "raw_path": path.encode()}
        await self.app(scope, receive, send)


def host_origin_refusal(problem: str) -> ASGIApp:
    """The aggregator's 400 for an ambiguous Host or Origin (`http_limits.SingleHostOrigin`)."""
    return error_response(400, problem, headers={"Connection": "close"})
