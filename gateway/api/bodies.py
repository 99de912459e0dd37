"""The route class of the gateway's JSON routes: bodies bounded while they are read (413 above 1 MiB)."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, Final

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from starlette.types import Message, Receive

MAX_JSON_BYTES: Final = 1 << 20
_TOO_LARGE = f"The JSON body is larger than {MAX_JSON_BYTES} bytes."


def _bounded(receive: Receive, declared: str | None) -> Receive:
    """`receive`, raising 413 as soon as the body (declared or actually read) passes MAX_JSON_BYTES."""
    seen = 0

    async def bounded_receive() -> Message:
        nonlocal seen
        if declared is not None and declared.isdigit() and int(declared) > MAX_JSON_BYTES:
            raise HTTPException(413, _TOO_LARGE)  # before a byte of it is read
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > MAX_JSON_BYTES:
            raise HTTPException(413, _TOO_LARGE)
        return message

    return bounded_receive


class BoundedJSONRoute(APIRoute):
    """An `APIRoute` whose request body is cut off at MAX_JSON_BYTES: FastAPI reads it whole before parsing.

    The 413 is an `HTTPException` because FastAPI re-raises those from body reading (any other error
    becomes its generic 400).
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded_handler(request: Request) -> Response:
            receive = _bounded(request.receive, request.headers.get("content-length"))
            return await handler(Request(request.scope, receive))

        return bounded_handler
