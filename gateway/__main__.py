"""Command line: `branchkey-gateway <command>`."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from gateway.cli_client import register as register_client_commands  # client commands
from gateway.settings import WeightsSettings
from gateway.weights import (
    ValidationPolicy,
    WeightsError,
    inspect_payload,
    layers_to_npz,
    normalize_aggregate,
    npz_to_object_npy,
    to_npz,
)

app = typer.Typer(help="BranchKey Gateway: federated learning for any trainer over localhost HTTP.")


class Target(StrEnum):
    """Output formats of `convert`."""

    npz = "npz"
    npy = "npy"
    plain = "plain"


class LogFormat(StrEnum):
    """Log line formats (GATEWAY_LOG_FORMAT)."""

    text = "text"
    json = "json"


def _policy(deep: bool, lenient: bool) -> ValidationPolicy:
    settings = WeightsSettings()
    if deep:
        settings.deep_validation = True
    if lenient:
        settings.strict_weighting = settings.strict_layer_dtypes = False
        settings.strict_layer_numbering = settings.strict_extra_keys = False
    return settings.policy()


def _fail(error: WeightsError) -> None:
    typer.echo(json.dumps({"error": error.code, "detail": error.message}), err=True)
    raise typer.Exit(code=1)


@app.command()
def inspect(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="NPZ or v1 .npy file.")],
    deep: Annotated[bool, typer.Option(help="Also read all data (CRC, NaN/Inf).")] = False,
    lenient: Annotated[bool, typer.Option(help="Only the protocol's own rules.")] = False,
) -> None:
    """Validate a weights file as an upload would be, and describe it as JSON."""
    try:
        payload = inspect_payload(file, _policy(deep, lenient))
    except WeightsError as error:
        _fail(error)
        return
    typer.echo(json.dumps(asdict(payload), indent=2))


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Input file.")],
    dst: Annotated[Path, typer.Argument(help="Output file.")],
    to: Annotated[
        Target,
        typer.Option(
            help="npz: protocol v3 payload; npy: v1 object array; plain: aggregate layers."
        ),
    ] = Target.npz,
) -> None:
    """Convert a weights file between the protocol dialects, layer by layer."""
    policy = _policy(False, False)
    try:
        if to is Target.npz:
            payload, converted = to_npz(src, dst, policy)
            if not converted:  # already a valid NPZ: copied as it is
                shutil.copyfile(src, dst)
        elif to is Target.npy:
            payload = npz_to_object_npy(src, dst, policy)
        else:
            payload = normalize_aggregate(src, dst, policy.limits)
    except WeightsError as error:
        _fail(error)
        return
    typer.echo(f"wrote {dst} ({payload.layer_count} arrays)")


@app.command("pack")
def pack(
    dst: Annotated[Path, typer.Argument(help="Output NPZ.")],
    layers: Annotated[
        list[Path], typer.Argument(exists=True, dir_okay=False, help="layer_0.npy ...")
    ],
    weighting: Annotated[str, typer.Option(help="Aggregation weight (number of samples).")],
) -> None:
    """Build an NPZ payload from one plain .npy file per layer plus a weighting."""
    try:
        payload = layers_to_npz(layers, weighting, dst, _policy(False, False))
    except WeightsError as error:
        _fail(error)
        return
    typer.echo(f"wrote {dst} ({payload.layer_count} layers, weighting {payload.weighting:g})")


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (GATEWAY_HOST, 127.0.0.1).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (GATEWAY_PORT, 8000).")] = None,
) -> None:
    """Run the gateway (against BranchKey when BK_HOST is set, else the embedded local aggregator)."""
    import uvicorn
    from pydantic import ValidationError

    from gateway.app import create_app
    from gateway.logs import configure_logging, register_secret
    from gateway.settings import Settings

    try:
        settings = Settings()
    except ValidationError as error:
        for problem in error.errors():
            name = "_".join(str(part) for part in problem["loc"]).upper() or "settings"
            typer.echo(f"{name}: {problem['msg']}", err=True)
        raise typer.Exit(code=2) from None
    configure_logging(settings.gateway_log_format)
    for secret in (settings.gateway_token, settings.bk_session_token):
        register_secret(secret.get_secret_value() if secret else None)
    bind_host = host or settings.gateway_host
    bind_port = settings.gateway_port if port is None else port
    gateway = create_app(settings)

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            stop_streams = getattr(gateway.state, "stop_streams", None)
            if callable(stop_streams):  # open SSE streams end now instead of holding shutdown
                stop_streams()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        gateway,
        host=bind_host,
        port=bind_port,
        timeout_graceful_shutdown=10,
        log_level="info",
        log_config=None,  # keep configure_logging's handler: JSON or text, secrets redacted
    )
    _Server(config).run()


@app.command()
def openapi(
    out: Annotated[
        Path | None, typer.Option(help="Write here instead of openapi/openapi.json.")
    ] = None,
) -> None:
    """Regenerate the gateway's OpenAPI document (openapi/openapi.json)."""
    from gateway.app import create_app
    from gateway.openapi import OPENAPI_PATH, render
    from gateway.settings import Settings

    target = out or OPENAPI_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(create_app(Settings(_env_file=None))), encoding="utf-8")
    typer.echo(f"wrote {target}")


