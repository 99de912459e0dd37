"""Local weights-file commands: `inspect`, `convert` and `pack` (no server involved)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

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

app = typer.Typer()
"""The weights commands; `gateway.cli` adds them to `branchkey-gateway`."""


class Target(StrEnum):
    """Output formats of `convert`."""

    npz = "npz"
    npy = "npy"
    plain = "plain"


def _policy(deep: bool, lenient: bool) -> ValidationPolicy:
    settings = WeightsSettings()
    if deep:
        settings.deep_validation = True
    if lenient:
        settings.strict_weighting = settings.strict_layer_dtypes = False
        settings.strict_layer_numbering = settings.strict_extra_keys = False
    return settings.policy()


def _fail(error: WeightsError) -> NoReturn:
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
        labels = [f"{path} (layer_{index})" for index, path in enumerate(layers)]
        payload = layers_to_npz(layers, weighting, dst, _policy(False, False), labels=labels)
    except WeightsError as error:
        _fail(error)
    typer.echo(f"wrote {dst} ({payload.layer_count} layers, weighting {payload.weighting:g})")
