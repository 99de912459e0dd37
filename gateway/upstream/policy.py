"""How upstream calls are repeated (as the official 3.0.1 client repeats them) and bounded in time."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime

from gateway.settings import Settings

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""The client's `status_forcelist` (§5.4)."""
RETRY_AFTER_STATUSES = frozenset({413, 429, 503})
"""Statuses urllib3 repeats whenever they carry `Retry-After` (so a 413 with it is retried too)."""


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently failed upstream calls are repeated: 1 + `max_retries` attempts,
    waiting 0 s, then `backoff_s` x 2^(n-1) (2 s, 4 s ...), or what `Retry-After` asks."""

    max_retries: int = 3
    backoff_s: float = 1.0
    max_delay_s: float = 60.0

    def retries(self, status: int, retry_after: str | None) -> bool:
        """Whether an answer with `status` (and this `Retry-After`) is worth another attempt."""
        return status in RETRY_STATUSES or (bool(retry_after) and status in RETRY_AFTER_STATUSES)

    def delay(self, attempt: int, retry_after: str | None) -> float:
        """Seconds before retry `attempt` (1-based): `Retry-After` when given, else urllib3's
        backoff (0 s before the first retry)."""
        if retry_after:
            seconds = _retry_after_seconds(retry_after)
            if seconds is not None:
                return min(max(seconds, 0.0), self.max_delay_s)
        if attempt <= 1:
            return 0.0
        return float(min(self.backoff_s * 2 ** (attempt - 1), self.max_delay_s))


@dataclass(frozen=True)
class TimeBounds:
    """The time an upstream operation may take, retries, waits and redirects included.

    A control call (run, ticket, download URL, authenticate, metrics) ends by `deadline_s`.
    A transfer (an upload, a blob download) has no total: it may last as long as it keeps moving,
    and is cut once it has fallen `stall_s` seconds behind `min_rate` bytes per second (a full
    stall of `stall_s` included). After the last byte of an upload BranchKey has `answer_s`.
    """

    deadline_s: float = 60.0
    stall_s: float = 60.0
    min_rate: float = 8192.0
    answer_s: float = 120.0


@dataclass(frozen=True)
class Policy:
    """Everything the transport needs to know about retrying and bounding calls."""

    retry: RetryPolicy = field(default_factory=RetryPolicy)
    bounds: TimeBounds = field(default_factory=TimeBounds)
    resend_uploads: bool = False
    """The upstream deduplicates identical uploads, so one whose answer was lost may be sent again."""

    @classmethod
    def from_settings(cls, settings: Settings, *, deduplicates: bool = False) -> Policy:
        """The policy `settings` configure (`deduplicates`: the upstream is known to, whatever
        BK_UPSTREAM_DEDUPLICATES says)."""
        return cls(
            retry=RetryPolicy(max_retries=settings.bk_max_retries),
            bounds=TimeBounds(
                deadline_s=settings.bk_upstream_deadline_s,
                stall_s=settings.bk_transfer_stall_s,
                min_rate=float(settings.bk_transfer_min_rate),
                answer_s=settings.bk_read_timeout_s,
            ),
            resend_uploads=deduplicates or settings.bk_upstream_deduplicates,
        )


def _retry_after_seconds(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return (when - datetime.now(when.tzinfo)).total_seconds()
