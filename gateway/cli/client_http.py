"""HTTP, progress and output plumbing shared by the client commands (`gateway/cli/client.py`)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import sys
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any, NoReturn

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

from gateway.digests import content_digest

DEFAULT_GATEWAY = "http://127.0.0.1:8000"
CHUNK_BYTES = 1 << 20
CONNECT_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 900.0
"""Longest silence from the gateway during an upload or download (waits are at most 600 s)."""
STATUS_TIMEOUT_S = 60.0

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_UNREACHABLE = 3
EXIT_LOCAL = 4
EXIT_INTERRUPTED = 130

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
    """Formats of the models `download` and `exchange` write."""

    npz = "npz"
    npy = "npy"
    safetensors = "safetensors"


class NameStyle(StrEnum):
    """Tensor names of the models `download` and `exchange` write."""

    layer = "layer"
    original = "original"


FormatOption = Annotated[
    DownloadFormat,
    typer.Option(
        "--format",
        help="npz: plain layer_0.. arrays, any .npy reader; npy: the v1 client's object "
        "array; safetensors: the tensor names and dtypes of your last named upload.",
    ),
]
NamesOption = Annotated[
    NameStyle | None,
    typer.Option(
        help="original: the names of your last safetensors or named-NPZ upload (the default "
        "for safetensors); layer: layer_0.. (the default for npz and npy).",
        show_default=False,
    ),
]


def upload_params(
    weighting: str | None, wait: bool | None, wait_timeout: float | None
) -> dict[str, str]:
    """The query of an upload (`upload`, `exchange`): only the options given, as the gateway reads them."""
    params: dict[str, str] = {}
    if weighting is not None:
        params["weighting"] = weighting
    if wait is not None:
        params["wait"] = "true" if wait else "false"
    if wait_timeout is not None:
        params["wait_timeout"] = f"{wait_timeout:g}"
    return params


def stderr_console() -> Console:
    """Where progress bars and notes go."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_REFUSED) -> NoReturn:
    """Print `message` on stderr and exit with `code`."""
    typer.echo(message, err=True)
    raise typer.Exit(code=code)


def _base_url(gateway: str) -> str:
    url = gateway.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise typer.BadParameter(
            f"{gateway!r} is not an http(s) URL, e.g. {DEFAULT_GATEWAY}", param_hint="'--gateway'"
        )
    return url


def open_client(gateway: str, token: str | None, timeout: httpx.Timeout) -> httpx.Client:
    """An HTTP client for the gateway at `gateway`, sending `token` as Bearer when given."""
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


def unreachable(url: str, error: httpx.HTTPError) -> NoReturn:
    """Exit 3 with a sentence saying why the gateway at `url` could not be talked to."""
    if isinstance(error, httpx.TimeoutException):
        fail(f"error: the gateway at {url} did not answer in time", EXIT_UNREACHABLE)
    reason = str(error) or type(error).__name__
    fail(f"error: cannot talk to the gateway at {url}: {reason}", EXIT_UNREACHABLE)


@contextlib.contextmanager
def transfer_failures(
    client: httpx.Client, action: str, local: Callable[[], str]
) -> Iterator[None]:
    """What breaks a transfer, as its exit: the gateway unreachable or gone (3), Ctrl-C (130), stdout
    closed by its reader (0, quietly), a local file (4: "error: cannot <local()>: <why>")."""
    try:
        yield
    except httpx.HTTPError as error:
        unreachable(str(client.base_url), error)
    except KeyboardInterrupt:
        fail(f"{action} interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        quiet_stdout()
        raise typer.Exit(code=EXIT_OK) from None
    except OSError as error:
        fail(f"error: cannot {local()}: {error.strerror or error}", EXIT_LOCAL)


def get_json(client: httpx.Client, path: str) -> tuple[bool, dict[str, Any]]:
    """(ok, JSON body); the body of an error answer is its problem document."""
    response = client.get(path)
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"title": f"HTTP {response.status_code}", "detail": response.text[:300]}
    return response.is_success, body


def transfer_progress(console: Console) -> Progress:
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


def label(action: str, name: str, width: int = 32) -> str:
    """A progress description of at most `width` characters."""
    text = f"{action} {name}"
    return text if len(text) <= width else text[: width - 1] + "\N{HORIZONTAL ELLIPSIS}"


def echo(line: str) -> None:
    """A line on stdout; a reader that went away (`| head`) ends the command quietly."""
    try:
        typer.echo(line)
    except BrokenPipeError:
        quiet_stdout()
        raise typer.Exit(code=EXIT_OK) from None


