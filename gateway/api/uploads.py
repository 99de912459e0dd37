"""`POST /upload`: stream, validate, convert if needed, and forward a weights file to BranchKey."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from gateway.dependencies import StateDep
from gateway.errors import (
    BadRequestError,
    PayloadTooLargeError,
    RunNotStartedError,
    UnsupportedMediaTypeError,
)
from gateway.multipart import FormData, MultipartLimits, read_multipart
from gateway.observability import MetricsDep
from gateway.upstream.protocol import Sent, WeightsFile
from gateway.weights import Payload, layers_to_npz, to_npz, with_weighting

router = APIRouter()

_FLUSH_BYTES = 1 << 20
_LAYER_PART = re.compile(r"layer_(0|[1-9][0-9]*)", re.ASCII)


class LayerInfo(BaseModel):
    """One layer of the uploaded payload."""

    key: str
    dtype: str
    shape: list[int]


class UploadResult(BaseModel):
    """What BranchKey received (`sha256` and `size` are of the file sent upstream: the NPZ, or in
    protocol v1 the object `.npy`)."""

    file_id: str
    sha256: str
    size: int
    kind: str
    weighting: float | None
    layers: list[LayerInfo]


class _FileFields:
    """Multipart parts kept as files: `file` and `layer_<n>`."""

    def __contains__(self, name: object) -> bool:
        return name == "file" or (isinstance(name, str) and _LAYER_PART.fullmatch(name) is not None)

    def __iter__(self) -> Iterator[str]:
        return iter(("file",))

    def __len__(self) -> int:
        return 1


@dataclass
class _Scratch:
    """Temp files of one upload; all removed at the end, whatever happens."""

    folder: Path
    paths: list[Path] = field(default_factory=list)
    form: FormData | None = None

    def new(self, suffix: str) -> Path:
        path = self.folder / f".upload-{secrets.token_hex(8)}{suffix}"
        self.paths.append(path)
        return path

    def cleanup(self) -> None:
        if self.form is not None:
            self.form.cleanup()
        for path in self.paths:
            path.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Received:
    path: Path
    size: int
    sha256: bytes
    filename: str


@router.post("/upload", status_code=201)
async def create_upload(
    request: Request,
    state: StateDep,
    metrics: MetricsDep,
    wait: Annotated[
        bool | None, Query(description="Wait for the run to start (default BK_WAIT_FOR_RUN).")
    ] = None,
    wait_timeout: Annotated[
        float | None, Query(gt=0, description="Longest wait in seconds.")
    ] = None,
    weighting: Annotated[
        str | None, Query(description="Aggregation weight; overrides the file's.")
    ] = None,
) -> UploadResult:
    """Upload weights: a multipart `file` part (NPZ or v1 object .npy), `layer_<n>` .npy parts plus
    `weighting`, or a raw `application/octet-stream` body."""
    settings = state.settings
    session = state.session
    upstream = session.require()
    waiting = settings.bk_wait_for_run if wait is None else wait
    if not waiting:
        info = await session.refresh_run()
        if info.run_status != "start":
            raise _not_started(info.run_status, info.run_number)
    scratch = _Scratch(state.tmp_dir)
    try:
        received, form_weighting, layer_parts = await _receive(request, state, scratch)
        chosen_weighting = weighting if weighting is not None else form_weighting
        policy = settings.weights.policy()
        if layer_parts:
            if chosen_weighting is None:
                raise BadRequestError(
                    "Per-layer uploads need a 'weighting' field (or ?weighting=)."
                )
            target = scratch.new(".npz")
            payload = await to_thread.run_sync(
                layers_to_npz, layer_parts, chosen_weighting, target, policy
            )
            final, digest = target, None
        else:
            assert received is not None  # noqa: S101 - _receive returns one or the other
            converted = scratch.new(".npz")
            payload, was_converted = await to_thread.run_sync(
                to_npz, received.path, converted, policy
            )
            final = converted if was_converted else received.path
            digest = None if was_converted else received.sha256
            if chosen_weighting is not None:
                target = scratch.new(".npz")
                payload = await to_thread.run_sync(
                    with_weighting, final, chosen_weighting, target, policy
                )
                final, digest = target, None
        filename = received.filename if received and not layer_parts else "weights.npz"
        npz = WeightsFile(final, payload.kind, _npz_name(filename), digest)
        # The dialect's file (v1: the object .npy), made before any wait so a payload it cannot
        # carry is refused at once.
        outgoing = await upstream.prepare(npz, scratch.new(".out"), policy)
        if waiting:
            timeout = min(
                wait_timeout or settings.gateway_wait_timeout_s, settings.gateway_wait_timeout_s
            )
            await session.wait_for_start(timeout)
        sent = await upstream.upload(outgoing)
        metrics.record_upload(sent.size)
    finally:
        await to_thread.run_sync(scratch.cleanup)
    return _result(sent, payload)


def _not_started(status: str, number: Any) -> RunNotStartedError:
    return RunNotStartedError(
        f"The run is not started (status: {status}); retry when it starts, or upload with ?wait=true.",
        run_status=status,
        run_number=number,
    )


async def _receive(
    request: Request, state: StateDep, scratch: _Scratch
) -> tuple[_Received | None, str | None, list[Path]]:
    """The uploaded file (or the layer parts) on disk, and a weighting field if one was sent."""
    limit = int(state.settings.gateway_max_upload_bytes)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        limits = MultipartLimits(max_file_bytes=limit, max_total_file_bytes=limit, max_parts=10_050)
        form = await read_multipart(request, state.tmp_dir, limits, file_fields=_FileFields())
        scratch.form = form
        weighting = form.fields.get("weighting")
        part = form.files.get("file")
        layers = {
            int(name[6:]): p.path for name, p in form.files.items() if _LAYER_PART.fullmatch(name)
        }
        if part is not None and layers:
            raise BadRequestError("Send either a 'file' part or 'layer_<n>' parts, not both.")
        if part is not None:
            return (
                _Received(part.path, part.size, part.sha256, part.filename or "weights.npz"),
                weighting,
                [],
            )
        if layers:
            if sorted(layers) != list(range(len(layers))):
                raise BadRequestError(
                    f"Layer parts must be layer_0 .. layer_{len(layers) - 1} without gaps."
                )
            return None, weighting, [layers[i] for i in range(len(layers))]
        raise BadRequestError(
            "The form needs a 'file' part, or 'layer_0', 'layer_1', ... parts and 'weighting'."
        )
    if content_type in ("application/octet-stream", "application/zip", "application/x-npy"):
        return await _read_raw(request, scratch, limit), None, []
    raise UnsupportedMediaTypeError(
        "Send multipart/form-data (curl -F file=@w.npz) or application/octet-stream (curl --data-binary @w.npz "
        "-H 'Content-Type: application/octet-stream')."
    )


async def _read_raw(request: Request, scratch: _Scratch, limit: int) -> _Received:
    path = scratch.new(".bin")
    digest = hashlib.sha256()
    size = 0
    stream = await to_thread.run_sync(path.open, "wb")
    pending: list[bytes] = []
    pending_size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(
                    f"The upload is over GATEWAY_MAX_UPLOAD_BYTES ({limit} bytes)."
                )
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= _FLUSH_BYTES:  # one worker-thread hop per ~1 MiB
                await to_thread.run_sync(_write, stream, digest, pending)
                pending, pending_size = [], 0
        await to_thread.run_sync(_write, stream, digest, pending)
    except ClientDisconnect:
        raise BadRequestError("The client disconnected before the upload was complete.") from None
    finally:
        await to_thread.run_sync(stream.close)
    if size == 0:
        raise BadRequestError("The request body is empty: send the weights file as the body.")
    return _Received(path, size, digest.digest(), "weights.npz")


def _write(stream: Any, digest: Any, chunks: list[bytes]) -> None:
    for chunk in chunks:
        stream.write(chunk)
        digest.update(chunk)


def _npz_name(filename: str) -> str:
    stem = Path(filename).name.rsplit(".", 1)[0] or "weights"
    return f"{stem}.npz"


def _result(sent: Sent, payload: Payload) -> UploadResult:
    return UploadResult(
        file_id=sent.file_id,
        sha256=sent.sha256.hex(),
        size=sent.size,
        kind=payload.kind,
        weighting=payload.weighting,
        layers=[LayerInfo(key=a.key, dtype=a.dtype, shape=list(a.shape)) for a in payload.arrays],
    )
