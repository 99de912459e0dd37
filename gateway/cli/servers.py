"""Server commands: `serve` (the gateway), `aggregator` (the local aggregator) and `openapi`.

Their settings classes are the single source of every default: an option left out is not passed on,
so the class's environment variables, `.env` file and defaults apply, and `--help` shows the
class's default.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from pydantic import ValidationError

from gateway.aggregator.leaves import LeavesFileError
from gateway.aggregator.settings import AggregatorSettings
from gateway.http_limits import bounded_http_options
from gateway.logs import (
    OneLineStartupFailure,
    configure_logging,
    register_secret,
    startup_failure,
)
from gateway.settings import Settings

_log = logging.getLogger("gateway.aggregator")

app = typer.Typer()
"""The server commands; `gateway.cli` adds them to `branchkey-gateway`."""


class LogFormat(StrEnum):
    """Log line formats (GATEWAY_LOG_FORMAT)."""

    text = "text"
    json = "json"


def _gateway_default(field: str) -> str:
    return str(Settings.model_fields[field].default)


_DEFAULT_LOG_FORMAT = LogFormat(_gateway_default("gateway_log_format"))


def _aggregator_help(text: str, field: str) -> str:
    """`text`, then the field's variable and default as typer shows them."""
    help_text = f"{text}  [env var: {AggregatorSettings.model_config['env_prefix']}{field.upper()}"
    default = AggregatorSettings.model_fields[field].default
    return f"{help_text}]" if default is None else f"{help_text}; default: {default}]"


# --------------------------------------------------------------------------- serve


class _GatewayServer(uvicorn.Server):
    """uvicorn, ending the gateway's open SSE streams as soon as it is asked to stop."""

    def __init__(self, config: uvicorn.Config, stop_streams: Callable[[], None]) -> None:
        super().__init__(config)
        self.stop_streams = stop_streams

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.stop_streams()  # open SSE streams end now instead of holding shutdown
        super().handle_exit(sig, frame)


def _gateway_settings() -> Settings:
    """The gateway's settings, or exit 2 with one line per bad variable."""
    try:
        return Settings()
    except ValidationError as error:
        for problem in error.errors():
            name = "_".join(str(part) for part in problem["loc"]).upper() or "settings"
            typer.echo(f"{name}: {problem['msg']}", err=True)
        raise typer.Exit(code=2) from None


@app.command()
def serve(
    host: Annotated[
        str | None,
        typer.Option(
            help=f"Interface to bind (GATEWAY_HOST, {_gateway_default('gateway_host')}).",
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(help=f"Port to bind (GATEWAY_PORT, {_gateway_default('gateway_port')})."),
    ] = None,
) -> None:
    """Run the gateway (against BranchKey when BK_HOST is set, else the embedded local aggregator)."""
    # lazy: the whole gateway would slow every command's start
    from gateway.app import create_app
    from gateway.state import stop_streams

    settings = _gateway_settings()
    configure_logging(settings.gateway_log_format)
    for secret in (settings.gateway_token, settings.bk_session_token):
        register_secret(secret.get_secret_value() if secret else None)
    gateway = create_app(settings)
    config = uvicorn.Config(
        OneLineStartupFailure(gateway),
        host=host or settings.gateway_host,
        port=settings.gateway_port if port is None else port,
        timeout_graceful_shutdown=10,
        log_level="info",
        log_config=None,  # keep configure_logging's handler: JSON or text, secrets redacted
        # httptools with a bound on request heads (see gateway/http_limits.py)
        **bounded_http_options(
            int(settings.gateway_max_header_bytes), settings.gateway_header_timeout_s
        ),
    )
    _GatewayServer(config, functools.partial(stop_streams, gateway)).run()


# --------------------------------------------------------------------------- openapi


@app.command()
def openapi(
    out: Annotated[
        Path | None, typer.Option(help="Write here instead of openapi/openapi.json.")
    ] = None,
) -> None:
    """Regenerate the gateway's OpenAPI document (openapi/openapi.json)."""
    # lazy: the whole gateway (and FastAPI's OpenAPI generator) would slow every command's start
    from gateway.app import create_app
    from gateway.openapi import OPENAPI_PATH, render

    target = out or OPENAPI_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(create_app(Settings(_env_file=None))), encoding="utf-8")
    typer.echo(f"wrote {target}")


