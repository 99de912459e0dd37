"""HTTP helpers: curl as a user types it, problem+json checks, readiness, aggregator admin look-ups."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.support.aggregator import Running

PROBLEM_JSON = "application/problem+json"


@dataclass(frozen=True)
class CurlResult:
    """The final response curl received."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


def curl(*args: str, cwd: Path | None = None, timeout: float = 60) -> CurlResult:
    """Run `curl -sS <args>` and return its last response (status, lower-cased headers, body)."""
    out = subprocess.run(
        ["curl", "-sS", "-D", "/dev/stderr", "-o", "/dev/stdout", *args],
        cwd=cwd,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    blocks = [b for b in out.stderr.decode("latin1").split("\r\n\r\n") if b.startswith("HTTP/")]
    assert blocks, out.stderr.decode(errors="replace")
    status_line, *lines = blocks[-1].split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return CurlResult(status=int(status_line.split()[1]), headers=headers, body=out.stdout)


def assert_problem(
    status: int, content_type: str | None, body: Any, expected_status: int, kind: str
) -> dict[str, Any]:
    """The answer is an RFC 9457 problem with this status and `type` /problems/<kind>."""
    assert status == expected_status, body
    assert content_type is not None
    assert content_type.split(";")[0].strip() == PROBLEM_JSON
    assert isinstance(body, dict)
    assert body["type"] == f"/problems/{kind}", body
    assert body["status"] == expected_status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    return body


def check_problem(response: httpx.Response, expected_status: int, kind: str) -> dict[str, Any]:
    """`assert_problem` for an httpx response."""
    return assert_problem(
        response.status_code,
        response.headers.get("content-type"),
        response.json(),
        expected_status,
        kind,
    )


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_chunks(path: Path, size: int = 1 << 20) -> Iterator[bytes]:
    """A file's bytes in `size` pieces, read as they are sent (a streamed request body)."""
    with path.open("rb") as stream:
        while chunk := stream.read(size):
            yield chunk


def load_npz(data: bytes) -> dict[str, np.ndarray[Any, Any]]:
    """Every member of an NPZ, read without pickle."""
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}


def aggregator_file(agg: Running, client: httpx.Client, file_id: str, leaf: int = 0) -> bytes:
    """A file as the aggregator stores it, through its v3 download route with the leaf's auth."""
    answer = client.get(
        f"{agg.url}/api/v1/file/download/{file_id}", headers={**agg.auth(leaf), "accept": "*/*"}
    )
    assert answer.status_code == 200, answer.text
    blob = client.get(answer.json()["data"]["download_url"])
    assert blob.status_code == 200, blob.text
    return blob.content


def admin_get(url: str, token: str, what: str, client: httpx.Client) -> list[dict[str, Any]]:
    """`GET <url>/admin/<what>` -> its data list."""
    answer = client.get(f"{url}/admin/{what}", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


def wait_for_aggregation(
    url: str, token: str, client: httpx.Client, timeout: float = 30
) -> dict[str, Any]:
    """Poll an aggregator's admin API until one aggregation is done; fail on failure or timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in admin_get(url, token, "aggregations", client):
            assert record["status"] != "failed", record
            if record["status"] == "done":
                return record
        time.sleep(0.05)
    raise AssertionError(f"no aggregation finished within {timeout} s")


def wait_ready(url: str, headers: dict[str, str] | None = None, timeout: float = 30) -> None:
    """Until the gateway's session and notification channel are up (GET /readyz is 200)."""
    deadline = time.monotonic() + timeout
    while httpx.get(f"{url}/readyz", headers=headers, timeout=5).status_code != 200:
        assert time.monotonic() < deadline, f"{url} was not ready within {timeout} s"
        time.sleep(0.05)
