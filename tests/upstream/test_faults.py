"""The upstream calls against a real socket that hangs, trickles, redirects, fails, asks to wait or
dies mid-upload: each ends as the official client's would, or sooner, and never hangs."""

from __future__ import annotations

import io
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from gateway.errors import GatewayError, UpstreamTimeoutError, UpstreamUnavailableError
from gateway.settings import Settings
from gateway.upstream.client import USER_AGENT, upstream_client
from gateway.upstream.credentials import Credentials
from gateway.upstream.policy import Policy
from gateway.upstream.protocol import WeightsFile
from gateway.upstream.v3 import V3Upstream
from gateway.weights import ValidationPolicy
from tests.support.faulty_upstream import (
    Cut,
    Die,
    FaultyUpstream,
    Hang,
    Paced,
    Redirect,
    Reply,
    Trickle,
)

CREDS = Credentials(id="leaf-1", name="leaf", session_token="tok", tree_id="t", branch_id="b")
RUN = "/api/v1/run/b"
UPLOAD = "/api/v1/file/upload"
DOWNLOAD = "/api/v1/file/download/agg-1"
STARTED = Reply(200, {"data": {"run_status": "start", "run_number": 7}})
BIG = 32 * 1024 * 1024
"""An upload larger than loopback socket buffers, so a peer that stops reading blocks the sender."""

Action = Callable[[V3Upstream], Awaitable[Any]]


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "bk_max_retries": 3,
        "bk_connect_timeout_s": 2.0,
        "bk_read_timeout_s": 10.0,
        "bk_upstream_deadline_s": 5.0,
        "bk_transfer_stall_s": 1.0,
        "bk_transfer_min_rate": 8192,
        **overrides,
    }
    return Settings(_env_file=None, **values)


def _talk(url: str, action: Action, **overrides: Any) -> tuple[Any, float]:
    """Run `action` on a v3 upstream at `url` built as the app builds it from settings; return its
    result (or the gateway error it raised) and the seconds it took."""
    settings = _settings(**overrides)

    async def main() -> Any:
        async with upstream_client(settings, lambda *_: None) as client:
            upstream = V3Upstream(client, url, CREDS, Policy.from_settings(settings))
            try:
                return await action(upstream)
            except GatewayError as error:
                return error

    began = time.monotonic()
    result = anyio.run(main)
    return result, time.monotonic() - began


@contextmanager
def _servers(count: int = 1) -> Iterator[list[FaultyUpstream]]:
    fakes = [FaultyUpstream() for _ in range(count)]
    with _running(fakes):
        yield fakes


@contextmanager
def _running(fakes: list[FaultyUpstream]) -> Iterator[None]:
    if not fakes:
        yield
        return
    with fakes[0].running(), _running(fakes[1:]):
        yield


async def _run(up: V3Upstream) -> Any:
    return await up.run()


async def _blob_bytes(up: V3Upstream, url: str) -> bytes:
    async with up.blob(url) as response:
        return b"".join([chunk async for chunk in response.aiter_bytes()])


def _upload(path: Path) -> Action:
    async def upload(up: V3Upstream) -> Any:
        weights = WeightsFile(path, "federated_learning", "w.npz", bytes(32))
        return await up.upload(await up.prepare(weights, path.parent, ValidationPolicy()))

    return upload


@pytest.fixture
def big(tmp_path: Path) -> Path:
    """A 32 MiB upload (sparse: quick to make)."""
    path = tmp_path / "big.npz"
    with path.open("wb") as stream:
        stream.truncate(BIG)
    return path


def test_a_trickled_run_answer_ends_at_the_deadline() -> None:
    """One byte every 0.15 s never trips a read timeout (about 25 s for this answer): the call
    still ends at BK_UPSTREAM_DEADLINE_S with a 504 naming the setting."""
    with _servers() as [fake]:
        fake.on("GET", RUN, Trickle(STARTED, every_s=0.15))
        result, took = _talk(fake.url, _run, bk_upstream_deadline_s=1.0)
    assert isinstance(result, UpstreamTimeoutError), result
    assert "BK_UPSTREAM_DEADLINE_S" in result.detail
    assert 0.9 <= took < 2.5


