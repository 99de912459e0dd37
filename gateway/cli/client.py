"""Client commands that talk to a running gateway: `upload`, `download`, `exchange`, `watch`, `status`.

They use the gateway's public HTTP API only (the routes in README.md), so they double as a reference
client. Common options: `--gateway URL` (GATEWAY_URL) and `--token` (GATEWAY_TOKEN, sent as Bearer).
Results go to stdout, progress bars and diagnostics to stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any
from urllib.parse import quote

import httpx
import typer

from gateway.cli import client_exchange, client_monitor
from gateway.cli.client_http import (
    CONNECT_TIMEOUT_S,
    DEFAULT_GATEWAY,
    EXIT_INTERRUPTED,
    EXIT_LOCAL,
    IDLE_TIMEOUT_S,
    DownloadFormat,
    FormatOption,
    GatewayOption,
    NamesOption,
    TokenOption,
    check_digest,
    digested_form,
    echo,
    fail,
    label,
    open_client,
    partial_path,
    problem_line,
    save_body,
    stderr_console,
    transfer_failures,
    transfer_progress,
    unreachable,
    upload_params,
)

_EXIT_CODES = (
    "Exit codes: 0 done; 1 the gateway answered with an error, printed on stderr as "
    "'error: <title>: <detail>'; 2 bad usage; 3 the gateway could not be reached or the transfer "
    "broke off; 4 a local file could not be read or written; 130 interrupted (Ctrl-C)."
)

app = typer.Typer()
"""`upload`, `download`, then `watch` and `status` (client_monitor.py); `gateway.cli` adds them all."""


# ---------------------------------------------------------------- upload


@app.command(epilog=_EXIT_CODES)
def upload(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="Weights file: an NPZ (weighting + layer_0.., or your own array names), the v1 "
            "client's object .npy, a plain .npy array (one layer), a list of arrays saved with "
            "np.save, or a safetensors file; the gateway recognises it by its content.",
        ),
    ],
    weighting: Annotated[
        str | None,
        typer.Option(
            help="Aggregation weight (number of samples); overrides the file's "
            "(a .npy or safetensors file without it gets 1.0)."
        ),
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
    params = upload_params(weighting, wait, wait_timeout)
    console = stderr_console()
    form = digested_form(file, console)
    # Validation, forwarding and ?wait=true take time, but a gateway silent this long is stuck.
    timeout = httpx.Timeout(IDLE_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    with open_client(gateway, token, timeout) as client, transfer_progress(console) as progress:
        task = progress.add_task(label("upload", file.name), total=form.size)

        def body() -> Iterator[bytes]:
            yield from form.chunks(lambda size: progress.advance(task, size))
            checking = "waiting for run" if wait else "gateway checks"
            progress.update(task, description=label(checking, file.name))

        try:
            response = client.post("upload", params=params, content=body(), headers=form.headers())
        except httpx.HTTPError as error:
            progress.stop()
            unreachable(str(client.base_url), error)
        except KeyboardInterrupt:
            progress.stop()
            fail("upload interrupted", EXIT_INTERRUPTED)
        except OSError as error:
            progress.stop()
            fail(f"error: cannot read {file}: {error.strerror or error}", EXIT_LOCAL)
    if response.status_code != 201:
        fail(problem_line(response))
    result: dict[str, Any] = response.json()
    echo(json.dumps(result, indent=2) if as_json else str(result["file_id"]))


# ---------------------------------------------------------------- download


def _latest(client: httpx.Client) -> str:
    response = client.get("aggregations/latest")
    if response.status_code != 200:
        fail(problem_line(response))
    return str(response.json()["aggregation_id"])


@app.command(epilog=_EXIT_CODES)
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
            help="Where to write it (default: <id>.<format>); '-' writes to stdout.",
            show_default=False,
        ),
    ] = None,
    fmt: FormatOption = DownloadFormat.npz,
    names: NamesOption = None,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    token: TokenOption = None,
) -> None:
    """Download an aggregated model (GET /aggregations/ID) and print the path written.

    The file is streamed to a temporary file next to the target and renamed once it is complete
    and matches the gateway's ETag (its sha256), so the target is never a partial model. A progress
    bar is shown on stderr when it is a terminal.

    Example: branchkey-gateway download latest -o aggregated.npz
    (or --format safetensors -o model.safetensors for your own tensor names)
    """
    console = stderr_console()
    to_stdout = output is not None and str(output) == "-"
    timeout = httpx.Timeout(
        IDLE_TIMEOUT_S, connect=CONNECT_TIMEOUT_S
    )  # the first fetch goes upstream
    target: Path | None = None
    partial: Path | None = None
    with open_client(gateway, token, timeout) as client:
        try:
            with transfer_failures(client, "download", lambda: f"write {target}"):
                if aggregation_id == "latest":
                    aggregation_id = _latest(client)
                target = output or Path(f"{aggregation_id}.{fmt.value}")
                params = {"format": fmt.value, **({"names": names.value} if names else {})}
                url = f"aggregations/{quote(aggregation_id, safe='')}"
                with contextlib.ExitStack() as files:
                    if to_stdout:
                        sink: IO[bytes] = sys.stdout.buffer
                    else:  # created before the transfer, so a bad path fails at once
                        partial = partial_path(target)
                        sink = files.enter_context(partial.open("xb"))
                    with client.stream("GET", url, params=params) as response:
                        digest, expected = save_body(response, sink, console, target.name)
                check_digest(f"the download of {aggregation_id}", digest, expected)
                if partial is not None:
                    os.replace(partial, target)
                    partial = None
        finally:
            if partial is not None:
                partial.unlink(missing_ok=True)
    if not to_stdout:
        echo(str(target))


# After upload and download: the order `--help` lists them in.
app.add_typer(client_exchange.app)
app.add_typer(client_monitor.app)
