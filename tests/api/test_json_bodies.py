"""The gateway's JSON routes (`POST /session`, `POST /performance`): bodies bounded while read, deep nesting refused."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from gateway.api.bodies import MAX_JSON_BYTES
from tests.support.gateways import GatewayFactory
from tests.support.http import check_problem

ROUTES = ["/session", "/performance"]


def _chunks(total: int, size: int = 64 * 1024) -> Iterator[bytes]:
    yield b'{"pad": "'
    for _ in range(total // size):
        yield b"a" * size
    yield b'"}'


@pytest.mark.parametrize("path", ROUTES)
def test_a_body_over_1_mib_gets_413(gateway_for: GatewayFactory, path: str) -> None:
    """A JSON body of 1 MiB + 1 byte gets a 413 payload-too-large problem, declared or streamed without length."""
    gateway = gateway_for()
    body = b'"' + b"a" * (MAX_JSON_BYTES - 1) + b'"'
    assert len(body) == MAX_JSON_BYTES + 1
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        declared = client.post(path, content=body, headers=headers)
        check_problem(declared, 413, "payload-too-large")
        streamed = client.post(path, content=_chunks(4 * MAX_JSON_BYTES), headers=headers)
        check_problem(streamed, 413, "payload-too-large")
        assert "content-length" not in streamed.request.headers


@pytest.mark.parametrize("path", ROUTES)
@pytest.mark.parametrize("depth", [990, 100_000])
def test_deeply_nested_json_gets_400(gateway_for: GatewayFactory, path: str, depth: int) -> None:
    """JSON nested `depth` levels deep is a 400 problem, never a 500."""
    gateway = gateway_for()
    body = '{"a":' * depth + "1" + "}" * depth
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        answer = client.post(path, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
