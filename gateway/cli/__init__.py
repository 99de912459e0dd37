"""Command line: `branchkey-gateway <command>`, its commands grouped by job in this package."""

from __future__ import annotations

import typer

from gateway.cli import client, servers, weights

app = typer.Typer(help="BranchKey Gateway: federated learning for any trainer over localhost HTTP.")
for _group in (weights.app, servers.app, client.app):  # the order `--help` lists them in
    app.add_typer(_group)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="branchkey-gateway")
