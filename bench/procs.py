"""Process helpers shared by the benchmarks: free ports, the gateway's command, clean environments, peak RSS."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

KiB = 1024


def reset_high_water_mark(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux >= 4.0, same user)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def high_water_mark(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * KiB
    except (OSError, ValueError, IndexError):
        return None
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def gateway_command() -> list[str]:
    script = Path(sys.executable).with_name("branchkey-gateway")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-m", "gateway"]


def clean_env(prefixes: tuple[str, ...]) -> dict[str, str]:
    """The environment without variables that would configure the servers behind our back."""
    return {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
