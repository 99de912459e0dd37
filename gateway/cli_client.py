"""Client commands that talk to a running gateway: `upload`, `download`, `watch` and `status`.

They use the gateway's public HTTP API only (the routes in README.md), so they double as a reference
client. Common options: `--gateway URL` (GATEWAY_URL) and `--token` (GATEWAY_TOKEN, sent as Bearer).
Results go to stdout, progress bars and diagnostics to stderr.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any, NoReturn
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

DEFAULT_GATEWAY = "http://127.0.0.1:8000"
CHUNK_BYTES = 1 << 20
CONNECT_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 900.0
"""Longest silence from the gateway during an upload or download (waits are at most 600 s)."""
STATUS_TIMEOUT_S = 60.0
FIRST_RETRY_S = 0.5
MAX_RETRY_S = 15.0

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3
EXIT_LOCAL = 4
EXIT_INTERRUPTED = 130

_RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})

_EXIT_CODES = (
    "Exit codes: 0 done; 1 the gateway answered with an error, printed on stderr as "
    "'error: <title>: <detail>'; 2 bad usage; 3 the gateway could not be reached or the transfer "
    "broke off; 4 a local file could not be read or written; 130 interrupted (Ctrl-C)."
)
_EPILOGS = {
    "upload": _EXIT_CODES,
    "download": _EXIT_CODES,
    "watch": (
        "Exit codes: 0 after --count events or on Ctrl-C; 1 the gateway refused the request "
        "(bad --types or --after, wrong token), printed on stderr as 'error: <title>: <detail>'; "
        "2 bad usage. Lost connections are retried, never an exit."
    ),
    "status": (
        "Exit codes: 0 the gateway is ready; 1 it answered but is not ready (the summary says why) "
        "or refused the request; 2 bad usage; 3 it could not be reached."
    ),
}

GatewayOption = Annotated[
    str,
    typer.Option(
        "--gateway",
        envvar="GATEWAY_URL",
        help="Base URL of the running gateway.",
        rich_help_panel="Connection",
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="GATEWAY_TOKEN",
        help="The gateway's GATEWAY_TOKEN, sent as 'Authorization: Bearer <token>'.",
        show_default=False,
        rich_help_panel="Connection",
    ),
]


class DownloadFormat(StrEnum):
    """Formats of `download`."""

    npz = "npz"
    npy = "npy"


# ---------------------------------------------------------------- shared plumbing


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    typer.echo(message, err=True)
    raise typer.Exit(code=code)


def _base_url(gateway: str) -> str:
    url = gateway.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise typer.BadParameter(
            f"{gateway!r} is not an http(s) URL, e.g. {DEFAULT_GATEWAY}", param_hint="'--gateway'"
        )
    return url


def _client(gateway: str, token: str | None, timeout: httpx.Timeout) -> httpx.Client:
    headers = {"User-Agent": "branchkey-gateway-cli"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=_base_url(gateway), headers=headers, timeout=timeout)


def problem_line(response: httpx.Response) -> str:
    """`error: <title>: <detail>` for a problem response (or the status and text of any other)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("title"), str):
        detail = body.get("detail")
        return f"error: {body['title']}: {detail}" if detail else f"error: {body['title']}"
    text = " ".join(response.text.split())[:300] or response.reason_phrase
    return f"error: HTTP {response.status_code}: {text}"


def _unreachable(url: str, error: httpx.HTTPError) -> NoReturn:
    if isinstance(error, httpx.TimeoutException):
        _fail(f"error: the gateway at {url} did not answer in time", EXIT_UNREACHABLE)
    reason = str(error) or type(error).__name__
    _fail(f"error: cannot talk to the gateway at {url}: {reason}", EXIT_UNREACHABLE)