def test_the_deadline_includes_the_retries() -> None:
    """A run call that is never answered is repeated after each read timeout (a GET may be), but
    all attempts together stop at the deadline, not at 4 x BK_READ_TIMEOUT_S plus backoff."""
    with _servers() as [fake]:
        fake.on("GET", RUN, Hang())
        result, took = _talk(fake.url, _run, bk_read_timeout_s=0.4, bk_upstream_deadline_s=1.2)
    assert isinstance(result, UpstreamTimeoutError), result
    assert 1.1 <= took < 2.5
    assert len(fake.requests("GET", RUN)) == 2  # 0.4 s, no wait, 0.4 s, then a 2 s wait is cut


def test_a_500_then_a_200_is_a_success() -> None:
    """The client's retried statuses include 500: the second answer is used."""
    with _servers() as [fake]:
        fake.on("GET", RUN, Reply(500, {"error": "hiccup"}), STARTED)
        result, _ = _talk(fake.url, _run)
    assert getattr(result, "run_number", None) == 7
    assert len(fake.requests("GET", RUN)) == 2


def test_retry_after_is_obeyed_on_429_and_503() -> None:
    """429 and 503 with Retry-After: 1 are each retried after a second, then the call succeeds."""
    later = {"Retry-After": "1"}
    with _servers() as [fake]:
        fake.on(
            "GET", RUN, Reply(429, {"error": "slow down"}, later), Reply(503, {}, later), STARTED
        )
        result, took = _talk(fake.url, _run)
    assert getattr(result, "run_number", None) == 7
    assert 2.0 <= took < 4.0
    assert len(fake.requests("GET", RUN)) == 3


def test_at_most_four_attempts_as_the_client() -> None:
    """With the default BK_MAX_RETRIES (3) a persistent 503 is tried four times, then reported."""
    assert Settings(_env_file=None).bk_max_retries == 3
    with _servers() as [fake]:
        fake.on("GET", RUN, Reply(503, {"error": "down"}, {"Retry-After": "0"}))
        result, _ = _talk(fake.url, _run)
    assert isinstance(result, UpstreamUnavailableError), result
    assert len(fake.requests("GET", RUN)) == 4


def test_a_retry_after_beyond_the_deadline_fails_at_once() -> None:
    """Waiting 30 s would overrun the deadline: the 503 is reported now, with the upstream's text."""
    with _servers() as [fake]:
        fake.on("GET", RUN, Reply(503, {"error": "maintenance"}, {"Retry-After": "30"}))
        result, took = _talk(fake.url, _run, bk_upstream_deadline_s=2.0)
    assert isinstance(result, UpstreamUnavailableError), result
    assert "503" in result.detail
    assert "maintenance" in result.detail
    assert took < 1.0
    assert len(fake.requests("GET", RUN)) == 1


def test_a_same_origin_redirect_keeps_the_credentials() -> None:
    """A 302 on the download call to the same origin is followed with Authorization and LEAF."""
    with _servers() as [fake]:
        fake.on("GET", DOWNLOAD, Redirect("/moved/agg-1"))
        fake.on(
            "GET", "/moved/agg-1", Reply(200, {"data": {"download_url": "https://b.example/x"}})
        )
        result, _ = _talk(fake.url, lambda up: up.download_url("agg-1"))
    assert result == "https://b.example/x"
    [moved] = fake.requests("GET", "/moved/agg-1")
    assert moved.headers["authorization"] == "Bearer leaf-1:tok"
    assert moved.headers["leaf"] == "true"
    assert moved.headers["user-agent"] == USER_AGENT


def test_a_cross_origin_redirect_drops_the_credentials() -> None:
    """A 307 to another origin is followed without Authorization or LEAF (the accept header stays);
    a blob that redirects to another origin still gives the file."""
    with _servers(2) as [api, other]:
        api.on("GET", DOWNLOAD, Redirect(f"{other.url}/elsewhere/agg-1", 307))
        other.on(
            "GET",
            "/elsewhere/agg-1",
            Reply(200, {"data": {"download_url": f"{api.url}/blob/agg-1"}}),
        )
        api.on("GET", "/blob/agg-1", Redirect(f"{other.url}/store/agg-1", 302))
        other.on("GET", "/store/agg-1", Reply(200, raw=b"the model"))

        async def download(up: V3Upstream) -> bytes:
            return await _blob_bytes(up, await up.download_url("agg-1"))

        result, _ = _talk(api.url, download)
    assert result == b"the model"
    [elsewhere] = other.requests("GET", "/elsewhere/agg-1")
    assert "authorization" not in elsewhere.headers
    assert "leaf" not in elsewhere.headers
    assert elsewhere.headers["accept"] == "*/*"
    assert api.requests("GET", DOWNLOAD)[0].headers["authorization"] == "Bearer leaf-1:tok"
    for seen in other.seen:
        assert not {"authorization", "leaf"} & set(seen.headers)


