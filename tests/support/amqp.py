"""The test RabbitMQ broker (127.0.0.1:5672, guest/guest): its URL, rabbitmqctl, connections, queues, and cleanup of what tests provision."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
"""The admin URL tests pass as `amqp_url`."""

CTL_TIMEOUT_S = 30.0


def rabbitmqctl(*args: str) -> str:
    """Run `rabbitmqctl -q <args>` and return its stdout (fails the caller on a non-zero exit)."""
    executable = shutil.which("rabbitmqctl")
    if executable is None:
        raise RuntimeError("rabbitmqctl is not on PATH: the AMQP tests need a local RabbitMQ")
    done = subprocess.run(
        [executable, "-q", *args],
        capture_output=True,
        text=True,
        timeout=CTL_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {done.stderr or done.stdout}")
    return done.stdout


def delete_from_broker(vhosts: Iterable[str] = (), users: Iterable[str] = ()) -> None:
    """Delete these vhosts (with their queues and exchanges) and users, in parallel; missing ones are fine."""
    executable = shutil.which("rabbitmqctl") or "rabbitmqctl"
    commands = [["delete_vhost", v] for v in sorted(set(vhosts))]
    commands += [["delete_user", u] for u in sorted(set(users))]
    running = [
        subprocess.Popen(
            [executable, "-q", *command], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for command in commands
    ]
    for process in running:
        process.wait(timeout=CTL_TIMEOUT_S)


@contextmanager
def broker_cleanup(vhosts: Iterable[str] = (), users: Iterable[str] = ()) -> Iterator[None]:
    """Delete `vhosts` and `users` from the broker when the block ends, whatever happens in it."""
    vhosts, users = list(vhosts), list(users)
    try:
        yield
    finally:
        delete_from_broker(vhosts, users)


def _json_rows(*args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(rabbitmqctl(*args, "--formatter", "json") or "[]")
    return rows


def connections(user: str) -> list[str]:
    """RabbitMQ's process ids of the open connections of `user`."""
    # The tab-separated listing, not JSON: only it prints pids in the form close_connection takes.
    lines = rabbitmqctl("list_connections", "user", "pid", "--no-table-headers").splitlines()
    rows = [line.split("\t") for line in lines if "\t" in line]
    return [pid.strip() for name, pid in rows if name == user]


def close_connections(user: str) -> int:
    """Close every broker connection of `user`, as an operator or a broker failover would."""
    pids = connections(user)
    for pid in pids:
        rabbitmqctl("close_connection", pid, "closed by the test")
    return len(pids)


def queue_counts(vhost: str, queue: str) -> tuple[int, int]:
    """(ready, unacknowledged) messages of a queue."""
    for row in _json_rows(
        "list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged"
    ):
        if row["name"] == queue:
            return int(row["messages_ready"]), int(row["messages_unacknowledged"])
    raise AssertionError(f"no queue {queue!r} in vhost {vhost!r}")
