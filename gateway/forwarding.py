"""One upload, from the trainer's request to BranchKey: receive, validate and convert, wait for the run, send."""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from anyio import to_thread
from starlette.requests import ClientDisconnect, Request

from gateway._io import FLUSH_BYTES, Spool, Tee
from gateway.errors import (
    BadRequestError,
    NoSessionError,
    PayloadTooLargeError,
    SessionChangedError,
    UnsupportedMediaTypeError,
)
from gateway.layouts import LayoutBook, check_layout
from gateway.multipart import FormData, MultipartLimits, read_multipart
from gateway.settings import Settings
from gateway.upstream.protocol import Upstream, WeightsFile
from gateway.upstream.session import Session
from gateway.weights import (
    Incoming,
    Payload,
    StreamScan,
    WeightingSource,
    layers_to_npz,
    upload_to_npz,
)
from gateway.weights.names import NameMap

LAYER_PART = re.compile(r"layer_(0|[1-9][0-9]*)", re.ASCII)
MAX_PARTS = 10_050
"""Multipart parts one upload may have: up to 10 000 `layer_<n>` parts, and a few fields."""
RAW_TYPES = ("application/octet-stream", "application/zip", "application/x-npy")
BeforeSend = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class UploadOptions:
    """What the trainer asked for beside the file."""

    wait: bool | None = None
    """Hold the upload until the run starts (None: BK_WAIT_FOR_RUN)."""
    wait_timeout_s: float | None = None
    """The longest wait; capped by GATEWAY_WAIT_TIMEOUT_S."""
    weighting: str | None = None
    """Overrides the file's (and the form's) weighting."""


@dataclass(frozen=True)
class ReceivedFile:
    """A whole weights file as it arrived."""

    path: Path
    sha256: bytes
    filename: str
    scan: StreamScan | None = None
    """What the NaN/Inf scan saw while the file arrived (None when the check is off)."""


@dataclass(frozen=True)
class Received:
    """What an upload request carried: one file, or per-layer `.npy` parts, and a weighting field."""

    file: ReceivedFile | None = None
    layers: tuple[Path, ...] = ()
    weighting: str | None = None


@dataclass(frozen=True)
class Forwarded:
    """What BranchKey received: its file id, and the digest and size of the file sent."""

    file_id: str
    sha256: bytes
    size: int
    payload: Payload
    weighting_source: WeightingSource | None
    names: NameMap | None = None
    """The trainer's own tensor names, for a safetensors or named-NPZ upload."""


@dataclass
class Scratch:
    """Temp files of one upload; all removed at the end, whatever happens."""

    folder: Path
    paths: list[Path] = field(default_factory=list)
    form: FormData | None = None

    def new(self, suffix: str) -> Path:
        """A fresh scratch path (removed by `cleanup`)."""
        path = self.folder / f".upload-{secrets.token_hex(8)}{suffix}"
        self.paths.append(path)
        return path

    def cleanup(self) -> None:
        """Remove every file of this upload."""
        if self.form is not None:
            self.form.cleanup()
        for path in self.paths:
            path.unlink(missing_ok=True)


