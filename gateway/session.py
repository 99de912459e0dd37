"""The leaf's session with BranchKey: credentials, the upstream client, and the run status."""

from __future__ import annotations

import logging
import time

import anyio
import httpx

from gateway.errors import NoSessionError, RunNotStartedError
from gateway.upstream.credentials import Credentials
from gateway.upstream.v1 import V1Upstream
from gateway.upstream.v3 import RetryPolicy, RunInfo, V3Upstream

log = logging.getLogger("gateway.session")


class Session:
    """One leaf session at a time; replaced by login, cleared by logout."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        host: str,
        retry: RetryPolicy,
        run_check_interval_s: float,
        *,
        dialect: str = "v3",
        offline: bool = False,
    ) -> None:
        self.client = client
        self.dialect = dialect
        self.host = host
        self.retry = retry
        self.run_check_interval_s = run_check_interval_s
        self.offline = offline
        self.upstream: V3Upstream | None = None
        self.run: RunInfo | None = None
        self.run_checked_at: float | None = None
        self.generation = 0
        self._run_changed = anyio.Event()

    @property
    def credentials(self) -> Credentials | None:
        """The current leaf's credentials."""
        return self.upstream.credentials if self.upstream else None

    def require(self) -> V3Upstream:
        """The upstream of the current session, or a 401 problem when logged out."""
        if self.upstream is None:
            raise NoSessionError(
                "The gateway has no leaf session: POST credentials to /session (or set BK_CREDENTIALS_FILE)."
            )
        return self.upstream

    async def login(self, credentials: Credentials) -> RunInfo:
        """Start a session for `credentials`; the upstream must accept them (v1 authenticate, then
        the run status call)."""
        upstream = self._upstream(credentials)
        await upstream.authenticate()
        info = await upstream.run()
        self.upstream = upstream
        self.generation += 1
        self._set_run(info)
        log.info(
            "session started for leaf %s on branch %s (protocol %s)",
            credentials.name,
            upstream.credentials.branch_id,
            self.dialect,
        )
        return info

    def adopt(self, credentials: Credentials) -> None:
        """Use `credentials` without checking them now (start-up with an unreachable upstream)."""
        self.upstream = self._upstream(credentials)
        self.generation += 1

    def _upstream(self, credentials: Credentials) -> V3Upstream:
        kind = V1Upstream if self.dialect == "v1" else V3Upstream
        return kind(self.client, self.host, credentials, self.retry)

    def logout(self) -> None:
        """End the session: later uploads get 401 problems until a new login."""
        self.upstream = None
        self.run = None
        self.run_checked_at = None
        self.generation += 1
        self._wake()

    async def refresh_run(self) -> RunInfo:
        """Ask the upstream for the run status."""
        info = await self.require().run()
        self._set_run(info)
        return info

    def notify_run_status(self, status: str) -> None:
        """A run-status notification arrived (from the notification consumer)."""
        if self.run is not None and self.run.run_status != status:
            self.run = RunInfo(run_status=status, run_number=self.run.run_number)
        self._wake()

    async def wait_for_start(self, timeout_s: float) -> RunInfo:
        """Return once the run is started (`timeout_s` 0: check once): polls every interval, woken early by
        notifications; a run-not-started problem at the deadline."""
        deadline = time.monotonic() + timeout_s
        info = await self.refresh_run()
        while info.run_status != "start":
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                waited = f" after waiting {timeout_s:g} s" if timeout_s > 0 else ""
                raise RunNotStartedError(
                    f"The run is not started (status: {info.run_status}){waited}; retry when it "
                    "starts, or upload with ?wait=true (and ?wait_timeout=<seconds>).",
                    run_status=info.run_status,
                    run_number=info.run_number,
                )
            changed = self._run_changed
            with anyio.move_on_after(min(self.run_check_interval_s, remaining)):
                await changed.wait()
            info = await self.refresh_run()
        return info

    def _set_run(self, info: RunInfo) -> None:
        self.run = info
        self.run_checked_at = time.time()

    def _wake(self) -> None:
        self._run_changed.set()
        self._run_changed = anyio.Event()
