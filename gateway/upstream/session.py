"""The leaf's session with BranchKey: credentials, the upstream client, and the run status."""

from __future__ import annotations

import logging
import math
import time
from typing import TypeVar, overload

import anyio

from gateway._io import Signal
from gateway.errors import GatewayError, NoSessionError, RunNotStartedError
from gateway.upstream.credentials import Credentials
from gateway.upstream.protocol import Connect, RunInfo, Upstream

log = logging.getLogger("gateway.session")

U = TypeVar("U")


class Session:
    """One leaf session at a time; replaced by login, cleared by logout.

    `changed` fires whenever the session is started, adopted or ended: whoever holds something
    tied to the leaf (the notification channel) watches it, so no caller has to pass the news on.
    """

    def __init__(
        self,
        connect: Connect,
        host: str,
        run_check_interval_s: float,
        *,
        offline: bool = False,
    ) -> None:
        self.connect = connect
        self.host = host
        self.run_check_interval_s = run_check_interval_s
        self.offline = offline
        self.upstream: Upstream | None = None
        self.run: RunInfo | None = None
        self.changed = Signal()
        """Fired on login, adopt and logout."""
        self._run_changed = Signal()
        self._channel_up = False
        self._run_learned_at = -math.inf

    @property
    def credentials(self) -> Credentials | None:
        """The current leaf's credentials."""
        return self.upstream.credentials if self.upstream else None

    @overload
    def require(self) -> Upstream: ...

    @overload
    def require(self, kind: type[U]) -> U: ...

    def require(self, kind: type[object] | None = None) -> object:
        """The upstream of the current session, or a 401 problem when logged out; with `kind`, that
        dialect's class (the notification channels need their dialect's extra calls)."""
        upstream = self.upstream
        if upstream is None:
            raise NoSessionError(
                "The gateway has no leaf session: POST credentials to /session (or set BK_CREDENTIALS_FILE)."
            )
        if kind is not None and not isinstance(upstream, kind):
            raise GatewayError(
                f"The session speaks protocol {upstream.dialect}, not what {kind.__name__} needs."
            )
        return upstream

    async def login(self, credentials: Credentials) -> RunInfo:
        """Start a session for `credentials`; the upstream must accept them (v1 authenticate, then
        the run status call)."""
        upstream = self.connect(credentials)
        await upstream.authenticate()
        info = await upstream.run()
        self.upstream = upstream
        self.run = info
        self._channel_up = False
        self._run_learned_at = time.monotonic()
        log.info(
            "session started for leaf %s on branch %s (protocol %s)",
            credentials.name,
            upstream.credentials.branch_id,
            upstream.dialect,
        )
        self.changed.fire()
        return info

    def adopt(self, credentials: Credentials) -> None:
        """Use `credentials` without checking them now (start-up with an unreachable upstream)."""
        self.upstream = self.connect(credentials)
        self._channel_up = False
        self.changed.fire()

    def logout(self) -> None:
        """End the session: later uploads get 401 problems until a new login."""
        self.upstream = None
        self.run = None
        self._channel_up = False
        self.changed.fire()
        self._run_changed.fire()

    async def refresh_run(self) -> RunInfo:
        """Ask the upstream for the run status."""
        info = await self.require().run()
        self.run = info
        self._run_learned_at = time.monotonic()
        return info

    def channel_up(self, upstream: Upstream | None) -> None:
        """The notification channel of `upstream` is connected and has told the run status (None:
        it is down). While it is up, `current_run` trusts what it was told."""
        self._channel_up = upstream is not None and upstream is self.upstream

    async def current_run(self) -> RunInfo:
        """The run status without a call while the notification channel is up and has told it in
        the last BK_RUN_CHECK_INTERVAL_S; else fresh from the upstream."""
        fresh = time.monotonic() - self._run_learned_at < self.run_check_interval_s
        if self._channel_up and fresh and self.run is not None:
            return self.run
        return await self.refresh_run()

    def notify_run_status(self, status: str) -> None:
        """A run-status notification arrived (from the notification consumer)."""
        if self.run is not None and self.run.run_status != status:
            self.run = RunInfo(run_status=status, run_number=self.run.run_number)
        if self.run is not None:
            self._run_learned_at = time.monotonic()
        self._run_changed.fire()

    async def wait_for_start(self, timeout_s: float) -> RunInfo:
        """Return once the run is started (`timeout_s` 0: check once): asks the upstream only when
        the notification channel cannot tell (`current_run`), woken early by notifications; a
        run-not-started problem at the deadline."""
        deadline = time.monotonic() + timeout_s
        info = await self.current_run()
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
            changed = self._run_changed.armed()
            with anyio.move_on_after(min(self.run_check_interval_s, remaining)):
                await changed.wait()
            info = await self.current_run()
        return info
