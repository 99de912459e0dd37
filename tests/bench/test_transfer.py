"""bench/transfer.py stays runnable: its options, its dry run's rows, and the sink it measures against."""

from __future__ import annotations

import functools
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.ports import free_port
from tests.support.waiting import wait_until

BENCH = Path(__file__).resolve().parents[2] / "bench"


def transfer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(BENCH / "transfer.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_help_lists_the_options() -> None:
    """--help names every option, --dry-run included."""
    done = transfer("--help")
    assert done.returncode == 0, done.stderr
    for option in ("--sizes", "--dir", "--keep", "--no-client", "--repeat", "--dry-run"):
        assert option in done.stdout


def test_dry_run_lists_the_baselines_the_digest_rows_and_the_ratio_targets() -> None:
    """The dry run names the sinks, the Content-Digest uploads and each ratio with its target."""
    done = transfer("--dry-run", "--sizes", "64M", "--repeat", "3", "--no-client")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "64M (64.0 MiB)" in out
    assert "(a-cd) 3 time(s)" in out
    for title in (
        "(s) curl -F -> minimal sink",
        "(s2) curl -F -> uvicorn + bare ASGI",
        "(a-cd) curl -F + Content-Digest -> gateway",
        "(a2-cd) raw body + Content-Digest -> gateway",
    ):
        assert f": {title}\n" in out
    assert "(c) branchkey 3.0.1 file_upload (skipped: --no-client)" in out
    for ratio in (
        "ratio a-recv / s: (a) receive leg / (s) wall, target <= 2x",
        "ratio a2-recv / a-recv: (a2) receive leg / (a) receive leg, target <= 1x",
        "ratio b / s: (b) / (s) wall, target <= 2x",
        "ratio a-cd / b: (a-cd) / (b) wall, target <= 1.2x",
        "ratio s2 / s: (s2) / (s) wall: the framework, informational",
    ):
        assert ratio in out


def test_bad_options_are_refused() -> None:
    """A size or repeat count the bench cannot use is refused with the accepted form."""
    for args, expected in (
        (("--sizes", "big"), "--sizes takes sizes like 512M,2G"),
        (("--repeat", "0"), "--repeat must be at least 1"),
    ):
        done = transfer("--dry-run", *args)
        assert done.returncode == 2
        assert expected in done.stderr


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_both_sinks_count_the_body_and_answer_201() -> None:
    """(s) and (s2) read a whole multipart body (after 100 Continue) and answer 201 with its size."""
    body = b"x" * (3 * 1024 * 1024 + 5)
    for extra in ((), ("--asgi",)):
        port = free_port()
        proc = subprocess.Popen([sys.executable, str(BENCH / "sink.py"), str(port), *extra])
        try:
            wait_until(functools.partial(_listening, port), 20, f"the sink on port {port}")
            response = httpx.post(
                f"http://127.0.0.1:{port}/upload",
                files={"file": ("w.npz", body)},
                headers={"Expect": "100-continue"} if not extra else {},
                timeout=30,
            )
            assert response.status_code == 201
            assert int(response.text) > len(body)  # the part plus its boundaries and headers
        finally:
            proc.send_signal(signal.SIGINT)  # as the bench stops it
            assert proc.wait(timeout=15) == 0
