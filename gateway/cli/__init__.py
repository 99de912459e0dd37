"""Command line: `branchkey-gateway <command>`, its commands grouped by job in this package."""

from __future__ import annotations

from typing import Annotated

import typer

from gateway import __version__
from gateway.cli import client, servers, weights

LISTED = {
    "serve": "Run the gateway (on BK_HOST, else the embedded aggregator).",
    "aggregator": "Run the local BranchKey-compatible aggregator (v3 and v1).",
    "upload": "Upload a weights file through the gateway; print its file id.",
    "download": "Download an aggregated model; print the path written.",
    "exchange": "Upload weights, then write the round's aggregation.",
    "watch": "Follow the gateway's events: one line per event.",
    "status": "Show the leaf session, the run and the notification channel.",
    "inspect": "Validate a weights file as an upload would be; describe it.",
    "convert": "Convert a weights file between the v1 and v3 dialects.",
    "pack": "Build an NPZ from one .npy per layer plus a weighting.",
    "openapi": "Regenerate the OpenAPI document (openapi/openapi.json).",
}
"""Each command's line in `--help`, in the order listed: the servers, their clients, then tools.
Each fits an 80-column terminal whole (click cuts a longer docstring line with '...')."""

app = typer.Typer(
    help="BranchKey Gateway: federated learning for any trainer over localhost HTTP.\n\n"
    "Start with 'branchkey-gateway serve' (the gateway on 127.0.0.1:8000); "
    "'branchkey-gateway COMMAND -h' describes each command.",
    no_args_is_help=True,  # a bare command prints this help (exit 2: a command is missing)
    context_settings={"help_option_names": ["-h", "--help"]},
    # Plain click help: the rich renderer shows flags as taking a '<bool>' value and cuts long
    # words with '…'; click wraps every line whole.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,  # a traceback never shows local variables (credentials)
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"branchkey-gateway {__version__}")
        raise typer.Exit


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            is_eager=True,
            callback=_show_version,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """BranchKey Gateway: federated learning for any trainer over localhost HTTP."""


def _name(command: typer.models.CommandInfo) -> str:
    callback = command.callback
    return command.name or (callback.__name__.replace("_", "-") if callback else "")


def _listed() -> list[typer.models.CommandInfo]:
    """Every command of the groups, with its `--help` line, in the order of LISTED."""
    groups = [servers.app, client.app, weights.app]
    groups += [sub.typer_instance for sub in client.app.registered_groups if sub.typer_instance]
    commands = {_name(c): c for group in groups for c in group.registered_commands}
    for name, command in commands.items():
        command.short_help = LISTED[name]  # a KeyError here: a new command needs its line
    return [commands[name] for name in LISTED if name in commands]


app.registered_commands = _listed()


def main() -> None:
    """Console-script entry point."""
    app(prog_name="branchkey-gateway")
