"""A cold download passed on while it arrives: exact bytes, never complete when invalid, shared by
concurrent trainers, and cancelled (lock released) when the trainer goes away."""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from gateway.state import running_state
from tests.support.gateways import (
    Gateway,
    leaf_gateway,
)
from tests.support.http import load_npz
from tests.support.servers import serve, started_upstream
from tests.support.waiting import wait_until

CREDENTIALS = {
    "id": "leaf-c",
    "name": "leaf c",
    "session_token": "token-c",
    "tree_id": "tree-c",
    "branch_id": "branch-c",
}
PIECE = 64 * 1024
LAYERS = [np.arange(512 * 1024, dtype=np.float32), np.full((300, 700), 0.25, dtype=np.float32)]
"""About 2.8 MiB: more than the first MiB the gateway looks at before passing bytes on."""
HOLD = 2560 * 1024
"""Where a held blob stops: the gateway has passed its first MiB on by then."""


def _npz(**arrays: Any) -> bytes:
    """An NPZ as `np.savez` writes it (stored members, in the order given)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


PLAIN = _npz(**{f"layer_{i}": layer for i, layer in enumerate(LAYERS)})


@dataclass
class BlobUpstream:
    """BranchKey's download call and blob URL; a blob can be held after `hold_after` bytes until
    `release` is set, and every blob stream records how it ended."""

    blobs: dict[str, bytes]
    hold_after: int | None = None
    cut_after: int | None = None
    """Where every blob ends, its Content-Length unchanged (a connection cut short)."""
    release: threading.Event = field(default_factory=threading.Event)
    fetches: int = 0
    sent: int = 0
    ended: list[str] = field(default_factory=list)

    def app(self) -> FastAPI:
        """The ASGI app."""
        app = started_upstream(CREDENTIALS["branch_id"])

        @app.get("/api/v1/file/download/{file_id}")
        async def download(file_id: str, request: Request) -> dict[str, Any]:
            return {"data": {"download_url": f"{request.base_url}blob/{file_id}"}}

        @app.get("/blob/{file_id}")
        async def blob(file_id: str) -> Response:
            body = self.blobs[file_id]
            self.fetches += 1
            return StreamingResponse(
                self._stream(body),
                media_type="application/octet-stream",
                headers={"Content-Length": str(len(body))},
            )

        return app

    async def _stream(self, body: bytes) -> AsyncIterator[bytes]:
        outcome = "cancelled"
        try:
            for start in range(0, len(body), PIECE):
                if self.cut_after is not None and start >= self.cut_after:
                    return
                if self.hold_after is not None and start >= self.hold_after:
                    # Polled: the test thread sets it, and a disconnect must still cancel us.
                    while not self.release.is_set():  # noqa: ASYNC110
                        await anyio.sleep(0.01)
                self.sent = start + PIECE
                yield body[start : start + PIECE]
            outcome = "complete"
        finally:
            self.ended.append(outcome)


@contextlib.contextmanager
def _gateway(tmp_path: Path, upstream: BlobUpstream) -> Iterator[Gateway]:
    with serve(upstream.app()) as host, leaf_gateway(tmp_path, host, CREDENTIALS) as gateway:
        yield gateway


def _get(url: str) -> httpx.Response:
    with httpx.Client(timeout=30) as client:
        return client.get(url)


def _read_into(received: bytearray, answer: httpx.Response) -> None:
    for chunk in answer.iter_bytes():
        received += chunk


def _cached(gateway: Gateway) -> list[str]:
    return sorted(p.name for p in (gateway.data_dir / "cache").iterdir())


def _no_scratch_left(gateway: Gateway) -> bool:
    return not any(gateway.tmp_dir.iterdir())


def test_a_cold_download_is_the_blob_byte_for_byte_then_cached(tmp_path: Path) -> None:
    """The first GET passes BranchKey's bytes on (Content-Length, no ETag); the second comes from
    the cache with the same bytes and their sha256 as ETag; the blob is fetched once."""
    upstream = BlobUpstream({"agg-1": PLAIN})
    with _gateway(tmp_path, upstream) as gateway:
        url = f"{gateway.url}/aggregations/agg-1"
        first = _get(url)
        assert first.status_code == 200, first.text
        assert first.content == PLAIN
        assert first.headers["content-length"] == str(len(PLAIN))
        assert "etag" not in first.headers
        assert first.headers["content-disposition"] == 'attachment; filename="agg-1.npz"'
        second = _get(url)
        assert second.content == PLAIN
        assert second.headers["etag"] == f'"{hashlib.sha256(PLAIN).hexdigest()}"'
        assert upstream.fetches == 1
        assert _cached(gateway) == ["agg-1.npz", "agg-1.npz.sha256"]
        wait_until(lambda: _no_scratch_left(gateway), 5, "the scratch files removed")


@pytest.mark.parametrize(
    ("blob", "second_status"),
    [
        (PLAIN[: len(PLAIN) - 100], 422),  # the ZIP's directory cut off: not an NPZ at all
        (_npz(layer_0=LAYERS[0], weighting=np.float64(2.0)), 200),  # not the served layout
    ],
    ids=["truncated", "extra-member"],
)
def test_a_file_that_does_not_check_out_never_arrives_complete(
    tmp_path: Path, blob: bytes, second_status: int
) -> None:
    """A file whose first MiB looks right but which is invalid, or not in the served layout after
    all, ends the answer short of its Content-Length: no client can take it for a model. A valid
    one is then served normalized from the cache; an invalid one is a problem, never cached."""
    upstream = BlobUpstream({"agg-2": blob})
    with _gateway(tmp_path, upstream) as gateway:
        url = f"{gateway.url}/aggregations/agg-2"
        with pytest.raises(httpx.RemoteProtocolError):
            _get(url)
        second = _get(url)
        assert second.status_code == second_status, second.text
        if second_status == 200:
            arrays = load_npz(second.content)
            assert list(arrays) == ["layer_0"]
            np.testing.assert_array_equal(arrays["layer_0"], LAYERS[0])
            assert _cached(gateway) == ["agg-2.npz", "agg-2.npz.sha256"]
        else:
            assert second.headers["content-type"] == "application/problem+json"
            assert _cached(gateway) == []
        wait_until(lambda: _no_scratch_left(gateway), 5, "the scratch files removed")


def test_concurrent_downloads_during_a_cut_through_all_get_the_file(tmp_path: Path) -> None:
    """Trainers asking while the first download is still arriving wait for it, then all receive
    the whole file; BranchKey's blob is fetched once."""
    upstream = BlobUpstream({"agg-3": PLAIN}, hold_after=HOLD)
    with _gateway(tmp_path, upstream) as gateway:
        url = f"{gateway.url}/aggregations/agg-3"
        answers: list[httpx.Response] = []
        threads = [threading.Thread(target=lambda: answers.append(_get(url))) for _ in range(3)]
        threads[0].start()
        wait_until(lambda: upstream.sent >= HOLD, 10, "the blob held")
        for thread in threads[1:]:
            thread.start()
        time.sleep(0.2)
        assert answers == []  # everyone is still waiting for the rest of the blob
        upstream.release.set()
        for thread in threads:
            thread.join(timeout=30)
        assert len(answers) == 3
        for answer in answers:
            assert answer.status_code == 200, answer.text
            assert answer.content == PLAIN
        assert upstream.fetches == 1


