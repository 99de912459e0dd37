"""Free loopback ports."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nobody was listening on a moment ago (nobody listens on it yet: a closed port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