class Forwarder:
    """Validates, converts and forwards uploads for the leaf session."""

    def __init__(
        self,
        session: Session,
        settings: Settings,
        scratch_dir: Path,
        on_forwarded: Callable[[int], None] = lambda _size: None,
        on_names: Callable[[NameMap | None], Awaitable[None]] | None = None,
        layouts: LayoutBook | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.scratch_dir = scratch_dir
        self.on_forwarded = on_forwarded
        self.on_names = on_names
        """Told the tensor names of every upload BranchKey accepted (None: `layer_<n>` names)."""
        self.layouts = layouts
        """The architecture check's reference per branch (None: no check)."""

    @asynccontextmanager
    async def scratch(self) -> AsyncIterator[Scratch]:
        """A scratch area for one upload, emptied at the end."""
        scratch = Scratch(self.scratch_dir)
        try:
            yield scratch
        finally:
            await to_thread.run_sync(scratch.cleanup)

    async def handle(
        self, request: Request, options: UploadOptions, before_send: BeforeSend | None = None
    ) -> Forwarded:
        """The whole upload: the run is checked before the body is read, unless the trainer waits;
        `before_send` runs right before the upload goes upstream (after every check and wait)."""
        started_with = await self.check_run(options)
        async with self.scratch() as scratch:
            limit = int(self.settings.gateway_max_upload_bytes)
            policy = self.settings.weights.policy()
            scan = StreamScan(policy.limits) if policy.finite and not policy.deep else None
            received = await receive(request, scratch, limit, scan)
            return await self.forward(received, options, scratch, started_with, before_send)

    async def check_run(self, options: UploadOptions) -> Upstream:
        """Refuse at once, before the body is read, when the run is not started and the trainer
        does not wait for it (a trainer that waits is held in `forward` instead); the session's
        upstream the upload starts with. BranchKey is asked only when the notification channel
        cannot tell (`Session.current_run`)."""
        upstream = self.session.require()
        if not self._waits(options):
            await self.session.wait_for_start(0)
        return upstream

    async def forward(
        self,
        received: Received,
        options: UploadOptions,
        scratch: Scratch,
        started_with: Upstream | None = None,
        before_send: BeforeSend | None = None,
    ) -> Forwarded:
        """Validate and convert what was received, wait for the run if asked, then send it, for the
        leaf of `started_with` only (the session when the upload began; None: the current one)."""
        npz, sha256, incoming = await self.branchkey_npz(received, options.weighting, scratch)
        payload = incoming.payload
        upstream = self._same_leaf(started_with)
        branch = upstream.credentials.branch_id
        await self.check_architecture(branch, payload)
        filename = npz_name(received.file.filename if received.file else "weights.npz")
        # The dialect's file (v1: the object .npy), made before any wait: a payload the dialect
        # cannot carry is refused at once, not after the run starts.
        outgoing = await upstream.prepare(
            WeightsFile(npz, payload.kind, filename, sha256),
            scratch.new(".out"),
            self.settings.weights.policy(),
        )
        if self._waits(options):
            try:
                await self.session.wait_for_start(self.wait_timeout(options))
            except NoSessionError:
                self._same_leaf(upstream)  # logged out while waiting: say so, as below
                raise
            upstream = self._same_leaf(upstream)
        if before_send is not None:
            await before_send()
        sent = await upstream.upload(outgoing)
        self.on_forwarded(sent.size)
        if self.on_names is not None:
            await self.on_names(incoming.names)
        return Forwarded(
            sent.file_id, sent.sha256, sent.size, payload, incoming.weighting_source, incoming.names
        )

    async def check_architecture(self, branch: str, payload: Payload) -> None:
        """Refuse a model whose layers differ from the branch's latest (GATEWAY_CHECK_ARCHITECTURE)."""
        if self.layouts is None or not self.settings.gateway_check_architecture:
            return
        reference = await to_thread.run_sync(self.layouts.reference, branch)
        if reference is not None:
            check_layout(reference, payload, branch)

    async def branchkey_npz(
        self, received: Received, weighting: str | None, scratch: Scratch
    ) -> tuple[Path, bytes | None, Incoming]:
        """The validated BranchKey NPZ of an upload, its sha256 when already known (the file as it
        arrived), and what it holds with where its weighting came from; `weighting` overrides the
        form's."""
        chosen = weighting if weighting is not None else received.weighting
        policy = self.settings.weights.policy()
        target = scratch.new(".npz")
        if received.layers:
            if chosen is None:
                raise BadRequestError(
                    "Per-layer uploads need a 'weighting' field: add -F weighting=12 "
                    "(or ?weighting=12), the number of samples this update was trained on."
                )
            payload = await to_thread.run_sync(
                layers_to_npz, list(received.layers), chosen, target, policy
            )
            return target, None, Incoming(payload, True, "request")
        assert received.file is not None  # noqa: S101 - a Received holds a file or layers
        incoming = await to_thread.run_sync(
            functools.partial(
                upload_to_npz,
                received.file.path,
                target,
                policy,
                weighting=chosen,
                scan=received.file.scan,
            )
        )
        if incoming.converted:
            return target, None, incoming
        return received.file.path, received.file.sha256, incoming

    def _same_leaf(self, started_with: Upstream | None) -> Upstream:
        """The current session's upstream if it is still the leaf the upload began with (a new
        login of that same leaf is fine); a session-changed problem otherwise, so that an upload
        never reaches BranchKey as another leaf, or with credentials that were logged out."""
        current = self.session.upstream
        if started_with is None:
            return self.session.require()
        if current is not None and (
            current is started_with
            or (
                current.credentials.id == started_with.credentials.id
                and current.dialect == started_with.dialect
            )
        ):
            return current
        began = started_with.credentials.name
        if current is None:
            raise SessionChangedError(
                f"The leaf session of {began!r} was logged out while this upload was being "
                "received; nothing was sent to BranchKey. Start a session (POST /session), then "
                "upload again."
            )
        raise SessionChangedError(
            f"The leaf session changed from {began!r} to {current.credentials.name!r} while this "
            "upload was being received; nothing was sent to BranchKey. Upload again to send it "
            f"as {current.credentials.name!r}.",
            leaf_name=current.credentials.name,
        )

    def _waits(self, options: UploadOptions) -> bool:
        return self.settings.bk_wait_for_run if options.wait is None else options.wait

    def wait_timeout(self, options: UploadOptions) -> float:
        """The longest wait the trainer asked for, capped by GATEWAY_WAIT_TIMEOUT_S."""
        cap = self.settings.gateway_wait_timeout_s
        return min(options.wait_timeout_s or cap, cap)


async def receive(
    request: Request, scratch: Scratch, limit: int, scan: StreamScan | None = None
) -> Received:
    """The uploaded file (or the layer parts) on disk, and a weighting field if one was sent; `scan`
    is fed the whole file's bytes beside its digest."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _receive_form(request, scratch, limit, scan)
    if content_type in RAW_TYPES:
        return Received(file=await _receive_raw(request, scratch, limit, scan))
    raise UnsupportedMediaTypeError(
        "Send multipart/form-data (curl -F file=@w.npz) or application/octet-stream (curl --data-binary @w.npz "
        "-H 'Content-Type: application/octet-stream')."
    )


class _FileFields:
    """Multipart parts kept as files: `file` and `layer_<n>`."""

    def __contains__(self, name: object) -> bool:
        return name == "file" or (isinstance(name, str) and LAYER_PART.fullmatch(name) is not None)

    def __iter__(self) -> Iterator[str]:
        return iter(("file",))

    def __len__(self) -> int:
        return 1


async def _receive_form(
    request: Request, scratch: Scratch, limit: int, scan: StreamScan | None
) -> Received:
    limits = MultipartLimits(max_file_bytes=limit, max_total_file_bytes=limit, max_parts=MAX_PARTS)
    form = await read_multipart(
        request,
        scratch.folder,
        limits,
        file_fields=_FileFields(),
        watch=lambda name: scan if name == "file" else None,
    )
    scratch.form = form
    weighting = form.fields.get("weighting")
    part = form.files.get("file")
    layers = {int(name[6:]): p.path for name, p in form.files.items() if LAYER_PART.fullmatch(name)}
    if part is not None and layers:
        raise BadRequestError("Send either a 'file' part or 'layer_<n>' parts, not both.")
    if part is not None:
        file = ReceivedFile(part.path, part.sha256, part.filename or "weights.npz", scan)
        return Received(file=file, weighting=weighting)
    if layers:
        if sorted(layers) != list(range(len(layers))):
            names = ", ".join(f"layer_{i}" for i in sorted(layers)[:8])
            expected = "layer_0" if len(layers) == 1 else f"layer_0 .. layer_{len(layers) - 1}"
            raise BadRequestError(
                f"{len(layers)} layer part(s) must be named {expected} without gaps; found "
                f"{names}. Number them from 0: curl -F layer_0=@l0.npy -F layer_1=@l1.npy "
                "-F weighting=12 localhost:8000/upload"
            )
        return Received(layers=tuple(layers[i] for i in range(len(layers))), weighting=weighting)
    raise BadRequestError(
        "The form needs a 'file' part (curl -F file=@w.npy localhost:8000/upload), or "
        "'layer_0', 'layer_1', ... parts and 'weighting' (curl -F layer_0=@l0.npy "
        "-F weighting=12 localhost:8000/upload)."
    )


async def _receive_raw(
    request: Request, scratch: Scratch, limit: int, scan: StreamScan | None
) -> ReceivedFile:
    def too_large() -> Exception:
        return PayloadTooLargeError(f"The upload is over GATEWAY_MAX_UPLOAD_BYTES ({limit} bytes).")

    # Written and hashed by the spool's thread while the next MiB arrives (as multipart parts are).
    spool = Spool(scratch.new(".bin"), limit, too_large)
    if scan is not None:
        spool.feed = Tee(spool.digest, scan)
    await spool.open()
    pending: list[bytes] = []
    pending_size = 0
    try:
        async for chunk in request.stream():
            pending.append(chunk)
            pending_size += len(chunk)
            if pending_size >= FLUSH_BYTES:
                await spool.write(pending)
                pending, pending_size = [], 0
        await spool.write(pending)
    except ClientDisconnect:
        raise BadRequestError("The client disconnected before the upload was complete.") from None
    finally:
        with anyio.CancelScope(shield=True):  # the writer thread always ends
            await spool.close()
    if spool.size == 0:
        raise BadRequestError("The request body is empty: send the weights file as the body.")
    return ReceivedFile(spool.path, spool.digest.digest(), "weights.npz", scan)


def npz_name(filename: str) -> str:
    """The upstream file name for a trainer's file name: its stem, as `.npz`."""
    stem = Path(filename).name.rsplit(".", 1)[0] or "weights"
    return f"{stem}.npz"