def test_a_redirect_loop_is_cut() -> None:
    """A route that redirects to itself ends in a 502 after 10 hops, not a hang."""
    with _servers() as [fake]:
        fake.on("GET", RUN, Redirect(RUN, 307))
        result, _ = _talk(fake.url, _run)
    assert isinstance(result, UpstreamUnavailableError), result
    assert "redirected" in result.detail
    assert len(fake.requests("GET", RUN)) == 11


def test_an_upload_cut_before_its_last_byte_is_sent_again(big: Path) -> None:
    """BranchKey dies after 64 KiB of a 32 MiB upload: it cannot have stored it, so the gateway
    sends it again (no deduplication needed), and the second, whole upload is the one answered."""
    with _servers() as [fake]:
        fake.on("POST", UPLOAD, Die(after=64 * 1024), Reply(201, {"data": {"file_id": "f-9"}}))
        result, _ = _talk(fake.url, _upload(big))
    assert getattr(result, "file_id", None) == "f-9", result
    first, second = fake.requests("POST", UPLOAD)
    assert not first.complete
    assert second.complete
    assert second.headers["x-bk-file-size"] == str(BIG)


def test_an_unanswered_upload_is_bounded_and_not_resent(tmp_path: Path) -> None:
    """BranchKey takes the whole upload and never answers: after BK_READ_TIMEOUT_S a 504, with the
    upload posted once (its outcome is unknown and this upstream does not deduplicate)."""
    small = tmp_path / "w.npz"
    small.write_bytes(b"PK" + bytes(1000))
    with _servers() as [fake]:
        fake.on("POST", UPLOAD, Hang())
        result, took = _talk(fake.url, _upload(small), bk_read_timeout_s=0.5)
    assert isinstance(result, UpstreamTimeoutError), result
    assert took < 2.0
    [only] = fake.requests("POST", UPLOAD)
    assert only.complete


def test_an_upload_the_upstream_stops_reading_is_cut_by_the_stall_bound(big: Path) -> None:
    """BranchKey stops reading a 32 MiB upload: it is cut BK_TRANSFER_STALL_S after it stopped
    moving (not after 4 x BK_READ_TIMEOUT_S), with a 504 naming the settings."""
    with _servers() as [fake]:
        fake.on("POST", UPLOAD, Hang(read_body=False))
        result, took = _talk(fake.url, _upload(big), bk_transfer_stall_s=0.5)
    assert isinstance(result, UpstreamTimeoutError), result
    assert "BK_TRANSFER_STALL_S" in result.detail
    assert took < 3.0
    assert len(fake.requests("POST", UPLOAD)) == 1


@pytest.mark.parametrize(
    "fault", [Trickle(Reply(200, raw=bytes(4096)), every_s=0.05), Hang()], ids=["trickle", "hang"]
)
def test_a_blob_that_trickles_or_hangs_is_cut(fault: Trickle | Hang) -> None:
    """A blob host that sends 20 bytes/s, or nothing, is cut once the download falls
    BK_TRANSFER_STALL_S behind BK_TRANSFER_MIN_RATE (it would otherwise hold the download for
    minutes, or forever)."""
    with _servers() as [fake]:
        fake.on("GET", "/blob/agg-1", fault)
        result, took = _talk(fake.url, lambda up: _blob_bytes(up, f"{fake.url}/blob/agg-1"))
    assert isinstance(result, UpstreamTimeoutError), result
    assert "BK_TRANSFER_STALL_S" in result.detail
    assert 0.9 <= took < 3.0


