"""One upload, from the trainer's request to BranchKey: receive, validate and convert, wait for the run, send."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
from anyio import to_thread
from starlette.requests import Request

from gateway.errors import BadRequestError, NoSessionError, SessionChangedError
from gateway.layouts import LayoutBook, check_layout
from gateway.receiving import Received, Scratch, npz_name, receive
from gateway.relay import BeforeSend, Relay
from gateway.settings import Settings
from gateway.upstream.protocol import Sent, Upstream, WeightsFile
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
class Forwarded:
    """What BranchKey received: its file id, and the digest and size of the file sent."""

    file_id: str
    sha256: bytes
    size: int
    payload: Payload
    weighting_source: WeightingSource | None
    names: NameMap | None = None
    """The trainer's own tensor names, for a safetensors or named-NPZ upload."""


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
            if not await self._relays(started_with, options):
                received = await receive(request, scratch, limit, scan)
                return await self.forward(received, options, scratch, started_with, before_send)
            failure: Exception | None = None
            async with anyio.create_task_group() as group:
                path = scratch.new(".part")
                relay = Relay(group, started_with.upload, request.headers, path, limit, before_send)
                try:
                    received = await receive(request, scratch, limit, scan, relay.follow)
                    forwarded = await self.forward(
                        received, options, scratch, started_with, before_send, relay
                    )
                except Exception as exc:  # raised after the group, which would wrap it
                    failure = exc
                finally:
                    relay.cancel()
            if failure is not None:
                raise failure
            return forwarded

    async def _relays(self, upstream: Upstream, options: UploadOptions) -> bool:
        """Whether an upload may go upstream while it arrives (when its digest is told): in v3,
        whose file is the trainer's NPZ itself, once the run is started (a trainer that waits
        for the start is held before anything is sent), unless GATEWAY_CUT_THROUGH is off."""
        if upstream.dialect != "v3" or not self.settings.gateway_cut_through:
            return False
        if not self._waits(options):
            return True  # check_run found the run started
        return (await self.session.current_run()).run_status == "start"

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
        relay: Relay | None = None,
    ) -> Forwarded:
        """Validate and convert what was received, wait for the run if asked, then send it, for the
        leaf of `started_with` only (the session when the upload began; None: the current one).
        A `relay` already sending the file is let finish when it carries the file as it is to go
        upstream, and cut otherwise."""
        npz, sha256, incoming = await self.branchkey_npz(received, options.weighting, scratch)
        payload = incoming.payload
        upstream = self._same_leaf(started_with)
        branch = upstream.credentials.branch_id
        await self.check_architecture(branch, payload)
        if relay is not None:
            sent = await self._finish(relay, received, sha256, payload)
            if sent is not None:
                return await self._forwarded(sent, incoming)
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
        return await self._forwarded(await upstream.upload(outgoing), incoming)

    async def _finish(
        self, relay: Relay, received: Received, sha256: bytes | None, payload: Payload
    ) -> Sent | None:
        """The relay's answer if it sends this file as it is to go upstream (None: it was cut, or
        failed before it was complete, and the file goes the usual way)."""
        file = received.file
        if (
            file is None
            or sha256 != file.sha256  # converted: another file goes upstream
            or not relay.carries(file.sha256, file.size, payload.kind)
        ):
            relay.cancel()
            return None
        return await relay.finish()

    async def _forwarded(self, sent: Sent, incoming: Incoming) -> Forwarded:
        self.on_forwarded(sent.size)
        if self.on_names is not None:
            await self.on_names(incoming.names)
        return Forwarded(
            sent.file_id,
            sent.sha256,
            sent.size,
            incoming.payload,
            incoming.weighting_source,
            incoming.names,
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