@app.command()
def aggregator(
    host: Annotated[
        str, typer.Option(envvar="BK_AGGREGATOR_HOST", help="Interface to bind.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="BK_AGGREGATOR_PORT", help="Port to bind.")] = 8080,
    data_dir: Annotated[
        Path, typer.Option(envvar="BK_AGGREGATOR_DATA_DIR", help="State, uploads and results.")
    ] = Path("./aggregator-data"),
    leaves_file: Annotated[
        Path | None,
        typer.Option(
            envvar="BK_AGGREGATOR_LEAVES_FILE", help="JSON list of leaf credentials (v3 shape)."
        ),
    ] = None,
    dev_leaves: Annotated[
        int,
        typer.Option(
            envvar="BK_AGGREGATOR_DEV_LEAVES", help="Leaves to create without a leaves file."
        ),
    ] = 3,
    min_leaves: Annotated[
        int | None,
        typer.Option(
            envvar="BK_AGGREGATOR_MIN_LEAVES", help="Leaves per round (default: all of the branch)."
        ),
    ] = None,
    admin_token: Annotated[
        str | None, typer.Option(envvar="BK_AGGREGATOR_ADMIN_TOKEN", help="Bearer token of /admin.")
    ] = None,
    amqp_url: Annotated[
        str | None,
        typer.Option(
            envvar="BK_AGGREGATOR_AMQP_URL",
            help="Admin AMQP URL of RabbitMQ (amqp://user:password@host:5672/): notify v1 leaves.",
            show_envvar=False,
        ),
    ] = None,
    log_format: Annotated[
        LogFormat, typer.Option(envvar="GATEWAY_LOG_FORMAT", help="Log lines: text or json.")
    ] = LogFormat.text,
) -> None:
    """Run the local BranchKey-compatible aggregator (protocols v3 and v1)."""
    import uvicorn
    from pydantic import ValidationError

    from gateway.aggregator.app import create_aggregator_app
    from gateway.aggregator.leaves import LeavesFileError
    from gateway.aggregator.settings import AggregatorSettings
    from gateway.aggregator.websocket import uvicorn_ws_options
    from gateway.logs import configure_logging, register_secret

    try:
        settings = AggregatorSettings(
            host=host,
            port=port,
            data_dir=data_dir,
            leaves_file=leaves_file,
            dev_leaves=dev_leaves,
            min_leaves=min_leaves,
            admin_token=admin_token,
            amqp_url=amqp_url,
        )
    except ValidationError as error:
        for problem in error.errors():
            typer.echo(str(problem["msg"]).removeprefix("Value error, "), err=True)
        raise typer.Exit(code=2) from None
    configure_logging(log_format)
    try:
        server = create_aggregator_app(settings)
    except LeavesFileError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(code=2) from None
    register_secret(server.state.admin_token)
    leaves_path = leaves_file or data_dir / "leaves.json"
    typer.echo(f"BranchKey-compatible aggregator on http://{host}:{port} (data in {data_dir})")
    typer.echo(f"leaf credentials: {leaves_path}")
    if admin_token is None:
        typer.echo(f"admin token (also in {data_dir / 'admin-token'}): {server.state.admin_token}")
    config = uvicorn.Config(
        server,
        host=host,
        port=port,
        timeout_graceful_shutdown=10,
        log_config=None,  # keep configure_logging's handler: tickets in WebSocket URLs are redacted
        **uvicorn_ws_options(settings.ping_interval_s, settings.ping_timeout_s),
    )
    runner = uvicorn.Server(config)
    try:
        runner.run()  # exits with status 3 itself when the lifespan fails
    except KeyboardInterrupt:
        pass  # Ctrl-C is the normal way to stop (uvicorn re-raises the signal after shutting down)
    finally:
        if not runner.started and server.state.startup_error:  # repeated after uvicorn's traceback
            typer.echo(server.state.startup_error, err=True)


# --- client commands (gateway/cli_client.py): upload, download, watch, status ---
register_client_commands(app)
# --- end of client commands ---


def main() -> None:
    """Console-script entry point."""
    app(prog_name="branchkey-gateway")


if __name__ == "__main__":
    main()