@pytest.mark.parametrize("after", [100, 3 * 1024 * 1024], ids=["with-the-head", "later"])
def test_a_blob_cut_short_is_a_502_never_a_shorter_file(after: int) -> None:
    """A blob host closing the connection before the blob's Content-Length is a gateway error
    (502) naming the failure, whether the cut comes right after the head or megabytes later."""
    data = np.random.default_rng(3).bytes(4 * 1024 * 1024)
    with _servers() as [fake]:
        fake.on("GET", "/blob/agg-1", Cut(Reply(200, raw=data), after=after))
        result, _ = _talk(fake.url, lambda up: _blob_bytes(up, f"{fake.url}/blob/agg-1"))
    assert isinstance(result, UpstreamUnavailableError), result
    assert result.status == 502
    assert "RemoteProtocolError" in result.detail


def test_a_blob_gone_silent_past_the_read_timeout_is_a_504() -> None:
    """A blob host that stops sending mid-body, with BK_READ_TIMEOUT_S shorter than the stall
    bound, is a gateway timeout (504) naming the setting, never a bare httpx error."""
    data = np.random.default_rng(4).bytes(2 * 1024 * 1024)
    with _servers() as [fake]:
        fake.on("GET", "/blob/agg-1", Cut(Reply(200, raw=data), after=300_000, hang=True))
        result, took = _talk(
            fake.url,
            lambda up: _blob_bytes(up, f"{fake.url}/blob/agg-1"),
            bk_read_timeout_s=0.5,
            bk_transfer_stall_s=5.0,
        )
    assert isinstance(result, UpstreamTimeoutError), result
    assert "BK_READ_TIMEOUT_S" in result.detail
    assert took < 3.0


def test_a_slow_but_steady_blob_outlasts_the_stall_bound() -> None:
    """A 96 KiB blob sent at about 40 KiB/s takes over twice BK_TRANSFER_STALL_S and arrives
    whole: transfers have no total deadline, only a minimum pace (8 KiB/s here)."""
    data = np.random.default_rng(1).bytes(96 * 1024)
    with _servers() as [fake]:
        fake.on("GET", "/blob/agg-1", Paced(Reply(200, raw=data), chunk=4096, every_s=0.1))
        result, took = _talk(
            fake.url, lambda up: _blob_bytes(up, f"{fake.url}/blob/agg-1"), bk_transfer_stall_s=1.0
        )
    assert result == data
    assert took > 2.0


def test_a_redirected_model_reaches_numpy() -> None:
    """A blob behind a 302 and a 307 is the NPZ itself, not an error page."""
    buffer = io.BytesIO()
    np.savez(buffer, layer_0=np.arange(4, dtype=np.float32))
    with _servers(2) as [api, other]:
        api.on("GET", "/blob/agg-1", Redirect("/blob2/agg-1", 302))
        api.on("GET", "/blob2/agg-1", Redirect(f"{other.url}/s3/agg-1", 307))
        other.on("GET", "/s3/agg-1", Reply(200, raw=buffer.getvalue()))
        result, _ = _talk(api.url, lambda up: _blob_bytes(up, f"{api.url}/blob/agg-1"))
    with np.load(io.BytesIO(result), allow_pickle=False) as archive:
        assert archive["layer_0"].tolist() == [0.0, 1.0, 2.0, 3.0]


def test_a_slow_reader_is_not_taken_for_a_stalled_blob() -> None:
    """The gateway's own side pausing between chunks (writing slowly) is not BranchKey's time:
    a 0.4 s pause after each read of at most 256 KiB (upstream.client.READ_BYTES), 1.6 s or more
    in all, against a 1 s BK_TRANSFER_STALL_S."""
    data = np.random.default_rng(2).bytes(1024 * 1024)
    with _servers() as [fake]:
        fake.on("GET", "/blob/agg-1", Paced(Reply(200, raw=data), chunk=16 * 1024, every_s=0.01))

        async def read_slowly(up: V3Upstream) -> bytes:
            parts = []
            async with up.blob(f"{fake.url}/blob/agg-1") as response:
                async for chunk in response.aiter_bytes():
                    parts.append(chunk)
                    await anyio.sleep(0.4)
            return b"".join(parts)

        result, took = _talk(fake.url, read_slowly, bk_transfer_stall_s=1.0)
    assert result == data
    assert took > 1.6
