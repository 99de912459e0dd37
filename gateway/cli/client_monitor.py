"""Client commands that follow a running gateway: `watch` (its events) and `status` (session, run, channel)."""

from __future__ import annotations

import json
import secrets
import time
from typing import Annotated, Any

import httpx
import typer
from httpx_sse import SSEError, connect_sse

from gateway.cli.client_http import (
    CONNECT_TIMEOUT_S,
    DEFAULT_GATEWAY,
    EXIT_OK,
    EXIT_REFUSED,
    STATUS_TIMEOUT_S,
    GatewayOption,
    TokenOption,
    echo,
    fail,
    get_json,
    open_client,
    problem_line,
    stderr_console,
    unreachable,
)

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 15.0

_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})

_WATCH_EXIT_CODES = (
    "Exit codes: 0 after --count events or on Ctrl-C; 1 the gateway refused the request "
    "(bad --types or --after, wrong token), printed on stderr as 'error: <title>: <detail>'; "
    "2 bad usage. Lost connections are retried, never an exit."
)
_STATUS_EXIT_CODES = (
    "Exit codes: 0 the gateway is ready; 1 it answered but is not ready (the summary says why) "
    "or refused the request; 2 bad usage; 3 it could not be reached."
)

app = typer.Typer()
"""`watch` and `status`; `gateway.cli.client` adds them after `upload` and `download`."""


# ---------------------------------------------------------------- watch


class _Reconnect(Exception):
    """The stream ended or failed in a way worth retrying."""


def _compact(data: str) -> str:
    try:
        return json.dumps(json.loads(data), separators=(",", ":"))
    except ValueError:
        return " ".join(data.split())


@app.command(epilog=_WATCH_EXIT_CODES)
def watch(
    types: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated event types to show: aggregation, run_status, gap (default: all)."
        ),
    ] = None,
    after: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Replay the stored events after this id first (default: only new events).",
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option(min=1, help="Exit (0) after this many events; for scripts."),
    ] = None,
    idle_timeout: Annotated[
        float,
        typer.Option(
            min=1,
            help="Reconnect when nothing, not even a keep-alive, arrives for this many seconds.",
        ),
    ] = 60.0,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No connection notes on stderr.")
    ] = False,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    token: TokenOption = None,
) -> None:
    """Follow the gateway's events (GET /events) and print one line per event: ID EVENT JSON.

    EVENT is aggregation, run_status or gap; JSON is the event's data on one line. When the
    connection is lost (or the gateway restarts) it reconnects with growing pauses and resumes with
    Last-Event-ID after the last event it printed, so no event is printed twice or skipped while the
    gateway keeps it (before the first event there is no id to resume from: pass --after to start
    from a known one). Connection notes go to stderr. Ctrl-C stops it.

    Example: branchkey-gateway watch --types aggregation --count 1
    """
    console = stderr_console()

    def note(message: str) -> None:
        if not quiet:
            console.print(f"watch: {message}", markup=False)

    last: str | None = None if after is None else str(after)
    printed = 0
    pause = FIRST_RETRY_S
    timeout = httpx.Timeout(idle_timeout, connect=CONNECT_TIMEOUT_S)
    params = {"types": types} if types else {}
    try:
        with open_client(gateway, token, timeout) as client:
            base = str(client.base_url).rstrip("/")
            while True:
                headers = {} if last is None else {"Last-Event-ID": last}
                try:
                    with connect_sse(
                        client, "GET", "events", params=params, headers=headers
                    ) as source:
                        response = source.response
                        if response.status_code != 200:
                            response.read()
                            if response.status_code in _RETRYABLE:
                                raise _Reconnect(problem_line(response).removeprefix("error: "))
                            fail(problem_line(response))
                        resumed = "" if last is None else f" after event {last}"
                        note(f"following {base}/events{resumed}")
                        pause = FIRST_RETRY_S
                        for event in source.iter_sse():
                            if not event.data:
                                continue  # the `retry:` preamble
                            if event.id:
                                last = event.id
                            echo(f"{event.id or '-'} {event.event} {_compact(event.data)}")
                            printed += 1
                            if count is not None and printed >= count:
                                return
                    reason = "the gateway ended the stream"
                except SSEError as error:
                    fail(f"error: {base}/events is not an event stream: {error}")
                except httpx.HTTPError as error:
                    reason = str(error) or type(error).__name__
                except _Reconnect as error:
                    reason = str(error)
                note(f"{reason}; reconnecting in {pause:.1f} s")
                time.sleep(pause * (1 + secrets.randbelow(250) / 1000))
                pause = min(pause * 2, MAX_RETRY_S)
    except KeyboardInterrupt:
        raise typer.Exit(code=EXIT_OK) from None


# ---------------------------------------------------------------- status


def _why(problem: dict[str, Any]) -> str:
    title, detail = problem.get("title"), problem.get("detail")
    return f"{title}: {detail}" if detail else str(title)


def _summary(
    url: str,
    session: dict[str, Any],
    run: tuple[bool, dict[str, Any]],
    ready: tuple[bool, dict[str, Any]],
) -> list[tuple[str, str]]:
    rows = [("gateway", url)]
    if session.get("state") == "authenticated":
        leaf = session.get("leaf_name") or "?"
        rows.append(
            (
                "session",
                f"authenticated as leaf {leaf} ({session.get('leaf_id')}), "
                f"tree {session.get('tree_id')}, branch {session.get('branch_id')}",
            )
        )
    else:
        rows.append(("session", "logged out (POST credentials to /session)"))
    where = "embedded local aggregator" if session.get("offline") else "BranchKey"
    rows.append(
        ("upstream", f"{session.get('upstream_host')} ({where}, dialect {session.get('dialect')})")
    )
    run_ok, run_body = run
    if run_ok:
        rows.append(("run", f"{run_body.get('run_status')} (run {run_body.get('run_number')})"))
    else:
        rows.append(("run", f"unknown: {_why(run_body)}"))
    ready_ok, ready_body = ready
    rows.append(("channel", str(ready_body.get("channel", "unknown"))))
    rows.append(("ready", "yes" if ready_ok else f"no: {_why(ready_body)}"))
    return rows


@app.command(epilog=_STATUS_EXIT_CODES)
def status(
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print {gateway, session, run, readyz, ready} as JSON instead."
        ),
    ] = False,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    token: TokenOption = None,
) -> None:
    """Show the gateway's leaf session, the run and the notification channel.

    Reads GET /session, /run and /readyz; the run status is fresh from the upstream.

    Example: branchkey-gateway status --json
    """
    timeout = httpx.Timeout(STATUS_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    with open_client(gateway, token, timeout) as client:
        url = str(client.base_url).rstrip("/")
        try:
            session_ok, session = get_json(client, "session")
            if not session_ok:
                fail(f"error: {_why(session)}")
            run = get_json(client, "run")
            ready = get_json(client, "readyz")
        except httpx.HTTPError as error:
            unreachable(url, error)
    if as_json:
        document = {
            "gateway": url,
            "session": session,
            "run": run[1],
            "readyz": ready[1],
            "ready": ready[0],
        }
        echo(json.dumps(document, indent=2))
    else:
        rows = _summary(url, session, run, ready)
        width = max(len(name) for name, _ in rows) + 2
        for name, value in rows:
            echo(f"{name:<{width}}{value}")
    if not ready[0]:
        raise typer.Exit(code=EXIT_REFUSED)
