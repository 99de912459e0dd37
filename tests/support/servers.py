"""Real uvicorn servers in threads on loopback ports, for tests that stream."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from gateway.http_limits import BoundedHttpToolsProtocol, bounded_http_options
from gateway.state import stop_streams

START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 30.0


@contextmanager
def serve(app: Any, port: int = 0, send_buffer: int | None = None, **options: Any) -> Iterator[str]:
    """Run `app` under uvicorn on 127.0.0.1:`port` (0: a free one) in a thread; yield its base URL.

    A chosen port lets a restarted server keep its URL. It speaks HTTP as the real servers do
    (`gateway.http_limits`) unless `options` say otherwise. `send_buffer` fixes SO_SNDBUF of the accepted
    sockets (they inherit it from the listening one).
    """
    options.setdefault("timeout_graceful_shutdown", 5)
    bounds = BoundedHttpToolsProtocol.max_header_bytes, BoundedHttpToolsProtocol.header_timeout_s
    for name, value in bounded_http_options(*bounds).items():  # the servers' own HTTP protocol
        options.setdefault(name, value)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if send_buffer is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    try:
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        bound: int = listener.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **options))
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [listener]}, name=f"uvicorn-{bound}", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the test server did not start on port {bound}")
            time.sleep(0.01)
        try:
            yield f"http://127.0.0.1:{bound}"
        finally:
            if isinstance(app, FastAPI):
                stop_streams(app)  # end SSE streams first, as the gateway's own server does on exit
            server.should_exit = True
            thread.join(timeout=STOP_TIMEOUT_S)
        if thread.is_alive():
            raise RuntimeError(f"the test server on port {bound} did not stop")
    finally:
        listener.close()  # uvicorn's server has closed it already, unless it never started


def started_upstream(branch_id: str) -> FastAPI:
    """A BranchKey stand-in to add routes to: its v3 run route answers run 1 started, for `branch_id` only."""
    app = FastAPI()

    @app.get("/api/v1/run/{branch}")
    async def get_run(branch: str) -> dict[str, Any]:
        assert branch == branch_id
        return {"data": {"run_status": "start", "run_number": 1}}

    return app
