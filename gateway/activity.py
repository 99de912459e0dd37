"""Recent activity for the status page: the last uploads (forwarded or refused) and the performance
reports trainers sent, kept in memory in bounded rings (a restart empties them)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

MAX_UPLOADS = 100
"""Uploads remembered (forwarded and refused together)."""
MAX_REPORTS = 1000
"""Performance reports remembered."""


@dataclass(frozen=True)
class UploadRecord:
    """One upload as the trainer saw it."""

    at: float
    """When it was answered (Unix seconds)."""
    outcome: Literal["forwarded", "refused"]
    request_bytes: int | None
    """The request's Content-Length, when it sent one."""
    size: int | None = None
    """Bytes of the file sent upstream (forwarded uploads)."""
    file_id: str | None = None
    kind: str | None = None
    weighting: float | None = None
    weighting_source: str | None = None
    layers: int | None = None
    problem_type: str | None = None
    """The problem `type` a refused upload was answered with."""
    detail: str | None = None


@dataclass(frozen=True)
class ReportRecord:
    """One performance report sent upstream through this gateway."""

    at: float
    aggregation_id: str
    mode: str
    data: dict[str, Any] | str


class Activity:
    """The bounded rings; appends come from the event loop only, so no lock is needed."""

    def __init__(self, max_uploads: int = MAX_UPLOADS, max_reports: int = MAX_REPORTS) -> None:
        self._uploads: deque[UploadRecord] = deque(maxlen=max_uploads)
        self._reports: deque[ReportRecord] = deque(maxlen=max_reports)

    def record_upload(self, record: UploadRecord) -> None:
        """Remember an answered upload (the oldest is forgotten beyond the bound)."""
        self._uploads.append(record)

    def record_report(self, aggregation_id: str, mode: str, data: dict[str, Any] | str) -> None:
        """Remember a report that reached BranchKey."""
        self._reports.append(ReportRecord(time.time(), aggregation_id, mode, data))

    def uploads(self, limit: int) -> list[UploadRecord]:
        """The newest `limit` uploads, newest first."""
        return list(reversed(self._uploads))[:limit]

    def reports(self, limit: int) -> list[ReportRecord]:
        """The newest `limit` reports, oldest first (the order a plot wants)."""
        return list(self._reports)[-limit:] if limit > 0 else []