def _progress(console: Console) -> Progress:
    """A transfer bar on stderr, shown only when stderr is a terminal."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=not console.is_terminal,
    )


def _label(action: str, name: str, width: int = 32) -> str:
    """A progress description of at most `width` characters."""
    text = f"{action} {name}"
    return text if len(text) <= width else text[: width - 1] + "\N{HORIZONTAL ELLIPSIS}"


def _echo(line: str) -> None:
    """A line on stdout; a reader that went away (`| head`) ends the command quietly."""
    try:
        typer.echo(line)
    except BrokenPipeError:
        _quiet_stdout()
        raise typer.Exit(code=EXIT_OK) from None


def _quiet_stdout() -> None:
    # Python flushes stdout at exit; point it at /dev/null so a closed pipe is not reported twice.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# ---------------------------------------------------------------- upload


def _quote_filename(name: str) -> str:
    """A file name for a multipart Content-Disposition header (as browsers escape it)."""
    return name.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def upload(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="Weights file: an NPZ (weighting + layer_0..) or the v1 client's object .npy; "
            "the gateway recognises it by its content.",
        ),
    ],
    weighting: Annotated[
        str | None,
        typer.Option(help="Aggregation weight (number of samples); overrides the file's."),
    ] = None,
    wait: Annotated[
        bool | None,
        typer.Option(
            "--wait/--no-wait",
            help="Wait for the run to start instead of failing with run-not-started "
            "(default: the gateway's BK_WAIT_FOR_RUN).",
            show_default=False,
        ),
    ] = None,
    wait_timeout: Annotated[
        float | None,
        typer.Option(min=0.001, help="Longest wait in seconds (default: GATEWAY_WAIT_TIMEOUT_S)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the whole JSON answer instead of the file id.")
    ] = False,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    token: TokenOption = None,
) -> None:
    """Upload a weights file through the gateway (POST /upload) and print the file id it got.

    The file is streamed, never read into memory; a progress bar is shown on stderr when it is a
    terminal. The gateway validates it, converts a v1 .npy to the v3 NPZ, and forwards it to
    BranchKey.

    Example: branchkey-gateway upload weights.npz --wait
    """
    boundary = secrets.token_hex(16)
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{_quote_filename(file.name)}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = file.stat().st_size
    params: dict[str, str] = {}
    if weighting is not None:
        params["weighting"] = weighting
    if wait is not None:
        params["wait"] = "true" if wait else "false"
    if wait_timeout is not None:
        params["wait_timeout"] = f"{wait_timeout:g}"
    console = _stderr()
    # Validation, forwarding and ?wait=true take time, but a gateway silent this long is stuck.
    timeout = httpx.Timeout(IDLE_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    with _client(gateway, token, timeout) as client, _progress(console) as progress:
        task = progress.add_task(_label("upload", file.name), total=size)

        def body() -> Iterator[bytes]:
            yield head
            remaining = size  # exactly what Content-Length announced
            with file.open("rb") as stream:
                while remaining > 0 and (chunk := stream.read(min(CHUNK_BYTES, remaining))):
                    remaining -= len(chunk)
                    progress.advance(task, len(chunk))
                    yield chunk
            yield tail
            checking = "waiting for run" if wait else "gateway checks"
            progress.update(task, description=_label(checking, file.name))

        try:
            response = client.post(
                "upload",
                params=params,
                content=body(),
                headers={
                    "Content-Type": f"multipart/form-data; boundary={boundary}",
                    "Content-Length": str(len(head) + size + len(tail)),
                },
            )
        except httpx.HTTPError as error:
            progress.stop()
            _unreachable(str(client.base_url), error)
        except KeyboardInterrupt:
            progress.stop()
            _fail("upload interrupted", EXIT_INTERRUPTED)
        except OSError as error:
            progress.stop()
            _fail(f"error: cannot read {file}: {error.strerror or error}", EXIT_LOCAL)
    if response.status_code != 201:
        _fail(problem_line(response))
    result: dict[str, Any] = response.json()
    _echo(json.dumps(result, indent=2) if as_json else str(result["file_id"]))


# ---------------------------------------------------------------- download


def _latest(client: httpx.Client) -> str:
    response = client.get("aggregations/latest")
    if response.status_code != 200:
        _fail(problem_line(response))
    return str(response.json()["aggregation_id"])


def _etag_digest(response: httpx.Response) -> str | None:
    etag = response.headers.get("etag", "").removeprefix("W/").strip('"').lower()
    return etag if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) else None


def _receive(response: httpx.Response, sink: IO[bytes], progress: Progress, task: TaskID) -> str:
    digest = hashlib.sha256()
    for chunk in response.iter_bytes(CHUNK_BYTES):
        sink.write(chunk)
        digest.update(chunk)
        progress.advance(task, len(chunk))
    return digest.hexdigest()


def download(
    aggregation_id: Annotated[
        str,
        typer.Argument(
            metavar="ID", help="Aggregation id, or 'latest' for the newest the gateway heard of."
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write it (default: <id>.npz, or <id>.npy with --format npy); "
            "'-' writes to stdout.",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[
        DownloadFormat,
        typer.Option(
            "--format",
            help="npz: plain layer_0.. arrays, any .npy reader; npy: the v1 client's object array.",
        ),
    ] = DownloadFormat.npz,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    token: TokenOption = None,
) -> None:
    """Download an aggregated model (GET /aggregations/ID) and print the path written.

    The file is streamed to a temporary file next to the target and renamed once it is complete
    and matches the gateway's ETag (its sha256), so the target is never a partial model. A progress
    bar is shown on stderr when it is a terminal.

    Example: branchkey-gateway download latest -o aggregated.npz
    """
    console = _stderr()
    to_stdout = output is not None and str(output) == "-"
    timeout = httpx.Timeout(
        IDLE_TIMEOUT_S, connect=CONNECT_TIMEOUT_S
    )  # the first fetch goes upstream
    target: Path | None = None
    partial: Path | None = None
    with _client(gateway, token, timeout) as client:
        try:
            if aggregation_id == "latest":
                aggregation_id = _latest(client)
            target = output or Path(f"{aggregation_id}.{fmt.value}")
            url = f"aggregations/{quote(aggregation_id, safe='')}"
            with contextlib.ExitStack() as files:
                if to_stdout:
                    sink: IO[bytes] = sys.stdout.buffer
                else:  # created before the transfer, so a bad path fails at once
                    partial = target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
                    sink = files.enter_context(partial.open("xb"))
                with (
                    client.stream("GET", url, params={"format": fmt.value}) as response,
                    _progress(console) as progress,
                ):
                    if response.status_code != 200:
                        response.read()
                        progress.stop()
                        _fail(problem_line(response))
                    length = response.headers.get("content-length")
                    total = int(length) if length and length.isdigit() else None
                    task = progress.add_task(_label("download", target.name), total=total)
                    digest = _receive(response, sink, progress, task)
                    sink.flush()
                    expected = _etag_digest(response)
            if expected is not None and digest != expected:
                _fail(
                    f"error: the download of {aggregation_id} does not match its ETag "
                    f"(sha256 {digest}, expected {expected})",
                    EXIT_UNREACHABLE,
                )
            if partial is not None:
                os.replace(partial, target)
                partial = None
        except httpx.HTTPError as error:
            _unreachable(str(client.base_url), error)
        except KeyboardInterrupt:
            _fail("download interrupted", EXIT_INTERRUPTED)
        except BrokenPipeError:
            _quiet_stdout()
            raise typer.Exit(code=EXIT_OK) from None
        except OSError as error:
            _fail(f"error: cannot write {target}: {error.strerror or error}", EXIT_LOCAL)
        finally:
            if partial is not None:
                partial.unlink(missing_ok=True)
    if not to_stdout:
        _echo(str(target))


# ---------------------------------------------------------------- watch


class _Reconnect(Exception):
    """The stream ended or failed in a way worth retrying."""


def _compact(data: str) -> str:
    try:
        return json.dumps(json.loads(data), separators=(",", ":"))
    except ValueError:
        return " ".join(data.split())


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
    try:
        from httpx_sse import SSEError, connect_sse
    except ImportError:  # pragma: no cover - a test dependency today; see pyproject
        _fail("error: watch needs the httpx-sse package: pip install httpx-sse", 2)
    console = _stderr()

    def note(message: str) -> None:
        if not quiet:
            console.print(f"watch: {message}", markup=False)

    last: str | None = None if after is None else str(after)
    printed = 0
    pause = FIRST_RETRY_S
    timeout = httpx.Timeout(idle_timeout, connect=CONNECT_TIMEOUT_S)
    params = {"types": types} if types else {}
    try:
        with _client(gateway, token, timeout) as client:
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
                            _fail(problem_line(response))
                        resumed = "" if last is None else f" after event {last}"
                        note(f"following {base}/events{resumed}")
                        pause = FIRST_RETRY_S
                        for event in source.iter_sse():
                            if not event.data:
                                continue  # the `retry:` preamble
                            if event.id:
                                last = event.id
                            _echo(f"{event.id or '-'} {event.event} {_compact(event.data)}")
                            printed += 1
                            if count is not None and printed >= count:
                                return
                    reason = "the gateway ended the stream"
                except SSEError as error:
                    _fail(f"error: {base}/events is not an event stream: {error}")
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


def _get(client: httpx.Client, path: str) -> tuple[bool, dict[str, Any]]:
    """(ok, JSON body); the body of an error answer is its problem document."""
    response = client.get(path)
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"title": f"HTTP {response.status_code}", "detail": response.text[:300]}
    return response.is_success, body


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
    with _client(gateway, token, timeout) as client:
        url = str(client.base_url).rstrip("/")
        try:
            session_ok, session = _get(client, "session")
            if not session_ok:
                _fail(f"error: {_why(session)}")
            run = _get(client, "run")
            ready = _get(client, "readyz")
        except httpx.HTTPError as error:
            _unreachable(url, error)
    if as_json:
        document = {
            "gateway": url,
            "session": session,
            "run": run[1],
            "readyz": ready[1],
            "ready": ready[0],
        }
        _echo(json.dumps(document, indent=2))
    else:
        rows = _summary(url, session, run, ready)
        width = max(len(name) for name, _ in rows) + 2
        for name, value in rows:
            _echo(f"{name:<{width}}{value}")
    if not ready[0]:
        raise typer.Exit(code=EXIT_REFUSED)


# ---------------------------------------------------------------- registration


def register(app: typer.Typer) -> None:
    """Add `upload`, `download`, `watch` and `status` to the `branchkey-gateway` command."""
    for command in (upload, download, watch, status):
        app.command(epilog=_EPILOGS[command.__name__])(command)
