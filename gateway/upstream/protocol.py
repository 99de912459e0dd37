"""What the session and the routes need of an upstream, whichever dialect it speaks, and its values."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx

from gateway._io import Growth
from gateway.upstream.credentials import Credentials
from gateway.weights import ValidationPolicy


@dataclass(frozen=True)
class RunInfo:
    """The run as the upstream reports it."""

    run_status: str
    run_number: Any


@dataclass(frozen=True)
class WeightsFile:
    """A validated NPZ on disk, ready to go upstream."""

    path: Path
    kind: str
    filename: str
    """The name the trainer gave it (the part's file name), sent in the multipart header."""
    sha256: bytes | None = None
    """Its digest when already known (saves a pass over the file), else None."""


@dataclass(frozen=True)
class Outgoing:
    """The file a dialect sends for a `WeightsFile`: the NPZ itself, or a converted copy."""

    path: Path
    size: int
    sha256: bytes
    kind: str
    filename: str
    growing: Growth | None = None
    """Set while the file is still being written: read as it grows, its last bytes held back
    until it is checked (None: the file is complete)."""


@dataclass(frozen=True)
class Sent:
    """What the upstream received: its file id, and the size and sha256 of the file sent."""

    file_id: str
    size: int
    sha256: bytes


class Upstream(Protocol):
    """One leaf's session with BranchKey in one dialect (`V3Upstream`, `V1Upstream`)."""

    @property
    def dialect(self) -> str:
        """`v3` or `v1`."""

    @property
    def host(self) -> str:
        """The API host, without a trailing slash."""

    @property
    def credentials(self) -> Credentials:
        """The leaf's credentials (in v1 completed by `authenticate`)."""

    async def authenticate(self) -> Credentials:
        """Check the credentials with the upstream where the dialect has a login call."""

    async def run(self) -> RunInfo:
        """The run status call."""

    async def prepare(self, npz: WeightsFile, scratch: Path, policy: ValidationPolicy) -> Outgoing:
        """The file this dialect sends for `npz`, written to `scratch` if it must be converted."""

    async def upload(self, outgoing: Outgoing) -> Sent:
        """Send a prepared file."""

    async def download_url(self, file_id: str) -> str:
        """The blob URL of an aggregated file."""

    def blob(self, url: str) -> AbstractAsyncContextManager[httpx.Response]:
        """The blob behind a download URL, streamed (200 only)."""

    async def send_metrics(self, aggregation_id: str, mode: str, data: Any) -> None:
        """A performance report for an aggregation."""


Connect = Callable[[Credentials], Upstream]
"""Makes the configured dialect's upstream for a leaf's credentials."""