def test_a_trainer_going_away_cancels_the_fetch_and_frees_the_id(tmp_path: Path) -> None:
    """The trainer disconnecting mid-download closes the upstream fetch, releases the id's lock and
    removes the partial file; the next download of that id is not stuck behind it."""
    upstream = BlobUpstream({"agg-4": PLAIN}, hold_after=HOLD)
    with _gateway(tmp_path, upstream) as gateway:
        url = f"{gateway.url}/aggregations/agg-4"
        with httpx.Client(timeout=30) as client, client.stream("GET", url) as answer:
            assert answer.status_code == 200
            first = next(answer.iter_bytes())
            assert PLAIN.startswith(first)
        wait_until(lambda: upstream.ended == ["cancelled"], 10, "the upstream fetch closed")
        locks = running_state(gateway.app).cache.locks
        wait_until(lambda: len(locks) == 0, 5, "the id's lock released")
        wait_until(lambda: _no_scratch_left(gateway), 5, "the partial file removed")
        assert _cached(gateway) == []
        upstream.hold_after = None
        started = time.monotonic()
        again = _get(url)
        assert again.status_code == 200
        assert again.content == PLAIN
        assert time.monotonic() - started < 10
        assert upstream.ended == ["cancelled", "complete"]


def test_a_blob_cut_short_upstream_never_arrives_complete(tmp_path: Path) -> None:
    """BranchKey's connection ending before the blob's Content-Length, after the gateway has
    passed the first MiB on, ends the trainer's answer short of its length too; nothing is
    cached, no scratch file or lock is left, and the next GET of a blob still cut is a 502
    problem."""
    upstream = BlobUpstream({"agg-5": PLAIN}, cut_after=HOLD)
    with _gateway(tmp_path, upstream) as gateway:
        url = f"{gateway.url}/aggregations/agg-5"
        with httpx.Client(timeout=30) as client, client.stream("GET", url) as answer:
            assert answer.status_code == 200
            assert answer.headers["content-length"] == str(len(PLAIN))
            received = bytearray()
            with pytest.raises(httpx.RemoteProtocolError):
                _read_into(received, answer)
        assert 0 < len(received) < len(PLAIN)
        assert PLAIN.startswith(received)
        locks = running_state(gateway.app).cache.locks
        wait_until(lambda: len(locks) == 0, 5, "the id's lock released")
        wait_until(lambda: _no_scratch_left(gateway), 5, "the partial file removed")
        assert _cached(gateway) == []
        again = _get(url)
        assert again.status_code == 502, again.text
        assert again.headers["content-type"] == "application/problem+json"
        assert _cached(gateway) == []