def quiet_stdout() -> None:
    """Point stdout at /dev/null once its reader has gone."""
    # Python flushes stdout at exit; point it at /dev/null so a closed pipe is not reported twice.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


# ---------------------------------------------------------------- bodies of uploads and downloads


def _quote_filename(name: str) -> str:
    """A file name for a multipart Content-Disposition header (as browsers escape it)."""
    return name.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class MultipartFile:
    """A one-file `multipart/form-data` body streamed from disk, with its exact length, and the
    file's sha-256 in the part's `Content-Digest` (RFC 9530) when known."""

    def __init__(self, file: Path, boundary: str, sha256: bytes | None = None) -> None:
        self.file = file
        self.boundary = boundary
        digest = "" if sha256 is None else f"Content-Digest: {content_digest(sha256)}\r\n"
        self.head = (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{_quote_filename(file.name)}"\r\n'
            f"Content-Type: application/octet-stream\r\n{digest}\r\n"
        ).encode()
        self.tail = f"\r\n--{boundary}--\r\n".encode()
        self.size = file.stat().st_size

    def headers(self) -> dict[str, str]:
        """Content-Type and Content-Length (so httpx does not send it chunked)."""
        return {
            "Content-Type": f"multipart/form-data; boundary={self.boundary}",
            "Content-Length": str(len(self.head) + self.size + len(self.tail)),
        }

    def chunks(self, on_chunk: Callable[[int], None]) -> Iterator[bytes]:
        """The body; `on_chunk(n)` after each n bytes of the file."""
        yield self.head
        remaining = self.size  # exactly what Content-Length announced
        with self.file.open("rb") as stream:
            while remaining > 0 and (chunk := stream.read(min(CHUNK_BYTES, remaining))):
                remaining -= len(chunk)
                on_chunk(len(chunk))
                yield chunk
        yield self.tail


def digested_form(file: Path, console: Console) -> MultipartFile:
    """The file's one-part form with its digest, read once beforehand (with a progress bar): told
    the digest, the gateway sends the file on to BranchKey while it arrives, and checks it."""
    digest = hashlib.sha256()
    try:
        with transfer_progress(console) as progress, file.open("rb") as stream:
            task = progress.add_task(label("digest", file.name), total=file.stat().st_size)
            while chunk := stream.read(CHUNK_BYTES):
                digest.update(chunk)
                progress.advance(task, len(chunk))
    except OSError as error:
        fail(f"error: cannot read {file}: {error.strerror or error}", EXIT_LOCAL)
    return MultipartFile(file, secrets.token_hex(16), digest.digest())


def etag_digest(response: httpx.Response) -> str | None:
    """The sha256 hex digest in the response's ETag, if it holds one."""
    etag = response.headers.get("etag", "").removeprefix("W/").strip('"').lower()
    return etag if len(etag) == 64 and all(c in "0123456789abcdef" for c in etag) else None


def receive(response: httpx.Response, sink: IO[bytes], progress: Progress, task: TaskID) -> str:
    """Copy the response body into `sink`, advancing `task`; the sha256 of what was written."""
    digest = hashlib.sha256()
    for chunk in response.iter_bytes(CHUNK_BYTES):
        sink.write(chunk)
        digest.update(chunk)
        progress.advance(task, len(chunk))
    return digest.hexdigest()


def save_body(
    response: httpx.Response, sink: IO[bytes], console: Console, name: str
) -> tuple[str, str | None]:
    """Copy a 200 response's body into `sink` with a progress bar (an error answer exits 1 with
    its problem): the sha256 of what was written, and the one its ETag promised (if any)."""
    with transfer_progress(console) as progress:
        if response.status_code != 200:
            response.read()
            progress.stop()
            fail(problem_line(response))
        length = response.headers.get("content-length")
        total = int(length) if length and length.isdigit() else None
        task = progress.add_task(label("download", name), total=total)
        digest = receive(response, sink, progress, task)
        sink.flush()
    return digest, etag_digest(response)


def check_digest(what: str, digest: str, expected: str | None) -> None:
    """Exit 3 when a received file's sha256 is not the ETag it came with (`what` names it)."""
    if expected is not None and digest != expected:
        fail(
            f"error: {what} does not match its ETag (sha256 {digest}, expected {expected})",
            EXIT_UNREACHABLE,
        )


def partial_path(target: Path) -> Path:
    """A private name beside `target` for the file while it arrives."""
    return target.parent / f".{target.name}.{secrets.token_hex(4)}.part"
