"""Real uvicorn servers on free loopback ports, for tests that stream."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from fastapi import FastAPI

from gateway.state import stop_streams


@contextmanager
def serve(app: Any, **options: Any) -> Iterator[str]:
    """Run `app` under uvicorn on 127.0.0.1:<free port> in a thread; yield its base URL."""
    options.setdefault("timeout_graceful_shutdown", 5)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if isinstance(app, FastAPI):
            stop_streams(app)  # end SSE streams first, as the gateway's own server does on exit
        server.should_exit = True
        thread.join(timeout=30)
