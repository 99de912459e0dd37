"""Local weights-file commands: `inspect`, `convert` and `pack` (no server involved)."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from gateway.settings import WeightsSettings
from gateway.weights import (
    Payload,
    ValidationPolicy,
    WeightsError,
    layers_to_npz,
    normalize_aggregate,
    npz_to_object_npy,
    upload_to_npz,
)
from gateway.weights.describe import describe_upload
from gateway.weights.renamed import aggregate_to_safetensors

app = typer.Typer()
"""The weights commands; `gateway.cli` adds them to `branchkey-gateway`."""


class Target(StrEnum):
    """Output formats of `convert`."""

    npz = "npz"
    npy = "npy"
    plain = "plain"
    safetensors = "safetensors"


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
    file: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            help="Any upload form: NPZ (layer_0.. or your own names), v1 or list-of-arrays .npy, "
            "plain .npy, safetensors.",
        ),
    ],
    deep: Annotated[bool, typer.Option(help="Also read all data (CRC, NaN/Inf).")] = False,
    lenient: Annotated[bool, typer.Option(help="Only the protocol's own rules.")] = False,
) -> None:
    """Validate a weights file as an upload would be, and describe it as JSON: the layers as they
    would be sent, and for safetensors or a named NPZ the tensor names they stand for."""
    policy = _policy(deep, lenient)
    try:
        described = describe_upload(file, policy)
        if deep and described.payload.format != "npz":
            with tempfile.TemporaryDirectory(dir=file.parent) as scratch:  # deep reads all data
                upload_to_npz(file, Path(scratch) / "deep.npz", policy)
    except WeightsError as error:
        _fail(error)
    report: dict[str, Any] = asdict(described.payload)
    if described.names is not None:
        report["names"] = {
            "source": described.names.source,
            "tensors": [
                {"layer": f"layer_{index}", "name": t.name, "dtype": t.dtype, "shape": t.shape}
                for index, t in enumerate(described.names.tensors)
            ],
            "metadata": described.names.metadata,
        }
    typer.echo(json.dumps(report, indent=2))


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Input file.")],
    dst: Annotated[Path, typer.Argument(help="Output file.")],
    to: Annotated[
        Target,
        typer.Option(
            help="npz: the BranchKey payload (from any upload form); npy: v1 object array; "
            "plain: aggregate layers; safetensors: an aggregate or payload as safetensors."
        ),
    ] = Target.npz,
    weighting: Annotated[
        str | None,
        typer.Option(help="Weighting for a file without one (.npy, safetensors); else 1.0."),
    ] = None,
    names: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="With --to safetensors: a safetensors file or named NPZ whose tensor names and "
            "dtypes to give the layers (default: layer_0..).",
        ),
    ] = None,
) -> None:
    """Convert a weights file between the upload forms and the protocol dialects, layer by layer."""
    policy = _policy(False, False)
    try:
        with tempfile.TemporaryDirectory(dir=dst.parent) as scratch:
            payload = _convert(src, dst, to, weighting, names, policy, Path(scratch))
    except WeightsError as error:
        _fail(error)
    typer.echo(f"wrote {dst} ({payload.layer_count} arrays)")


def _convert(
    src: Path,
    dst: Path,
    to: Target,
    weighting: str | None,
    names: Path | None,
    policy: ValidationPolicy,
    scratch: Path,
) -> Payload:
    if to is Target.plain:
        return normalize_aggregate(src, dst, policy.limits)
    if to is Target.safetensors:
        plain = scratch / "plain.npz"
        payload = normalize_aggregate(src, plain, policy.limits)
        name_map = describe_upload(names, policy).names if names is not None else None
        if names is not None and name_map is None:
            raise WeightsError(
                "names-mismatch",
                f"{names} holds layer_0.. arrays, not tensor names: pass a safetensors file or "
                "an NPZ of your own array names.",
            )
        aggregate_to_safetensors(plain, dst, name_map, policy.limits, src.name)
        return payload
    target = dst if to is Target.npz else scratch / "payload.npz"
    incoming = upload_to_npz(src, target, policy, weighting=weighting)
    if not incoming.converted:  # already a valid BranchKey NPZ: used as it is
        shutil.copyfile(src, target)
    if to is Target.npz:
        return incoming.payload
    return npz_to_object_npy(target, dst, policy)


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
