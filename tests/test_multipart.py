"""read_multipart against real uvicorn servers: streaming to disk, limits, errors and cleanup."""

from __future__ import annotations

import errno
import gc
import hashlib
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import psutil
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from gateway.multipart import (
    FilePart,
    FormData,
    MultipartError,
    MultipartLimits,
    read_multipart,
)
from gateway.multipart.sinks import FileSink
from tests.support.servers import serve
from tests.support.waiting import wait_until

MiB = 1024 * 1024
BOUNDARY = "gateway-test-boundary-5e1f"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
LIMITS = MultipartLimits(max_file_bytes=64 * MiB, max_total_file_bytes=128 * MiB)
WAIT_S = 5.0


@dataclass
class Server:
    """A running test server: its URL, port, upload directory and the outcome of each upload."""

    url: str
    port: int
    dest: Path
    outcomes: list[int | str] = field(default_factory=list)


def _describe(form: FormData) -> dict[str, Any]:
    return {
        "fields": form.fields,
        "files": {
            name: {
                "filename": part.filename,
                "size": part.size,
                "sha256": part.sha256.hex(),
                "path": str(part.path),
            }
            for name, part in form.files.items()
        },
        "order": list(form.order),
    }


def _make_app(
    dest: Path,
    limits: MultipartLimits,
    file_fields: Sequence[str] | None,
    outcomes: list[int | str],
) -> Starlette:
    async def create_upload(request: Request) -> JSONResponse:
        try:
            form = await read_multipart(request, dest, limits, file_fields=file_fields)
        except MultipartError as exc:
            outcomes.append(exc.status)
            return JSONResponse({"message": exc.message}, status_code=exc.status)
        except OSError as exc:  # a failed disk write reaches the caller as itself
            outcomes.append(f"OSError {exc.errno}")
            return JSONResponse({"message": str(exc)}, status_code=507)
        outcomes.append(200)
        return JSONResponse(_describe(form))

    async def create_upload_with_deadline(request: Request) -> JSONResponse:
        with anyio.move_on_after(0.5):
            await read_multipart(request, dest, limits, file_fields=file_fields)
            outcomes.append(200)
            return JSONResponse({"cancelled": False})
        outcomes.append("cancelled")
        return JSONResponse({"cancelled": True})

    return Starlette(
        routes=[
            Route("/upload", create_upload, methods=["POST"]),
            Route("/upload-with-deadline", create_upload_with_deadline, methods=["POST"]),
        ]
    )


class Launcher:
    """Starts servers for one test; each gets its own upload directory."""

    def __init__(self, root: Path, stack: ExitStack) -> None:
        self._root = root
        self._stack = stack
        self._count = 0

    def __call__(
        self, limits: MultipartLimits = LIMITS, file_fields: Sequence[str] | None = None
    ) -> Server:
        self._count += 1
        dest = self._root / f"uploads-{self._count}"
        dest.mkdir()
        outcomes: list[int | str] = []
        app = _make_app(dest, limits, file_fields, outcomes)
        url = self._stack.enter_context(serve(app, lifespan="off"))
        port = httpx.URL(url).port
        assert port is not None
        return Server(url=url, port=port, dest=dest, outcomes=outcomes)


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launcher]:
    """A factory for real uvicorn servers on port-0 sockets, stopped after the test."""
    with ExitStack() as stack:
        yield Launcher(tmp_path, stack)


def _head(name: str, filename: str | None = None, *, first: bool = True) -> bytes:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    lead = "" if first else "\r\n"
    return f"{lead}--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()


TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def _body(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A complete multipart body from (name, filename, content) triples."""
    out = bytearray()
    for index, (name, filename, content) in enumerate(parts):
        out += _head(name, filename, first=index == 0) + content
    return bytes(out + TAIL)


def _post(server: Server, body: bytes, content_type: str = CONTENT_TYPE) -> httpx.Response:
    return httpx.post(
        f"{server.url}/upload", content=body, headers={"content-type": content_type}, timeout=30
    )


def _leftovers(dest: Path) -> list[str]:
    return sorted(path.name for path in dest.iterdir())


def _raw_head(port: int, content_length: int, path: str = "/upload") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: {CONTENT_TYPE}\r\nContent-Length: {content_length}\r\n\r\n"
    ).encode()


def _read_response(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the response head"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the response body"
        body += chunk
    return int(lines[0].split()[1]), json.loads(body)


class _PeakRss:
    """Samples this process's RSS every 5 ms in a thread and keeps the peak."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.peak = self._process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler", daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def __enter__(self) -> _PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._process.memory_info().rss)


def test_small_form_fields_and_file(launch: Launcher) -> None:
    """Fields come back decoded, the file lands in dest_dir with its exact bytes, all in arrival order."""
    server = launch()
    payload = os.urandom(100_000)
    body = _body(("run", None, b"r-\xc3\xa9"), ("weights", "w.npz", payload), ("note", None, b""))
    response = _post(server, body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["fields"] == {"run": "r-\u00e9", "note": ""}
    assert result["order"] == ["run", "weights", "note"]
    stored = result["files"]["weights"]
    assert stored["filename"] == "w.npz"
    assert stored["size"] == len(payload)
    assert stored["sha256"] == hashlib.sha256(payload).hexdigest()
    path = Path(stored["path"])
    assert path.parent == server.dest
    assert path.name.startswith(".upload-")
    assert path.read_bytes() == payload


def test_empty_file_part_gets_an_empty_temp_file(launch: Launcher) -> None:
    """A zero-byte file part still yields a temp file, size 0 and the digest of no bytes."""
    server = launch()
    response = _post(server, _body(("empty", "e.bin", b"")))
    stored = response.json()["files"]["empty"]
    assert stored["size"] == 0
    assert stored["sha256"] == hashlib.sha256(b"").hexdigest()
    assert Path(stored["path"]).read_bytes() == b""


def test_boundary_lookalikes_in_file_data_survive(launch: Launcher) -> None:
    """Bytes that start like the boundary, split across tiny chunks, are stored unchanged."""
    server = launch()
    near = f"\r\n--{BOUNDARY}"
    payload = (
        b"".join([near[:cut].encode() + b"x" for cut in range(1, len(near))] + [os.urandom(5000)])
        * 3
    )
    body = _body(("f", "f.bin", payload), ("after", None, b"ok"))

    def dribble() -> Iterator[bytes]:
        for start in range(0, len(body), 7):
            yield body[start : start + 7]

    response = httpx.post(
        f"{server.url}/upload",
        content=dribble(),
        headers={"content-type": CONTENT_TYPE, "content-length": str(len(body))},
        timeout=30,
    )
    result = response.json()
    assert result["files"]["f"]["sha256"] == hashlib.sha256(payload).hexdigest()
    assert result["fields"] == {"after": "ok"}


def test_curl_form_upload(launch: Launcher, tmp_path: Path) -> None:
    """`curl -F data='{"a":1}' -F file=@big.bin` is read as one JSON field and one 20 MiB file."""
    server = launch()
    big = tmp_path / "big.bin"
    content = os.urandom(20 * MiB)
    big.write_bytes(content)
    result = subprocess.run(
        ["curl", "-sS", "-F", 'data={"a":1}', "-F", "file=@big.bin", f"{server.url}/upload"],
        capture_output=True,
        cwd=tmp_path,
        timeout=60,
        check=True,
    )
    form = json.loads(result.stdout)
    assert form["fields"] == {"data": '{"a":1}'}
    assert form["order"] == ["data", "file"]
    assert form["files"]["file"]["filename"] == "big.bin"
    assert form["files"]["file"]["size"] == len(content)
    assert form["files"]["file"]["sha256"] == hashlib.sha256(content).hexdigest()


def test_300_mib_upload_streams_in_bounded_memory(
    launch: Launcher, request: pytest.FixtureRequest
) -> None:
    """A 300 MiB file streamed by the client grows server RSS by < 64 MiB and is stored bit-exact."""
    server = launch(MultipartLimits(max_file_bytes=1024 * MiB, max_total_file_bytes=1024 * MiB))
    warm_up = _post(server, _body(("w", "w.bin", os.urandom(MiB))))
    assert warm_up.status_code == 200
    Path(warm_up.json()["files"]["w"]["path"]).unlink()

    size, chunk = 300 * MiB, MiB
    head, sent = _head("blob", "blob.bin"), hashlib.sha256()

    def generate() -> Iterator[bytes]:
        yield head
        for _ in range(size // chunk):
            block = os.urandom(chunk)
            sent.update(block)
            yield block
        yield TAIL

    gc.collect()
    with _PeakRss() as rss:
        baseline = rss.peak
        response = httpx.post(
            f"{server.url}/upload",
            content=generate(),
            headers={
                "content-type": CONTENT_TYPE,
                "content-length": str(len(head) + size + len(TAIL)),
            },
            timeout=120,
        )
    growth = rss.peak - baseline
    # Kept on the report (e.g. --junitxml with junit_family=legacy) so runs can be compared.
    request.node.user_properties.append(("rss_growth_mib", round(growth / MiB, 1)))
    assert response.status_code == 200, response.text
    stored = response.json()["files"]["blob"]
    path = Path(stored["path"])
    try:
        assert stored["size"] == size
        assert stored["sha256"] == sent.hexdigest()
        assert path.stat().st_size == size
    finally:
        path.unlink()
    assert growth < 64 * MiB, f"server RSS grew by {growth / MiB:.1f} MiB"


def test_file_over_limit_is_refused_before_the_rest_is_sent(launch: Launcher) -> None:
    """A file past max_file_bytes gets 413 while the client is still mid-body, and no temp file stays."""
    server = launch(MultipartLimits(max_file_bytes=MiB, max_total_file_bytes=8 * MiB))
    head = _head("weights", "w.npz")
    declared = len(head) + 64 * MiB + len(TAIL)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(_raw_head(server.port, declared) + head + os.urandom(MiB + 128 * 1024))
        status, body = _read_response(sock)
    assert status == 413
    assert "'weights'" in body["message"]
    assert str(MiB) in body["message"]
    assert _leftovers(server.dest) == []


def test_total_file_bytes_limit(launch: Launcher) -> None:
    """Files each under max_file_bytes but over max_total_file_bytes together get 413, none kept."""
    server = launch(MultipartLimits(max_file_bytes=2 * MiB, max_total_file_bytes=3 * MiB))
    body = _body(("a", "a.bin", os.urandom(2 * MiB)), ("b", "b.bin", os.urandom(2 * MiB)))
    response = _post(server, body)
    assert response.status_code == 413
    assert "in total" in response.json()["message"]
    assert _leftovers(server.dest) == []


def test_field_over_limit(launch: Launcher) -> None:
    """A field past max_field_bytes gets 413 naming the field."""
    server = launch(
        MultipartLimits(max_file_bytes=MiB, max_total_file_bytes=MiB, max_field_bytes=10)
    )
    response = _post(server, _body(("ok", None, b"short"), ("comment", None, b"x" * 11)))
    assert response.status_code == 413
    assert "'comment'" in response.json()["message"]


def test_too_many_parts_and_files(launch: Launcher) -> None:
    """More parts than max_parts, or more files than max_files, get 413 and leave no temp file."""
    server = launch(
        MultipartLimits(max_file_bytes=MiB, max_total_file_bytes=MiB, max_parts=3, max_files=1)
    )
    too_many_parts = _body(*[(f"f{i}", None, b"v") for i in range(4)])
    response = _post(server, too_many_parts)
    assert response.status_code == 413
    assert "more than 3 parts" in response.json()["message"]
    too_many_files = _body(("a", "a.bin", b"A" * 1000), ("b", "b.bin", b"B"))
    response = _post(server, too_many_files)
    assert response.status_code == 413
    assert "more than 1 files" in response.json()["message"]
    assert _leftovers(server.dest) == []


def test_duplicate_names(launch: Launcher) -> None:
    """A name used twice (field or file) gets 400 saying so, and the first file is removed."""
    server = launch()
    response = _post(server, _body(("a", "a.bin", b"data"), ("a", None, b"again")))
    assert response.status_code == 400
    assert response.json()["message"].startswith("Part 'a' appears twice")
    assert _leftovers(server.dest) == []


def test_not_multipart_and_missing_boundary(launch: Launcher) -> None:
    """A JSON body gets 415; multipart/form-data without a boundary gets 400."""
    server = launch()
    response = _post(server, b'{"a": 1}', content_type="application/json")
    assert response.status_code == 415
    assert "application/json" in response.json()["message"]
    response = _post(server, _body(("a", None, b"1")), content_type="multipart/form-data")
    assert response.status_code == 400
    assert "boundary" in response.json()["message"]


def test_malformed_parts(launch: Launcher) -> None:
    """Parser errors, parts without a name and non-UTF-8 fields get 400 and leave no temp file."""
    server = launch()
    too_many_headers = (
        f"--{BOUNDARY}\r\n"
        + "".join(f"X-H{i}: v\r\n" for i in range(9))
        + 'Content-Disposition: form-data; name="a"\r\n\r\nv'
    ).encode() + TAIL
    no_name = f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nv".encode() + TAIL
    bad_utf8 = _body(("f", "f.bin", b"data"), ("text", None, b"\xff\xfe"))
    for body, expected in [
        (too_many_headers, "malformed"),
        (no_name, "Content-Disposition"),
        (bad_utf8, "UTF-8"),
        (b"garbage before any boundary", "malformed"),
    ]:
        response = _post(server, body)
        assert response.status_code == 400, body
        assert expected in response.json()["message"]
    assert _leftovers(server.dest) == []


def test_truncated_body(launch: Launcher) -> None:
    """A body that ends before the closing boundary gets 400 and its partial file is deleted."""
    server = launch()
    body = _head("weights", "w.npz") + os.urandom(3 * MiB)
    response = _post(server, body)
    assert response.status_code == 400
    assert "closing multipart boundary" in response.json()["message"]
    assert _leftovers(server.dest) == []


def test_client_disconnect_mid_upload(launch: Launcher) -> None:
    """A client that hangs up mid-file leaves nothing in dest_dir and the reader reports 400."""
    server = launch()
    head = _head("weights", "w.npz")
    declared = len(head) + 16 * MiB + len(TAIL)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(_raw_head(server.port, declared) + head + os.urandom(8 * MiB))
        wait_until(lambda: bool(_leftovers(server.dest)), WAIT_S, "the temp file to appear")
    wait_until(lambda: server.outcomes == [400], WAIT_S, "the reader to report the disconnect")
    assert _leftovers(server.dest) == []


def test_cancellation_deletes_temp_files(launch: Launcher) -> None:
    """A read cancelled by the route's deadline has deleted its temp file before the route answers."""
    server = launch()
    head = _head("weights", "w.npz")
    declared = len(head) + 16 * MiB + len(TAIL)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        request_head = _raw_head(server.port, declared, path="/upload-with-deadline")
        sock.sendall(request_head + head + os.urandom(MiB))
        status, body = _read_response(sock)
        assert (status, body) == (200, {"cancelled": True})
        assert _leftovers(server.dest) == []
    assert server.outcomes == ["cancelled"]


def test_a_failed_disk_write_is_reported_and_leaves_nothing(
    launch: Launcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails (disk full) while later bytes are still being read reaches the caller as
    the OSError itself, not wrapped, and every temp file is gone."""
    server = launch()
    written: list[int] = []
    original = FileSink.write

    def failing_write(self: FileSink, data: memoryview) -> None:
        written.append(len(data))
        if sum(written) > 2 * MiB:
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, data)

    monkeypatch.setattr(FileSink, "write", failing_write)
    response = _post(server, _body(("weights", "w.npz", os.urandom(12 * MiB))))
    assert response.status_code == 507
    assert server.outcomes == [f"OSError {errno.ENOSPC}"]
    assert _leftovers(server.dest) == []


def test_file_fields_make_a_filenameless_part_a_file(launch: Launcher) -> None:
    """A part named in file_fields is stored as a file (filename None); other parts stay fields."""
    server = launch(file_fields=["layer_0"])
    layer = os.urandom(4096)
    response = _post(server, _body(("layer_0", None, layer), ("layer_1", None, b"small")))
    result = response.json()
    assert result["fields"] == {"layer_1": "small"}
    stored = result["files"]["layer_0"]
    assert stored["filename"] is None
    assert stored["sha256"] == hashlib.sha256(layer).hexdigest()
    assert Path(stored["path"]).read_bytes() == layer


def test_cleanup_deletes_the_files_and_tolerates_missing_ones(tmp_path: Path) -> None:
    """FormData.cleanup removes every file part's temp file and ignores ones already moved away."""
    kept, moved = tmp_path / ".upload-kept", tmp_path / ".upload-moved"
    kept.write_bytes(b"k")
    digest = hashlib.sha256(b"k").digest()
    form = FormData(
        fields={"run": "1"},
        files={
            "a": FilePart(name="a", filename="a.bin", path=kept, size=1, sha256=digest),
            "b": FilePart(name="b", filename=None, path=moved, size=1, sha256=digest),
        },
        order=("run", "a", "b"),
    )
    form.cleanup()
    form.cleanup()
    assert _leftovers(tmp_path) == []