# --------------------------------------------------------------------------- aggregator


def _aggregator_settings(**given: Any) -> AggregatorSettings:
    """The settings from the options given (the others from the environment), or exit 2."""
    try:
        return AggregatorSettings(**{name: v for name, v in given.items() if v is not None})
    except ValidationError as error:
        for problem in error.errors():
            typer.echo(str(problem["msg"]).removeprefix("Value error, "), err=True)
        raise typer.Exit(code=2) from None


@app.command()
def aggregator(
    host: Annotated[
        str | None,
        typer.Option(
            help=_aggregator_help("Interface to bind.", "host"),
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            help=_aggregator_help("Port to bind.", "port"),
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help=_aggregator_help("State, uploads and results.", "data_dir"),
        ),
    ] = None,
    leaves_file: Annotated[
        Path | None,
        typer.Option(
            help=_aggregator_help("JSON list of leaf credentials (v3 shape).", "leaves_file")
        ),
    ] = None,
    dev_leaves: Annotated[
        int | None,
        typer.Option(
            help=_aggregator_help("Leaves to create without a leaves file.", "dev_leaves"),
        ),
    ] = None,
    min_leaves: Annotated[
        int | None,
        typer.Option(
            help=_aggregator_help("Leaves per round (default: all of the branch).", "min_leaves")
        ),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(help=_aggregator_help("Bearer token of /admin.", "admin_token")),
    ] = None,
    amqp_url: Annotated[
        str | None,
        typer.Option(
            help="Admin AMQP URL of RabbitMQ (amqp://user:password@host:5672/): notify v1 leaves.",
        ),
    ] = None,
    log_format: Annotated[
        LogFormat, typer.Option(envvar="GATEWAY_LOG_FORMAT", help="Log lines: text or json.")
    ] = _DEFAULT_LOG_FORMAT,
) -> None:
    """Run the local BranchKey-compatible aggregator (protocols v3 and v1)."""
    # lazy: the aggregator app and its WebSocket module would slow every command's start
    from gateway.aggregator.app import create_aggregator_app
    from gateway.aggregator.state import launch_of
    from gateway.aggregator.websocket import uvicorn_ws_options

    settings = _aggregator_settings(
        host=host,
        port=port,
        data_dir=data_dir,
        leaves_file=leaves_file,
        dev_leaves=dev_leaves,
        min_leaves=min_leaves,
        admin_token=admin_token,
        amqp_url=amqp_url,
    )
    configure_logging(log_format)
    try:
        server = create_aggregator_app(settings)
    except (LeavesFileError, OSError) as error:
        typer.echo(f"cannot start: {startup_failure(error)}", err=True)
        raise typer.Exit(code=2) from None
    register_secret(launch_of(server).admin_token)
    data = settings.data_dir
    typer.echo(
        f"BranchKey-compatible aggregator on http://{settings.host}:{settings.port} (data in {data})"
    )
    typer.echo(f"leaf credentials: {settings.leaves_file or data / 'leaves.json'}")
    if launch_of(
        server
    ).admin_token_generated:  # a log line, JSON too; the token itself is never logged
        _log.info("admin token generated: read it from %s (mode 0600)", data / "admin-token")
    config = uvicorn.Config(
        OneLineStartupFailure(server),
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=10,
        log_config=None,  # keep configure_logging's handler: tickets in WebSocket URLs are redacted
        **uvicorn_ws_options(settings.ping_interval_s, settings.ping_timeout_s),
        **bounded_http_options(int(settings.max_header_bytes), settings.header_timeout_s),
    )
    # Ctrl-C is the normal way to stop (uvicorn re-raises the signal after shutting down); a failed
    # lifespan makes uvicorn exit with status 3 itself, after one line naming the error.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()
