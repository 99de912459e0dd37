"""Raw HTTP/1.1 requests over a socket, for heads no client library sends (two Host headers)."""

from __future__ import annotations

import json
import socket
from typing import Any
from urllib.parse import urlsplit


def raw_request(url: str, head_lines: list[str], timeout: float = 10) -> tuple[int, dict[str, Any]]:
    """Send `GET <path>` with exactly `head_lines` as its headers; the status and the JSON body."""
    parts = urlsplit(url)
    head = f"GET {parts.path or '/'} HTTP/1.1\r\n" + "".join(f"{h}\r\n" for h in head_lines)
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.sendall((head + "\r\n").encode("latin-1"))
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), json.loads(body)
