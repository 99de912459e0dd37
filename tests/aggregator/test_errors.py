"""The aggregator's named errors: each one's status, and the `{"error": ...}` body every handler answers with."""

from __future__ import annotations

import anyio
import httpx
import pytest
from fastapi import FastAPI

from gateway.aggregator.errors import (
    AggregatorError,
    BadRequestError,
    ConflictError,
    ForbiddenError,
    NotAuthenticatedError,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    UnprocessableError,
    add_exception_handlers,
)
from tests.support.aggregator import Running

STATUSES: list[tuple[type[AggregatorError], int]] = [
    (BadRequestError, 400),
    (NotAuthenticatedError, 401),
    (ForbiddenError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (PayloadTooLargeError, 413),
    (UnprocessableError, 422),
    (ServiceUnavailableError, 503),
]


def _get(path: str, error: AggregatorError) -> httpx.Response:
    """GET `path` of an app whose `/refuse` route raises `error` (in memory: error mapping only)."""
    app = FastAPI()
    add_exception_handlers(app)

    @app.get("/refuse")
    async def refuse() -> None:
        raise error

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://agg") as client:
            return await client.get(path)

    return anyio.run(get)


@pytest.mark.parametrize(("cls", "status"), STATUSES, ids=[c.__name__ for c, _ in STATUSES])
def test_named_error_is_answered_with_its_status(cls: type[AggregatorError], status: int) -> None:
    """Raising a named error answers its HTTP status with `{"error": <its sentence>}` and nothing else."""
    response = _get("/refuse", cls("Because of a reason."))
    assert response.status_code == status
    assert response.json() == {"error": "Because of a reason."}


def test_unknown_route_keeps_the_error_shape() -> None:
    """Starlette's own 404 for an unknown path is answered in the same `{"error": ...}` shape."""
    response = _get("/nowhere", NotFoundError("unused"))
    assert (response.status_code, response.json()) == (404, {"error": "No such route."})


def test_a_wrong_method_gets_405_with_allow(aggregator: Running) -> None:
    """A method a route does not serve gets 405 in the error shape, with the methods it does serve in `Allow`."""
    response = httpx.put(f"{aggregator.url}/admin/run", headers=aggregator.admin, timeout=10)
    assert response.status_code == 405
    assert "POST" in response.headers["allow"].split(", ")
    assert "error" in response.json()
