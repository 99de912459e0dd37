"""The `exchange` command: one round in one call (POST /exchange), the next model written to a file."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated

import httpx
import typer
from rich.console import Console

from gateway.cli.client_http import (
    CONNECT_TIMEOUT_S,
    DEFAULT_GATEWAY,
    DownloadFormat,
    FormatOption,
    GatewayOption,
    MultipartFile,
    NamesOption,
    TokenOption,
    check_digest,
    digested_form,
    echo,
    label,
    open_client,
    partial_path,
    save_body,
    stderr_console,
    transfer_failures,
    transfer_progress,
    upload_params,
)

app = typer.Typer()


@app.command(
    epilog="Exit codes: 0 done; 1 the gateway answered with an error (a 504 aggregation-timeout "
    "means the upload was accepted: do not send it again); 2 bad usage; 3 the gateway could not "
    "be reached or the transfer broke off; 4 a local file could not be read or written; 130 "
    "interrupted."
)
def exchange(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="Weights file, in any form `upload` takes.",
        ),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the next model (default: <aggregation id>.npz, or .npy with "
            "--format npy); '-' writes to stdout.",
            show_default=False,
        ),
    ] = None,
    fmt: FormatOption = DownloadFormat.npz,
    names: NamesOption = None,
    weighting: Annotated[
        str | None,
        typer.Option(help="Aggregation weight (number of samples); overrides the file's."),
    ] = None,
    wait: Annotated[
        bool | None,
        typer.Option(
            "--wait/--no-wait",
            help="Wait for the run to start (default: the gateway's BK_WAIT_FOR_RUN).",
            show_default=False,
        ),
    ] = None,
    wait_timeout: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Longest wait in seconds, for the run and for the aggregation "
            "(default and cap: the gateway's GATEWAY_WAIT_TIMEOUT_S).",
        ),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print file_id, aggregation_id, event_id and path as JSON."),
    ] = False,
    gateway: GatewayOption = DEFAULT_GATEWAY,
    token: TokenOption = None,
) -> None:
    """Upload weights and write the first aggregation announced after them (POST /exchange): one
    federated round in one command. Prints the path written.

    The model is written to a temporary file beside the target and renamed once complete and
    matching the gateway's ETag, so the target is never a partial model.

    Example: branchkey-gateway exchange weights.npz -o next.npz
    """
    params = {"format": fmt.value, **upload_params(weighting, wait, wait_timeout)}
    if names is not None:
        params["names"] = names.value
    console = stderr_console()
    form = digested_form(file, console)
    to_stdout = output is not None and str(output) == "-"
    # No read timeout: the gateway bounds its own waits (GATEWAY_WAIT_TIMEOUT_S) and answers.
    timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT_S)
    folder = Path() if output is None or to_stdout else output.parent
    partial: Path | None = None
    target: Path | None = output
    with open_client(gateway, token, timeout) as client:
        try:
            with transfer_failures(client, "exchange", lambda: f"read {file} or write {target}"):
                with contextlib.ExitStack() as files:
                    if to_stdout:
                        sink: IO[bytes] = sys.stdout.buffer
                    else:  # created before the upload, so a bad path fails at once
                        partial = partial_path(folder / (output.name if output else "exchange"))
                        sink = files.enter_context(partial.open("xb"))
                    with client.stream(
                        "POST",
                        "exchange",
                        params=params,
                        content=_body(form, console),
                        headers=form.headers(),
                    ) as response:
                        aggregation_id = response.headers.get("x-aggregation-id", "aggregation")
                        if target is None:
                            target = folder / f"{aggregation_id}.{fmt.value}"
                        digest, expected = save_body(response, sink, console, target.name)
                check_digest(f"the model of {aggregation_id}", digest, expected)
                if partial is not None and target is not None:
                    os.replace(partial, target)
                    partial = None
        finally:
            if partial is not None:
                partial.unlink(missing_ok=True)
    ids = {
        "file_id": response.headers.get("x-file-id"),
        "aggregation_id": aggregation_id,
        "event_id": int(response.headers.get("x-event-id", "0")),
        "path": None if to_stdout else str(target),
    }
    note = response.headers.get("x-upload-note")
    if note:
        typer.echo(f"note: {note}", err=True)
    if as_json:
        echo(json.dumps(ids))
    elif not to_stdout:
        echo(str(target))


def _body(form: MultipartFile, console: Console) -> Iterator[bytes]:
    """The upload, with a progress bar that then says the gateway is waiting for the round."""
    with transfer_progress(console) as progress:
        task = progress.add_task(label("upload", form.file.name), total=form.size)
        yield from form.chunks(lambda size: progress.advance(task, size))
        progress.update(task, description=label("waiting for round", form.file.name))
